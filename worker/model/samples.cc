#include "worker/model/samples.h"

#include <archive.h>
#include <archive_entry.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace prunesvc::model {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr char kJsonlName[] = "samples.jsonl";

// Debian's abseil has its own absl::string_view class (not std's), which StrCat takes.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status LineError(const std::string& file, int line, std::string_view field,
                       std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(file, ":", line, ": field \"", Av(field), "\": ", Av(what)));
}

absl::Status TooBig(const std::string& what, uint64_t limit) {
  return absl::ResourceExhaustedError(
      absl::StrCat(what, ": the sample set exceeds the limit of ", limit, " bytes"));
}

// ---- samples.jsonl ----

absl::StatusOr<Sample> ParseLine(std::string_view text, const std::string& file, int line) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ":", line, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ":", line, ": not a JSON object"));
  }
  Sample s;
  s.line = line;
  auto required_string = [&](const char* key, bool non_empty, std::string* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return LineError(file, line, key, "missing");
    if (!it->is_string()) return LineError(file, line, key, "must be a string");
    *out = it->get<std::string>();
    if (non_empty && out->empty()) return LineError(file, line, key, "must not be empty");
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(required_string("id", true, &s.id));
  std::string image;
  RETURN_IF_ERROR(required_string("image", true, &image));
  auto normalized = NormalizeRelativePath(image);
  if (!normalized.ok())
    return LineError(file, line, "image", std::string(normalized.status().message()));
  s.image_path = *std::move(normalized);
  RETURN_IF_ERROR(required_string("question", false, &s.question));
  if (auto it = j.find("options"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return LineError(file, line, "options", "must be an array of strings");
    if (it->size() < 2 || it->size() > 26) {
      return LineError(file, line, "options",
                       absl::StrCat("must have 2 to 26 entries, has ", it->size()));
    }
    for (size_t i = 0; i < it->size(); ++i) {
      const json& o = (*it)[i];
      if (!o.is_string() || o.get_ref<const std::string&>().empty()) {
        return LineError(file, line, "options",
                         absl::StrCat("entry ", i, " is not a non-empty string"));
      }
      s.options.push_back(o.get<std::string>());
    }
  }
  RETURN_IF_ERROR(required_string("answer", true, &s.answer));
  if (s.multiple_choice()) {
    const char last = static_cast<char>('A' + s.options.size() - 1);
    if (s.answer.size() != 1 || s.answer[0] < 'A' || s.answer[0] > last) {
      return LineError(file, line, "answer",
                       absl::StrCat("must be one letter A..", std::string(1, last),
                                    " (the options' range), got \"", s.answer, "\""));
    }
  }
  if (auto it = j.find("type"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) return LineError(file, line, "type", "must be a string");
    s.type = it->get<std::string>();
  }
  return s;
}

// ---- sources: a directory or a tar ----

// Reads a regular file of at most `max_bytes`; the size is checked before reading.
absl::StatusOr<std::vector<uint8_t>> ReadRegularFile(const fs::path& path, uint64_t max_bytes,
                                                     const std::string& what) {
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return absl::NotFoundError(absl::StrCat(what, ": no such file"));
  if (!fs::is_regular_file(st)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a regular file"));
  }
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) return absl::InternalError(absl::StrCat(what, ": ", ec.message()));
  if (size > max_bytes) return TooBig(what, max_bytes);
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> data(static_cast<size_t>(size));
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(size));
  if (!in || static_cast<uintmax_t>(in.gcount()) != size) {
    return absl::InternalError(absl::StrCat(what, ": read failed"));
  }
  return data;
}

struct ArchiveDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ArchiveDeleter>;

absl::StatusOr<ArchivePtr> OpenArchive(const std::string& path) {
  ArchivePtr a(archive_read_new());
  if (!a) return absl::InternalError("archive_read_new failed");
  // The documented compressions only: libarchive's other filters (lrzip, lzop, grzip, lz4 via
  // external programs) would run a program found on PATH for any upload that starts with their
  // magic bytes.
  archive_read_support_filter_gzip(a.get());
  archive_read_support_filter_bzip2(a.get());
  archive_read_support_filter_xz(a.get());
  archive_read_support_filter_zstd(a.get());
  archive_read_support_format_tar(a.get());
  archive_read_support_format_gnutar(a.get());
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 16) != ARCHIVE_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a readable tar archive: ", archive_error_string(a.get())));
  }
  return a;
}

// What a dataset tar may not hold, for an entry of `type` (nullptr: allowed — a regular file or
// a directory).
const char* ForbiddenEntryKind(archive_entry* entry) {
  if (archive_entry_hardlink(entry) != nullptr) return "a hard link";
  switch (archive_entry_filetype(entry)) {
    case AE_IFREG:
    case AE_IFDIR:
      return nullptr;
    case AE_IFLNK:
      return "a symbolic link";
    case AE_IFCHR:
      return "a character device";
    case AE_IFBLK:
      return "a block device";
    case AE_IFIFO:
      return "a FIFO";
    case AE_IFSOCK:
      return "a socket";
    default:
      return "of an unknown type";
  }
}

// Iterates over a tar's regular-file entries, with their normalized names. Calls
// `visit(name, size, archive)`; `visit` may read the entry's data. Enforces the declared-size
// budget over all entries before anything is read. Rejects, naming the entry, what a dataset
// may not hold: links, devices, FIFOs, sockets, absolute paths and ".." components (never
// skipped: a tar that holds them was not made by `tar -C DIR -cf - .` and is refused whole).
template <typename Visit>
absl::Status ForEachTarFile(const std::string& path, uint64_t stream_budget, Visit visit) {
  ASSIGN_OR_RETURN(ArchivePtr a, OpenArchive(path));
  std::set<std::string> seen;
  uint64_t declared = 0;
  archive_entry* entry = nullptr;
  while (true) {
    const int r = archive_read_next_header(a.get(), &entry);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": corrupt tar archive: ", archive_error_string(a.get())));
    }
    const la_int64_t size = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : 0;
    if (size < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": negative entry size"));
    declared += static_cast<uint64_t>(size);
    if (declared > stream_budget) return TooBig(path, stream_budget / 2);
    const char* raw_name = archive_entry_pathname(entry);
    const std::string raw = raw_name != nullptr ? raw_name : "";
    if (const char* kind = ForbiddenEntryKind(entry); kind != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tar entry \"", raw, "\" is ", kind,
                       "; a dataset tar holds only regular files and directories"));
    }
    if (absl::StartsWith(raw, "/")) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tar entry \"", raw, "\" has an absolute path; make the tar with relative ones",
          " (tar -C DIR -cf out.tar .)"));
    }
    for (absl::string_view part : absl::StrSplit(raw, '/')) {
      if (part == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tar entry \"", raw,
                         "\" has a \"..\" component; paths must stay inside the set"));
      }
    }
    if (archive_entry_filetype(entry) == AE_IFDIR) continue;
    auto name = NormalizeRelativePath(raw);
    if (!name.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tar entry \"", raw, "\": ", name.status().message()));
    }
    if (!seen.insert(*name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": duplicate tar entry \"", *name, "\""));
    }
    RETURN_IF_ERROR(visit(*name, static_cast<uint64_t>(size), a.get()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> ReadEntry(archive* a, uint64_t size, const std::string& what) {
  std::vector<uint8_t> data(static_cast<size_t>(size));
  size_t got = 0;
  while (got < data.size()) {
    const la_ssize_t n = archive_read_data(a, data.data() + got, data.size() - got);
    if (n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": corrupt tar entry: ", archive_error_string(a)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": truncated tar entry"));
  }
  return data;
}

// Attaches image bytes and computes the hash and byte count.
absl::StatusOr<SampleSet> Finish(std::vector<Sample> samples, const std::vector<uint8_t>& jsonl,
                                 uint64_t image_bytes) {
  SampleSet set;
  Sha256 hasher;
  hasher.Update(absl::MakeConstSpan(jsonl));
  for (const Sample& s : samples) {
    const Sha256::Digest d = [&] {
      Sha256 h;
      h.Update(absl::MakeConstSpan(s.image_bytes));
      return h.Final();
    }();
    hasher.Update(absl::MakeConstSpan(d));
  }
  set.sha256 = DigestHex(hasher.Final());
  set.total_bytes = jsonl.size() + image_bytes;
  set.samples = std::move(samples);
  return set;
}

absl::StatusOr<SampleSet> LoadDirectory(const fs::path& root_in, const SampleLimits& limits) {
  std::error_code ec;
  const fs::path root = fs::canonical(root_in, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(root_in.string(), ": ", ec.message()));
  const fs::path jsonl_path = root / kJsonlName;
  const std::string jsonl_name = (root_in / kJsonlName).string();
  ASSIGN_OR_RETURN(std::vector<uint8_t> jsonl,
                   ReadRegularFile(jsonl_path, limits.max_total_bytes, jsonl_name));
  ASSIGN_OR_RETURN(
      std::vector<Sample> samples,
      ParseSamplesJsonl(std::string_view(reinterpret_cast<const char*>(jsonl.data()), jsonl.size()),
                        jsonl_name, limits.max_samples));
  uint64_t used = jsonl.size();
  uint64_t image_bytes = 0;
  std::unordered_map<std::string, const Sample*> first_use;  // read each file once
  for (Sample& s : samples) {
    const std::string what =
        absl::StrCat(jsonl_name, ":", s.line, ": field \"image\": \"", s.image_path, "\"");
    if (auto it = first_use.find(s.image_path); it != first_use.end()) {
      s.image_bytes = it->second->image_bytes;
    } else {
      // Resolve symlinks and require the target to stay inside the root.
      const fs::path resolved = fs::weakly_canonical(root / s.image_path, ec);
      if (ec) return absl::NotFoundError(absl::StrCat(what, ": ", ec.message()));
      const auto rel = resolved.lexically_relative(root);
      if (rel.empty() || *rel.begin() == "..") {
        return absl::InvalidArgumentError(absl::StrCat(what, ": resolves outside the sample set"));
      }
      auto data = ReadRegularFile(resolved, limits.max_total_bytes - used, what);
      if (absl::IsNotFound(data.status())) {
        return absl::NotFoundError(absl::StrCat(what, ": image not found"));
      }
      if (!data.ok()) return data.status();
      s.image_bytes = *std::move(data);
      first_use[s.image_path] = &s;
    }
    if (s.image_bytes.size() > limits.max_total_bytes - used) {
      return TooBig(what, limits.max_total_bytes);
    }
    used += s.image_bytes.size();
    image_bytes += s.image_bytes.size();
  }
  return Finish(std::move(samples), jsonl, image_bytes);
}

absl::StatusOr<SampleSet> LoadTar(const std::string& path, const SampleLimits& limits) {
  const uint64_t budget =
      limits.max_total_bytes > (UINT64_MAX >> 1) ? UINT64_MAX : limits.max_total_bytes * 2;
  // Pass 1: find samples.jsonl at the root or in a single top-level folder.
  std::optional<std::vector<uint8_t>> at_root;
  std::map<std::string, std::vector<uint8_t>> in_folder;  // folder prefix "x/" → content
  RETURN_IF_ERROR(ForEachTarFile(
      path, budget, [&](const std::string& name, uint64_t size, archive* a) -> absl::Status {
        std::string prefix;
        if (name == kJsonlName) {
          prefix = "";
        } else if (const size_t slash = name.find('/');
                   slash != std::string::npos && name.substr(slash + 1) == kJsonlName) {
          prefix = name.substr(0, slash + 1);
        } else {
          return absl::OkStatus();
        }
        const std::string what = absl::StrCat(path, ":", name);
        if (size > limits.max_total_bytes) return TooBig(what, limits.max_total_bytes);
        ASSIGN_OR_RETURN(auto data, ReadEntry(a, size, what));
        if (prefix.empty()) {
          at_root = std::move(data);
        } else {
          in_folder[prefix] = std::move(data);
        }
        return absl::OkStatus();
      }));
  std::string root;
  std::vector<uint8_t> jsonl;
  if (at_root) {
    jsonl = std::move(*at_root);
  } else if (in_folder.size() == 1) {
    root = in_folder.begin()->first;
    jsonl = std::move(in_folder.begin()->second);
  } else if (in_folder.empty()) {
    return absl::NotFoundError(absl::StrCat(path, ": no samples.jsonl in the archive"));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": several top-level folders hold a samples.jsonl; put one at the root"));
  }
  const std::string jsonl_name = absl::StrCat(path, ":", root, kJsonlName);
  ASSIGN_OR_RETURN(
      std::vector<Sample> samples,
      ParseSamplesJsonl(std::string_view(reinterpret_cast<const char*>(jsonl.data()), jsonl.size()),
                        jsonl_name, limits.max_samples));

  // Pass 2: read the referenced images (each once), counting bytes once per referencing sample.
  std::unordered_map<std::string, std::vector<Sample*>> wanted;
  for (Sample& s : samples) wanted[root + s.image_path].push_back(&s);
  uint64_t used = jsonl.size();
  uint64_t image_bytes = 0;
  RETURN_IF_ERROR(ForEachTarFile(
      path, budget, [&](const std::string& name, uint64_t size, archive* a) -> absl::Status {
        auto it = wanted.find(name);
        if (it == wanted.end()) return absl::OkStatus();
        const Sample& first = *it->second.front();
        const std::string what = absl::StrCat(jsonl_name, ":", first.line, ": field \"image\": \"",
                                              first.image_path, "\"");
        const uint64_t total = size * it->second.size();
        if (size > limits.max_total_bytes || total > limits.max_total_bytes - used) {
          return TooBig(what, limits.max_total_bytes);
        }
        ASSIGN_OR_RETURN(auto data, ReadEntry(a, size, what));
        for (Sample* s : it->second) s->image_bytes = data;
        used += total;
        image_bytes += total;
        wanted.erase(it);
        return absl::OkStatus();
      }));
  if (!wanted.empty()) {
    // Report the earliest line whose image is missing.
    const Sample* missing = nullptr;
    for (const auto& [name, users] : wanted) {
      if (missing == nullptr || users.front()->line < missing->line) missing = users.front();
    }
    return absl::NotFoundError(absl::StrCat(jsonl_name, ":", missing->line, ": field \"image\": \"",
                                            missing->image_path,
                                            "\": image not found in the archive"));
  }
  return Finish(std::move(samples), jsonl, image_bytes);
}

}  // namespace

absl::StatusOr<std::string> NormalizeRelativePath(std::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError("path is empty");
  if (path.front() == '/') return absl::InvalidArgumentError("path must be relative");
  if (path.find('\\') != std::string_view::npos || path.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError("path may not contain '\\' or NUL");
  }
  std::string out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    const std::string_view part = path.substr(start, end - start);
    if (part == "..") return absl::InvalidArgumentError("path may not contain \"..\"");
    if (!part.empty() && part != ".") {
      if (!out.empty()) out += '/';
      out.append(part);
    }
    start = end + 1;
  }
  if (out.empty()) return absl::InvalidArgumentError("path names no file");
  return out;
}

absl::StatusOr<std::vector<Sample>> ParseSamplesJsonl(std::string_view content,
                                                      const std::string& file, size_t max_samples) {
  if (content.substr(0, 3) == "\xEF\xBB\xBF") content.remove_prefix(3);
  std::vector<Sample> samples;
  std::unordered_map<std::string, int> id_line;
  int line = 0;
  size_t pos = 0;
  while (pos < content.size()) {
    ++line;
    size_t end = content.find('\n', pos);
    if (end == std::string_view::npos) end = content.size();
    std::string_view text = content.substr(pos, end - pos);
    pos = end + 1;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t\r\f\v") == std::string_view::npos) continue;
    if (samples.size() >= max_samples) {
      return absl::ResourceExhaustedError(
          absl::StrCat(file, ":", line, ": more than the limit of ", max_samples, " samples"));
    }
    ASSIGN_OR_RETURN(Sample s, ParseLine(text, file, line));
    if (auto [it, inserted] = id_line.emplace(s.id, line); !inserted) {
      return LineError(
          file, line, "id",
          absl::StrCat("duplicate id \"", s.id, "\" (first on line ", it->second, ")"));
    }
    samples.push_back(std::move(s));
  }
  if (samples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": no samples"));
  }
  return samples;
}

absl::StatusOr<SampleSet> LoadSampleSet(const std::string& path, const SampleLimits& limits) {
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  if (fs::is_directory(st)) return LoadDirectory(fs::path(path), limits);
  if (fs::path(path).extension() == ".jsonl") {
    const std::string dir = fs::path(path).parent_path().empty()
                                ? std::string(".")
                                : fs::path(path).parent_path().string();
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a sample set is the directory that holds samples.jsonl and its ",
                     "images (pass ", dir, "), or a tar of it"));
  }
  if (!fs::is_regular_file(st)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": neither a directory nor a tar file"));
  }
  return LoadTar(path, limits);
}

}  // namespace prunesvc::model

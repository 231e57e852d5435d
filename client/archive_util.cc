#include "client/archive_util.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace prunesvc::client {
namespace {

namespace fs = std::filesystem;

struct WriterDeleter {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct ReaderDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};

la_ssize_t AppendToString(archive*, void* out, const void* buf, size_t len) {
  static_cast<std::string*>(out)->append(static_cast<const char*>(buf), len);
  return static_cast<la_ssize_t>(len);
}

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Regular files under `dir` (through symlinks), relative generic paths, sorted bytewise.
absl::StatusOr<std::vector<std::string>> ListFiles(const fs::path& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file()) files.push_back(it->path().lexically_relative(dir).generic_string());
  }
  if (ec)
    return absl::NotFoundError(absl::StrCat("cannot list ", dir.string(), ": ", ec.message()));
  std::sort(files.begin(), files.end());
  return files;
}

absl::Status WriteEntry(archive* a, const std::string& name, const std::string& data) {
  std::unique_ptr<archive_entry, void (*)(archive_entry*)> e(archive_entry_new(),
                                                             archive_entry_free);
  archive_entry_set_pathname(e.get(), name.c_str());
  archive_entry_set_filetype(e.get(), AE_IFREG);
  archive_entry_set_perm(e.get(), 0644);
  archive_entry_set_size(e.get(), static_cast<la_int64_t>(data.size()));
  archive_entry_set_mtime(e.get(), 0, 0);
  archive_entry_set_uid(e.get(), 0);
  archive_entry_set_gid(e.get(), 0);
  if (archive_write_header(a, e.get()) != ARCHIVE_OK ||
      (!data.empty() &&
       archive_write_data(a, data.data(), data.size()) != static_cast<la_ssize_t>(data.size()))) {
    return absl::InternalError(absl::StrCat("tar ", name, ": ", archive_error_string(a)));
  }
  return absl::OkStatus();
}

// An entry's path made relative and checked: no absolute path, no "..", not empty.
absl::StatusOr<std::string> SafeEntryPath(absl::string_view raw) {
  std::string path(raw);
  if (absl::StartsWith(path, "/")) {
    return absl::DataLossError(absl::StrCat("archive entry \"", raw, "\" has an absolute path"));
  }
  std::vector<std::string> parts;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (part == ".") continue;
    if (part == "..") {
      return absl::DataLossError(absl::StrCat("archive entry \"", raw, "\" has a .. component"));
    }
    parts.emplace_back(part);
  }
  return absl::StrJoin(parts, "/");
}

absl::Status ExtractData(archive* a, const fs::path& out, absl::string_view name) {
  std::ofstream f(out, std::ios::binary | std::ios::trunc);
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", out.string()));
  const void* buf;
  size_t size;
  la_int64_t offset;
  int r;
  while ((r = archive_read_data_block(a, &buf, &size, &offset)) == ARCHIVE_OK) {
    f.seekp(offset);
    f.write(static_cast<const char*>(buf), static_cast<std::streamsize>(size));
  }
  if (r != ARCHIVE_EOF) {
    return absl::DataLossError(
        absl::StrCat("archive entry \"", name, "\": ", archive_error_string(a)));
  }
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", out.string()));
  fs::permissions(out, fs::perms(0644));
  return absl::OkStatus();
}

absl::Status ExtractEntry(archive* a, archive_entry* e, const fs::path& dest) {
  const char* raw_name = archive_entry_pathname(e);
  const std::string raw = raw_name ? raw_name : "";
  ASSIGN_OR_RETURN(std::string rel, SafeEntryPath(raw));
  const auto type = archive_entry_filetype(e);
  if (archive_entry_hardlink(e) != nullptr || type == AE_IFLNK) {
    return absl::DataLossError(absl::StrCat("archive entry \"", raw, "\" is a link"));
  }
  if (type != AE_IFREG && type != AE_IFDIR) {
    return absl::DataLossError(absl::StrCat("archive entry \"", raw, "\" is a special file"));
  }
  if (rel.empty()) return absl::OkStatus();  // "./"
  const fs::path out = dest / rel;
  std::error_code ec;
  fs::create_directories(type == AE_IFDIR ? out : out.parent_path(), ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", out.string(), ": ", ec.message()));
  if (type == AE_IFDIR) return absl::OkStatus();
  return ExtractData(a, out, raw);
}

}  // namespace

absl::StatusOr<std::string> PackDirectoryToTar(const std::string& dir) {
  if (!fs::is_directory(dir)) return absl::NotFoundError(dir + " is not a directory");
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListFiles(dir));
  if (!std::binary_search(files.begin(), files.end(), "samples.jsonl")) {
    return absl::InvalidArgumentError(dir + " has no samples.jsonl at its root");
  }
  std::string out;
  std::unique_ptr<archive, WriterDeleter> a(archive_write_new());
  archive_write_set_format_pax_restricted(a.get());
  if (archive_write_open(a.get(), &out, nullptr, AppendToString, nullptr) != ARCHIVE_OK) {
    return absl::InternalError(archive_error_string(a.get()));
  }
  for (const std::string& name : files) {
    ASSIGN_OR_RETURN(std::string data, ReadFile(fs::path(dir) / name));
    RETURN_IF_ERROR(WriteEntry(a.get(), name, data));
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) {
    return absl::InternalError(archive_error_string(a.get()));
  }
  return out;
}

absl::Status UnpackTarSafely(const std::string& tar_path, const std::string& dest) {
  std::unique_ptr<archive, ReaderDeleter> a(archive_read_new());
  archive_read_support_filter_all(a.get());
  archive_read_support_format_tar(a.get());
  if (archive_read_open_filename(a.get(), tar_path.c_str(), 1 << 16) != ARCHIVE_OK) {
    return absl::DataLossError(absl::StrCat(tar_path, ": ", archive_error_string(a.get())));
  }
  archive_entry* e;
  int r;
  while ((r = archive_read_next_header(a.get(), &e)) == ARCHIVE_OK) {
    RETURN_IF_ERROR(ExtractEntry(a.get(), e, dest));
  }
  if (r != ARCHIVE_EOF) {
    return absl::DataLossError(absl::StrCat(tar_path, ": ", archive_error_string(a.get())));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  Sha256 h;
  std::vector<char> buf(1 << 16);
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
    h.Update(std::string_view(buf.data(), static_cast<size_t>(in.gcount())));
  }
  return DigestHex(h.Final());
}

std::string BareSha256(absl::string_view digest) {
  std::string d = absl::AsciiStrToLower(absl::StripAsciiWhitespace(digest));
  absl::string_view v = d;
  absl::ConsumePrefix(&v, "sha256:");
  return std::string(v);
}

absl::Status VerifyFileSha256(const std::string& path, absl::string_view expected) {
  ASSIGN_OR_RETURN(std::string actual, Sha256File(path));
  if (actual != BareSha256(expected)) {
    return absl::DataLossError(absl::StrCat(path, ": sha256 ", actual, " does not match the ",
                                            "expected ", BareSha256(expected)));
  }
  return absl::OkStatus();
}

absl::Status VerifyManifest(const std::string& dir) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(fs::path(dir) / "MANIFEST.sha256"));
  std::set<std::string> listed;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    // `sha256sum` lines: "<hex>  <path>" (or "<hex> *<path>" for binary mode).
    const size_t sp = line.find(' ');
    if (sp != 64 || line.size() < 67) {
      return absl::DataLossError(absl::StrCat("MANIFEST.sha256: malformed line \"", line, "\""));
    }
    ASSIGN_OR_RETURN(std::string rel, SafeEntryPath(line.substr(66)));
    RETURN_IF_ERROR(VerifyFileSha256((fs::path(dir) / rel).string(), line.substr(0, 64)));
    listed.insert(rel);
  }
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListFiles(dir));
  for (const std::string& f : files) {
    if (f != "MANIFEST.sha256" && !listed.count(f)) {
      return absl::DataLossError(absl::StrCat(f, " is not listed in MANIFEST.sha256"));
    }
  }
  return absl::OkStatus();
}

}  // namespace prunesvc::client

#include "common/model_manifest.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "nlohmann/json.hpp"

namespace prunesvc {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

bool IsLowerHex64(absl::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

absl::Status Invalid(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

// A short, printable rendering of untrusted text for messages.
std::string Quote(absl::string_view s) {
  std::string out = "\"";
  for (char c : s.substr(0, 120)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (s.size() > 120) out += "...";
  return out + "\"";
}

}  // namespace

int64_t ModelManifest::total_bytes() const {
  int64_t total = 0;
  for (const ModelFileEntry& f : files) total += f.size;
  return total;
}

absl::Status ValidateModelPath(absl::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError("is empty");
  if (path.size() > kMaxModelPathBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(path), " is longer than ", kMaxModelPathBytes, " bytes"));
  }
  for (char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') {
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(path), " holds a control character or a backslash"));
    }
  }
  if (path.front() == '/') {
    return absl::InvalidArgumentError(absl::StrCat(Quote(path), " is absolute"));
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(path), " has an empty, \".\" or \"..\" component"));
    }
    if (part.size() > 255) {
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(path), " has a component longer than 255 bytes"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateModelManifest(ModelManifest& m) {
  if (m.name.size() > kMaxModelNameBytes) {
    return Invalid("name", absl::StrCat("at most ", kMaxModelNameBytes, " bytes"));
  }
  for (char c : m.name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Invalid("name", "holds a control character");
    }
  }
  if (m.files.empty()) return Invalid("files", "is empty (a model has at least config.json)");
  if (m.files.size() > static_cast<size_t>(kMaxModelFiles)) {
    return Invalid("files", absl::StrCat(m.files.size(), " files; at most ", kMaxModelFiles));
  }
  // Entries first, numbered as given; then the order-dependent checks on the sorted list.
  int64_t total = 0;
  for (size_t i = 0; i < m.files.size(); ++i) {
    const ModelFileEntry& f = m.files[i];
    const std::string where = absl::StrCat("files[", i, "]");
    if (absl::Status s = ValidateModelPath(f.path); !s.ok()) {
      return Invalid(where + ".path", s.message());
    }
    if (!IsLowerHex64(f.sha256)) {
      return Invalid(where + ".sha256", "must be 64 lowercase hex digits (no prefix)");
    }
    if (f.size < 0) return Invalid(where + ".size", "is negative");
    if (total > std::numeric_limits<int64_t>::max() - f.size) {
      return Invalid(where + ".size", "the sizes add up past 2^63 bytes");
    }
    total += f.size;
  }
  std::sort(m.files.begin(), m.files.end(),
            [](const ModelFileEntry& a, const ModelFileEntry& b) { return a.path < b.path; });
  std::set<std::string> dirs;  // every proper prefix directory of a file
  bool has_config = false;
  for (size_t i = 0; i < m.files.size(); ++i) {
    const ModelFileEntry& f = m.files[i];
    const std::string where = absl::StrCat("files[", i, "]");
    if (i > 0 && m.files[i - 1].path == f.path) {
      return Invalid(where + ".path", absl::StrCat(Quote(f.path), " is listed twice"));
    }
    has_config = has_config || f.path == "config.json";
    for (size_t slash = f.path.find('/'); slash != std::string::npos;
         slash = f.path.find('/', slash + 1)) {
      dirs.insert(f.path.substr(0, slash));
    }
  }
  for (size_t i = 0; i < m.files.size(); ++i) {
    if (dirs.count(m.files[i].path) > 0) {
      return Invalid(absl::StrCat("files[", i, "].path"),
                     absl::StrCat(Quote(m.files[i].path), " is both a file and a directory"));
    }
  }
  if (!has_config) return Invalid("files", "no config.json at the model's root");
  return absl::OkStatus();
}

std::string SerializeModelManifest(const ModelManifest& m) {
  json files = json::array();
  for (const ModelFileEntry& f : m.files) {
    files.push_back({{"path", f.path}, {"sha256", f.sha256}, {"size", f.size}});
  }
  json doc = {
      {"files", std::move(files)}, {"format", std::string(kModelManifestFormat)}, {"name", m.name}};
  return doc.dump();  // nlohmann's objects are sorted by key: canonical
}

absl::StatusOr<ModelManifest> ParseModelManifest(absl::string_view text, absl::string_view what) {
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Invalid(what, "not valid JSON");
  if (!doc.is_object()) return Invalid(what, "not a JSON object");
  for (const auto& [key, value] : doc.items()) {
    if (key != "files" && key != "format" && key != "name") {
      return Invalid(what, absl::StrCat("unknown field ", Quote(key)));
    }
  }
  auto format = doc.find("format");
  if (format == doc.end() || !format->is_string() ||
      format->get<std::string>() != kModelManifestFormat) {
    return Invalid(what, absl::StrCat("format: must be \"", kModelManifestFormat, "\""));
  }
  ModelManifest m;
  if (auto name = doc.find("name"); name != doc.end()) {
    if (!name->is_string()) return Invalid(what, "name: must be a string");
    m.name = name->get<std::string>();
  }
  auto files = doc.find("files");
  if (files == doc.end() || !files->is_array()) {
    return Invalid(what, "files: must be an array");
  }
  if (files->size() > static_cast<size_t>(kMaxModelFiles)) {
    return Invalid(what, absl::StrCat("files: more than ", kMaxModelFiles));
  }
  for (size_t i = 0; i < files->size(); ++i) {
    const json& f = (*files)[i];
    const std::string where = absl::StrCat(what, ": files[", i, "]");
    if (!f.is_object()) return Invalid(where, "must be an object");
    for (const auto& [key, value] : f.items()) {
      if (key != "path" && key != "sha256" && key != "size") {
        return Invalid(where, absl::StrCat("unknown field ", Quote(key)));
      }
    }
    ModelFileEntry e;
    auto path = f.find("path");
    auto sha = f.find("sha256");
    auto size = f.find("size");
    if (path == f.end() || !path->is_string()) return Invalid(where, "path: must be a string");
    if (sha == f.end() || !sha->is_string()) return Invalid(where, "sha256: must be a string");
    if (size == f.end() || !size->is_number_integer()) {
      return Invalid(where, "size: must be an integer");
    }
    e.path = path->get<std::string>();
    e.sha256 = sha->get<std::string>();
    if (size->is_number_unsigned() &&
        size->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Invalid(where, "size: too large");
    }
    e.size = size->get<int64_t>();
    m.files.push_back(std::move(e));
  }
  if (absl::Status s = ValidateModelManifest(m); !s.ok()) return Invalid(what, s.message());
  return m;
}

absl::StatusOr<ModelManifest> ManifestOfDirectory(
    const std::string& dir, const std::string& name,
    const std::function<void(int64_t, int64_t)>& progress) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));
  }
  ModelManifest m;
  m.name = name;
  std::vector<std::pair<std::string, fs::path>> found;  // relative path, file
  int64_t total = 0;
  fs::path base(dir);
  if (!base.has_filename()) base = base.parent_path();  // "dir/"
  auto it =
      fs::recursive_directory_iterator(base, fs::directory_options::follow_directory_symlink, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    // Lexically: fs::relative would resolve a linked file to where it points.
    const fs::path rel = it->path().lexically_relative(base);
    if (it->is_directory(ec)) continue;
    if (!it->is_regular_file(ec)) {  // follows symbolic links
      return absl::InvalidArgumentError(
          absl::StrCat(it->path().string(),
                       ": not a regular file (or a link to one); a model holds only files"));
    }
    const int64_t size = static_cast<int64_t>(it->file_size(ec));
    if (ec) break;
    found.push_back({rel.generic_string(), it->path()});
    m.files.push_back({rel.generic_string(), size, ""});
    total += size;
  }
  if (ec) return absl::InvalidArgumentError(absl::StrCat(dir, ": ", ec.message()));
  int64_t done = 0;
  std::string buf(1 << 20, '\0');
  for (size_t i = 0; i < found.size(); ++i) {
    std::ifstream in(found[i].second, std::ios::binary);
    if (!in) {
      return absl::InvalidArgumentError(absl::StrCat(found[i].second.string(), ": cannot read"));
    }
    Sha256 hash;
    int64_t got = 0;
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const std::streamsize n = in.gcount();
      if (n <= 0) break;
      hash.Update(std::string_view(buf.data(), static_cast<size_t>(n)));
      got += n;
      done += n;
      if (progress) progress(done, total);
    }
    if (in.bad() || got != m.files[i].size) {
      return absl::InvalidArgumentError(absl::StrCat(found[i].second.string(),
                                                     ": changed while it was read (", got, " of ",
                                                     m.files[i].size, " bytes)"));
    }
    m.files[i].sha256 = DigestHex(hash.Final());
  }
  if (absl::Status s = ValidateModelManifest(m); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": ", s.message()));
  }
  return m;
}

std::string BlobModelUri(absl::string_view model_id) {
  return absl::StrCat(kBlobModelScheme, model_id);
}

bool IsBlobModelUri(absl::string_view uri) { return absl::StartsWith(uri, kBlobModelScheme); }

absl::StatusOr<std::string> BlobModelId(absl::string_view uri, absl::string_view field) {
  if (!IsBlobModelUri(uri)) {
    return Invalid(field, absl::StrCat(Quote(uri), " is not a blob:// model URI"));
  }
  const absl::string_view id = uri.substr(kBlobModelScheme.size());
  if (!absl::StartsWith(id, "sha256:") || !IsLowerHex64(id.substr(7))) {
    return Invalid(field, absl::StrCat(Quote(uri),
                                       " must be blob://sha256:<64 lowercase hex digits> (what "
                                       "prunectl upload-model printed)"));
  }
  return std::string(id);
}

}  // namespace prunesvc

#include "worker/prune/artifact.h"

#include <archive.h>
#include <archive_entry.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace prunesvc::prune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool IsWeightFile(const std::string& name) {
  for (const char* suffix : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                             ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf"}) {
    if (absl::EndsWith(name, suffix)) return true;
  }
  return false;
}

std::vector<std::string> RegularFilesUnder(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) files.push_back(fs::relative(e.path(), dir).string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

absl::StatusOr<std::string> Sha256OfFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    const std::streamsize got = in.gcount();
    if (got > 0) h.Update(std::string_view(buf.data(), size_t(got)));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return DigestHex(h.Final());
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

std::vector<std::string> WeightFiles(const std::string& model_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(model_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() &&
        (absl::EndsWith(name, ".safetensors") || name == "model.safetensors.index.json")) {
      out.push_back(name);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// The regular, non-hidden, non-weight files of `model_dir` (config, tokenizer, processor), sorted.
absl::StatusOr<std::vector<std::string>> SideFiles(const std::string& model_dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(model_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || name.empty() || name[0] == '.' || IsWeightFile(name)) continue;
    names.push_back(name);
  }
  if (ec) return absl::NotFoundError(absl::StrCat(model_dir, ": ", ec.message()));
  std::sort(names.begin(), names.end());
  return names;
}

// sha256 over "HEX  NAME\n" lines (sha256sum's format) of `names` in `dir`, in that order; each
// file's digest into `digests` when given.
absl::StatusOr<std::string> ListedFilesSha256(const std::string& dir,
                                              const std::vector<std::string>& names,
                                              json* digests) {
  std::string lines;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(std::string hex, Sha256OfFile(dir + "/" + name));
    absl::StrAppend(&lines, hex, "  ", name, "\n");
    if (digests != nullptr) (*digests)[name] = hex;
  }
  return Sha256Hex(lines);
}

}  // namespace

absl::StatusOr<std::pair<std::string, json>> ModelSha256(const std::string& model_dir) {
  json files = json::object();
  ASSIGN_OR_RETURN(std::string hex, ListedFilesSha256(model_dir, WeightFiles(model_dir), &files));
  return std::make_pair(std::move(hex), std::move(files));
}

absl::StatusOr<std::string> ModelSideFilesSha256(const std::string& model_dir) {
  ASSIGN_OR_RETURN(std::vector<std::string> names, SideFiles(model_dir));
  return ListedFilesSha256(model_dir, names, nullptr);
}

absl::StatusOr<json> CopyModelSideFiles(const std::string& model_dir,
                                        const std::string& model_out) {
  ASSIGN_OR_RETURN(std::vector<std::string> names, SideFiles(model_dir));
  json copied = json::array();
  for (const std::string& name : names) {
    const fs::path from = fs::path(model_dir) / name;
    std::error_code ec;
    fs::copy_file(from, fs::path(model_out) / name, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("copying ", from.string(), " into the artifact: ", ec.message()));
    }
    copied.push_back(name);
  }
  return copied;
}

std::string NormalizeOutDir(std::string out) {
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

absl::Status CheckOutDir(const std::string& out, bool replace) {
  std::error_code ec;
  const fs::file_status st = fs::status(out, ec);
  if (!fs::exists(st)) return absl::OkStatus();
  if (!fs::is_directory(st)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--out ", out, " exists and is not a directory"));
  }
  if (replace) return absl::OkStatus();
  if (!fs::is_empty(out, ec) || ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--out ", out,
                     " exists and is not empty; choose a new directory, remove it first, or pass "
                     "--force to replace it once the new artifact is complete"));
  }
  return absl::OkStatus();
}

std::vector<std::string> RemoveStalePartials(const std::string& out) {
  std::vector<std::string> removed;
  const fs::path out_path(out);
  const fs::path parent = out_path.parent_path().empty() ? fs::path(".") : out_path.parent_path();
  const std::string prefix = out_path.filename().string() + ".partial-";
  std::error_code ec;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!absl::StartsWith(name, prefix)) continue;
    long pid = 0;
    if (!absl::SimpleAtoi(name.substr(prefix.size()), &pid) || pid <= 0) continue;
    // kill(pid, 0) fails with ESRCH only when no such process exists (EPERM: it exists).
    if (kill(pid_t(pid), 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    fs::remove_all(it->path(), rm);
    if (!rm) removed.push_back(it->path().string());
  }
  return removed;
}

absl::StatusOr<std::unique_ptr<PartialDir>> PartialDir::Create(const std::string& out,
                                                               bool replace) {
  for (const std::string& stale : RemoveStalePartials(out)) {
    spdlog::warn(
        "removed {}: the partial output of an earlier run that did not finish (its "
        "process is gone)",
        stale);
  }
  const std::string path = absl::StrCat(out, ".partial-", getpid());
  std::error_code ec;
  fs::remove_all(path, ec);
  if (!fs::create_directories(path, ec) || ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out ", out, ": cannot create ", path, ": ", ec.message()));
  }
  return std::unique_ptr<PartialDir>(new PartialDir(out, path, replace));
}

PartialDir::~PartialDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

absl::Status PartialDir::Commit() {
  std::error_code ec;
  if (replace_ && fs::is_directory(out_, ec) && !fs::is_empty(out_, ec)) {
    const std::string aside = absl::StrCat(out_, ".replaced-", getpid());
    fs::remove_all(aside, ec);
    fs::rename(out_, aside, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("--force: cannot move ", out_, " aside to ", aside, ": ", ec.message()));
    }
    fs::rename(path_, out_, ec);
    if (ec) {
      std::error_code back;
      fs::rename(aside, out_, back);
      return absl::InternalError(
          absl::StrCat("cannot rename ", path_, " to ", out_, ": ", ec.message()));
    }
    committed_ = true;
    fs::remove_all(aside, ec);
    spdlog::info("replaced the previous {} (--force)", out_);
    return absl::OkStatus();
  }
  // An empty OUT (checked up front) is replaced: rename(2) onto an empty directory works.
  fs::rename(path_, out_, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", path_, " to ", out_, ": ", ec.message()));
  }
  committed_ = true;
  return absl::OkStatus();
}

absl::Status WriteManifest(const std::string& dir) {
  std::string text;
  for (const std::string& f : RegularFilesUnder(dir)) {
    if (f == "MANIFEST.sha256") continue;
    ASSIGN_OR_RETURN(std::string hex, Sha256OfFile(dir + "/" + f));
    absl::StrAppend(&text, hex, "  ", f, "\n");
  }
  return WriteTextFile(dir + "/MANIFEST.sha256", text);
}

absl::Status TarDirectory(const std::string& dir, const std::string& tar_path) {
  std::unique_ptr<archive, decltype(&archive_write_free)> a(archive_write_new(),
                                                            &archive_write_free);
  archive_write_set_format_pax_restricted(a.get());
  if (archive_write_open_filename(a.get(), tar_path.c_str()) != ARCHIVE_OK) {
    return absl::InternalError(
        absl::StrCat(tar_path, ": cannot create: ", archive_error_string(a.get())));
  }
  std::vector<char> buf(1 << 20);
  for (const std::string& rel : RegularFilesUnder(dir)) {
    std::ifstream in(dir + "/" + rel, std::ios::binary);
    std::error_code ec;
    const auto size = fs::file_size(dir + "/" + rel, ec);
    if (!in || ec) return absl::InternalError(absl::StrCat(dir, "/", rel, ": cannot read"));
    std::unique_ptr<archive_entry, decltype(&archive_entry_free)> e(archive_entry_new(),
                                                                    &archive_entry_free);
    archive_entry_set_pathname(e.get(), rel.c_str());
    archive_entry_set_filetype(e.get(), AE_IFREG);
    archive_entry_set_perm(e.get(), 0644);
    archive_entry_set_size(e.get(), la_int64_t(size));
    archive_entry_set_mtime(e.get(), 0, 0);
    if (archive_write_header(a.get(), e.get()) != ARCHIVE_OK) {
      return absl::InternalError(absl::StrCat(tar_path, ": ", archive_error_string(a.get())));
    }
    while (in) {
      in.read(buf.data(), std::streamsize(buf.size()));
      const std::streamsize got = in.gcount();
      if (got > 0 && archive_write_data(a.get(), buf.data(), size_t(got)) != got) {
        return absl::InternalError(absl::StrCat(tar_path, ": ", archive_error_string(a.get())));
      }
    }
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) {
    return absl::InternalError(absl::StrCat(tar_path, ": ", archive_error_string(a.get())));
  }
  return absl::OkStatus();
}

}  // namespace prunesvc::prune

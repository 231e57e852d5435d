#include "server/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace prunesvc::server {

absl::Status StorageError(int err, absl::string_view what) {
  std::string text = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(
        absl::StrCat(text, " (the state dir is full: free space, then retry)"));
  }
  if (err == EROFS) {
    return absl::FailedPreconditionError(
        absl::StrCat(text, " (the state dir is read-only: make it writable, then retry)"));
  }
  if (err == ENOENT) return absl::NotFoundError(text);
  return absl::InternalError(text);
}

namespace {

constexpr size_t kHexLength = 64;

// Makes a directory entry (a created, linked or removed file) durable.
absl::Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return StorageError(errno, absl::StrCat("open ", dir));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return StorageError(err, absl::StrCat("fsync ", dir));
  return absl::OkStatus();
}

// mkdir that tolerates an existing directory; syncs the parent when it created one.
absl::Status EnsureDir(const std::string& dir, const std::string& parent) {
  if (::mkdir(dir.c_str(), 0755) == 0) return SyncDir(parent);
  if (errno == EEXIST) return absl::OkStatus();
  return StorageError(errno, absl::StrCat("mkdir ", dir));
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return StorageError(errno, absl::StrCat("write ", path));
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

class FileBlobWriter : public BlobWriter {
 public:
  FileBlobWriter(const FileBlobStore* store, int fd, std::string temp_path, int64_t max_bytes)
      : store_(store), temp_path_(std::move(temp_path)), max_bytes_(max_bytes), fd_(fd) {}
  ~FileBlobWriter() override { Abort(); }

  absl::Status Append(absl::string_view chunk) override {
    RETURN_IF_ERROR(CheckOpen());
    if (static_cast<int64_t>(chunk.size()) > max_bytes_ - size_) {
      Abort();
      return absl::ResourceExhaustedError(
          absl::StrCat("blob exceeds the limit of ", max_bytes_, " bytes"));
    }
    absl::Status status = WriteAll(fd_, chunk, temp_path_);
    if (!status.ok()) {
      Abort();
      return status;
    }
    hasher_.Update(std::string_view(chunk.data(), chunk.size()));
    size_ += static_cast<int64_t>(chunk.size());
    return absl::OkStatus();
  }

  absl::StatusOr<BlobCommitResult> Commit(std::optional<absl::string_view> expected_id) override {
    RETURN_IF_ERROR(CheckOpen());
    absl::StatusOr<BlobCommitResult> result = CommitOpen(expected_id);
    Abort();  // closes and removes the temp file (the blob, if stored, is a separate link)
    if (result.ok()) committed_ = true;
    return result;
  }

  void Abort() override {
    if (fd_ < 0) return;
    ::close(fd_);
    fd_ = -1;
    // Once renamed away the name is free, and may already be another writer's temp file.
    if (!temp_renamed_) ::unlink(temp_path_.c_str());
  }

  int64_t bytes_written() const override { return size_; }

 private:
  absl::Status CheckOpen() const {
    if (fd_ >= 0) return absl::OkStatus();
    return absl::FailedPreconditionError(committed_ ? "blob writer already committed"
                                                    : "blob writer was aborted");
  }

  absl::StatusOr<BlobCommitResult> CommitOpen(std::optional<absl::string_view> expected_id) {
    if (expected_id.has_value()) RETURN_IF_ERROR(ValidateBlobId(*expected_id));
    std::string id = BlobIdFromHex(DigestHex(hasher_.Final()));
    if (expected_id.has_value() && *expected_id != id) {
      return absl::InvalidArgumentError(absl::StrCat(
          "content hash ", id, " (", size_, " bytes) does not match the expected ", *expected_id));
    }
    if (::fchmod(fd_, 0444) != 0) return StorageError(errno, absl::StrCat("chmod ", temp_path_));
    if (::fsync(fd_) != 0) return StorageError(errno, absl::StrCat("fsync ", temp_path_));
    ASSIGN_OR_RETURN(bool already_present, Publish(id));
    return BlobCommitResult{id, size_, already_present};
  }

  // Links the finished temp file to its content path; true when a blob was already there.
  absl::StatusOr<bool> Publish(const std::string& id) {
    std::filesystem::path final_path = store_->PathOf(id);
    std::string shard = final_path.parent_path().string();
    RETURN_IF_ERROR(EnsureDir(shard, final_path.parent_path().parent_path().string()));
    if (::link(temp_path_.c_str(), final_path.c_str()) == 0) {
      RETURN_IF_ERROR(SyncDir(shard));
      return false;
    }
    if (errno == EEXIST) return true;
    if (errno != EPERM && errno != EOPNOTSUPP && errno != ENOSYS) {
      return StorageError(errno, absl::StrCat("link ", temp_path_, " -> ", final_path.string()));
    }
    // File systems without hard links: rename, accepting that two identical concurrent commits
    // may both report a fresh blob (the content is the same either way).
    if (::access(final_path.c_str(), F_OK) == 0) return true;
    if (::rename(temp_path_.c_str(), final_path.c_str()) != 0) {
      return StorageError(errno, absl::StrCat("rename ", temp_path_, " -> ", final_path.string()));
    }
    temp_renamed_ = true;
    RETURN_IF_ERROR(SyncDir(shard));
    return false;
  }

  // Constant after construction.
  const FileBlobStore* const store_;
  const std::string temp_path_;
  const int64_t max_bytes_;

  int fd_;  // -1 once committed or aborted
  Sha256 hasher_;
  int64_t size_ = 0;
  bool committed_ = false;
  bool temp_renamed_ = false;  // the temp file became the blob (no-hard-link fallback)
};

class FileBlobReader : public BlobReader {
 public:
  FileBlobReader(int fd, int64_t size, std::string path)
      : fd_(fd), size_(size), path_(std::move(path)) {}
  ~FileBlobReader() override { ::close(fd_); }

  int64_t size() const override { return size_; }

  absl::StatusOr<std::string> Read(int64_t offset, int64_t max_bytes) override {
    if (offset < 0 || offset > size_) {
      return absl::OutOfRangeError(
          absl::StrCat("offset ", offset, " is outside the blob (", size_, " bytes)"));
    }
    if (max_bytes <= 0) return absl::InvalidArgumentError("max_bytes must be > 0");
    std::string out(static_cast<size_t>(std::min(max_bytes, size_ - offset)), '\0');
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n =
          ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return StorageError(errno, absl::StrCat("read ", path_));
      if (n == 0) return absl::DataLossError(absl::StrCat(path_, " is shorter than recorded"));
      done += static_cast<size_t>(n);
    }
    return out;
  }

 private:
  // Constant after construction.
  const int fd_;
  const int64_t size_;
  const std::string path_;
};

bool IsLowerHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

}  // namespace

absl::Status ValidateBlobId(absl::string_view id) {
  bool ok = id.size() == kBlobIdPrefix.size() + kHexLength && id.substr(0, 7) == kBlobIdPrefix &&
            std::all_of(id.begin() + kBlobIdPrefix.size(), id.end(), IsLowerHex);
  if (ok) return absl::OkStatus();
  std::string shown(id.substr(0, 80));
  return absl::InvalidArgumentError(absl::StrCat(
      "blob id '", shown, "' is invalid: expected sha256: followed by 64 lowercase hex digits"));
}

std::string BlobIdFromHex(absl::string_view hex) { return absl::StrCat(kBlobIdPrefix, hex); }

absl::StatusOr<std::unique_ptr<FileBlobStore>> FileBlobStore::Create(FileBlobStoreOptions options) {
  if (options.root.empty()) return absl::InvalidArgumentError("blob store root is empty");
  if (options.default_max_bytes <= 0) {
    return absl::InvalidArgumentError("default_max_bytes must be > 0");
  }
  std::filesystem::path root(options.root);
  std::error_code ec;
  std::filesystem::create_directories(root / "sha256", ec);
  if (!ec) std::filesystem::create_directories(root / "tmp", ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("blob store ", options.root, ": cannot create: ", ec.message()));
  }
  // Temp files are only ever written by live writers of this store; any here are from a crash.
  for (const auto& entry : std::filesystem::directory_iterator(root / "tmp", ec)) {
    std::filesystem::remove(entry.path(), ec);
  }
  // Make the directories themselves durable, so a committed blob's path survives a crash.
  RETURN_IF_ERROR(SyncDir(root.string()));
  RETURN_IF_ERROR(SyncDir((root / "sha256").string()));
  return std::unique_ptr<FileBlobStore>(new FileBlobStore(std::move(options)));
}

std::string FileBlobStore::PathOf(absl::string_view blob_id) const {
  absl::string_view hex = blob_id.substr(kBlobIdPrefix.size());
  return (std::filesystem::path(options_.root) / "sha256" / std::string(hex.substr(0, 2)) /
          std::string(hex))
      .string();
}

std::string FileBlobStore::TempDir() const {
  return (std::filesystem::path(options_.root) / "tmp").string();
}

absl::StatusOr<std::unique_ptr<BlobWriter>> FileBlobStore::NewWriter(int64_t max_bytes) {
  std::string temp = (std::filesystem::path(TempDir()) / "blob-XXXXXX").string();
  int fd = ::mkostemp(temp.data(), O_CLOEXEC);
  if (fd < 0) return StorageError(errno, absl::StrCat("create temp file in ", TempDir()));
  int64_t limit = max_bytes > 0 ? max_bytes : options_.default_max_bytes;
  return std::make_unique<FileBlobWriter>(this, fd, std::move(temp), limit);
}

absl::StatusOr<std::unique_ptr<BlobReader>> FileBlobStore::Open(absl::string_view blob_id) {
  RETURN_IF_ERROR(ValidateBlobId(blob_id));
  std::string path = PathOf(blob_id);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return absl::NotFoundError(absl::StrCat("blob ", blob_id));
  if (fd < 0) return StorageError(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return StorageError(err, absl::StrCat("stat ", path));
  }
  return std::make_unique<FileBlobReader>(fd, static_cast<int64_t>(st.st_size), std::move(path));
}

absl::StatusOr<bool> FileBlobStore::Has(absl::string_view blob_id) {
  absl::StatusOr<int64_t> size = Size(blob_id);
  if (absl::IsNotFound(size.status())) return false;
  if (!size.ok()) return size.status();
  return true;
}

absl::StatusOr<int64_t> FileBlobStore::Size(absl::string_view blob_id) {
  RETURN_IF_ERROR(ValidateBlobId(blob_id));
  std::string path = PathOf(blob_id);
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return static_cast<int64_t>(st.st_size);
  if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("blob ", blob_id));
  return StorageError(errno, absl::StrCat("stat ", path));
}

absl::Status FileBlobStore::Delete(absl::string_view blob_id) {
  RETURN_IF_ERROR(ValidateBlobId(blob_id));
  std::string path = PathOf(blob_id);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("blob ", blob_id));
    return StorageError(errno, absl::StrCat("unlink ", path));
  }
  return SyncDir(std::filesystem::path(path).parent_path().string());
}

absl::StatusOr<std::vector<StoredBlobFile>> FileBlobStore::List() {
  std::vector<StoredBlobFile> out;
  const std::filesystem::path root = std::filesystem::path(options_.root) / "sha256";
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(root, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string id = absl::StrCat("sha256:", it->path().filename().string());
    if (!ValidateBlobId(id).ok() || PathOf(id) != it->path().string()) continue;  // not ours
    struct stat st;
    if (::stat(it->path().c_str(), &st) != 0) continue;  // deleted meanwhile
    out.push_back(
        {id, static_cast<int64_t>(st.st_size),
         absl::FromUnixSeconds(st.st_mtim.tv_sec) + absl::Nanoseconds(st.st_mtim.tv_nsec)});
  }
  if (ec) return StorageError(ec.value(), absl::StrCat("listing ", root.string()));
  return out;
}

}  // namespace prunesvc::server

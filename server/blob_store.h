// Content-addressed blobs on disk (datasets, projectors, artifacts): a blob's id is
// "sha256:<64 lowercase hex>" of its bytes, and it lives at ROOT/sha256/<hex[0:2]>/<hex>.
//
// Invariants:
// - A file at a blob's path is complete and matches its id: writers stream into ROOT/tmp/,
//   hashing as they go, fsync, and only then link the file into place (link(2) is atomic and
//   never replaces an existing file, so of two identical concurrent writes exactly one reports
//   already_present = false). A crash leaves at most a temp file, removed by the next Create().
// - Ids are validated strictly before any path is built from them ("sha256:" + 64 of [0-9a-f]);
//   anything else is INVALID_ARGUMENT, so no id can name a path outside ROOT.
// - Committed blobs are immutable (mode 0444) until Delete.
//
// One FileBlobStore per root at a time (Create clears ROOT/tmp; the scheduler's state-dir lock
// keeps a second process out).
//
// Thread-safety: BlobStore is thread-safe. A BlobWriter or BlobReader is thread-compatible
// (one thread at a time); any number of them may be open at once, also on the same blob.
// BlobStore is an interface so tests can wrap it to inject faults; FileBlobStore is the real one.
#ifndef PRUNESVC_SERVER_BLOB_STORE_H_
#define PRUNESVC_SERVER_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace prunesvc::server {

// A failed file operation on the state dir as a status: ENOSPC/EDQUOT → RESOURCE_EXHAUSTED and
// EROFS → FAILED_PRECONDITION, each saying what to do; ENOENT → NOT_FOUND; else INTERNAL.
absl::Status StorageError(int err, absl::string_view what);

inline constexpr absl::string_view kBlobIdPrefix = "sha256:";

// OK iff `id` is "sha256:" followed by exactly 64 lowercase hex digits.
absl::Status ValidateBlobId(absl::string_view id);
// "sha256:" + hex (hex as produced by DigestHex: 64 lowercase digits).
std::string BlobIdFromHex(absl::string_view hex);

struct BlobCommitResult {
  std::string blob_id;
  int64_t size_bytes = 0;
  bool already_present = false;  // an identical blob was stored before; this copy was dropped
};

// Streams one blob into the store. Destroying a writer that was not committed aborts it.
class BlobWriter {
 public:
  virtual ~BlobWriter() = default;
  // Writes a chunk. RESOURCE_EXHAUSTED (naming the limit) once the blob would exceed the
  // writer's max_bytes; after any error the writer is aborted and every later call fails.
  virtual absl::Status Append(absl::string_view chunk) = 0;
  // Makes the blob durable under its content id. With `expected_id`, a different hash is
  // INVALID_ARGUMENT (an invalid expected_id too) and nothing is stored.
  virtual absl::StatusOr<BlobCommitResult> Commit(
      std::optional<absl::string_view> expected_id = std::nullopt) = 0;
  // Drops what was written (removes the temp file). Idempotent.
  virtual void Abort() = 0;
  virtual int64_t bytes_written() const = 0;
};

// Reads one committed blob. Stays readable even if the blob is deleted meanwhile.
class BlobReader {
 public:
  virtual ~BlobReader() = default;
  virtual int64_t size() const = 0;
  // Up to `max_bytes` (> 0) from `offset`; empty at the end. OUT_OF_RANGE when offset < 0 or
  // offset > size().
  virtual absl::StatusOr<std::string> Read(int64_t offset, int64_t max_bytes) = 0;
};

// A committed blob file as List() sees it.
struct StoredBlobFile {
  std::string blob_id;
  int64_t size_bytes = 0;
  absl::Time modify_time;  // when it was committed
};

class BlobStore {
 public:
  virtual ~BlobStore() = default;
  // A writer limited to `max_bytes` (<= 0: the store's default limit).
  virtual absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter(int64_t max_bytes = 0) = 0;
  // NOT_FOUND when absent.
  virtual absl::StatusOr<std::unique_ptr<BlobReader>> Open(absl::string_view blob_id) = 0;
  virtual absl::StatusOr<bool> Has(absl::string_view blob_id) = 0;
  // NOT_FOUND when absent.
  virtual absl::StatusOr<int64_t> Size(absl::string_view blob_id) = 0;
  // NOT_FOUND when absent. Open readers keep reading the old file.
  virtual absl::Status Delete(absl::string_view blob_id) = 0;
  // Every committed blob (not temp files), in no particular order (the storage sweep).
  virtual absl::StatusOr<std::vector<StoredBlobFile>> List() = 0;
};

struct FileBlobStoreOptions {
  // Blobs live under root/sha256/, temp files under root/tmp/ (same file system, for link(2)).
  // Typically STATE_DIR/blobs; created if missing.
  std::string root;
  // Limit for writers that do not set their own (datasets are ≤ 256 MiB by default).
  int64_t default_max_bytes = int64_t{16} << 30;
};

class FileBlobStore : public BlobStore {
 public:
  // Creates the directories and removes temp files left by an earlier crash.
  static absl::StatusOr<std::unique_ptr<FileBlobStore>> Create(FileBlobStoreOptions options);

  absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter(int64_t max_bytes = 0) override;
  absl::StatusOr<std::unique_ptr<BlobReader>> Open(absl::string_view blob_id) override;
  absl::StatusOr<bool> Has(absl::string_view blob_id) override;
  absl::StatusOr<int64_t> Size(absl::string_view blob_id) override;
  absl::Status Delete(absl::string_view blob_id) override;
  absl::StatusOr<std::vector<StoredBlobFile>> List() override;

  // Where a (valid) blob id lives. For diagnostics and tests.
  std::string PathOf(absl::string_view blob_id) const;
  std::string TempDir() const;

 private:
  explicit FileBlobStore(FileBlobStoreOptions options) : options_(std::move(options)) {}

  // Constant after construction.
  const FileBlobStoreOptions options_;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_BLOB_STORE_H_

// How a worker moves blobs (datasets, projectors, artifacts) to and from the scheduler's blob
// store: the BlobClient seam (gRPC WorkerRegistry FetchBlob/PutBlob in production; tests inject
// an in-memory one or a fault), and BlobCache, the worker's local disk cache of fetched blobs
// keyed by their id, so steps of one job (and later jobs on the same dataset) fetch once.
//
// Ids are "sha256:<64 lowercase hex>". Projector and artifact ids are the sha256 of their bytes
// (verified on fetch and computed on put); a dataset id is the sample set's content hash
// (SampleSet::sha256, independent of how its tar was packed), verified by the caller after
// loading it.
//
// Thread-safety: BlobClient implementations and BlobCache are thread-safe.
#ifndef PRUNESVC_WORKER_BLOB_CLIENT_H_
#define PRUNESVC_WORKER_BLOB_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace prunesvc::worker {

class BlobClient {
 public:
  virtual ~BlobClient() = default;
  // Writes blob `id` to `path` (created or truncated). NOT_FOUND when the store has no such blob.
  virtual absl::Status Fetch(const std::string& id, const std::string& path) = 0;
  // Uploads the file under its content address (sha256 of the bytes), which it returns.
  virtual absl::StatusOr<std::string> Put(const std::string& path) = 0;
};

// WorkerRegistry.FetchBlob / PutBlob on `channel`, each call with a deadline proportional to the
// size (at least `min_deadline_seconds`).
// `decorate` (may be empty) adds the worker's credentials to each call's context.
std::unique_ptr<BlobClient> NewGrpcBlobClient(
    std::shared_ptr<grpc::Channel> channel,
    std::function<void(grpc::ClientContext&)> decorate = nullptr, int min_deadline_seconds = 60);

// "sha256:" + the hex digest of the file's bytes.
absl::StatusOr<std::string> FileContentId(const std::string& path);

class BlobCache {
 public:
  // `dir` is created if missing; `client` is not owned and may be null (then only cached blobs
  // are available).
  static absl::StatusOr<std::unique_ptr<BlobCache>> Create(const std::string& dir,
                                                           BlobClient* client);

  // The local path of blob `id`, fetched first if needed. `verify_bytes`: the file's sha256 must
  // equal the id (projectors, artifacts); else the caller verifies the content (datasets).
  absl::StatusOr<std::string> Get(const std::string& id, bool verify_bytes);
  // Uploads a local file (see BlobClient::Put).
  absl::StatusOr<std::string> Put(const std::string& path);
  const std::string& dir() const { return dir_; }

 private:
  BlobCache(std::string dir, BlobClient* client) : dir_(std::move(dir)), client_(client) {}

  // Constant after construction.
  const std::string dir_;
  BlobClient* const client_;

  absl::Mutex mu_;  // one fetch at a time (steps of a worker run one at a time anyway)
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_BLOB_CLIENT_H_

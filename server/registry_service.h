// WorkerRegistry (proto/prune/v1/worker.proto), served by the scheduler to its workers:
// registration and heartbeats (the WorkerTable), and the blobs workers read and write.
//
// Blobs: FetchBlob accepts a dataset id (resolved through the blob index to the stored tar, its
// content_id) or any stored blob's own content id (projectors, artifacts); the first message
// carries total_size, data follows in <= 1 MiB chunks from `offset`. PutBlob takes blob_id and
// size_bytes on the first message, then data; the bytes must hash to blob_id (else
// INVALID_ARGUMENT, nothing stored) and add up to size_bytes. A stored blob is indexed for the
// tenant "" as an artifact when it is a tar (ustar magic at byte 257: Finalize's artifact), else
// as a projector (TrainProjector's weights); already_present says the bytes were stored before.
//
// Authentication (when the Authenticator has a worker token; see worker.proto): every call needs
// the worker token; heartbeats and blob calls name the worker by its session; FetchBlob serves
// only what a step leased to that worker references (BlobAccess, the dispatcher), resolving a
// dataset id under the tenant of that step's job; PutBlob needs a leased step. Without a worker
// token every worker may do everything, as tenant "" (the loopback demo).
//
// Threading: callback-API reactors; SQLite and blob commits (fsync) run on the ThreadPool.
// Thread-safe; the dependencies must outlive the service.
#ifndef PRUNESVC_SERVER_REGISTRY_SERVICE_H_
#define PRUNESVC_SERVER_REGISTRY_SERVICE_H_

#include <atomic>
#include <string>

#include "prune/v1/worker.grpc.pb.h"
#include "server/auth.h"
#include "server/blob_store.h"
#include "server/job_store.h"
#include "server/metrics.h"
#include "server/thread_pool.h"
#include "server/worker_client.h"
#include "server/worker_table.h"

namespace prunesvc::server {

// Which blobs a worker may move: the dispatcher knows the steps it leased. Thread-safe.
class BlobAccess {
 public:
  virtual ~BlobAccess() = default;
  // The tenant of the job whose step, leased to `worker_id`, references `blob_id`;
  // PERMISSION_DENIED when no such step runs.
  virtual absl::StatusOr<std::string> FetchTenant(const std::string& worker_id,
                                                  const std::string& blob_id) const = 0;
  // OK when a step is leased to `worker_id` (it may store its projector or artifact).
  virtual absl::Status MayPut(const std::string& worker_id) const = 0;
};

class RegistryService final : public ::prune::v1::WorkerRegistry::CallbackService {
 public:
  // `auth` nullptr = no worker authentication.
  RegistryService(WorkerTable* table, SchedulerMetrics* metrics, JobStore* store, BlobStore* blobs,
                  ThreadPool* pool, const Authenticator* auth = nullptr)
      : table_(table), metrics_(metrics), store_(store), blobs_(blobs), pool_(pool), auth_(auth) {}

  // Who may fetch and put blobs (set once the dispatcher exists; until then, with worker
  // authentication on, no blob moves). `access` must outlive the service.
  void SetBlobAccess(const BlobAccess* access) { access_.store(access); }
  // Who dials a worker that registers (WorkerConnector::Dial), set once the connector exists;
  // until then nobody does. `connector` must outlive the service.
  void SetConnector(WorkerConnector* connector) { connector_.store(connector); }

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx,
                                           const ::prune::v1::RegisterWorkerRequest* req,
                                           ::prune::v1::RegisterWorkerResponse* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const ::prune::v1::HeartbeatRequest* req,
                                      ::prune::v1::HeartbeatResponse* resp) override;
  grpc::ServerWriteReactor<::prune::v1::FetchBlobResponse>* FetchBlob(
      grpc::CallbackServerContext* ctx, const ::prune::v1::FetchBlobRequest* req) override;
  grpc::ServerReadReactor<::prune::v1::PutBlobRequest>* PutBlob(
      grpc::CallbackServerContext* ctx, ::prune::v1::PutBlobResponse* resp) override;

 private:
  WorkerTable* const table_;
  SchedulerMetrics* const metrics_;
  JobStore* const store_;
  BlobStore* const blobs_;
  ThreadPool* const pool_;
  const Authenticator* const auth_;
  std::atomic<const BlobAccess*> access_{nullptr};
  std::atomic<WorkerConnector*> connector_{nullptr};

  bool secured() const { return auth_ != nullptr && auth_->workers_need_token(); }
  // The worker token (when secured), counted when refused.
  absl::Status CheckWorkerToken(const grpc::ServerContextBase& ctx) const;
  // The worker id the call's session names (secured only).
  absl::StatusOr<std::string> SessionWorker(const grpc::ServerContextBase& ctx) const;
  // For FetchBlob: the tenant whose index resolves `blob_id` ("" when not secured).
  absl::StatusOr<std::string> AuthorizeFetch(const grpc::ServerContextBase& ctx,
                                             const std::string& blob_id) const;
  absl::Status AuthorizePut(const grpc::ServerContextBase& ctx) const;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_REGISTRY_SERVICE_H_

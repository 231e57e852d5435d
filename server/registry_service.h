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
// Threading: callback-API reactors; SQLite and blob commits (fsync) run on the ThreadPool.
// Thread-safe; the dependencies must outlive the service.
#ifndef PRUNESVC_SERVER_REGISTRY_SERVICE_H_
#define PRUNESVC_SERVER_REGISTRY_SERVICE_H_

#include "prune/v1/worker.grpc.pb.h"
#include "server/blob_store.h"
#include "server/job_store.h"
#include "server/metrics.h"
#include "server/thread_pool.h"
#include "server/worker_table.h"

namespace prunesvc::server {

class RegistryService final : public ::prune::v1::WorkerRegistry::CallbackService {
 public:
  RegistryService(WorkerTable* table, SchedulerMetrics* metrics, JobStore* store, BlobStore* blobs,
                  ThreadPool* pool)
      : table_(table), metrics_(metrics), store_(store), blobs_(blobs), pool_(pool) {}

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
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_REGISTRY_SERVICE_H_

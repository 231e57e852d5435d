// The scheduler's gRPC services. WorkerRegistry is backed by the WorkerTable; PruningService
// answers ListWorkers from it, the job RPCs arrive with the search driver (UNIMPLEMENTED with a
// message until then). Both are callback-API services and never block a reactor thread.
#ifndef PRUNESVC_SERVER_SERVICES_H_
#define PRUNESVC_SERVER_SERVICES_H_

#include "prune/v1/pruning_service.grpc.pb.h"
#include "prune/v1/worker.grpc.pb.h"
#include "server/metrics.h"
#include "server/worker_table.h"

namespace prunesvc::server {

class RegistryService final : public prune::v1::WorkerRegistry::CallbackService {
 public:
  RegistryService(WorkerTable* table, SchedulerMetrics* metrics)
      : table_(table), metrics_(metrics) {}

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx,
                                           const prune::v1::RegisterWorkerRequest* req,
                                           prune::v1::RegisterWorkerResponse* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const prune::v1::HeartbeatRequest* req,
                                      prune::v1::HeartbeatResponse* resp) override;
  grpc::ServerWriteReactor<prune::v1::FetchBlobResponse>* FetchBlob(
      grpc::CallbackServerContext* ctx, const prune::v1::FetchBlobRequest* req) override;
  grpc::ServerReadReactor<prune::v1::PutBlobRequest>* PutBlob(
      grpc::CallbackServerContext* ctx, prune::v1::PutBlobResponse* resp) override;

 private:
  WorkerTable* const table_;
  SchedulerMetrics* const metrics_;
};

class PruningServiceImpl final : public prune::v1::PruningService::CallbackService {
 public:
  explicit PruningServiceImpl(WorkerTable* table) : table_(table) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const prune::v1::SubmitJobRequest* req,
                                      prune::v1::SubmitJobResponse* resp) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const prune::v1::GetJobRequest* req,
                                   prune::v1::Job* resp) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const prune::v1::ListJobsRequest* req,
                                     prune::v1::ListJobsResponse* resp) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const prune::v1::CancelJobRequest* req,
                                      prune::v1::Job* resp) override;
  grpc::ServerWriteReactor<prune::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* ctx, const prune::v1::WatchJobRequest* req) override;
  grpc::ServerReadReactor<prune::v1::UploadDatasetRequest>* UploadDataset(
      grpc::CallbackServerContext* ctx, prune::v1::UploadDatasetResponse* resp) override;
  grpc::ServerWriteReactor<prune::v1::FetchArtifactResponse>* FetchArtifact(
      grpc::CallbackServerContext* ctx, const prune::v1::FetchArtifactRequest* req) override;
  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx,
                                        const prune::v1::ListWorkersRequest* req,
                                        prune::v1::ListWorkersResponse* resp) override;

 private:
  WorkerTable* const table_;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_SERVICES_H_

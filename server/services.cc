#include "server/services.h"

#include <string>
#include <vector>

#include "common/callback_util.h"
#include "common/grpc_status.h"
#include "common/logging.h"

namespace prunesvc::server {
grpc::ServerUnaryReactor* RegistryService::RegisterWorker(
    grpc::CallbackServerContext* ctx, const prune::v1::RegisterWorkerRequest* req,
    prune::v1::RegisterWorkerResponse* resp) {
  absl::StatusOr<std::string> id = table_->Register(req->info());
  if (!id.ok()) return FinishUnary(ctx, ToGrpcStatus(id.status()));
  metrics_->worker_registrations->Increment();
  spdlog::info("worker registered worker_id={} address={} device={} pid={} metrics_port={}", *id,
               req->info().address(), req->info().device(), req->info().pid(),
               req->info().metrics_port());
  resp->set_worker_id(*id);
  resp->set_heartbeat_interval_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(table_->options().heartbeat_interval)));
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* RegistryService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                     const prune::v1::HeartbeatRequest* req,
                                                     prune::v1::HeartbeatResponse* resp) {
  std::vector<std::string> models(req->cached_models().begin(), req->cached_models().end());
  absl::Status s = table_->Heartbeat(req->worker_id(), req->state(), models);
  if (absl::IsNotFound(s)) {
    resp->set_reregister(true);
    return FinishUnary(ctx, grpc::Status::OK);
  }
  return FinishUnary(ctx, ToGrpcStatus(s));
}

grpc::ServerWriteReactor<prune::v1::FetchBlobResponse>* RegistryService::FetchBlob(
    grpc::CallbackServerContext*, const prune::v1::FetchBlobRequest*) {
  return new FinishedWriteReactor<prune::v1::FetchBlobResponse>(NotImplemented("FetchBlob"));
}

grpc::ServerReadReactor<prune::v1::PutBlobRequest>* RegistryService::PutBlob(
    grpc::CallbackServerContext*, prune::v1::PutBlobResponse*) {
  return new FinishedReadReactor<prune::v1::PutBlobRequest>(NotImplemented("PutBlob"));
}

grpc::ServerUnaryReactor* PruningServiceImpl::SubmitJob(grpc::CallbackServerContext* ctx,
                                                        const prune::v1::SubmitJobRequest*,
                                                        prune::v1::SubmitJobResponse*) {
  return FinishUnary(ctx, NotImplemented("SubmitJob"));
}

grpc::ServerUnaryReactor* PruningServiceImpl::GetJob(grpc::CallbackServerContext* ctx,
                                                     const prune::v1::GetJobRequest*,
                                                     prune::v1::Job*) {
  return FinishUnary(ctx, NotImplemented("GetJob"));
}

grpc::ServerUnaryReactor* PruningServiceImpl::ListJobs(grpc::CallbackServerContext* ctx,
                                                       const prune::v1::ListJobsRequest*,
                                                       prune::v1::ListJobsResponse*) {
  return FinishUnary(ctx, NotImplemented("ListJobs"));
}

grpc::ServerUnaryReactor* PruningServiceImpl::CancelJob(grpc::CallbackServerContext* ctx,
                                                        const prune::v1::CancelJobRequest*,
                                                        prune::v1::Job*) {
  return FinishUnary(ctx, NotImplemented("CancelJob"));
}

grpc::ServerWriteReactor<prune::v1::JobEvent>* PruningServiceImpl::WatchJob(
    grpc::CallbackServerContext*, const prune::v1::WatchJobRequest*) {
  return new FinishedWriteReactor<prune::v1::JobEvent>(NotImplemented("WatchJob"));
}

grpc::ServerReadReactor<prune::v1::UploadDatasetRequest>* PruningServiceImpl::UploadDataset(
    grpc::CallbackServerContext*, prune::v1::UploadDatasetResponse*) {
  return new FinishedReadReactor<prune::v1::UploadDatasetRequest>(NotImplemented("UploadDataset"));
}

grpc::ServerWriteReactor<prune::v1::FetchArtifactResponse>* PruningServiceImpl::FetchArtifact(
    grpc::CallbackServerContext*, const prune::v1::FetchArtifactRequest*) {
  return new FinishedWriteReactor<prune::v1::FetchArtifactResponse>(
      NotImplemented("FetchArtifact"));
}

grpc::ServerUnaryReactor* PruningServiceImpl::ListWorkers(grpc::CallbackServerContext* ctx,
                                                          const prune::v1::ListWorkersRequest*,
                                                          prune::v1::ListWorkersResponse* resp) {
  for (auto& w : table_->List()) *resp->add_workers() = std::move(w);
  return FinishUnary(ctx, grpc::Status::OK);
}

}  // namespace prunesvc::server

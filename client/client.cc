#include "client/client.h"

#include <string>
#include <vector>

#include "common/grpc_status.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace prunesvc::client {
namespace {

namespace pb = ::prune::v1;

void SetDeadline(grpc::ClientContext& ctx, absl::Duration d) {
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d));
}

// Finishes a server stream after `consume` ran over it; a consumer error cancels the call.
template <typename Reader>
absl::Status FinishStream(grpc::ClientContext& ctx, Reader& reader, absl::Status consumed) {
  if (!consumed.ok()) {
    ctx.TryCancel();
    (void)reader->Finish();
    return consumed;
  }
  return FromGrpcStatus(reader->Finish());
}

}  // namespace

std::string ServingStatusName(ServingStatus s) {
  switch (s) {
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case ServingStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

Client::Client(const std::string& address, ClientOptions options)
    : address_(address), options_(options) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (options_.tls_enabled || !options_.tls.plaintext()) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> tls =
        options_.tls.plaintext() ? grpc::SslCredentials(grpc::SslCredentialsOptions())
                                 : MakeChannelCredentials(options_.tls);
    if (tls.ok()) {
      creds = *tls;
    } else {
      setup_ = tls.status();
    }
  }
  channel_ = grpc::CreateChannel(address, creds);
  stub_ = pb::PruningService::NewStub(channel_);
}

void Client::Prepare(grpc::ClientContext& ctx, absl::Duration deadline) const {
  SetDeadline(ctx, deadline);
  if (!options_.token.empty()) ctx.AddMetadata("authorization", "Bearer " + options_.token);
}

absl::StatusOr<ServingStatus> Client::Health(const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) return ServingStatus::kServiceUnknown;
  if (!s.ok()) return FromGrpcStatus(s);
  switch (resp.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return ServingStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING:
      return ServingStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return ServingStatus::kServiceUnknown;
    default:
      return ServingStatus::kUnknown;
  }
}

absl::StatusOr<std::vector<pb::WorkerInfo>> Client::ListWorkers() {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::ListWorkersResponse resp;
  grpc::Status s = stub_->ListWorkers(&ctx, pb::ListWorkersRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return std::vector<pb::WorkerInfo>(resp.workers().begin(), resp.workers().end());
}

absl::StatusOr<pb::SubmitJobResponse> Client::SubmitJob(const pb::JobSpec& spec) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  pb::SubmitJobResponse resp;
  grpc::Status s = stub_->SubmitJob(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<pb::Job> Client::GetJob(const std::string& job_id) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::GetJobRequest req;
  req.set_job_id(job_id);
  pb::Job job;
  grpc::Status s = stub_->GetJob(&ctx, req, &job);
  if (!s.ok()) return FromGrpcStatus(s);
  return job;
}

absl::StatusOr<pb::ListJobsResponse> Client::ListJobs(const pb::ListJobsRequest& request) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::ListJobsResponse resp;
  grpc::Status s = stub_->ListJobs(&ctx, request, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<pb::Job> Client::CancelJob(const std::string& job_id, const std::string& reason) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::CancelJobRequest req;
  req.set_job_id(job_id);
  req.set_reason(reason);
  pb::Job job;
  grpc::Status s = stub_->CancelJob(&ctx, req, &job);
  if (!s.ok()) return FromGrpcStatus(s);
  return job;
}

absl::Status Client::DeleteJob(const std::string& job_id) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::DeleteJobRequest req;
  req.set_job_id(job_id);
  pb::DeleteJobResponse resp;
  return FromGrpcStatus(stub_->DeleteJob(&ctx, req, &resp));
}

absl::StatusOr<std::vector<pb::Dataset>> Client::ListDatasets() {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::ListDatasetsResponse resp;
  grpc::Status s = stub_->ListDatasets(&ctx, pb::ListDatasetsRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return std::vector<pb::Dataset>(resp.datasets().begin(), resp.datasets().end());
}

absl::Status Client::DeleteDataset(const std::string& dataset_id) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::DeleteDatasetRequest req;
  req.set_dataset_id(dataset_id);
  pb::DeleteDatasetResponse resp;
  return FromGrpcStatus(stub_->DeleteDataset(&ctx, req, &resp));
}

absl::StatusOr<std::vector<pb::Model>> Client::ListModels() {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::ListModelsResponse resp;
  grpc::Status s = stub_->ListModels(&ctx, pb::ListModelsRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return std::vector<pb::Model>(resp.models().begin(), resp.models().end());
}

absl::StatusOr<pb::DeleteModelResponse> Client::DeleteModel(const std::string& model_id) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.deadline);
  pb::DeleteModelRequest req;
  req.set_model_id(model_id);
  pb::DeleteModelResponse resp;
  grpc::Status s = stub_->DeleteModel(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::Status Client::WatchJob(const std::string& job_id, int64_t from_sequence,
                              const std::function<absl::Status(const pb::JobEvent&)>& on_event) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.stream_deadline);
  pb::WatchJobRequest req;
  req.set_job_id(job_id);
  req.set_from_sequence(from_sequence);
  auto reader = stub_->WatchJob(&ctx, req);
  pb::JobEvent event;
  absl::Status consumed;
  while (consumed.ok() && reader->Read(&event)) consumed = on_event(event);
  return FinishStream(ctx, reader, consumed);
}

absl::StatusOr<pb::UploadDatasetResponse> Client::UploadDataset(const pb::DatasetInfo& info,
                                                                const ChunkSource& next) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.stream_deadline);
  pb::UploadDatasetResponse resp;
  auto writer = stub_->UploadDataset(&ctx, &resp);
  pb::UploadDatasetRequest req;
  *req.mutable_info() = info;
  bool open = writer->Write(req);
  while (open) {
    absl::StatusOr<std::string> chunk = next();
    if (!chunk.ok()) {
      ctx.TryCancel();
      (void)writer->Finish();
      return chunk.status();
    }
    if (chunk->empty()) break;
    req.set_data(std::move(*chunk));
    open = writer->Write(req);
  }
  // A failed Write means the server ended the call; Finish returns its status.
  (void)writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::StatusOr<pb::UploadModelResponse> Client::UploadModel(const pb::ModelManifestInfo& manifest,
                                                            const ModelDataSource& next) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.stream_deadline);
  pb::UploadModelResponse resp;
  auto writer = stub_->UploadModel(&ctx, &resp);
  pb::UploadModelRequest req;
  *req.mutable_manifest() = manifest;
  bool open = writer->Write(req);
  while (open && next) {
    absl::StatusOr<std::optional<pb::ModelFileData>> msg = next();
    if (!msg.ok()) {
      ctx.TryCancel();
      (void)writer->Finish();
      return msg.status();
    }
    if (!msg->has_value()) break;
    *req.mutable_data() = std::move(**msg);
    open = writer->Write(req);
  }
  // A failed Write means the server ended the call; Finish returns its status.
  (void)writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

absl::Status Client::FetchArtifact(const std::string& artifact_id, int64_t offset,
                                   const ArtifactSink& sink) {
  grpc::ClientContext ctx;
  Prepare(ctx, options_.stream_deadline);
  pb::FetchArtifactRequest req;
  req.set_artifact_id(artifact_id);
  req.set_offset(offset);
  auto reader = stub_->FetchArtifact(&ctx, req);
  pb::FetchArtifactResponse msg;
  absl::Status consumed;
  while (consumed.ok() && reader->Read(&msg)) {
    if (msg.has_info()) {
      consumed = sink.on_info(msg.info());
    } else if (msg.has_trailer()) {
      consumed = sink.on_trailer(msg.trailer());
    } else {
      consumed = sink.on_data(msg.data());
    }
  }
  return FinishStream(ctx, reader, consumed);
}

}  // namespace prunesvc::client

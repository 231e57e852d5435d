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

void SetDeadline(grpc::ClientContext& ctx, absl::Duration d) {
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d));
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
  channel_ = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

absl::StatusOr<ServingStatus> Client::Health(const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.deadline);
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

absl::StatusOr<std::vector<prune::v1::WorkerInfo>> Client::ListWorkers() {
  auto stub = prune::v1::PruningService::NewStub(channel_);
  grpc::ClientContext ctx;
  SetDeadline(ctx, options_.deadline);
  prune::v1::ListWorkersResponse resp;
  grpc::Status s = stub->ListWorkers(&ctx, prune::v1::ListWorkersRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return std::vector<prune::v1::WorkerInfo>(resp.workers().begin(), resp.workers().end());
}

}  // namespace prunesvc::client

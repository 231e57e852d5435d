// C++ client library for prunesvc servers (scheduler and workers): channel setup and the calls
// prunectl makes. Every call has a deadline. Thread-compatible (one Client per thread, or share
// the channel).
#ifndef PRUNESVC_CLIENT_CLIENT_H_
#define PRUNESVC_CLIENT_CLIENT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "prune/v1/pruning_service.grpc.pb.h"

namespace prunesvc::client {

enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
std::string ServingStatusName(ServingStatus s);

struct ClientOptions {
  absl::Duration deadline = absl::Seconds(5);
};

class Client {
 public:
  explicit Client(const std::string& address, ClientOptions options = {});

  // grpc.health.v1.Health/Check for `service` ("" = the whole server). A server that does not
  // answer in time is UNAVAILABLE / DEADLINE_EXCEEDED.
  absl::StatusOr<ServingStatus> Health(const std::string& service = "");

  absl::StatusOr<std::vector<prune::v1::WorkerInfo>> ListWorkers();

  const std::string& address() const { return address_; }

 private:
  std::string address_;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
};

}  // namespace prunesvc::client

#endif  // PRUNESVC_CLIENT_CLIENT_H_

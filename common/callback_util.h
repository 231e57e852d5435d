// Reactors that finish a call at once with a fixed status: how the callback API answers RPCs a
// build does not implement yet (UNIMPLEMENTED with a message, instead of gRPC's bare default).
#ifndef PRUNESVC_COMMON_CALLBACK_UTIL_H_
#define PRUNESVC_COMMON_CALLBACK_UTIL_H_

#include <string>

#include "absl/strings/str_cat.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "grpcpp/support/status.h"

namespace prunesvc {

inline grpc::Status NotImplemented(const std::string& rpc) {
  return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                      absl::StrCat(rpc, " is not implemented by this build of prunesvc yet"));
}

// Finishes a unary callback RPC with `status` on the context's default reactor.
inline grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx,
                                             const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

template <typename Response>
class FinishedWriteReactor : public grpc::ServerWriteReactor<Response> {
 public:
  explicit FinishedWriteReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

template <typename Request>
class FinishedReadReactor : public grpc::ServerReadReactor<Request> {
 public:
  explicit FinishedReadReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_CALLBACK_UTIL_H_

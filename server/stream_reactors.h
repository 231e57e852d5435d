// Small callback-API building blocks shared by the scheduler's services.
//
// RunUnaryOnPool: runs a blocking unary body on the ThreadPool and finishes the call from there.
// ProducerWriteReactor: a server-streaming reactor that writes whatever a producer returns, one
// write in flight, each producer call made on the pool (they may read disk or SQLite); the call
// ends OK when the producer returns nullopt, or with the producer's error.
//
// Thread-safety: a reactor is driven by gRPC and the pool, one step at a time; it deletes itself
// in OnDone.
#ifndef PRUNESVC_SERVER_STREAM_REACTORS_H_
#define PRUNESVC_SERVER_STREAM_REACTORS_H_

#include <functional>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"
#include "common/grpc_status.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "server/thread_pool.h"

namespace prunesvc::server {

// `body` returns the response or an error; it runs on `pool` and must not touch `ctx`.
template <typename Resp, typename Body>
grpc::ServerUnaryReactor* RunUnaryOnPool(ThreadPool* pool, grpc::CallbackServerContext* ctx,
                                         Resp* resp, Body body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  pool->Schedule([reactor, resp, body = std::move(body)]() mutable {
    absl::StatusOr<Resp> r = body();
    if (r.ok()) *resp = *std::move(r);
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

template <typename Msg>
class ProducerWriteReactor final : public grpc::ServerWriteReactor<Msg> {
 public:
  // The next message, nullopt at the end, or the error that ends the call.
  using Producer = std::function<absl::StatusOr<std::optional<Msg>>()>;

  ProducerWriteReactor(ThreadPool* pool, Producer producer)
      : pool_(pool), producer_(std::move(producer)) {
    Schedule();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    Schedule();
  }
  void OnDone() override { delete this; }

 private:
  void Schedule() {
    pool_->Schedule([this] {
      absl::StatusOr<std::optional<Msg>> next = producer_();
      if (!next.ok()) {
        this->Finish(ToGrpcStatus(next.status()));
      } else if (!next->has_value()) {
        this->Finish(grpc::Status::OK);
      } else {
        msg_ = std::move(**next);
        this->StartWrite(&msg_);
      }
    });
  }

  ThreadPool* const pool_;
  Producer producer_;
  Msg msg_;  // the write in flight
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_STREAM_REACTORS_H_

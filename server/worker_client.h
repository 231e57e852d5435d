// The scheduler's transport to one worker's PruningWorker service (docs/architecture.md §11: the
// worker transport sits behind an interface): GrpcWorkerConnector in production, fakes and fault
// injectors in tests. Every call has a deadline and can be cancelled from another thread through
// a StepCancel.
//
// Error classes: a failed call's absl::Status carries the worker's StepError classification
// (IsRetryable): bad input is final; out of memory, a worker that died (UNAVAILABLE), timed out
// (DEADLINE_EXCEEDED) or failed internally may succeed on another worker.
//
// Thread-safety: WorkerClient and WorkerConnector implementations are thread-safe; StepCancel is
// thread-safe.
#ifndef PRUNESVC_SERVER_WORKER_CLIENT_H_
#define PRUNESVC_SERVER_WORKER_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/thread_cache.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "prune/v1/worker.pb.h"

namespace prunesvc::server {

// Cancels the call in flight (and any started later) once Cancel() was called.
class StepCancel {
 public:
  void Cancel();
  bool cancelled() const;
  // The transport registers its call's context while it runs (nullptr when done). Returns false
  // (and registers nothing) when already cancelled.
  bool Attach(grpc::ClientContext* ctx);
  void Detach();

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// True when the step may succeed if tried again elsewhere.
bool IsRetryable(const absl::Status& status);
// Marks `status` retryable (or not) for IsRetryable.
absl::Status WithRetryable(absl::Status status, bool retryable);

class WorkerClient {
 public:
  virtual ~WorkerClient() = default;
  virtual absl::StatusOr<::prune::v1::PrepareResponse> Prepare(
      const ::prune::v1::PrepareRequest& req, absl::Duration deadline, StepCancel* cancel) = 0;
  // `on_result` gets each policy's result as it arrives.
  virtual absl::Status EvaluatePolicies(
      const ::prune::v1::EvaluatePoliciesRequest& req, absl::Duration deadline, StepCancel* cancel,
      const std::function<void(const ::prune::v1::EvaluatePoliciesResponse&)>& on_result) = 0;
  // The same call, started without waiting for it: `on_result` gets each result as it arrives,
  // then `on_done` the call's status, once. `req` is copied. A scheduler fans a generation out to
  // its workers from one thread this way, with no thread per call (issue 20, figure 5). The
  // callbacks run on a transport thread and must not block; nothing runs after `on_done` returns.
  // This default runs EvaluatePolicies on a thread of `blocking_threads` (transports without an
  // asynchronous API: the tests' fakes); the gRPC client issues the call from the caller's thread
  // and is called back by gRPC.
  virtual void StartEvaluatePolicies(
      const ::prune::v1::EvaluatePoliciesRequest& req, absl::Duration deadline, StepCancel* cancel,
      std::function<void(const ::prune::v1::EvaluatePoliciesResponse&)> on_result,
      std::function<void(absl::Status)> on_done, ThreadCache& blocking_threads) {
    blocking_threads.Run([this, req, deadline, cancel, on_result = std::move(on_result),
                          on_done = std::move(on_done)] {
      on_done(EvaluatePolicies(req, deadline, cancel, on_result));
    });
  }
  virtual absl::StatusOr<::prune::v1::TrainProjectorResponse> TrainProjector(
      const ::prune::v1::TrainProjectorRequest& req, absl::Duration deadline,
      StepCancel* cancel) = 0;
  virtual absl::StatusOr<::prune::v1::FinalizeResponse> Finalize(
      const ::prune::v1::FinalizeRequest& req, absl::Duration deadline, StepCancel* cancel) = 0;
};

class WorkerConnector {
 public:
  virtual ~WorkerConnector() = default;
  // A client for the worker at `address` (host:port); cached per address by implementations.
  virtual std::shared_ptr<WorkerClient> Connect(const std::string& address) = 0;
  // A worker at `address` registered: start connecting to it now, in the background, so that
  // its first step does not pay for the connection. Never blocks; the default does nothing.
  virtual void Dial(const std::string& address) { (void)address; }
};

// Dials workers with `credentials` (nullptr = plain text): with TLS, the scheduler's client
// certificate, verifying each worker's certificate against the CA and — unless
// `worker_identity` names the one name every worker's certificate carries — against the host of
// the address the worker advertised.
std::unique_ptr<WorkerConnector> NewGrpcWorkerConnector(
    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
    std::string worker_identity = "");

// A worker granted to one step by the dispatcher (dispatcher.h) until released.
struct WorkerLease {
  std::string worker_id;
  std::string address;
  std::shared_ptr<WorkerClient> client;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_WORKER_CLIENT_H_

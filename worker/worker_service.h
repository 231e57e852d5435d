// The PruningWorker gRPC service (callback API): each step call is handed to a thread of its own
// (reused from a ThreadCache: creating one per step staggered a generation's dispatches) that runs
// it through the StepRunner (which serializes steps on the device), so no reactor thread ever
// blocks; EvaluatePolicies streams each policy's result as soon as it is scored, one write in
// flight at a time. A client's cancellation reaches the step through its stop function. Failed
// steps carry a serialized prune.v1.StepError in the status details (retryable or not).
//
// Thread-safe. The destructor cancels the steps still running and waits for their threads.
#ifndef PRUNESVC_WORKER_WORKER_SERVICE_H_
#define PRUNESVC_WORKER_WORKER_SERVICE_H_

#include <atomic>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/thread_cache.h"
#include "prune/v1/worker.grpc.pb.h"
#include "worker/step_executor.h"
#include "worker/step_runner.h"

namespace prunesvc::worker {

// grpc::Status of a failed step, with its StepError as binary error details. `draining`: the
// worker is shutting down, so a CANCELLED step (its own shutdown stopped it) is answered as a
// retryable UNAVAILABLE and the scheduler moves it to another worker.
grpc::Status StepStatus(absl::Status status, std::string_view phase, bool draining = false);

class PruningWorkerService final : public ::prune::v1::PruningWorker::CallbackService {
 public:
  // `runner` is not owned and must outlive the service.
  explicit PruningWorkerService(StepExecutor* runner) : runner_(runner) {
    threads_.Reserve(1);  // the first step does not wait for a thread's start
  }
  ~PruningWorkerService() override;

  // Shutdown has begun: steps stopped from now on are reported as retryable (StepStatus).
  void Drain() { draining_.store(true); }
  // New steps are refused with a retryable UNAVAILABLE (the scheduler runs them elsewhere);
  // steps already running go on.
  void StopAccepting() { refusing_.store(true); }
  // Waits up to `timeout` for the running steps to end; true when none is left.
  bool WaitIdle(absl::Duration timeout);

  grpc::ServerUnaryReactor* Prepare(grpc::CallbackServerContext* ctx,
                                    const ::prune::v1::PrepareRequest* req,
                                    ::prune::v1::PrepareResponse* resp) override;
  grpc::ServerWriteReactor<::prune::v1::EvaluatePoliciesResponse>* EvaluatePolicies(
      grpc::CallbackServerContext* ctx, const ::prune::v1::EvaluatePoliciesRequest* req) override;
  grpc::ServerUnaryReactor* TrainProjector(grpc::CallbackServerContext* ctx,
                                           const ::prune::v1::TrainProjectorRequest* req,
                                           ::prune::v1::TrainProjectorResponse* resp) override;
  grpc::ServerUnaryReactor* Finalize(grpc::CallbackServerContext* ctx,
                                     const ::prune::v1::FinalizeRequest* req,
                                     ::prune::v1::FinalizeResponse* resp) override;

 private:
  // Runs `work` on a thread of its own, counted so the destructor can wait for it.
  void Spawn(std::function<void()> work);

  StepExecutor* const runner_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> refusing_{false};
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  // Last: destroyed (its idle threads joined) first, after the destructor waited for the steps.
  ThreadCache threads_;
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_WORKER_SERVICE_H_

// The worker's four steps as an interface (proto/prune/v1/worker.proto's PruningWorker), the seam
// between the gRPC service and what runs the steps: StepRunner (step_runner.h) runs them on the
// pruning engine; a simulated executor (bench/dispatch_bench.cc) answers them from a fixed cost,
// so the scheduler can be measured with many workers that speak the real protocol.
//
// Contract (StepRunner's): `stop` is polled at safe points; EvaluatePolicies calls `emit` with
// each policy's result (any order, each with its index); failures are absl::Status that
// StepErrorOf classifies. Implementations are thread-safe: calls arrive concurrently.
#ifndef PRUNESVC_WORKER_STEP_EXECUTOR_H_
#define PRUNESVC_WORKER_STEP_EXECUTOR_H_

#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "prune/v1/worker.pb.h"
#include "worker/registrar.h"

namespace prunesvc::worker {

class StepExecutor : public HeartbeatHooks {
 public:
  using StopFn = std::function<bool()>;
  using EmitFn = std::function<void(const ::prune::v1::EvaluatePoliciesResponse&)>;

  virtual absl::StatusOr<::prune::v1::PrepareResponse> Prepare(
      const ::prune::v1::PrepareRequest& req, const StopFn& stop) = 0;
  virtual absl::Status EvaluatePolicies(const ::prune::v1::EvaluatePoliciesRequest& req,
                                        const StopFn& stop, const EmitFn& emit) = 0;
  virtual absl::StatusOr<::prune::v1::TrainProjectorResponse> TrainProjector(
      const ::prune::v1::TrainProjectorRequest& req, const StopFn& stop) = 0;
  virtual absl::StatusOr<::prune::v1::FinalizeResponse> Finalize(
      const ::prune::v1::FinalizeRequest& req, const StopFn& stop) = 0;
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_STEP_EXECUTOR_H_

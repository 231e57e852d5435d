#include "worker/worker_service.h"

#include "common/callback_util.h"

namespace prunesvc::worker {
grpc::ServerUnaryReactor* PruningWorkerService::Prepare(grpc::CallbackServerContext* ctx,
                                                        const prune::v1::PrepareRequest*,
                                                        prune::v1::PrepareResponse*) {
  return FinishUnary(ctx, NotImplemented("Prepare"));
}

grpc::ServerWriteReactor<prune::v1::EvaluatePoliciesResponse>*
PruningWorkerService::EvaluatePolicies(grpc::CallbackServerContext*,
                                       const prune::v1::EvaluatePoliciesRequest*) {
  return new FinishedWriteReactor<prune::v1::EvaluatePoliciesResponse>(
      NotImplemented("EvaluatePolicies"));
}

grpc::ServerUnaryReactor* PruningWorkerService::TrainProjector(
    grpc::CallbackServerContext* ctx, const prune::v1::TrainProjectorRequest*,
    prune::v1::TrainProjectorResponse*) {
  return FinishUnary(ctx, NotImplemented("TrainProjector"));
}

grpc::ServerUnaryReactor* PruningWorkerService::Finalize(grpc::CallbackServerContext* ctx,
                                                         const prune::v1::FinalizeRequest*,
                                                         prune::v1::FinalizeResponse*) {
  return FinishUnary(ctx, NotImplemented("Finalize"));
}

}  // namespace prunesvc::worker

// The PruningWorker gRPC service (callback API). The pruning engine's steps (Prepare,
// EvaluatePolicies, TrainProjector, Finalize) arrive with the engine; until then each answers
// UNIMPLEMENTED with a message. Thread-safe.
#ifndef PRUNESVC_WORKER_WORKER_SERVICE_H_
#define PRUNESVC_WORKER_WORKER_SERVICE_H_

#include "prune/v1/worker.grpc.pb.h"

namespace prunesvc::worker {

class PruningWorkerService final : public prune::v1::PruningWorker::CallbackService {
 public:
  grpc::ServerUnaryReactor* Prepare(grpc::CallbackServerContext* ctx,
                                    const prune::v1::PrepareRequest* req,
                                    prune::v1::PrepareResponse* resp) override;
  grpc::ServerWriteReactor<prune::v1::EvaluatePoliciesResponse>* EvaluatePolicies(
      grpc::CallbackServerContext* ctx, const prune::v1::EvaluatePoliciesRequest* req) override;
  grpc::ServerUnaryReactor* TrainProjector(grpc::CallbackServerContext* ctx,
                                           const prune::v1::TrainProjectorRequest* req,
                                           prune::v1::TrainProjectorResponse* resp) override;
  grpc::ServerUnaryReactor* Finalize(grpc::CallbackServerContext* ctx,
                                     const prune::v1::FinalizeRequest* req,
                                     prune::v1::FinalizeResponse* resp) override;
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_WORKER_SERVICE_H_

#include "worker/worker_service.h"

#include <atomic>
#include <deque>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"

namespace prunesvc::worker {
namespace {

namespace pb = ::prune::v1;

absl::Status DrainingError() {
  return absl::UnavailableError(
      "the worker is draining (it was asked to stop); the step can run on another worker");
}

// Unary steps: the default reactor, finished from the step's thread.
template <typename Response, typename Run>
grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* ctx, Response* resp,
                                   std::string_view phase, Run run,
                                   const std::function<void(std::function<void()>)>& spawn,
                                   const std::atomic<bool>* draining,
                                   const std::atomic<bool>* refusing) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (refusing->load()) {
    reactor->Finish(StepStatus(DrainingError(), phase));
    return reactor;
  }
  spawn([ctx, resp, reactor, phase, draining, run = std::move(run)] {
    absl::StatusOr<Response> out = run([ctx] { return ctx->IsCancelled(); });
    if (out.ok()) {
      *resp = *std::move(out);
      reactor->Finish(grpc::Status::OK);
    } else {
      reactor->Finish(StepStatus(out.status(), phase, draining->load()));
    }
  });
  return reactor;
}

// EvaluatePolicies: results queued by the step's thread, written one at a time by the reactor.
// Two owners — gRPC (until OnDone) and the step's thread (until Done) — so neither frees the
// reactor under the other; StartWrite and Finish are called without the lock held.
class EvaluateReactor : public grpc::ServerWriteReactor<pb::EvaluatePoliciesResponse> {
 public:
  explicit EvaluateReactor(grpc::CallbackServerContext* ctx) : ctx_(ctx) {}

  // From the step's thread.
  void Push(const pb::EvaluatePoliciesResponse& r) {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      queue_.push_back(r);
      action = NextLocked();
    }
    Perform(action);
  }
  // From the step's thread, last: the thread does not touch the reactor afterwards.
  void Done(const grpc::Status& status) {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      final_ = status;
      finishing_ = true;
      action = NextLocked();
    }
    Perform(action);
    Unref();
  }
  bool Cancelled() { return ctx_->IsCancelled(); }

  void OnWriteDone(bool ok) override {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      queue_.pop_front();
      if (!ok) {  // the client is gone: drop the rest; the step sees the cancellation
        queue_.clear();
        broken_ = true;
      }
      action = NextLocked();
    }
    Perform(action);
  }
  void OnDone() override { Unref(); }

 private:
  struct Action {
    const pb::EvaluatePoliciesResponse* write = nullptr;
    grpc::WriteOptions options;
    std::optional<grpc::Status> finish;  // with `write`: the last write carries the status
  };

  // Results that queue up while a write is in flight go out together: each write with more
  // behind it is buffered (buffer_hint), and the last one carries the final status — one
  // transport flush for a chunk whose policies finish at once, each result still as soon as it
  // is ready when they do not.
  Action NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Action a;
    if (writing_ || finished_) return a;
    if (!queue_.empty() && !broken_) {
      writing_ = true;
      a.write = &queue_.front();  // stays valid: only OnWriteDone pops it
      if (queue_.size() > 1) {
        a.options.set_buffer_hint();
      } else if (finishing_) {
        finished_ = true;
        a.finish = final_;
      }
    } else if (finishing_) {
      finished_ = true;
      a.finish =
          broken_ ? grpc::Status(grpc::StatusCode::CANCELLED, "the client went away") : final_;
    }
    return a;
  }
  void Perform(const Action& a) {
    if (a.write != nullptr && a.finish.has_value()) {
      StartWriteAndFinish(a.write, a.options, *a.finish);
    } else if (a.write != nullptr) {
      StartWrite(a.write, a.options);
    } else if (a.finish.has_value()) {
      Finish(*a.finish);
    }
  }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  grpc::CallbackServerContext* const ctx_;
  std::atomic<int> refs_{2};
  absl::Mutex mu_;
  std::deque<pb::EvaluatePoliciesResponse> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::Status StepStatus(absl::Status status, std::string_view phase, bool draining) {
  if (draining && status.code() == absl::StatusCode::kCancelled) {
    // Stopped by this worker's shutdown, not by the scheduler: retryable elsewhere.
    status = absl::UnavailableError(absl::StrCat("the worker is shutting down (", status.message(),
                                                 "); the step can run on another worker"));
  }
  const grpc::Status g = ToGrpcStatus(status);
  return grpc::Status(g.error_code(), g.error_message(),
                      StepErrorOf(status, phase).SerializeAsString());
}

PruningWorkerService::~PruningWorkerService() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &in_flight_));
}

bool PruningWorkerService::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(
                                  +[](int* n) { return *n == 0; }, &in_flight_),
                              timeout);
}

void PruningWorkerService::Spawn(std::function<void()> work) {
  {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
  }
  threads_.Run([this, work = std::move(work)] {
    work();
    absl::MutexLock lock(&mu_);
    --in_flight_;
  });
}

grpc::ServerUnaryReactor* PruningWorkerService::Prepare(grpc::CallbackServerContext* ctx,
                                                        const pb::PrepareRequest* req,
                                                        pb::PrepareResponse* resp) {
  return RunUnary(
      ctx, resp, "prepare",
      [this, req](StepExecutor::StopFn stop) { return runner_->Prepare(*req, stop); },
      [this](std::function<void()> w) { Spawn(std::move(w)); }, &draining_, &refusing_);
}

grpc::ServerWriteReactor<pb::EvaluatePoliciesResponse>* PruningWorkerService::EvaluatePolicies(
    grpc::CallbackServerContext* ctx, const pb::EvaluatePoliciesRequest* req) {
  auto* reactor = new EvaluateReactor(ctx);
  if (refusing_.load()) {
    reactor->Done(StepStatus(DrainingError(), "evaluate"));
    return reactor;
  }
  Spawn([this, reactor, req] {
    absl::Status s = runner_->EvaluatePolicies(
        *req, [reactor] { return reactor->Cancelled(); },
        [reactor](const pb::EvaluatePoliciesResponse& r) { reactor->Push(r); });
    reactor->Done(s.ok() ? grpc::Status::OK : StepStatus(s, "evaluate", draining_.load()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* PruningWorkerService::TrainProjector(grpc::CallbackServerContext* ctx,
                                                               const pb::TrainProjectorRequest* req,
                                                               pb::TrainProjectorResponse* resp) {
  return RunUnary(
      ctx, resp, "train",
      [this, req](StepExecutor::StopFn stop) { return runner_->TrainProjector(*req, stop); },
      [this](std::function<void()> w) { Spawn(std::move(w)); }, &draining_, &refusing_);
}

grpc::ServerUnaryReactor* PruningWorkerService::Finalize(grpc::CallbackServerContext* ctx,
                                                         const pb::FinalizeRequest* req,
                                                         pb::FinalizeResponse* resp) {
  return RunUnary(
      ctx, resp, "finalize",
      [this, req](StepExecutor::StopFn stop) { return runner_->Finalize(*req, stop); },
      [this](std::function<void()> w) { Spawn(std::move(w)); }, &draining_, &refusing_);
}

}  // namespace prunesvc::worker

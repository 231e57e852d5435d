// Keeps a worker registered with its scheduler: registers (retrying with backoff while the
// scheduler is unreachable), heartbeats at the interval the scheduler asks for, and
// re-registers when the scheduler no longer knows it (e.g. after a scheduler restart). Every
// call has a deadline. Runs on its own thread; Stop() returns within one call deadline.
#ifndef PRUNESVC_WORKER_REGISTRAR_H_
#define PRUNESVC_WORKER_REGISTRAR_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "prune/v1/worker.grpc.pb.h"

namespace prunesvc::worker {

// The credentials of a worker's calls to the scheduler (worker.proto "Worker authentication"):
// the worker token as `authorization: Bearer`, and the session RegisterWorker answered as
// `prunesvc-worker-session`. Shared by the Registrar (which sets the session) and the blob
// client. Thread-safe.
class SchedulerSession {
 public:
  explicit SchedulerSession(std::string worker_token) : token_(std::move(worker_token)) {}
  // Adds the token (when there is one) and the current session (when there is one).
  void Decorate(grpc::ClientContext& ctx) const;
  void SetSession(std::string session);

 private:
  const std::string token_;  // "" = the scheduler asks for none
  mutable absl::Mutex mu_;
  std::string session_ ABSL_GUARDED_BY(mu_);
};

// What the heartbeat reports and whom it tells about cancelled steps (the StepRunner).
class HeartbeatHooks {
 public:
  virtual ~HeartbeatHooks() = default;
  virtual std::vector<std::string> ActiveSteps() = 0;
  virtual std::vector<std::string> CachedJobs() = 0;
  virtual void CancelSteps(const std::vector<std::string>& step_ids) = 0;
};

class Registrar {
 public:
  // `hooks` may be null (heartbeats then report an idle worker); `session` carries the worker
  // token and receives the session; neither is owned.
  Registrar(std::string scheduler_address, std::shared_ptr<grpc::Channel> channel,
            ::prune::v1::WorkerInfo info, SchedulerSession* session,
            HeartbeatHooks* hooks = nullptr);
  ~Registrar();

  void Start();
  void Stop();
  // From now on heartbeats report WORKER_DRAINING (the scheduler leases no new step here); one
  // is sent at once.
  void SetDraining();

  // Empty until the first successful registration.
  std::string worker_id() const;

 private:
  void Loop();
  bool RegisterOnce();
  bool WakeLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || kick_; }

  // Constant after construction.
  const std::string scheduler_address_;
  const ::prune::v1::WorkerInfo info_;
  SchedulerSession* const session_;
  HeartbeatHooks* const hooks_;
  std::unique_ptr<::prune::v1::WorkerRegistry::Stub> stub_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool kick_ ABSL_GUARDED_BY(mu_) = false;  // heartbeat now, not after the interval
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  absl::Duration interval_ ABSL_GUARDED_BY(mu_) = absl::Seconds(1);
  std::thread thread_;
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_REGISTRAR_H_

// Keeps a worker registered with its scheduler: registers (retrying with backoff while the
// scheduler is unreachable), heartbeats at the interval the scheduler asks for, and
// re-registers when the scheduler no longer knows it (e.g. after a scheduler restart). Every
// call has a deadline. Runs on its own thread; Stop() returns within one call deadline.
#ifndef PRUNESVC_WORKER_REGISTRAR_H_
#define PRUNESVC_WORKER_REGISTRAR_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prune/v1/worker.grpc.pb.h"

namespace prunesvc::worker {

class Registrar {
 public:
  Registrar(std::string scheduler_address, prune::v1::WorkerInfo info);
  ~Registrar();

  void Start();
  void Stop();

  // Empty until the first successful registration.
  std::string worker_id() const;

 private:
  void Loop();
  bool RegisterOnce();

  // Constant after construction.
  const std::string scheduler_address_;
  const prune::v1::WorkerInfo info_;
  std::unique_ptr<prune::v1::WorkerRegistry::Stub> stub_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  absl::Duration interval_ ABSL_GUARDED_BY(mu_) = absl::Seconds(1);
  std::thread thread_;
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_REGISTRAR_H_

// Supervisor for `prune-scheduler --local-workers=N`: spawns N prune-worker processes on free
// loopback ports (each binds port 0 and registers its real address), restarts any that exits
// (exponential backoff 0.5 s → 30 s, reset once a child has stayed up a minute), and stops them
// all with SIGTERM (then SIGKILL after a grace period) on Stop(). Children also get SIGTERM from
// the kernel if the scheduler dies (PR_SET_PDEATHSIG). Thread-safe.
#ifndef PRUNESVC_SERVER_LOCAL_WORKERS_H_
#define PRUNESVC_SERVER_LOCAL_WORKERS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/subprocess.h"

namespace prunesvc::server {

struct LocalWorkersOptions {
  int count = 0;
  // argv for slot i (argv[0] = the prune-worker binary).
  std::function<std::vector<std::string>(int slot)> argv_for_slot;
  absl::Duration poll_interval = absl::Milliseconds(100);
  absl::Duration min_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(30);
  absl::Duration stable_after = absl::Minutes(1);
  absl::Duration stop_grace = absl::Seconds(10);
  std::function<void(int slot)> on_restart;  // metrics hook
};

class LocalWorkers {
 public:
  LocalWorkers(LocalWorkersOptions options, ProcessLauncher* launcher, const Clock* clock);
  ~LocalWorkers();

  // Spawns every slot and starts the supervisor thread. Fails if the first spawn fails (e.g. the
  // worker binary is missing), leaving nothing running.
  absl::Status Start();
  // Stops supervision and terminates the children. Idempotent.
  void Stop();

  std::vector<pid_t> Pids() const;
  int Restarts(int slot) const;

 private:
  struct Slot {
    pid_t pid = -1;
    absl::Time started;
    absl::Time next_start;
    absl::Duration backoff;
    int restarts = 0;
  };
  void Loop();
  void SpawnLocked(int slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const LocalWorkersOptions options_;
  ProcessLauncher* const launcher_;
  const Clock* const clock_;

  mutable absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_LOCAL_WORKERS_H_

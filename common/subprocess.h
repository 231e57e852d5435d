// Process spawning behind a small interface, so supervisors (the scheduler's --local-workers)
// can be tested with injected faults. The POSIX implementation forks and execs directly (no
// shell), and asks the kernel to SIGTERM the child if this process dies (PR_SET_PDEATHSIG), so a
// crashed scheduler never leaves orphaned workers behind. Thread-safe.
#ifndef PRUNESVC_COMMON_SUBPROCESS_H_
#define PRUNESVC_COMMON_SUBPROCESS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prunesvc {

struct ExitInfo {
  bool signaled = false;
  int code = 0;  // exit code, or the signal number when `signaled`
  std::string ToString() const;
};

class ProcessLauncher {
 public:
  virtual ~ProcessLauncher() = default;
  // Starts argv[0] (a path) with argv. stdout/stderr are inherited.
  virtual absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv) = 0;
  virtual void Signal(pid_t pid, int signal) = 0;
  // Non-blocking: the exit status if `pid` has exited (and reaps it), nullopt if still running.
  virtual std::optional<ExitInfo> TryWait(pid_t pid) = 0;
};

class PosixProcessLauncher : public ProcessLauncher {
 public:
  absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv) override;
  void Signal(pid_t pid, int signal) override;
  std::optional<ExitInfo> TryWait(pid_t pid) override;
};

// Directory holding the running executable (from /proc/self/exe), used to find sibling
// binaries (build/bin/prune-worker next to build/bin/prune-scheduler).
std::string SelfExecutableDir();

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_SUBPROCESS_H_

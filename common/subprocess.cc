#include "common/subprocess.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace prunesvc {

std::string ExitInfo::ToString() const {
  if (signaled) return absl::StrCat("killed by signal ", code, " (", strsignal(code), ")");
  return absl::StrCat("exited with code ", code);
}

absl::StatusOr<pid_t> PosixProcessLauncher::Spawn(const std::vector<std::string>& argv) {
  if (argv.empty()) return absl::InvalidArgumentError("Spawn: empty argv");
  if (access(argv[0].c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot execute ", argv[0], ": ", strerror(errno)));
  }
  // Everything the child touches is prepared before fork: after fork in a threaded process only
  // async-signal-safe calls are allowed.
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return absl::ResourceExhaustedError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // the parent died before prctl took effect
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);  // the parent may block signals for sigwait
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void PosixProcessLauncher::Signal(pid_t pid, int signal) { kill(pid, signal); }

std::optional<ExitInfo> PosixProcessLauncher::TryWait(pid_t pid) {
  int status = 0;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == 0) return std::nullopt;
  ExitInfo info;
  if (r < 0) {
    info.code = -1;  // not our child (already reaped); treat as gone
    return info;
  }
  if (WIFSIGNALED(status)) {
    info.signaled = true;
    info.code = WTERMSIG(status);
  } else {
    info.code = WEXITSTATUS(status);
  }
  return info;
}

std::string SelfExecutableDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace prunesvc

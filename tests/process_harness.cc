#include "tests/process_harness.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "httplib.h"

namespace prunesvc::testing {

std::string BinDir() {
  const char* env = getenv("PRUNESVC_BIN");
  return env != nullptr ? env : PRUNESVC_BIN_DIR;
}

std::string SourceDir() {
  const char* v = std::getenv("PRUNESVC_SOURCE");
  return v != nullptr && *v ? v : PRUNESVC_SOURCE_DIR;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int RunShell(const std::string& command) {
  const int rc = std::system(command.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

bool WaitUntil(const std::function<bool()>& pred, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return pred();
}

bool ProcessAlive(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  // A zombie still answers kill(0); look at its state.
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t close = content.rfind(')');
  return close != std::string::npos && close + 2 < content.size() && content[close + 2] != 'Z';
}

absl::StatusOr<TestProcess> TestProcess::Start(const std::vector<std::string>& argv,
                                               const std::string& log_path,
                                               const std::vector<std::string>& env) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // The environment is built before fork (only async-signal-safe calls after it).
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var = *e;
    const std::string name = var.substr(0, var.find('='));
    bool replaced = false;
    for (const std::string& add : env) replaced |= add.substr(0, add.find('=')) == name;
    if (!replaced) vars.push_back(var);
  }
  vars.insert(vars.end(), env.begin(), env.end());
  std::vector<char*> envp;
  for (std::string& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("open ", log_path, ": ", strerror(errno)));
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    dup2(fd, 1);
    dup2(fd, 2);
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  close(fd);
  return TestProcess(pid, log_path);
}

TestProcess::TestProcess(TestProcess&& other) noexcept
    : pid_(other.pid_), log_path_(std::move(other.log_path_)) {
  other.pid_ = -1;
}

TestProcess::~TestProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

absl::StatusOr<int> TestProcess::Wait(absl::Duration timeout) {
  int status = 0;
  bool done = WaitUntil(
      [&] {
        pid_t r = waitpid(pid_, &status, WNOHANG);
        return r == pid_;
      },
      timeout);
  if (!done) return absl::DeadlineExceededError(absl::StrCat("pid ", pid_, " did not exit"));
  pid_ = -1;
  return status;
}

absl::StatusOr<int> TestProcess::StopWith(int sig, absl::Duration timeout) {
  kill(pid_, sig);
  return Wait(timeout);
}

std::string TestProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<nlohmann::json> WaitForReadyFile(const std::string& path, absl::Duration timeout) {
  nlohmann::json j;
  bool ok = WaitUntil(
      [&] {
        std::ifstream in(path);
        if (!in) return false;
        j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
        return !j.is_discarded();
      },
      timeout);
  if (!ok) return absl::DeadlineExceededError(absl::StrCat("no ready file at ", path));
  return j;
}

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = getenv("TMPDIR");
  std::string templ = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", prefix, "XXXXXX");
  char* dir = mkdtemp(templ.data());
  return dir != nullptr ? std::string(dir) : std::string();
}

std::string HttpGet(int port, const std::string& path) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(5);
  cli.set_read_timeout(5);
  auto res = cli.Get(path);
  if (!res || res->status != 200) return "";
  return res->body;
}

}  // namespace prunesvc::testing

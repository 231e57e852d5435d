// Test helpers for end-to-end tests that run the real binaries on loopback: start a process
// with its output in a log file, wait for its --ready-file, and kill it on destruction.
#ifndef PRUNESVC_TESTS_PROCESS_HARNESS_H_
#define PRUNESVC_TESTS_PROCESS_HARNESS_H_

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace prunesvc::testing {

// $PRUNESVC_BIN (set by ctest) or build/bin relative to the working directory.
std::string BinDir();

// $PRUNESVC_SOURCE (set by ctest) or the source tree this was built from.
std::string SourceDir();
// The whole file ("" when it cannot be read).
std::string ReadFile(const std::string& path);
// /bin/sh -c `command`; its exit code (-1 when it did not exit normally).
int RunShell(const std::string& command);

// Polls `pred` every 20 ms until it holds or `timeout` passes.
bool WaitUntil(const std::function<bool()>& pred, absl::Duration timeout);

bool ProcessAlive(pid_t pid);

class TestProcess {
 public:
  // Starts argv with stdout+stderr appended to `log_path`; `env` entries (NAME=VALUE) are added to
  // (or replace those of) the test's environment.
  static absl::StatusOr<TestProcess> Start(const std::vector<std::string>& argv,
                                           const std::string& log_path,
                                           const std::vector<std::string>& env = {});
  TestProcess(TestProcess&& other) noexcept;
  TestProcess& operator=(TestProcess&&) = delete;
  ~TestProcess();

  pid_t pid() const { return pid_; }
  // Sends `sig` and waits up to `timeout` for exit; returns the wait status or an error.
  absl::StatusOr<int> StopWith(int sig, absl::Duration timeout = absl::Seconds(15));
  // Waits for the process to exit by itself.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  std::string Log() const;

 private:
  TestProcess(pid_t pid, std::string log) : pid_(pid), log_path_(std::move(log)) {}
  pid_t pid_ = -1;
  std::string log_path_;
};

// Waits for a ready file written by --ready-file and parses it.
absl::StatusOr<nlohmann::json> WaitForReadyFile(const std::string& path, absl::Duration timeout);

// A fresh temporary directory under $TMPDIR.
std::string MakeTempDir(const std::string& prefix);

// GET http://127.0.0.1:port/path → body (empty on failure).
std::string HttpGet(int port, const std::string& path);

}  // namespace prunesvc::testing

#endif  // PRUNESVC_TESTS_PROCESS_HARNESS_H_

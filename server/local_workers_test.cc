#include "server/local_workers.h"

#include <signal.h>

#include <map>
#include <set>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace prunesvc::server {
namespace {

// Launcher whose "processes" exit when the test says so; records signals.
class FakeLauncher : public ProcessLauncher {
 public:
  absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv) override {
    absl::MutexLock lock(&mu_);
    if (fail_spawns_ > 0) {
      --fail_spawns_;
      return absl::NotFoundError("no such binary");
    }
    pid_t pid = next_pid_++;
    running_.insert(pid);
    argvs_[pid] = argv;
    return pid;
  }
  void Signal(pid_t pid, int signal) override {
    absl::MutexLock lock(&mu_);
    signals_.push_back({pid, signal});
    if (signal == SIGKILL || (signal == SIGTERM && !ignore_term_)) exited_.insert(pid);
  }
  std::optional<ExitInfo> TryWait(pid_t pid) override {
    absl::MutexLock lock(&mu_);
    if (!exited_.count(pid)) return std::nullopt;
    exited_.erase(pid);
    running_.erase(pid);
    return ExitInfo{true, SIGKILL};
  }
  void Crash(pid_t pid) {
    absl::MutexLock lock(&mu_);
    exited_.insert(pid);
  }
  absl::Mutex mu_;
  pid_t next_pid_ = 1000;
  int fail_spawns_ = 0;
  bool ignore_term_ = false;
  std::set<pid_t> running_, exited_;
  std::map<pid_t, std::vector<std::string>> argvs_;
  std::vector<std::pair<pid_t, int>> signals_;
};

LocalWorkersOptions Options(int n) {
  LocalWorkersOptions o;
  o.count = n;
  o.argv_for_slot = [](int slot) {
    return std::vector<std::string>{"/bin/prune-worker", "--slot=" + std::to_string(slot)};
  };
  o.poll_interval = absl::Milliseconds(5);
  o.min_backoff = absl::Milliseconds(20);
  o.stop_grace = absl::Milliseconds(200);
  return o;
}

bool WaitUntil(const std::function<bool()>& pred) {
  for (int i = 0; i < 1000; ++i) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

TEST(LocalWorkersTest, RestartsACrashedChildAndStopsAll) {
  FakeLauncher launcher;
  int restarts_seen = 0;
  LocalWorkersOptions opts = Options(2);
  opts.on_restart = [&](int) { ++restarts_seen; };
  LocalWorkers workers(opts, &launcher, RealClock::Get());
  ASSERT_TRUE(workers.Start().ok());
  std::vector<pid_t> pids = workers.Pids();
  ASSERT_EQ(pids.size(), 2u);
  {
    absl::MutexLock lock(&launcher.mu_);
    EXPECT_EQ(launcher.argvs_[pids[1]][1], "--slot=1");
  }
  launcher.Crash(pids[0]);
  ASSERT_TRUE(WaitUntil([&] {
    auto now = workers.Pids();
    return now[0] > 0 && now[0] != pids[0];
  }));
  EXPECT_EQ(workers.Pids()[1], pids[1]);
  EXPECT_EQ(workers.Restarts(0), 1);
  EXPECT_EQ(workers.Restarts(1), 0);

  workers.Stop();
  absl::MutexLock lock(&launcher.mu_);
  EXPECT_TRUE(launcher.running_.empty());
  EXPECT_EQ(restarts_seen, 1);
}

TEST(LocalWorkersTest, KillsChildrenThatIgnoreSigterm) {
  FakeLauncher launcher;
  launcher.ignore_term_ = true;
  LocalWorkers workers(Options(1), &launcher, RealClock::Get());
  ASSERT_TRUE(workers.Start().ok());
  workers.Stop();
  absl::MutexLock lock(&launcher.mu_);
  ASSERT_EQ(launcher.signals_.size(), 2u);
  EXPECT_EQ(launcher.signals_[0].second, SIGTERM);
  EXPECT_EQ(launcher.signals_[1].second, SIGKILL);
}

TEST(LocalWorkersTest, FailedFirstSpawnIsAnErrorAndFailedRespawnRetries) {
  FakeLauncher launcher;
  launcher.fail_spawns_ = 1;
  LocalWorkers bad(Options(1), &launcher, RealClock::Get());
  EXPECT_EQ(bad.Start().code(), absl::StatusCode::kNotFound);

  LocalWorkers workers(Options(1), &launcher, RealClock::Get());
  ASSERT_TRUE(workers.Start().ok());
  pid_t first = workers.Pids()[0];
  {
    absl::MutexLock lock(&launcher.mu_);
    launcher.fail_spawns_ = 2;  // the next two respawns fail, then one succeeds
  }
  launcher.Crash(first);
  ASSERT_TRUE(WaitUntil([&] { return workers.Pids()[0] > first; }));
  EXPECT_EQ(workers.Restarts(0), 3);
}

}  // namespace
}  // namespace prunesvc::server

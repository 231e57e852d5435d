#include "common/subprocess.h"

#include <signal.h>
#include <unistd.h>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace prunesvc {
namespace {

ExitInfo WaitFor(ProcessLauncher& launcher, pid_t pid) {
  for (int i = 0; i < 500; ++i) {
    if (auto info = launcher.TryWait(pid)) return *info;
    absl::SleepFor(absl::Milliseconds(10));
  }
  ADD_FAILURE() << "child did not exit";
  return {};
}

TEST(SubprocessTest, ReportsExitCodesAndSignals) {
  PosixProcessLauncher launcher;
  auto ok = launcher.Spawn({"/bin/sh", "-c", "exit 3"});
  ASSERT_TRUE(ok.ok()) << ok.status();
  ExitInfo info = WaitFor(launcher, *ok);
  EXPECT_FALSE(info.signaled);
  EXPECT_EQ(info.code, 3);

  auto sleeper = launcher.Spawn({"/bin/sleep", "30"});
  ASSERT_TRUE(sleeper.ok());
  EXPECT_FALSE(launcher.TryWait(*sleeper).has_value());
  launcher.Signal(*sleeper, SIGKILL);
  info = WaitFor(launcher, *sleeper);
  EXPECT_TRUE(info.signaled);
  EXPECT_EQ(info.code, SIGKILL);
  EXPECT_NE(info.ToString().find("signal 9"), std::string::npos);
}

TEST(SubprocessTest, MissingBinaryIsAClearError) {
  PosixProcessLauncher launcher;
  auto r = launcher.Spawn({"/nonexistent/prune-worker"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/prune-worker"), std::string::npos);
  EXPECT_FALSE(launcher.Spawn({}).ok());
}

}  // namespace
}  // namespace prunesvc

#include "common/fault.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace prunesvc {
namespace {

TEST(FaultTest, ParsesPointsCountsAndActions) {
  auto specs = ParseFaultSpecs("scheduler.evaluate@3, worker.train:stop,worker.finalize@2:term");
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 3u);
  EXPECT_EQ((*specs)[0].point, "scheduler.evaluate");
  EXPECT_EQ((*specs)[0].count, 3);
  EXPECT_EQ((*specs)[0].action, FaultSpec::Action::kKill);
  EXPECT_EQ((*specs)[1].point, "worker.train");
  EXPECT_EQ((*specs)[1].count, 1);
  EXPECT_EQ((*specs)[1].action, FaultSpec::Action::kStop);
  EXPECT_EQ((*specs)[2].count, 2);
  EXPECT_EQ((*specs)[2].action, FaultSpec::Action::kTerm);
  EXPECT_TRUE(ParseFaultSpecs("")->empty());
}

TEST(FaultTest, MalformedSpecsNameTheEntry) {
  for (const char* bad : {"a@0", "a@x", "a@", "a:explode", "@3", "a b", "a,a@2", "a/../../etc@1"}) {
    auto specs = ParseFaultSpecs(bad);
    ASSERT_FALSE(specs.ok()) << bad;
    EXPECT_NE(std::string(specs.status().message()).find("PRUNESVC_FAULT"), std::string::npos)
        << specs.status();
  }
}

// Runs `passes` passes of `point` in a child with PRUNESVC_FAULT = `spec`; its wait status.
int ChildPasses(const std::string& spec, const std::string& marker_dir, const char* point,
                int passes) {
  const pid_t pid = fork();
  if (pid == 0) {
    setenv("PRUNESVC_FAULT", spec.c_str(), 1);
    if (!marker_dir.empty()) setenv("PRUNESVC_FAULT_DIR", marker_dir.c_str(), 1);
    for (int i = 0; i < passes; ++i) FaultPoint(point);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

TEST(FaultTest, FiresOnTheNthPassOnlyAndOncePerMarkerDir) {
  // Two passes of a point armed for the third: runs through.
  int st = ChildPasses("p.q@3", "", "p.q", 2);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  // Three: SIGKILL on the third. Another point is not affected.
  st = ChildPasses("p.q@3", "", "p.q", 3);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  st = ChildPasses("p.q@1", "", "other", 5);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  // With a marker dir the point fires in the first process only.
  const std::string dir = ::testing::TempDir() + "/fault_markers";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  st = ChildPasses("p.q", dir, "p.q", 1);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  EXPECT_TRUE(std::filesystem::exists(dir + "/p.q"));
  st = ChildPasses("p.q", dir, "p.q", 1);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  // A malformed spec is ignored (reported on stderr), never a crash.
  st = ChildPasses("p.q@zero", "", "p.q", 3);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

TEST(FaultTest, StopActionStopsTheProcess) {
  const pid_t pid = fork();
  if (pid == 0) {
    setenv("PRUNESVC_FAULT", "p.q:stop", 1);
    FaultPoint("p.q");
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, WUNTRACED);
  EXPECT_TRUE(WIFSTOPPED(status));
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
}

}  // namespace
}  // namespace prunesvc

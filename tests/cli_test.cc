// Every command-line tool follows one exit-code table (common/cli_exit.h): --help and --version
// exit 0, an unknown flag or a bad value exits 2 with a message naming the flag with hyphens,
// and --help lists hyphenated flag names only.
#include <sys/wait.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process_harness.h"

namespace prunesvc::testing {
namespace {

const std::vector<std::string>& Tools() {
  static const auto* tools = new std::vector<std::string>{
      "prune-scheduler", "prune-worker", "prunectl",         "prune-local",    "llava-eval",
      "llava-generate",  "shapes-vqa",   "train-tiny-llava", "magnitude-curve"};
  return *tools;
}

struct Ran {
  int code = -1;
  std::string output;
};

Ran RunTool(const std::string& tool, const std::vector<std::string>& args) {
  const std::string log = MakeTempDir("cli-") + "/out.log";
  std::vector<std::string> argv = {BinDir() + "/" + tool};
  argv.insert(argv.end(), args.begin(), args.end());
  auto p = TestProcess::Start(argv, log);
  if (!p.ok()) return {};
  auto status = p->Wait(absl::Seconds(60));
  if (!status.ok() || !WIFEXITED(*status)) return {};
  return {WEXITSTATUS(*status), p->Log()};
}

TEST(CliTest, HelpExitsZeroAndListsHyphenatedNames) {
  for (const std::string& tool : Tools()) {
    SCOPED_TRACE(tool);
    Ran r = RunTool(tool, {"--help"});
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("\nFlags:\n"), std::string::npos) << r.output;
    // Flag lines are "  --name"; none of them has an underscore.
    size_t pos = 0;
    int flags = 0;
    while ((pos = r.output.find("\n  --", pos)) != std::string::npos) {
      const size_t end = r.output.find('\n', pos + 1);
      const std::string name = r.output.substr(pos + 3, end - pos - 3);
      EXPECT_EQ(name.find('_'), std::string::npos) << name;
      ++flags;
      pos = end;
    }
    EXPECT_GT(flags, 0);
    EXPECT_EQ(RunTool(tool, {"-h"}).code, 0);
  }
}

TEST(CliTest, UnknownFlagsAndBadValuesExitTwoNamingTheFlag) {
  for (const std::string& tool : Tools()) {
    SCOPED_TRACE(tool);
    Ran unknown = RunTool(tool, {"--no-such_flag=1"});
    EXPECT_EQ(unknown.code, 2) << unknown.output;
    EXPECT_NE(unknown.output.find(tool + ": unknown flag --no-such-flag (see " + tool + " --help)"),
              std::string::npos)
        << unknown.output;
  }
  Ran bad = RunTool("prune-local", {"--flops_budget=half"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.output.find("invalid value 'half' for --flops-budget"), std::string::npos)
      << bad.output;
  Ran missing = RunTool("shapes-vqa", {"--count"});
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.output.find("--count needs a value"), std::string::npos) << missing.output;
}

TEST(CliTest, VersionPrintsTheProjectVersionAndBuildType) {
  for (const std::string& tool : Tools()) {
    SCOPED_TRACE(tool);
    Ran r = RunTool(tool, {"--version"});
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output.rfind(tool + " " + PRUNESVC_VERSION + " (", 0), 0u) << r.output;
    EXPECT_NE(r.output.find(" build)\n"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("NDEBUG"), std::string::npos) << r.output;
  }
}

}  // namespace
}  // namespace prunesvc::testing

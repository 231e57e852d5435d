// prunectl as a process, on the paths that need no server: usage errors, local validation and
// output-directory checks fail with cli_exit's codes before any call (the address is a closed
// port, so a call would be UNAVAILABLE = 1, not 2).
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::client {
namespace {

using ::testing::HasSubstr;

struct Result {
  int code;
  std::string output;  // stdout and stderr
};

Result RunPrunectl(const std::string& args) {
  const std::string cmd =
      absl::StrCat(PRUNESVC_BIN_DIR, "/prunectl ", args, " --addr=127.0.0.1:1 --timeout=2 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  Result r{-1, ""};
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

const std::string kDataset = "sha256:" + std::string(64, 'a');

TEST(PrunectlCliTest, HelpListsCommandsAndExitCodes) {
  Result r = RunPrunectl("--help");
  EXPECT_THAT(r.output, HasSubstr("upload-dataset DIR|TAR"));
  EXPECT_THAT(r.output, HasSubstr("Exit codes"));
  EXPECT_THAT(r.output, HasSubstr("130"));
}

TEST(PrunectlCliTest, UsageErrorsAreTwo) {
  EXPECT_EQ(RunPrunectl("").code, 2);
  EXPECT_EQ(RunPrunectl("frobnicate").code, 2);
  EXPECT_EQ(RunPrunectl("get").code, 2);
  EXPECT_EQ(RunPrunectl("fetch job-1").code, 2);  // no --out
  EXPECT_EQ(RunPrunectl("list --state=BOGUS").code, 2);
}

TEST(PrunectlCliTest, SubmitValidatesLocallyNamingTheFlagOrLine) {
  Result flag = RunPrunectl(
      absl::StrCat("submit --model=/m --dataset=", kDataset, " --flops-budget=0.5 --population=2"));
  EXPECT_EQ(flag.code, 2);
  EXPECT_THAT(flag.output, HasSubstr("--population: population must be in [4, 1024]"));

  const std::string file = ::testing::TempDir() + "/prunectl_cli_job.yaml";
  std::ofstream(file) << "model_uri: file:///m\nflops_budget: 0.5\npopulaton: 8\n";
  Result line = RunPrunectl("submit --file=" + file);
  EXPECT_EQ(line.code, 2);
  EXPECT_THAT(line.output, HasSubstr("prunectl_cli_job.yaml:3: unknown key \"populaton\""));

  Result missing = RunPrunectl("submit --flops-budget=0.5 --dataset=" + kDataset);
  EXPECT_EQ(missing.code, 2);
  EXPECT_THAT(missing.output, HasSubstr("--model"));

  // A valid spec reaches the (closed) server: UNAVAILABLE is 1.
  Result valid = RunPrunectl(absl::StrCat("submit --model=/m --dataset=", kDataset,
                                          " --flops-budget=0.5 --label=a=b --label=c=d"));
  EXPECT_EQ(valid.code, 1) << valid.output;
  EXPECT_THAT(valid.output, HasSubstr("UNAVAILABLE"));
}

TEST(PrunectlCliTest, FetchRefusesANonEmptyOutputBeforeAnyCall) {
  const std::string dir = ::testing::TempDir() + "/prunectl_cli_out";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/x") << "x";
  Result r = RunPrunectl("fetch job-1 --out=" + dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("ALREADY_EXISTS"));
}

}  // namespace
}  // namespace prunesvc::client

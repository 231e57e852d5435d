#include "client/cli_args.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::client {
namespace {

using ::testing::ElementsAre;

TEST(CliArgsTest, ExtractsRepeatedFlagsInOrder) {
  std::vector<std::string> args = {"prunectl",   "submit",   "--label=a=1", "--label",
                                   "b=2",        "--seed=3", "--state",     "QUEUED",
                                   "--labels=x", "--",       "--label=z"};
  auto got = ExtractRepeatedFlags(args, {"label", "state"});
  EXPECT_THAT(got["label"], ElementsAre("a=1", "b=2"));
  EXPECT_THAT(got["state"], ElementsAre("QUEUED"));
  EXPECT_THAT(args, ElementsAre("prunectl", "submit", "--seed=3", "--labels=x", "--", "--label=z"));
}

TEST(CliArgsTest, GivenFlagNamesAreHyphenated) {
  auto names = GivenFlagNames({"prunectl", "submit", "--flops_budget=0.5", "-population", "8",
                               "--eta=auto", "pos", "--", "--seed=1"});
  EXPECT_THAT(names, ElementsAre("eta", "flops-budget", "population"));
}

}  // namespace
}  // namespace prunesvc::client

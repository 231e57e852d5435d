#include "common/flags.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace prunesvc {
namespace {

std::vector<std::string> Normalize(std::vector<std::string> args) {
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  return NormalizeFlagNames(static_cast<int>(ptrs.size()), ptrs.data());
}

TEST(FlagsTest, RewritesHyphensInNamesOnly) {
  EXPECT_EQ(
      Normalize({"prog", "--flops-budget=0.5", "--metrics-port", "9-9", "-a-b"}),
      (std::vector<std::string>{"prog", "--flops_budget=0.5", "--metrics_port", "9-9", "-a_b"}));
}

TEST(FlagsTest, KeepsValuesWithHyphensAndPassthrough) {
  EXPECT_EQ(Normalize({"prog", "--model-uri=file:///a-b/c-d", "--", "--not-a-flag", "x-y"}),
            (std::vector<std::string>{"prog", "--model_uri=file:///a-b/c-d", "--", "--not-a-flag",
                                      "x-y"}));
}

TEST(FlagsTest, LeavesShortAndPositionalArgs) {
  EXPECT_EQ(Normalize({"prog-name", "-", "file-name", "-v"}),
            (std::vector<std::string>{"prog-name", "-", "file-name", "-v"}));
}

}  // namespace
}  // namespace prunesvc

#include "common/flags.h"

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "gtest/gtest.h"

ABSL_FLAG(double, test_budget, 0.5, "a budget for the parser's tests");
ABSL_FLAG(bool, test_switch, false, "a switch for the parser's tests");
ABSL_FLAG(std::string, test_name, "", "a name for the parser's tests");

namespace prunesvc {
namespace {

class FlagsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::SetFlag(&FLAGS_test_budget, 0.5);
    absl::SetFlag(&FLAGS_test_switch, false);
    absl::SetFlag(&FLAGS_test_name, "");
  }
};

TEST_F(FlagsTest, HyphensUnderscoresAndBothValueForms) {
  auto parsed = ParseCommandLineArgs(
      {"prog", "--test-budget=0.25", "pos-1", "--test_name", "a-b=c", "-test-switch", "pos2"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->action, ParsedCommandLine::Action::kRun);
  EXPECT_EQ(parsed->positional, (std::vector<std::string>{"prog", "pos-1", "pos2"}));
  EXPECT_EQ(absl::GetFlag(FLAGS_test_budget), 0.25);
  EXPECT_EQ(absl::GetFlag(FLAGS_test_name), "a-b=c");
  EXPECT_TRUE(absl::GetFlag(FLAGS_test_switch));
}

TEST_F(FlagsTest, BooleanForms) {
  ASSERT_TRUE(ParseCommandLineArgs({"prog", "--test-switch=true"}).ok());
  EXPECT_TRUE(absl::GetFlag(FLAGS_test_switch));
  ASSERT_TRUE(ParseCommandLineArgs({"prog", "--notest-switch"}).ok());
  EXPECT_FALSE(absl::GetFlag(FLAGS_test_switch));
  // A boolean does not swallow the next argument.
  auto parsed = ParseCommandLineArgs({"prog", "--test-switch", "false"});
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(absl::GetFlag(FLAGS_test_switch));
  EXPECT_EQ(parsed->positional, (std::vector<std::string>{"prog", "false"}));
}

// A flag set to its default value is still given (the user chose it); the next parse forgets.
TEST_F(FlagsTest, GivenFlagsIncludeDefaultValues) {
  auto parsed = ParseCommandLineArgs({"prog", "--test-budget=0.5", "--notest-switch"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(FlagGiven("test_budget") && FlagGiven("test_switch"));
  EXPECT_FALSE(FlagGiven("test_name"));
  ASSERT_TRUE(ParseCommandLineArgs({"prog", "--test-name=x"}).ok());
  EXPECT_FALSE(FlagGiven("test_budget"));
  EXPECT_TRUE(FlagGiven("test_name"));
}

TEST_F(FlagsTest, EverythingAfterDoubleDashIsPositional) {
  auto parsed = ParseCommandLineArgs({"prog", "--", "--test-budget=9", "-"});
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->positional, (std::vector<std::string>{"prog", "--test-budget=9", "-"}));
  EXPECT_EQ(absl::GetFlag(FLAGS_test_budget), 0.5);
}

TEST_F(FlagsTest, ErrorsNameTheFlagWithHyphens) {
  auto unknown = ParseCommandLineArgs({"prog", "--no_such_flag=1"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().message(), "unknown flag --no-such-flag");

  auto bad = ParseCommandLineArgs({"prog", "--test_budget=half"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("invalid value 'half' for --test-budget"),
            std::string::npos)
      << bad.status();

  auto missing = ParseCommandLineArgs({"prog", "--test-budget"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("--test-budget needs a value"), std::string::npos);

  // "--no" + a flag that is not boolean is not a negation.
  EXPECT_FALSE(ParseCommandLineArgs({"prog", "--notest-budget"}).ok());
  // abseil's own flags are not ours to set.
  EXPECT_FALSE(ParseCommandLineArgs({"prog", "--flagfile=/etc/passwd"}).ok());
}

TEST_F(FlagsTest, HelpAndVersionAreActions) {
  auto help = ParseCommandLineArgs({"prog", "--test-budget=0.3", "--help"});
  ASSERT_TRUE(help.ok());
  EXPECT_EQ(help->action, ParsedCommandLine::Action::kHelp);
  EXPECT_EQ(ParseCommandLineArgs({"prog", "-h"})->action, ParsedCommandLine::Action::kHelp);
  EXPECT_EQ(ParseCommandLineArgs({"prog", "--version"})->action,
            ParsedCommandLine::Action::kVersion);
  EXPECT_NE(VersionString().find("build)"), std::string::npos);
}

TEST_F(FlagsTest, HelpListsHyphenatedNamesWithDefaults) {
  const std::string help = FlagsHelp("usage: prog [flags]");
  EXPECT_EQ(help.rfind("usage: prog [flags]\n", 0), 0u);
  EXPECT_NE(help.find("  --test-budget\n      a budget for the parser's tests (default: 0.5)"),
            std::string::npos)
      << help;
  EXPECT_NE(help.find("(default: \"\")"), std::string::npos);
  EXPECT_EQ(help.find("--test_budget"), std::string::npos);
  EXPECT_EQ(help.find("--flagfile"), std::string::npos);
}

}  // namespace
}  // namespace prunesvc

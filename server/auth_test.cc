// The tokens file parser and the Authenticator's reload and quota rules (server/auth.h). The
// bearer-token check itself runs over gRPC in tests/security_test.cc.
#include "server/auth.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "common/sha256.h"
#include "gtest/gtest.h"

namespace prunesvc::server {
namespace {

TEST(ParseTokensTest, ReadsUsersAdminsCommentsAndQuotas) {
  auto t = ParseTokens(
      "# teams\n"
      "\n"
      "  alice-0123456789abcdef team-a user\n"
      "root-0123456789abcdef\tops\tadmin  # trailing words are fields: see below\n",
      "tokens");
  ASSERT_FALSE(t.ok());  // "#" after the role is not a comment: an unknown field
  EXPECT_TRUE(absl::StrContains(t.status().message(), "tokens:4: unknown field")) << t.status();

  t = ParseTokens(
      "# teams\n"
      "alice-0123456789abcdef team-a user max_queued_jobs=3 max_stored_bytes=2G\n"
      "alice2-0123456789abcdef team-a user max_running_jobs=1\n"
      "root-0123456789abcdef\tops\tadmin\n",
      "tokens");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->by_hash.size(), 3u);
  const TokenTable::Entry& alice = t->by_hash.at(Sha256Hex("alice-0123456789abcdef"));
  EXPECT_EQ(alice.tenant, "team-a");
  EXPECT_EQ(alice.role, Role::kUser);
  EXPECT_EQ(alice.line, 2);
  EXPECT_EQ(t->by_hash.at(Sha256Hex("root-0123456789abcdef")).role, Role::kAdmin);
  const TenantQuota& q = t->quotas.at("team-a");
  EXPECT_EQ(q.max_queued_jobs, 3);
  EXPECT_EQ(q.max_running_jobs, 1);  // from the second line of the same tenant
  EXPECT_EQ(q.max_stored_bytes, int64_t{2} << 30);
  EXPECT_EQ(t->quotas.count("ops"), 0u);
  // Tokens are not kept in the clear.
  for (const auto& [hash, entry] : t->by_hash) EXPECT_EQ(hash.size(), 64u);
}

TEST(ParseTokensTest, MalformedLinesAreNamedByFileAndLine) {
  const std::string ok = "good-0123456789abcdef team-a user\n";
  struct Case {
    std::string text, needle;
  };
  const Case cases[] = {
      {"short team-a user\n", "tokens:1: the token must be at least 16"},
      {ok + "only-two-0123456789 team-a\n", "tokens:2: expected TOKEN TENANT ROLE"},
      {"tok-0123456789abcdef team/a user\n", "tokens:1: tenant \"team/a\" must be"},
      {"tok-0123456789abcdef team-a root\n", "tokens:1: role \"root\" is not user or admin"},
      {"tok-0123456789abcdef team-a user max_queued_jobs=-1\n",
       "tokens:1: max_queued_jobs: \"-1\" is not a non-negative integer"},
      {"tok-0123456789abcdef team-a user max_stored_bytes=5Q\n",
       "tokens:1: max_stored_bytes: \"5Q\" is not a non-negative integer (K, M, G, T"},
      {"tok-0123456789abcdef team-a user max_stored_bytes=99999999999T\n",
       "tokens:1: max_stored_bytes"},
      {"tok-0123456789abcdef team-a user colour=blue\n", "tokens:1: unknown field \"colour=blue\""},
      {ok + ok, "tokens:2: the same token as line 1"},
      {"a-0123456789abcdef t user max_running_jobs=1\nb-0123456789abcdef t user "
       "max_running_jobs=2\n",
       "tokens:2: max_running_jobs=2 for tenant t differs from the value an earlier line gave (1)"},
      {std::string("tok-0123456789abcdef team-a user\0\n", 35), "tokens:1: contains a NUL byte"},
      {std::string(70, 'x') + " " + std::string(65, 't') + " user\n", "tokens:1: tenant"},
  };
  for (const Case& c : cases) {
    auto t = ParseTokens(c.text, "tokens");
    ASSERT_FALSE(t.ok()) << c.text;
    EXPECT_TRUE(absl::IsInvalidArgument(t.status()));
    EXPECT_TRUE(absl::StrContains(t.status().message(), c.needle))
        << "want \"" << c.needle << "\", got: " << t.status();
  }
  // Empty and comment-only files parse (no one may call; the scheduler warns).
  EXPECT_TRUE(ParseTokens("", "tokens").ok());
  EXPECT_TRUE(ParseTokens("# nobody yet\n\n", "tokens").ok());
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/auth_test_" + std::to_string(getpid());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::trunc) << text;
    return path;
  }
  std::string dir_;
};

TEST_F(AuthenticatorTest, QuotasMergeTheFileOverTheFlagsAndAReloadThatFailsKeepsTheOld) {
  AuthOptions o;
  o.tokens_file = Write("tokens", "a-0123456789abcdef team-a user max_queued_jobs=2\n");
  o.worker_token_file = Write("worker", "  worker-0123456789abcdef\n");
  o.defaults = {10, 0, 1000};
  auto auth = Authenticator::Create(o);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE((*auth)->enabled());
  EXPECT_TRUE((*auth)->workers_need_token());
  TenantQuota a = (*auth)->QuotaOf("team-a");
  EXPECT_EQ(a.max_queued_jobs, 2);
  EXPECT_EQ(a.max_running_jobs, 0);
  EXPECT_EQ(a.max_stored_bytes, 1000);
  EXPECT_EQ((*auth)->QuotaOf("team-b").max_queued_jobs, 10);

  Write("tokens", "a-0123456789abcdef team-a user max_queued_jobs=5\n");
  ASSERT_TRUE((*auth)->Reload().ok());
  EXPECT_EQ((*auth)->QuotaOf("team-a").max_queued_jobs, 5);

  Write("tokens", "a-0123456789abcdef team-a wizard\n");
  absl::Status bad = (*auth)->Reload();
  EXPECT_TRUE(absl::StrContains(bad.message(), "tokens:1: role")) << bad;
  EXPECT_EQ((*auth)->QuotaOf("team-a").max_queued_jobs, 5);  // the old table stays

  Write("tokens", "a-0123456789abcdef team-a user\n");
  Write("worker", "short\n");
  bad = (*auth)->Reload();
  EXPECT_TRUE(absl::StrContains(bad.message(), "--worker-token-file")) << bad;
}

TEST_F(AuthenticatorTest, MissingFilesAreNamed) {
  AuthOptions o;
  o.tokens_file = dir_ + "/nope";
  auto auth = Authenticator::Create(o);
  ASSERT_FALSE(auth.ok());
  EXPECT_TRUE(absl::StrContains(auth.status().message(), "--auth-tokens: cannot read"))
      << auth.status();
  AuthOptions open;  // no files: open mode
  auto a = Authenticator::Create(open);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE((*a)->enabled());
  EXPECT_FALSE((*a)->workers_need_token());
}

}  // namespace
}  // namespace prunesvc::server

#include "common/prng.h"

#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/search_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc {
namespace {

constexpr uint64_t kMax64 = std::numeric_limits<uint64_t>::max();

// Must match WEIGHTS and BIG_NS in search_test_ref.py.
const std::vector<double> kWeights = {
    0.0, 1.5, 3.0, 0.0, 0.25, -1.0, std::numeric_limits<double>::quiet_NaN()};
const std::vector<uint64_t> kBigNs = {
    1, 2, 3, 7, 10, 1000003, (uint64_t{1} << 32) + 1, (uint64_t{1} << 63) + 1, kMax64};

// The same transcript as search_test_ref.py's prng_transcript(), built with the C++ code.
std::vector<std::string> CppTranscript() {
  std::vector<std::string> out;
  for (uint64_t x : {uint64_t{0}, uint64_t{1}, uint64_t{0xDEADBEEF}, kMax64}) {
    out.push_back(absl::StrCat("mix64 ", x, " ", Mix64(x)));
  }
  for (uint64_t seed : {uint64_t{0}, uint64_t{1}, uint64_t{42}, kMax64}) {
    Prng p(seed);
    std::vector<uint64_t> v;
    for (int i = 0; i < 6; ++i) v.push_back(p.Next());
    out.push_back(absl::StrCat("seed ", seed, " next ", absl::StrJoin(v, " ")));
    v.clear();
    for (uint64_t n : kBigNs) {
      for (int i = 0; i < 3; ++i) v.push_back(p.UniformInt(n));
    }
    out.push_back(absl::StrCat("uniform_int ", absl::StrJoin(v, " ")));
    v.clear();
    for (int i = 0; i < 5; ++i) v.push_back(static_cast<uint64_t>(p.UniformDouble() * 0x1p53));
    out.push_back(absl::StrCat("uniform_double_x2^53 ", absl::StrJoin(v, " ")));
    v.clear();
    for (int i = 0; i < 12; ++i) v.push_back(p.Bernoulli(0.3) ? 1 : 0);
    out.push_back(absl::StrCat("bernoulli_0.3 ", absl::StrJoin(v, " ")));
    std::vector<int> perm(10);
    std::iota(perm.begin(), perm.end(), 0);
    p.Shuffle(perm);
    out.push_back(absl::StrCat("shuffle ", absl::StrJoin(perm, " ")));
    v.clear();
    for (int i = 0; i < 12; ++i) v.push_back(p.WeightedIndex(kWeights));
    out.push_back(absl::StrCat("weighted ", absl::StrJoin(v, " ")));
    v.clear();
    const std::vector<double> zeros = {0.0, 0.0, 0.0};
    for (int i = 0; i < 4; ++i) v.push_back(p.WeightedIndex(zeros));
    out.push_back(absl::StrCat("weighted_zero ", absl::StrJoin(v, " ")));
    Prng f = p.Fork(7);
    v.clear();
    for (int i = 0; i < 3; ++i) v.push_back(f.Next());
    out.push_back(absl::StrCat("fork7 ", absl::StrJoin(v, " ")));
    out.push_back(absl::StrCat("after ", p.Next()));
  }
  return out;
}

TEST(PrngTest, MatchesIndependentPythonReference) {
  const std::vector<std::string> expected = testing_util::RunReference("prng");
  ASSERT_FALSE(expected.empty()) << "search_test_ref.py prng failed";
  EXPECT_THAT(CppTranscript(), testing::ElementsAreArray(expected));
}

// Known answers of the reference xoshiro256starstar.c from the state {1, 2, 3, 4}.
TEST(PrngTest, XoshiroKnownAnswerFromRawState) {
  auto p = Prng::FromState({1, 2, 3, 4});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->Next(), 11520u);
  EXPECT_EQ(p->Next(), 0u);
  EXPECT_EQ(p->Next(), 1509978240u);
  EXPECT_EQ(p->Next(), 1215971899390074240u);
}

TEST(PrngTest, StateRoundTripsThroughHex) {
  Prng p(1234);
  for (int i = 0; i < 5; ++i) p.Next();
  const std::string hex = p.StateHex();
  EXPECT_EQ(hex.size(), 64u);
  auto q = Prng::FromStateHex(hex);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(*q, p);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(q->Next(), p.Next());
}

TEST(PrngTest, RejectsBadStates) {
  EXPECT_FALSE(Prng::FromState({0, 0, 0, 0}).ok());
  EXPECT_FALSE(Prng::FromStateHex(std::string(64, '0')).ok());
  EXPECT_FALSE(Prng::FromStateHex("abc").ok());
  EXPECT_FALSE(Prng::FromStateHex(std::string(63, '1') + "g").ok());
  EXPECT_FALSE(Prng::FromStateHex(std::string(63, '1') + "A").ok());
}

TEST(PrngTest, ForkDoesNotAdvanceParentAndDiffersById) {
  Prng p(99);
  const Prng before = p;
  Prng a = p.Fork(1);
  Prng b = p.Fork(2);
  Prng a2 = p.Fork(1);
  EXPECT_EQ(p, before);
  EXPECT_EQ(a, a2);
  EXPECT_NE(a.Next(), b.Next());
}

// Pearson's chi-square against uniform over n = 10 bins with 100,000 draws: 9 degrees of
// freedom, the 99.9th percentile is 27.88. A fixed seed makes this deterministic, so it checks
// that the mapping is not grossly biased (e.g. a modulo or an off-by-one), not luck.
double ChiSquare(const std::vector<int>& counts, const std::vector<double>& probs, int draws) {
  double chi = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = probs[i] * draws;
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

TEST(PrngTest, UniformIntIsUniform) {
  Prng p(7);
  const int draws = 100000;
  std::vector<int> counts(10, 0);
  for (int i = 0; i < draws; ++i) {
    const uint64_t v = p.UniformInt(10);
    ASSERT_LT(v, 10u);
    ++counts[v];
  }
  EXPECT_LT(ChiSquare(counts, std::vector<double>(10, 0.1), draws), 27.88);
}

TEST(PrngTest, UniformIntLargeBoundRejectsBias) {
  // n = 2⁶³ + 1: without rejection, multiply-shift maps ~2× as many inputs to half the outputs.
  // Top bit of the output splits [0, n) into [0, 2⁶²) etc.; check the halves [0, n/2), [n/2, n).
  Prng p(11);
  const uint64_t n = (uint64_t{1} << 63) + 1;
  const int draws = 20000;
  std::vector<int> counts(2, 0);
  for (int i = 0; i < draws; ++i) ++counts[p.UniformInt(n) >= n / 2 ? 1 : 0];
  EXPECT_LT(ChiSquare(counts, {0.5, 0.5}, draws), 10.83);  // 1 dof, 99.9th percentile
}

TEST(PrngTest, UniformDoubleRangeAndMean) {
  Prng p(3);
  double sum = 0;
  std::vector<int> counts(20, 0);
  const int draws = 100000;
  for (int i = 0; i < draws; ++i) {
    const double u = p.UniformDouble();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    ++counts[static_cast<int>(u * 20)];
  }
  EXPECT_NEAR(sum / draws, 0.5, 0.005);  // σ of the mean ≈ 0.0009
  EXPECT_LT(ChiSquare(counts, std::vector<double>(20, 0.05), draws), 43.82);  // 19 dof, 99.9 %
}

TEST(PrngTest, BernoulliEdgeCasesAndRate) {
  Prng p(5);
  int ones = 0;
  for (int i = 0; i < 10000; ++i) {
    EXPECT_FALSE(p.Bernoulli(0.0));
    EXPECT_TRUE(p.Bernoulli(1.0));
    ones += p.Bernoulli(0.25);
  }
  EXPECT_NEAR(ones / 10000.0, 0.25, 0.02);  // σ ≈ 0.0043
}

TEST(PrngTest, WeightedIndexFollowsWeights) {
  Prng p(17);
  const std::vector<double> w = {1.0, 0.0, 2.0, 5.0, 2.0};
  const int draws = 100000;
  std::vector<int> counts(w.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[p.WeightedIndex(w)];
  EXPECT_EQ(counts[1], 0);
  const std::vector<int> positive = {counts[0], counts[2], counts[3], counts[4]};
  EXPECT_LT(ChiSquare(positive, {0.1, 0.2, 0.5, 0.2}, draws), 16.27);  // 3 dof, 99.9 %
}

TEST(PrngTest, WeightedIndexEmptyDoesNotDraw) {
  Prng p(1);
  const Prng before = p;
  EXPECT_EQ(p.WeightedIndex({}), 0u);
  EXPECT_EQ(p, before);
}

TEST(PrngTest, ShuffleIsAPermutationWithUniformPositions) {
  Prng p(23);
  const int draws = 40000;
  std::vector<int> first(5, 0);
  for (int i = 0; i < draws; ++i) {
    std::vector<int> v = {0, 1, 2, 3, 4};
    p.Shuffle(v);
    std::vector<int> sorted = v;
    std::sort(sorted.begin(), sorted.end());
    ASSERT_THAT(sorted, testing::ElementsAre(0, 1, 2, 3, 4));
    ++first[v[0]];
  }
  EXPECT_LT(ChiSquare(first, std::vector<double>(5, 0.2), draws), 18.47);  // 4 dof, 99.9 %
}

}  // namespace
}  // namespace prunesvc

#include "common/estimators.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/search_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::search {
namespace {

using ::testing::HasSubstr;

// The reference's transcript lines by their first words (the key is the line up to the values).
std::vector<std::vector<std::string>> ReferenceLines(const std::string& kind) {
  std::vector<std::vector<std::string>> out;
  for (const std::string& line : testing_util::RunReference("estimators")) {
    std::vector<std::string> words = absl::StrSplit(line, ' ');
    if (!words.empty() && words[0] == kind) out.push_back(std::move(words));
  }
  return out;
}

double ParseDouble(const std::string& s) {
  double x = 0;
  EXPECT_TRUE(absl::SimpleAtod(s, &x)) << s;
  return x;
}

// The synthetic evaluated policies of search_test_ref.py (synthetic_* there): every value is
// exact in binary64 on both sides.
std::vector<double> SyntheticLosses(int p, int n) {
  std::vector<double> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(((p * 37 + i * 11 + (p * i) % 7) % 23) / 23.0 + p / 50.0);
  }
  return out;
}
double SyntheticOmega(int p) { return (p % 5 + 1) / 8.0; }
double SyntheticCapacity(int p) { return ((p * 3) % 7) / 10.0; }

TEST(EstimatorsTest, PermutationsMatchIndependentPythonReference) {
  const auto lines = ReferenceLines("perm");
  ASSERT_EQ(lines.size(), 4u) << "search_test_ref.py estimators failed";
  for (const std::vector<std::string>& w : lines) {
    uint64_t seed = 0, stream = 0;
    int n = 0;
    ASSERT_TRUE(absl::SimpleAtoi(w[1], &seed) && absl::SimpleAtoi(w[2], &stream) &&
                absl::SimpleAtoi(w[3], &n));
    const std::vector<int> perm = SamplePermutation(seed, stream, n);
    EXPECT_EQ(absl::StrJoin(perm, " "),
              absl::StrJoin(std::vector<std::string>(w.begin() + 4, w.end()), " "))
        << "seed " << seed << " stream " << stream;
    std::vector<int> sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < n; ++i) EXPECT_EQ(sorted[i], i);
  }
  // Deterministic, and the two streams give unrelated halves.
  EXPECT_EQ(SamplePermutation(5, kSplitStream, 64), SamplePermutation(5, kSplitStream, 64));
  EXPECT_NE(SamplePermutation(5, kSplitStream, 64), SamplePermutation(5, kCvStream, 64));
  EXPECT_NE(SamplePermutation(5, kSplitStream, 64), SamplePermutation(6, kSplitStream, 64));
  EXPECT_TRUE(SamplePermutation(5, kSplitStream, 0).empty());
}

TEST(EstimatorsTest, ClosedFormSmallCase) {
  const std::vector<double> losses = {1, 2, 3, 4, 10};
  const std::vector<int> idx = {4, 0, 2, 1, 3};
  EXPECT_DOUBLE_EQ(MeanOver(losses, idx), 4.0);
  // Deviations 6, −3, −1, −2, 0: Σ² = 50, sample variance 12.5, SE = √(12.5 / 5) = √2.5.
  EXPECT_NEAR(StandardErrorOver(losses, idx), std::sqrt(2.5), 1e-15);
  // First ⌊5/2⌋ = 2 indices {4, 0}: mean 5.5; the rest {2, 1, 3}: mean 3.
  EXPECT_DOUBLE_EQ(SplitGapOver(losses, idx), 2.5);
  // A subset, and the degenerate sizes.
  const std::vector<int> two = {3, 0};
  EXPECT_DOUBLE_EQ(SplitGapOver(losses, two), 3.0);
  EXPECT_NEAR(StandardErrorOver(losses, two), std::sqrt(4.5) / std::sqrt(2.0), 1e-15);
  EXPECT_EQ(StandardErrorOver(losses, std::vector<int>{2}), 0);
  EXPECT_EQ(SplitGapOver(losses, std::vector<int>{2}), 0);
  EXPECT_EQ(MeanOver(losses, std::vector<int>{}), 0);
  // C = Σ P r² / Σ P = (100·0.25 + 300·0.04 + 600·0) / 1000.
  const std::vector<int64_t> params = {100, 300, 600};
  EXPECT_NEAR(SquaredCapacity(std::vector<double>{0.5, 0.2, 0.0}, params), 0.037, 1e-15);
  EXPECT_EQ(SquaredCapacity(std::vector<double>{0, 0, 0}, params), 0);
  EXPECT_EQ(SquaredCapacity(std::vector<double>{0.5}, std::vector<int64_t>{0}), 0);
}

// PAIRED: the standard error of the differences, not of the losses — a policy that is the
// reference plus a constant has SE_D = 0 however spread its own losses are.
TEST(EstimatorsTest, PairedStandardErrorClosedForm) {
  const std::vector<double> reference = {1, 5, 2, 8, 3};
  const std::vector<double> shifted = {0.5, 4.5, 1.5, 7.5, 2.5};
  const std::vector<int> idx = {4, 0, 2, 1, 3};
  EXPECT_EQ(PairedStandardErrorOver(shifted, reference, idx), 0);
  EXPECT_GT(StandardErrorOver(shifted, idx), 1);  // UCB's term sees the samples' spread
  // Differences 0, 1, −1, 2, 0 (mean 0.4): Σ(d − 0.4)² = 0.16 + 0.36 + 1.96 + 2.56 + 0.16 = 5.2,
  // sample variance 1.3, SE = √(1.3 / 5).
  const std::vector<double> other = {1, 6, 1, 10, 3};
  EXPECT_NEAR(PairedStandardErrorOver(other, reference, idx), std::sqrt(0.26), 1e-15);
  const TermInputs in{.sample_losses = other, .reference_losses = reference};
  EXPECT_NEAR(*EstimatorTerm(Estimator::kPaired, in, idx), std::sqrt(0.26), 1e-15);
  EXPECT_EQ(*EstimatorTerm(Estimator::kPaired,
                           {.sample_losses = reference, .reference_losses = reference}, idx),
            0);  // the reference itself
  EXPECT_EQ(PairedStandardErrorOver(other, reference, std::vector<int>{3}), 0);
  // Without the reference's losses there is no term.
  EXPECT_THAT(EstimatorTerm(Estimator::kPaired, {.sample_losses = other}, idx).status().message(),
              HasSubstr("reference policy"));
}

// The reason for CAPACITY: at a fixed parameter-weighted mean ratio (≈ a fixed budget), the even
// spread has the smallest C and the corners the largest — the reverse of Ω's pull.
TEST(EstimatorsTest, CapacityIsConvexAndPrefersEvenRatios) {
  const std::vector<int64_t> params = {1, 1, 1, 1};
  const double even = SquaredCapacity(std::vector<double>{0.4, 0.4, 0.4, 0.4}, params);
  const double mild = SquaredCapacity(std::vector<double>{0.3, 0.5, 0.4, 0.4}, params);
  const double corner = SquaredCapacity(std::vector<double>{0.8, 0.8, 0.0, 0.0}, params);
  EXPECT_LT(even, mild);
  EXPECT_LT(mild, corner);
  // Midpoint convexity in one unit's ratio.
  for (double a : {0.0, 0.1, 0.3}) {
    for (double b : {0.5, 0.8}) {
      const double ca = SquaredCapacity(std::vector<double>{a, 0.2, 0.2, 0.2}, params);
      const double cb = SquaredCapacity(std::vector<double>{b, 0.2, 0.2, 0.2}, params);
      const double cm = SquaredCapacity(std::vector<double>{(a + b) / 2, 0.2, 0.2, 0.2}, params);
      EXPECT_LT(cm, (ca + cb) / 2);
    }
  }
}

TEST(EstimatorsTest, TermsMatchIndependentPythonReference) {
  const auto lines = ReferenceLines("term");
  ASSERT_EQ(lines.size(), 20u) << "search_test_ref.py estimators failed";
  const std::vector<int> order = SamplePermutation(99, kSplitStream, 16);
  const std::vector<double> reference = SyntheticLosses(5, 16);  // TERM_REFERENCE there
  for (const std::vector<std::string>& w : lines) {
    auto estimator = ParseEstimator(w[1]);
    ASSERT_TRUE(estimator.ok());
    const int p = std::stoi(w[2]);
    const std::vector<double> losses = SyntheticLosses(p, 16);
    const TermInputs in{.omega = SyntheticOmega(p),
                        .capacity = SyntheticCapacity(p),
                        .sample_losses = losses,
                        .reference_losses = reference};
    auto got = EstimatorTerm(*estimator, in, order);
    ASSERT_TRUE(got.ok()) << got.status();
    const double want = ParseDouble(w[3]);
    EXPECT_NEAR(*got, want, 1e-13 * std::max(1.0, std::abs(want))) << w[1] << " " << p;
  }
}

TEST(EstimatorsTest, TermErrors) {
  const std::vector<double> losses = {0.5, 0.7};
  const TermInputs in{.omega = 0.5, .capacity = 0.1, .sample_losses = losses};
  EXPECT_THAT(EstimatorTerm(Estimator::kUcb, in, std::vector<int>{0, 2}).status().message(),
              HasSubstr("sample index 2"));
  EXPECT_FALSE(EstimatorTerm(Estimator::kSplit, in, std::vector<int>{-1, 0}).ok());
  EXPECT_FALSE(EstimatorTerm(Estimator::kNorm, in, std::vector<int>{}).ok());
  // NORM and CAPACITY never read the losses: any index list of the right length will do.
  EXPECT_DOUBLE_EQ(*EstimatorTerm(Estimator::kNorm, in, std::vector<int>{0, 1, 2, 3}), 0.25);
  EXPECT_DOUBLE_EQ(*EstimatorTerm(Estimator::kCapacity, in, std::vector<int>{0, 1, 2, 3}), 0.05);
}

TEST(EstimatorsTest, CrossValidatedEtaMatchesBruteForceReference) {
  const auto lines = ReferenceLines("cv");
  ASSERT_EQ(lines.size(), 15u) << "search_test_ref.py estimators failed";
  const std::vector<double> grid = DefaultEtaGrid();
  std::set<double> chosen;
  for (const std::vector<std::string>& w : lines) {
    auto estimator = ParseEstimator(w[1]);
    ASSERT_TRUE(estimator.ok());
    const int num_policies = std::stoi(w[2]);
    const int n = std::stoi(w[3]);
    std::vector<std::vector<double>> losses;
    for (int p = 0; p < num_policies; ++p) losses.push_back(SyntheticLosses(p, n));
    std::vector<TermInputs> inputs;
    for (int p = 0; p < num_policies; ++p) {
      inputs.push_back({.omega = SyntheticOmega(p),
                        .capacity = SyntheticCapacity(p),
                        .sample_losses = losses[p],
                        .reference_losses = losses[0]});  // CV_REFERENCE there
    }
    auto got = CrossValidateEta(*estimator, inputs, grid, SamplePermutation(99, kCvStream, n));
    ASSERT_TRUE(got.ok()) << got.status();
    const std::string what = absl::StrCat(w[1], " ", num_policies, "×", n);
    EXPECT_EQ(got->eta, ParseDouble(w[4])) << what;
    chosen.insert(got->eta);
    ASSERT_EQ(got->rhos.size(), grid.size());
    for (size_t k = 0; k < grid.size(); ++k) {
      const std::string& want = w[5 + k];
      if (want == "null") {
        EXPECT_FALSE(got->rhos[k].has_value()) << what << " η " << grid[k];
      } else {
        ASSERT_TRUE(got->rhos[k].has_value()) << what << " η " << grid[k];
        EXPECT_NEAR(*got->rhos[k], ParseDouble(want), 1e-12) << what << " η " << grid[k];
      }
    }
    // The chosen ρ is the largest defined one.
    for (const std::optional<double>& r : got->rhos) {
      if (r.has_value()) EXPECT_LE(*r, *got->rho);
    }
  }
  // Not vacuous: the cases choose η = 0 and several positive values.
  EXPECT_GE(chosen.size(), 3u);
}

// Exact ties go to the smaller η, whatever the grid order; no defined ρ → the smallest η.
TEST(EstimatorsTest, CrossValidatedEtaTiesAndErrors) {
  std::vector<std::vector<double>> losses = {{1, 2, 3, 4}, {2, 3, 4, 5}, {3, 4, 5, 6}};
  std::vector<TermInputs> inputs;
  for (size_t p = 0; p < losses.size(); ++p) {
    inputs.push_back({.omega = 0.5, .capacity = 0.1, .sample_losses = losses[p]});
  }
  const std::vector<int> perm = {0, 1, 2, 3};
  // Ω is the same for every policy: every η ranks alike, ρ = 1 for all.
  auto tie = CrossValidateEta(Estimator::kNorm, inputs, std::vector<double>{3, 1, 0.5}, perm);
  ASSERT_TRUE(tie.ok());
  EXPECT_EQ(tie->eta, 0.5);
  EXPECT_DOUBLE_EQ(*tie->rho, 1.0);
  auto few = CrossValidateEta(Estimator::kNorm, std::span<const TermInputs>(inputs).first(2),
                              std::vector<double>{3, 1}, perm);
  ASSERT_TRUE(few.ok());
  EXPECT_EQ(few->eta, 1);
  EXPECT_FALSE(few->rho.has_value());
  EXPECT_THAT(CrossValidateEta(Estimator::kNorm, inputs, {}, perm).status().message(),
              HasSubstr("empty grid"));
  EXPECT_FALSE(CrossValidateEta(Estimator::kNorm, inputs, std::vector<double>{-1}, perm).ok());
  EXPECT_FALSE(CrossValidateEta(Estimator::kNorm, inputs, std::vector<double>{NAN}, perm).ok());
  EXPECT_THAT(CrossValidateEta(Estimator::kUcb, inputs, DefaultEtaGrid(), std::vector<int>{0, 1, 2})
                  .status()
                  .message(),
              HasSubstr("expected 3"));
  EXPECT_FALSE(
      CrossValidateEta(Estimator::kUcb, inputs, DefaultEtaGrid(), std::vector<int>{0}).ok());
}

TEST(EstimatorsTest, NamesRoundTrip) {
  for (Estimator e : {Estimator::kNorm, Estimator::kUcb, Estimator::kSplit, Estimator::kCapacity,
                      Estimator::kPaired}) {
    EXPECT_EQ(*ParseEstimator(EstimatorName(e)), e);
  }
  EXPECT_EQ(*ParseEstimator("ucb"), Estimator::kUcb);  // case-insensitive
  EXPECT_THAT(ParseEstimator("l2").status().message(), HasSubstr("unknown estimator \"l2\""));
  EXPECT_THAT(ParseEstimator("l2").status().message(), HasSubstr("expected NORM"));
  EXPECT_EQ(*ParseEtaRule("CV"), EtaRule::kCrossValidated);
  EXPECT_EQ(*ParseEtaRule(EtaRuleName(EtaRule::kAuto)), EtaRule::kAuto);
  EXPECT_EQ(*ParseEtaRule("cv"), EtaRule::kCrossValidated);
  EXPECT_EQ(*ParseEtaRule(EtaRuleName(EtaRule::kSamples)), EtaRule::kSamples);
  EXPECT_EQ(*ParseEtaRule("samples"), EtaRule::kSamples);
  EXPECT_FALSE(ParseEtaRule("holdout").ok());
  EXPECT_TRUE(EstimatorNeedsSampleLosses(Estimator::kUcb));
  EXPECT_TRUE(EstimatorNeedsSampleLosses(Estimator::kSplit));
  EXPECT_FALSE(EstimatorNeedsSampleLosses(Estimator::kNorm));
  EXPECT_FALSE(EstimatorNeedsSampleLosses(Estimator::kCapacity));
}

}  // namespace
}  // namespace prunesvc::search

#include "common/racing.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <vector>

#include "common/estimators.h"
#include "gtest/gtest.h"

namespace prunesvc::search {
namespace {

// A race whose bound's term is a constant: candidate 0's extra term.
RaceLimit ConstantTerm(double term, double threshold, int num_samples = 0) {
  RaceLimit race;
  race.threshold = threshold;
  race.num_samples = num_samples;
  race.extra = {term};
  return race;
}

std::optional<int> Replay(std::span<const double> losses, int batch, double term,
                          double threshold) {
  return ReplayRace(losses, batch, ConstantTerm(term, threshold, int(losses.size())), 0, 0.0);
}

TEST(RacingTest, RacedOutComparesTheBoundStrictlyAndNeverAfterTheLastSample) {
  // Bound after 16 of 64 samples summing to 8: 8/64 + 0.25 = 0.375.
  EXPECT_TRUE(RacedOut(8.0, 16, 64, 0.25, 0.374));
  EXPECT_FALSE(RacedOut(8.0, 16, 64, 0.25, 0.375));  // a tie is not out
  EXPECT_FALSE(RacedOut(8.0, 16, 64, 0.25, 0.5));
  EXPECT_FALSE(RacedOut(1e9, 64, 64, 0.0, 0.0));  // the whole set was scored
  EXPECT_FALSE(RacedOut(1e9, 16, 64, 0.0, std::numeric_limits<double>::infinity()));
}

TEST(RacingTest, TermIsTheSearchsNormTermPlusTheExtra) {
  RaceLimit race;
  race.threshold = 1;
  race.norm_eta = 2;
  race.num_samples = 16;
  EXPECT_TRUE(race.active());
  EXPECT_EQ(race.Term(0, 0.8), 2 * 0.8 / std::sqrt(16.0));  // bit for bit the fitness's term
  race.extra = {0.5, 0.25};
  EXPECT_EQ(race.Term(1, 0.8), 2 * 0.8 / std::sqrt(16.0) + 0.25);
  EXPECT_FALSE(RaceLimit{}.active());
  EXPECT_EQ(RaceLimit{}.Term(3, 0.9), 0.0);
}

TEST(RacingTest, ReplayChecksOnlyAtBatchBoundariesBeforeTheLast) {
  const std::vector<double> losses = {1, 1, 1, 1, 1, 1};  // n = 6, mean 1
  // Batch 2: checkpoints after 2 and 4 samples (bounds 1/3, 2/3), never after 6.
  EXPECT_EQ(Replay(losses, 2, 0, 0.3), 2);
  EXPECT_EQ(Replay(losses, 2, 0, 0.5), 4);
  EXPECT_EQ(Replay(losses, 2, 0, 0.9), std::nullopt);  // 1 > 0.9 only after all 6
  EXPECT_EQ(Replay(losses, 4, 0, 0.5), 4);
  EXPECT_EQ(Replay(losses, 0, 0, 0.1), 1);    // batch ≤ 0: every sample
  EXPECT_EQ(Replay(losses, 2, 0.5, 0.7), 2);  // the term counts from the start
}

// A replay over a prefix of the losses (a raced-out result reused under another threshold) cuts
// exactly where the whole set's replay cuts when that cut lies within the prefix, and does not
// cut otherwise: brute force over random losses, prefixes and thresholds.
TEST(RacingTest, APrefixReplayAgreesWithTheWholeSetsWithinThePrefix) {
  std::mt19937_64 rng(21);
  std::exponential_distribution<double> loss(1.5);
  std::uniform_real_distribution<double> unit(0, 1);
  int cut_inside = 0, no_cut = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const int n = 1 + int(rng() % 70);
    const int batch = 1 + int(rng() % 17);
    const int m = int(rng() % (n + 1));  // the prefix known
    std::vector<double> s(n);
    for (double& x : s) x = loss(rng);
    const double term = unit(rng) * 0.3;
    const double threshold = unit(rng) * 2;
    const std::optional<int> whole = Replay(s, batch, term, threshold);
    const std::optional<int> prefix =
        ReplayRacePrefix(std::span<const double>(s.data(), size_t(m)), n, batch,
                         ConstantTerm(term, threshold, n), 0, 0.0);
    if (whole.has_value() && *whole <= m) {
      ASSERT_EQ(prefix, whole) << "trial " << trial;
      ++cut_inside;
    } else {
      ASSERT_EQ(prefix, std::nullopt) << "trial " << trial;
      ++no_cut;
    }
  }
  EXPECT_GT(cut_inside, 1000);
  EXPECT_GT(no_cut, 1000);
}

// Soundness against brute force: over random non-negative per-sample losses, a candidate is
// raced out only when its whole-set fitness (the in-order mean plus the term, computed as the
// search computes it) is above the threshold, and the replay agrees with a checkpoint-by-
// checkpoint recomputation of the bound.
TEST(RacingTest, ARacedOutCandidateIsWorseThanTheThresholdBruteForce) {
  std::mt19937_64 rng(20);
  std::exponential_distribution<double> loss(1.5);
  std::uniform_real_distribution<double> unit(0, 1);
  int raced = 0, survived = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const int n = 1 + int(rng() % 70);
    const int batch = 1 + int(rng() % 17);
    std::vector<double> s(n);
    for (double& x : s) x = unit(rng) < 0.1 ? 0.0 : loss(rng);
    const double term = unit(rng) < 0.5 ? 0.0 : unit(rng) * 0.3;
    double full = 0;
    for (double x : s) full += x;
    const double fitness = full / n + term;
    const double threshold = fitness * (0.3 + 1.2 * unit(rng));
    const std::optional<int> k = Replay(s, batch, term, threshold);
    std::optional<int> expect;
    double sum = 0;
    for (int i = 0; i < n && !expect; ++i) {
      sum += s[i];
      if ((i + 1) % batch == 0 && i + 1 < n && sum / n + term > threshold) expect = i + 1;
    }
    ASSERT_EQ(k, expect) << "trial " << trial;
    if (k) {
      ++raced;
      ASSERT_GT(fitness, threshold) << "trial " << trial << ": raced out at " << *k;
      ASSERT_LT(*k, n);
      ASSERT_EQ(*k % batch, 0);
    } else {
      ++survived;
    }
  }
  // Both outcomes occur, so the checks above are not vacuous.
  EXPECT_GT(raced, 1000);
  EXPECT_GT(survived, 1000);
}

// PAIRED's bound b_k (racing.h) against brute force: for every prefix of random losses and
// reference losses, b_k ≤ the whole set's paired standard error as the search computes it
// (EstimatorTerm over a shuffled sample order), within 1e-9 of the prefix's own
// √(SS_k / (n − 1)) / √n recomputed in long double, and equal to that error up to the margin
// when k = n.
TEST(RacingTest, PairedLowerBoundNeverExceedsTheWholeSetsStandardError) {
  std::mt19937_64 rng(22);
  std::exponential_distribution<double> loss(1.5);
  std::uniform_real_distribution<double> unit(0, 1);
  for (int trial = 0; trial < 3000; ++trial) {
    const int n = 2 + int(rng() % 70);
    std::vector<double> s(n), ref(n);
    const bool close = unit(rng) < 0.3;  // a policy near the reference: small differences
    for (int i = 0; i < n; ++i) {
      ref[i] = unit(rng) < 0.1 ? 0.0 : loss(rng);
      s[i] = close ? std::max(0.0, ref[i] + 0.01 * (unit(rng) - 0.5)) : loss(rng);
    }
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    TermInputs in{.sample_losses = s, .reference_losses = ref};
    const absl::StatusOr<double> se = EstimatorTerm(Estimator::kPaired, in, order);
    ASSERT_TRUE(se.ok()) << se.status();
    for (int k = 0; k <= n; ++k) {
      const std::span<const double> prefix(s.data(), size_t(k));
      const double b = PairedTermLowerBound(prefix, ref, n);
      ASSERT_LE(b, *se) << "trial " << trial << " k " << k;
      ASSERT_GE(b, 0.0);
      long double mean = 0, ss = 0;
      for (int i = 0; i < k; ++i) mean += (long double)s[i] - ref[i];
      if (k > 0) mean /= k;
      for (int i = 0; i < k; ++i) {
        const long double e = (long double)s[i] - ref[i] - mean;
        ss += e * e;
      }
      const double exact =
          k < 2 ? 0.0 : double(std::sqrt(ss / (n - 1)) / std::sqrt((long double)n));
      ASSERT_NEAR(b, exact, 1e-9 * exact + 2e-12) << "trial " << trial << " k " << k;
      if (k == n) ASSERT_NEAR(b, *se, 1e-8 * *se + 2e-12);
    }
  }
  EXPECT_EQ(PairedTermLowerBound(std::vector<double>{1.0}, std::vector<double>{0.0}, 8), 0.0);
  EXPECT_EQ(PairedTermLowerBound(std::vector<double>{1.0, 2.0}, std::vector<double>{0.0}, 8),
            0.0);  // a reference shorter than the prefix: no bound
}

// Soundness of the PAIRED bound against brute force: a candidate raced out under a race with
// paired_eta is above the threshold by its whole-set fitness L̂ + η·SE_D (as the search computes
// it), and the PAIRED part cuts candidates the loss alone would not.
TEST(RacingTest, APairedRacedOutCandidateIsWorseThanTheThresholdBruteForce) {
  std::mt19937_64 rng(23);
  std::exponential_distribution<double> loss(1.5);
  std::uniform_real_distribution<double> unit(0, 1);
  int raced = 0, survived = 0, only_by_the_term = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const int n = 2 + int(rng() % 70);
    const int batch = 1 + int(rng() % 17);
    std::vector<double> s(n), ref(n);
    for (int i = 0; i < n; ++i) {
      ref[i] = loss(rng);
      s[i] = unit(rng) < 0.1 ? 0.0 : loss(rng);
    }
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    const double eta = unit(rng) * 3;
    TermInputs in{.sample_losses = s, .reference_losses = ref};
    const double se = *EstimatorTerm(Estimator::kPaired, in, order);
    double full = 0;
    for (double x : s) full += x;
    const double fitness = full / n + eta * se;
    RaceLimit race;
    race.threshold = fitness * (0.3 + 1.2 * unit(rng));
    race.num_samples = n;
    race.paired_eta = eta;
    race.reference_losses = ref;
    const std::optional<int> k = ReplayRace(s, batch, race, 0, 0.0);
    if (k) {
      ++raced;
      ASSERT_GT(fitness, race.threshold) << "trial " << trial << ": raced out at " << *k;
      ASSERT_LT(*k, n);
      ASSERT_EQ(*k % batch, 0);
      RaceLimit loss_only = race;
      loss_only.paired_eta = 0;
      const std::optional<int> k0 = ReplayRace(s, batch, loss_only, 0, 0.0);
      ASSERT_TRUE(!k0 || *k0 >= *k) << "trial " << trial;  // the term only adds
      only_by_the_term += !k0;
    } else {
      ++survived;
    }
  }
  EXPECT_GT(raced, 1000);
  EXPECT_GT(survived, 1000);
  EXPECT_GT(only_by_the_term, 100);
}

}  // namespace
}  // namespace prunesvc::search

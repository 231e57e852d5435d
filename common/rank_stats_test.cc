#include "common/rank_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

namespace prunesvc {
namespace {

TEST(RankStatsTest, FractionalRanksAverageTies) {
  EXPECT_EQ(FractionalRanks({3, 1, 2}), (std::vector<double>{3, 1, 2}));
  EXPECT_EQ(FractionalRanks({5, 1, 5, 5, 0}), (std::vector<double>{4, 2, 4, 4, 1}));
  EXPECT_TRUE(FractionalRanks({}).empty());
}

// Without ties ρ = 1 − 6·Σd²/(n(n²−1)) — a different formula than the one implemented.
TEST(RankStatsTest, SpearmanMatchesTheClosedFormWithoutTies) {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 3 + int(rng() % 40);
    std::vector<double> x(n), y(n);
    std::vector<int> px(n), py(n);
    std::iota(px.begin(), px.end(), 0);
    std::iota(py.begin(), py.end(), 0);
    std::shuffle(px.begin(), px.end(), rng);
    std::shuffle(py.begin(), py.end(), rng);
    double d2 = 0;
    for (int i = 0; i < n; ++i) {
      x[i] = 0.5 * px[i] - 3;  // any strictly monotone map of the ranks
      y[i] = std::exp(0.1 * py[i]);
      d2 += double(px[i] - py[i]) * double(px[i] - py[i]);
    }
    const double expected = 1 - 6 * d2 / (double(n) * (double(n) * n - 1));
    ASSERT_TRUE(SpearmanRho(x, y).has_value());
    EXPECT_NEAR(*SpearmanRho(x, y), expected, 1e-12) << "n=" << n;
  }
}

TEST(RankStatsTest, SpearmanWithTiesAndEdgeCases) {
  // Ranks x = 1, 2.5, 2.5, 4 against 1..4: Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5 → 4.5/√22.5.
  ASSERT_TRUE(SpearmanRho({1, 2, 2, 3}, {1, 2, 3, 4}).has_value());
  EXPECT_NEAR(*SpearmanRho({1, 2, 2, 3}, {1, 2, 3, 4}), 0.9486832980505138, 1e-12);
  EXPECT_NEAR(*SpearmanRho({1, 2, 3}, {30, 20, 10}), -1.0, 1e-15);
  EXPECT_FALSE(SpearmanRho({1, 1, 1}, {1, 2, 3}).has_value());  // constant side
  EXPECT_FALSE(SpearmanRho({1, 2}, {1, 2}).has_value());        // too few points
  EXPECT_FALSE(SpearmanRho({1, 2, 3}, {1, 2}).has_value());     // size mismatch
}

TEST(RankStatsTest, EvenlySpacedIndices) {
  EXPECT_EQ(EvenlySpacedIndices(5, 10), (std::vector<size_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(EvenlySpacedIndices(11, 3), (std::vector<size_t>{0, 5, 10}));
  EXPECT_EQ(EvenlySpacedIndices(10, 4), (std::vector<size_t>{0, 3, 6, 9}));
  EXPECT_EQ(EvenlySpacedIndices(100, 1), (std::vector<size_t>{0}));
  EXPECT_TRUE(EvenlySpacedIndices(0, 3).empty());
  EXPECT_TRUE(EvenlySpacedIndices(3, 0).empty());
  for (size_t count = 1; count < 60; ++count) {
    for (size_t limit = 1; limit < 20; ++limit) {
      const auto v = EvenlySpacedIndices(count, limit);
      ASSERT_EQ(v.size(), std::min(count, limit)) << count << " " << limit;
      EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
      EXPECT_EQ(std::adjacent_find(v.begin(), v.end()), v.end());
      EXPECT_EQ(v.front(), 0u);
      if (limit > 1) EXPECT_EQ(v.back(), count - 1);
    }
  }
}

}  // namespace
}  // namespace prunesvc

#include "common/owl.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include "common/nm_sparsity.h"
#include "common/prng.h"
#include "common/search_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::search {
namespace {

PolicySpace MakeSpace(int layers, std::vector<double> ratios = DefaultRatioChoices()) {
  // Equal layers (LLaMA's are), so only the ratios distinguish them.
  FlopsModelDims dims = testing_util::SyntheticDims(layers);
  for (auto& d : dims.decoder) d = dims.decoder[0];
  auto dense = ComputeDenseFlops(dims, testing_util::SyntheticStats());
  EXPECT_TRUE(dense.ok()) << dense.status();
  auto units = PruningUnits::Build(dims, *dense, UnitKind::kLayer);
  EXPECT_TRUE(units.ok()) << units.status();
  auto space = PolicySpace::Create(*dense, *units, std::move(ratios));
  EXPECT_TRUE(space.ok()) << space.status();
  return *std::move(space);
}

// OWL's reference code (luuyin/OWL lib/prune_all.py), transcribed step by step: the outlier
// ratios in percent, normalised to [0, 2λ], centred on the density 1 − S, sparsity = 1 − density.
std::vector<double> ReferenceSparsities(std::vector<double> outlier_ratios, double lambda,
                                        double s) {
  for (double& d : outlier_ratios) d *= 100;  // check_outlier_mean returns percent
  const double lo = *std::min_element(outlier_ratios.begin(), outlier_ratios.end());
  const double hi = *std::max_element(outlier_ratios.begin(), outlier_ratios.end());
  std::vector<double> all(outlier_ratios.size());
  for (size_t i = 0; i < all.size(); ++i) {
    all[i] = (outlier_ratios[i] - lo) * (1 / (hi - lo) * lambda * 2);
  }
  const double mean = std::accumulate(all.begin(), all.end(), 0.0) / double(all.size());
  std::vector<double> sparsity(all.size());
  for (size_t i = 0; i < all.size(); ++i) sparsity[i] = 1 - (all[i] - mean + (1 - s));
  return sparsity;
}

std::vector<double> RandomOutlierRatios(int n, uint64_t seed) {
  Prng prng(seed);
  std::vector<double> d(n);
  for (double& x : d) x = 0.002 + 0.03 * prng.UniformDouble();
  return d;
}

TEST(OwlTest, DeviationsMatchTheReferenceCode) {
  for (uint64_t seed : {1, 2, 3}) {
    const std::vector<double> d = RandomOutlierRatios(12, seed);
    auto dev = OwlDeviations(d);
    ASSERT_TRUE(dev.ok()) << dev.status();
    const std::vector<double> ref = ReferenceSparsities(d, kOwlLambda, 0.5);
    double sum = 0, lo = 1, hi = -1;
    for (size_t i = 0; i < d.size(); ++i) {
      EXPECT_NEAR(0.5 + (*dev)[i], ref[i], 1e-12) << i;
      sum += (*dev)[i];
      lo = std::min(lo, (*dev)[i]);
      hi = std::max(hi, (*dev)[i]);
    }
    EXPECT_NEAR(sum, 0, 1e-12);                   // centred on the mean ratio
    EXPECT_NEAR(hi - lo, 2 * kOwlLambda, 1e-12);  // a window of width 2λ
    // More outliers → lower ratio (the paper's direction).
    for (size_t a = 0; a < d.size(); ++a) {
      for (size_t b = 0; b < d.size(); ++b) {
        if (d[a] > d[b]) EXPECT_LT((*dev)[a], (*dev)[b]);
      }
    }
  }
  // Equal outlier ratios (the reference divides by zero): UNIFORM.
  auto flat = OwlDeviations(std::vector<double>(5, 0.01));
  ASSERT_TRUE(flat.ok());
  EXPECT_EQ(*flat, std::vector<double>(5, 0.0));
  EXPECT_FALSE(OwlDeviations(std::vector<double>{0.1, 1.5}).ok());
  EXPECT_FALSE(OwlDeviations(std::vector<double>{0.1, NAN}).ok());
  EXPECT_FALSE(OwlDeviations(std::vector<double>{}).ok());
}

// The ratios meet the budget (never above, within one whole-weight step below), keep OWL's
// deviations where no clamp binds, and are monotone in the outlier ratio.
TEST(OwlTest, RatiosMeetTheBudgetAndKeepTheDeviations) {
  const PolicySpace space = MakeSpace(8);
  const std::vector<double> d = RandomOutlierRatios(8, 11);
  auto dev = OwlDeviations(d);
  ASSERT_TRUE(dev.ok());
  for (double budget : {0.95, 0.8, 0.7, 0.6}) {
    auto r = OwlRatios(space, d, budget);
    ASSERT_TRUE(r.ok()) << r.status();
    auto f = space.FlopsOfRatios(*r);
    ASSERT_TRUE(f.ok());
    EXPECT_LE(*f, budget * space.dense_flops());
    EXPECT_GE(*f / space.dense_flops(), budget - 0.01) << budget;
    bool clamped = false;
    for (double x : *r) clamped |= x == 0 || x == space.max_ratio();
    if (!clamped) {
      for (size_t u = 1; u < r->size(); ++u) {
        EXPECT_NEAR((*r)[u] - (*r)[0], (*dev)[u] - (*dev)[0], 1e-9) << budget;
      }
    }
    for (size_t a = 0; a < d.size(); ++a) {
      for (size_t b = 0; b < d.size(); ++b) {
        if (d[a] > d[b]) EXPECT_LE((*r)[a], (*r)[b]);
      }
    }
    const double mean = std::accumulate(r->begin(), r->end(), 0.0) / double(r->size());
    std::printf("budget %.2f: mean ratio %.4f, range [%.4f, %.4f], F/F_dense %.6f%s\n", budget,
                mean, *std::min_element(r->begin(), r->end()),
                *std::max_element(r->begin(), r->end()), *f / space.dense_flops(),
                clamped ? " (clamped)" : "");
  }
  EXPECT_FALSE(OwlRatios(space, std::vector<double>(7, 0.01), 0.7).ok());  // wrong count
}

TEST(OwlTest, NmKeepsTheMostOutlierLayersDense) {
  const PolicySpace space = MakeSpace(6, NmRatioChoices({2, 4}));
  const std::vector<double> d = {0.010, 0.030, 0.020, 0.030, 0.005, 0.015};
  // Dense order by outliers: 1, 3 (tie → lower index first), 2, 5, 0, 4.
  const std::vector<int> order = {1, 3, 2, 5, 0, 4};
  const double floor = space.MinReachableRatio();
  for (int dense_units = 0; dense_units <= 6; ++dense_units) {
    Policy p(6, 1);
    for (int i = 0; i < dense_units; ++i) p[order[i]] = 0;
    auto f = space.FlopsRatio(p);
    ASSERT_TRUE(f.ok());
    // A budget exactly at this policy's FLOPs (and a hair above) gives exactly this policy.
    for (double budget : {std::min(1.0, *f * (1 + 1e-12)), std::min(1.0, *f + 1e-9)}) {
      auto r = OwlNmRatios(space, d, budget);
      ASSERT_TRUE(r.ok()) << r.status();
      auto expect = space.UnitRatios(p);
      ASSERT_TRUE(expect.ok());
      EXPECT_EQ(*r, *expect) << dense_units << " " << budget;
      auto got = space.FlopsOfRatios(*r);
      EXPECT_LE(*got, budget * space.dense_flops());
    }
  }
  EXPECT_EQ(OwlNmRatios(space, d, floor - 0.01).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(OwlNmRatios(MakeSpace(6), d, 0.8).ok());  // not an N:M space
}

}  // namespace
}  // namespace prunesvc::search

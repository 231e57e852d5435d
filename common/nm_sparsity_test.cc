#include "common/nm_sparsity.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/policy.h"
#include "common/search_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc {
namespace {

using ::testing::HasSubstr;

TEST(NmPatternTest, ParsesOnly24And48) {
  auto p = ParseNmPattern("2:4");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (NmPattern{2, 4}));
  auto q = ParseNmPattern("4:8");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(*q, (NmPattern{4, 8}));
  EXPECT_EQ(NmPatternName(*q), "4:8");
  for (const char* bad : {"", "1:4", "2:8", "3:4", "2-4", "2:4:8", "24", " 2:4", "4:8 "}) {
    auto r = ParseNmPattern(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("--nm")) << bad;
  }
  EXPECT_EQ(NmRatioChoices({2, 4}), (std::vector<double>{0.0, 0.5}));
  EXPECT_EQ(NmRatioChoices({4, 8}), (std::vector<double>{0.0, 0.5}));
}

// The FLOPs model's kept fraction of the N:M ratio is exactly N/M for every in divisible by M
// (counted as in − pruned whole weights, as the masks keep them).
TEST(NmPatternTest, KeptFractionIsExactlyNOverM) {
  for (NmPattern p : {NmPattern{2, 4}, NmPattern{4, 8}}) {
    for (int64_t in = p.m; in <= 20000; in += p.m) {
      ASSERT_EQ(PrunedPerRow(NmPrunedRatio(p), in), in / p.m * (p.m - p.n)) << in;
      ASSERT_EQ(KeptFraction(NmPrunedRatio(p), in), double(p.n) / double(p.m)) << in;
    }
  }
}

TEST(NmPatternTest, DivisibilityErrorNamesTheLinear) {
  FlopsModelDims dims = testing_util::SyntheticDims(3);
  auto ok = ComputeDenseFlops(dims, testing_util::SyntheticStats());
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(CheckNmDivisible(*ok, {2, 4}).ok());
  EXPECT_TRUE(CheckNmDivisible(*ok, {4, 8}).ok());
  dims.decoder[2].mlp_width = 100;  // down_proj of layer 2 reads 100 inputs: 4 | 100, 8 ∤ 100
  auto dense = ComputeDenseFlops(dims, testing_util::SyntheticStats());
  ASSERT_TRUE(dense.ok());
  EXPECT_TRUE(CheckNmDivisible(*dense, {2, 4}).ok());
  const absl::Status s = CheckNmDivisible(*dense, {4, 8});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("layers.2.mlp.down_proj (in_features 100)"));
  EXPECT_THAT(s.message(), HasSubstr("M = 8"));
}

// The pre-flight floor: N:M alone cannot go below every unit N:M. With the {dense, N:M} choices
// the policy space's smallest reachable ratio is exactly F(all N:M)/F(dense) — counted here by
// hand from the dense breakdown (each decoder linear's FLOPs × N/M) — and a budget just below it
// is rejected with that number in the message.
TEST(NmPatternTest, PreflightFloorIsEveryUnitNm) {
  const FlopsModelDims dims = testing_util::SyntheticDims(4);
  auto dense = ComputeDenseFlops(dims, testing_util::SyntheticStats());
  ASSERT_TRUE(dense.ok());
  for (auto kind : {search::UnitKind::kLayer, search::UnitKind::kLinear}) {
    auto units = search::PruningUnits::Build(dims, *dense, kind);
    ASSERT_TRUE(units.ok());
    auto space = search::PolicySpace::Create(*dense, *units, NmRatioChoices({2, 4}));
    ASSERT_TRUE(space.ok()) << space.status();
    const double floor = (dense->Total() - 0.5 * dense->DecoderLinearTotal()) / dense->Total();
    EXPECT_NEAR(space->MinReachableRatio(), floor, 1e-12);
    EXPECT_TRUE(space->CheckBudget(floor + 1e-9).ok());
    const absl::Status s = space->CheckBudget(floor - 0.01);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr(absl::StrFormat("%.4f", std::ceil(floor * 1e4) / 1e4)));
    // Uniform = every unit N:M; the all-dense policy is index 0.
    auto uniform = space->UniformPolicyForBudget(floor + 1e-9);
    ASSERT_TRUE(uniform.ok());
    EXPECT_EQ(*uniform, search::Policy(space->num_units(), 1));
  }
}

}  // namespace
}  // namespace prunesvc

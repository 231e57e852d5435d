#include "common/policy.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/search_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::search {
namespace {

using ::testing::HasSubstr;

PolicySpace MakeSpace(int layers, UnitKind kind,
                      std::vector<double> ratios = DefaultRatioChoices()) {
  const FlopsModelDims dims = testing_util::SyntheticDims(layers);
  auto dense = ComputeDenseFlops(dims, testing_util::SyntheticStats());
  EXPECT_TRUE(dense.ok()) << dense.status();
  auto units = PruningUnits::Build(dims, *dense, kind);
  EXPECT_TRUE(units.ok()) << units.status();
  auto space = PolicySpace::Create(*dense, *units, std::move(ratios));
  EXPECT_TRUE(space.ok()) << space.status();
  return *std::move(space);
}

// F counted from the masks: F_dense − Σ over decoder linears of 2·T·out·PrunedPerRow(r, in)
// (each pruned weight saves one multiply-add per token), with the (out, in) shapes taken from the
// synthetic dims and unit u = layer l (layer units) or linear 7·l + i (linear units): independent
// of PolicySpace's plumbing (unit membership, kept fractions, the breakdown's input widths).
double MaskCountedFlops(const PolicySpace& s, const std::vector<double>& r) {
  const int layers = static_cast<int>(s.dense().decoder_linear.size());
  const FlopsModelDims dims = testing_util::SyntheticDims(layers);
  const double tokens = testing_util::SyntheticStats().mean_tokens;
  const bool per_layer = s.units().kind == UnitKind::kLayer;
  double f = s.dense().Total();
  for (int l = 0; l < layers; ++l) {
    const DecoderLayerFlopsDims& d = dims.decoder[l];
    // (out, in) of q, k, v, o, gate, up, down.
    const int64_t shapes[7][2] = {{d.q_width, d.hidden},   {d.kv_width, d.hidden},
                                  {d.kv_width, d.hidden},  {d.hidden, d.q_width},
                                  {d.mlp_width, d.hidden}, {d.mlp_width, d.hidden},
                                  {d.hidden, d.mlp_width}};
    for (int i = 0; i < 7; ++i) {
      const double ratio = r[per_layer ? l : 7 * l + i];
      f -= 2.0 * tokens * double(shapes[i][0]) * double(PrunedPerRow(ratio, shapes[i][1]));
    }
  }
  return f;
}

// The largest FLOPs one step of one unit moves (whole weights per row, so it can exceed Δratio ·
// unit FLOPs), as a fraction of dense FLOPs.
double MaxStepFraction(const PolicySpace& s) {
  double step = 0;
  for (int u = 0; u < s.num_units(); ++u) {
    for (int k = 1; k < s.num_choices(); ++k) {
      std::vector<double> lower(s.num_units(), 0.0), higher(s.num_units(), 0.0);
      lower[u] = s.ratio_choices()[k - 1];
      higher[u] = s.ratio_choices()[k];
      step = std::max(step, MaskCountedFlops(s, lower) - MaskCountedFlops(s, higher));
    }
  }
  return step / s.dense_flops();
}

TEST(PruningUnitsTest, LayerAndLinearUnits) {
  const FlopsModelDims dims = testing_util::SyntheticDims(3);
  auto dense = ComputeDenseFlops(dims, testing_util::SyntheticStats());
  ASSERT_TRUE(dense.ok());
  auto layer = PruningUnits::Build(dims, *dense, UnitKind::kLayer);
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_THAT(layer->names, testing::ElementsAre("layers.0", "layers.1", "layers.2"));
  // Layer 1: hidden 64, q 48, kv 24, mlp 160 → q,o 3072 each, k,v 1536 each, mlp 3 × 10240.
  EXPECT_EQ(layer->params[1], 2 * 3072 + 2 * 1536 + 3 * 10240);
  double sum = 0, share = 0;
  for (size_t i = 0; i < layer->size(); ++i) {
    sum += layer->dense_flops[i];
    share += layer->flops_share[i];
  }
  EXPECT_DOUBLE_EQ(sum, dense->DecoderLinearTotal());
  EXPECT_DOUBLE_EQ(share, 1.0);
  // Per-layer FLOPs = 2·T·params (T = 40) since every decoder linear runs on every token.
  EXPECT_DOUBLE_EQ(layer->dense_flops[1], 2.0 * 40 * layer->params[1]);

  auto linear = PruningUnits::Build(dims, *dense, UnitKind::kLinear);
  ASSERT_TRUE(linear.ok());
  ASSERT_EQ(linear->size(), 21u);
  EXPECT_EQ(linear->names[7], "layers.1.self_attn.q_proj");
  EXPECT_EQ(linear->names[13], "layers.1.mlp.down_proj");
  EXPECT_EQ(linear->params[8], 1536);  // layers.1 k_proj
  EXPECT_EQ(linear->members[13][0].layer, 1);
  EXPECT_EQ(linear->members[13][0].linear, DecoderLinear::kDown);
}

TEST(PruningUnitsTest, RejectsMismatchAndZeroFlops) {
  const FlopsModelDims dims = testing_util::SyntheticDims(3);
  auto dense = ComputeDenseFlops(dims, testing_util::SyntheticStats());
  ASSERT_TRUE(dense.ok());
  FlopsModelDims fewer = testing_util::SyntheticDims(2);
  EXPECT_THAT(PruningUnits::Build(fewer, *dense, UnitKind::kLayer).status().message(),
              HasSubstr("3 decoder layers"));
  auto zero = ComputeDenseFlops(dims, {});
  ASSERT_TRUE(zero.ok());
  EXPECT_THAT(PruningUnits::Build(dims, *zero, UnitKind::kLayer).status().message(),
              HasSubstr("layers.0 has no FLOPs"));
  EXPECT_FALSE(ParseUnitKind("block").ok());
  EXPECT_EQ(*ParseUnitKind("linear"), UnitKind::kLinear);
  EXPECT_EQ(*ParseUnitKind("LAYER"), UnitKind::kLayer);  // case-insensitive
}

TEST(RatioChoicesTest, ValidatesAndParses) {
  EXPECT_TRUE(ValidateRatioChoices(DefaultRatioChoices()).ok());
  EXPECT_FALSE(ValidateRatioChoices({}).ok());
  EXPECT_FALSE(ValidateRatioChoices({0.1, 0.1}).ok());
  EXPECT_FALSE(ValidateRatioChoices({0.2, 0.1}).ok());
  EXPECT_FALSE(ValidateRatioChoices({0.0, 1.0}).ok());
  EXPECT_FALSE(ValidateRatioChoices({-0.1, 0.5}).ok());
  EXPECT_FALSE(ValidateRatioChoices({0.0, std::nan("")}).ok());
  // Distinct doubles that share a fixed-point code would share a hash.
  EXPECT_FALSE(ValidateRatioChoices({0.5, 0.5000001}).ok());
  auto parsed = ParseRatioChoices(" 0, 0.25 ,0.5");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_THAT(*parsed, testing::ElementsAre(0.0, 0.25, 0.5));
  EXPECT_THAT(ParseRatioChoices("0,,0.5").status().message(), HasSubstr("item 1"));
  EXPECT_THAT(ParseRatioChoices("0,x").status().message(), HasSubstr("item 1"));
  EXPECT_FALSE(ParseRatioChoices("").ok());
  EXPECT_FALSE(ParseRatioChoices("0.5,0.4").ok());
}

TEST(PolicySpaceTest, FlopsCountWhatTheMasksPrune) {
  for (UnitKind kind : {UnitKind::kLayer, UnitKind::kLinear}) {
    const PolicySpace s = MakeSpace(5, kind);
    EXPECT_DOUBLE_EQ(s.dense_flops(), s.dense().Total());
    Prng prng(1);
    for (int trial = 0; trial < 200; ++trial) {
      Policy p(s.num_units());
      for (int& i : p) i = static_cast<int>(prng.UniformInt(s.num_choices()));
      auto ratios = s.UnitRatios(p);
      ASSERT_TRUE(ratios.ok());
      auto f = s.Flops(p);
      ASSERT_TRUE(f.ok());
      EXPECT_NEAR(*f, MaskCountedFlops(s, *ratios), 1e-12 * s.dense_flops());
      EXPECT_DOUBLE_EQ(*s.FlopsRatio(p), *f / s.dense_flops());
      EXPECT_EQ(*s.FlopsOfRatios(*ratios), *f);  // one mapping for discrete and continuous
    }
    EXPECT_EQ(*s.Flops(Policy(s.num_units(), 0)), s.dense_flops());
  }
}

// The regression itself: at a ratio where r·in is not whole, 1 − r undercounts the kept weights
// (0.3 of 64 inputs prunes 19, keeping 45/64 = 0.703, not 0.7), so F is above the 1 − r count.
TEST(PolicySpaceTest, WholeWeightsKeepMoreThanOneMinusRatio) {
  const PolicySpace s = MakeSpace(3, UnitKind::kLayer);
  const std::vector<double> r(3, 0.3);
  double one_minus_r = s.dense_flops();
  for (double f : s.units().dense_flops) one_minus_r -= 0.3 * f;
  const double f = *s.FlopsOfRatios(r);
  EXPECT_NEAR(f, MaskCountedFlops(s, r), 1e-12 * f);
  EXPECT_GT(f - one_minus_r, 1e-3 * s.dense_flops());
}

// KeptFractionsOf: each member linear keeps KeptFraction(r_u, its in_features), with the input
// widths q/k/v/gate/up = hidden, o = q_width, down = mlp_width; bit-equal to non-zeros / numel.
TEST(PolicySpaceTest, KeptFractionsPerLinearInputWidth) {
  const PolicySpace s = MakeSpace(3, UnitKind::kLinear);
  const FlopsModelDims dims = testing_util::SyntheticDims(3);
  std::vector<double> r(s.num_units());
  for (int u = 0; u < s.num_units(); ++u) r[u] = 0.05 * (u % 16);
  auto keep = s.KeptFractionsOf(r);
  ASSERT_TRUE(keep.ok()) << keep.status();
  ASSERT_EQ(keep->decoder.size(), 3u);
  EXPECT_TRUE(keep->vision.empty());
  for (int l = 0; l < 3; ++l) {
    const DecoderLayerFlopsDims& d = dims.decoder[l];
    const int64_t in[7] = {d.hidden, d.hidden, d.hidden,   d.q_width,
                           d.hidden, d.hidden, d.mlp_width};
    const int64_t out[7] = {d.q_width,   d.kv_width,  d.kv_width, d.hidden,
                            d.mlp_width, d.mlp_width, d.hidden};
    for (int i = 0; i < 7; ++i) {
      const int64_t k = PrunedPerRow(r[7 * l + i], in[i]);
      EXPECT_EQ(keep->decoder[l][i], double(out[i] * (in[i] - k)) / double(out[i] * in[i]))
          << "layer " << l << " linear " << i;
    }
  }
  EXPECT_FALSE(s.KeptFractionsOf(std::vector<double>(20, 0.0)).ok());
  EXPECT_FALSE(s.KeptFractionsOf(std::vector<double>(21, 1.5)).ok());
}

TEST(PolicySpaceTest, RejectsInvalidPolicies) {
  const PolicySpace s = MakeSpace(3, UnitKind::kLayer);
  EXPECT_THAT(s.Flops({0, 0}).status().message(), HasSubstr("2 units, the model has 3"));
  EXPECT_THAT(s.Flops({0, 9, 0}).status().message(), HasSubstr("layers.1"));
  EXPECT_FALSE(s.Flops({0, -1, 0}).ok());
  EXPECT_FALSE(s.FlopsOfRatios(std::vector<double>{0, 1.5, 0}).ok());
  Prng prng(1);
  EXPECT_FALSE(s.RepairToBudget({0, 0}, 0.8, prng).ok());
}

TEST(PolicySpaceTest, CheckBudget) {
  const PolicySpace s = MakeSpace(4, UnitKind::kLayer);
  const double min_ratio = s.MinReachableRatio();
  ASSERT_GT(min_ratio, 0.2);  // vision, projector, attention and lm_head stay
  ASSERT_LT(min_ratio, 0.9);
  EXPECT_NEAR(min_ratio, MaskCountedFlops(s, std::vector<double>(4, 0.8)) / s.dense_flops(), 1e-12);
  for (double bad : std::vector<double>{0.0, -0.5, 1.01, std::nan(""), INFINITY}) {
    EXPECT_EQ(s.CheckBudget(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  const absl::Status st = s.CheckBudget(min_ratio - 0.01);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  const std::string rounded = absl::StrFormat("%.4f", std::ceil(min_ratio * 1e4) / 1e4);
  EXPECT_THAT(st.message(), HasSubstr("smallest reachable budget is " + rounded));
  EXPECT_THAT(st.message(), HasSubstr(absl::StrFormat("%.6f", min_ratio)));
  // The suggested value is itself accepted, and it is the smallest 4-decimal budget that is.
  EXPECT_TRUE(s.CheckBudget(std::stod(rounded)).ok());
  EXPECT_EQ(absl::StrFormat("%.4f", s.SmallestReachableBudget()), rounded);
  EXPECT_FALSE(s.CheckBudget(std::stod(rounded) - 1e-4).ok());
  // The rule on many spaces (layer counts 1..40): printed at 4 decimals and parsed back, the
  // smallest reachable budget is accepted and one step below it is not.
  for (int layers = 1; layers <= 40; ++layers) {
    const PolicySpace t = MakeSpace(layers, UnitKind::kLinear);
    const std::string printed = absl::StrFormat("%.4f", t.SmallestReachableBudget());
    EXPECT_TRUE(t.CheckBudget(std::stod(printed)).ok()) << layers << ": " << printed;
    EXPECT_FALSE(t.CheckBudget(std::stod(printed) - 1e-4).ok()) << layers << ": " << printed;
  }
  EXPECT_TRUE(s.CheckBudget(1.0).ok());
  Prng prng(1);
  EXPECT_EQ(s.RepairToBudget(Policy(4, 0), min_ratio - 0.01, prng).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.UniformPolicyForBudget(min_ratio - 0.01).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Property test: thousands of random policies and budgets on fine-grained spaces (every unit
// step ≤ 2 % of dense FLOPs, so the repair band is reachable) — repair never exceeds the budget
// and ends within kRepairSlack of it; repairing again changes nothing and draws nothing.
TEST(RepairTest, NeverExceedsAndEndsWithinSlack) {
  int trials = 0;
  for (UnitKind kind : {UnitKind::kLayer, UnitKind::kLinear}) {
    const PolicySpace s = MakeSpace(8, kind);
    ASSERT_LE(MaxStepFraction(s), kRepairSlack);
    Prng gen(kind == UnitKind::kLayer ? 100 : 200);
    Prng prng(7);
    for (int trial = 0; trial < 2500; ++trial, ++trials) {
      const double b = s.MinReachableRatio() + gen.UniformDouble() * (1 - s.MinReachableRatio());
      Policy p(s.num_units());
      for (int& i : p) i = static_cast<int>(gen.UniformInt(s.num_choices()));
      auto r = s.RepairToBudget(p, b, prng);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(s.Validate(*r).ok());
      const double f = *s.Flops(*r);
      ASSERT_LE(f, b * s.dense_flops()) << "trial " << trial << " b " << b;
      ASSERT_GE(f, (b - kRepairSlack) * s.dense_flops()) << "trial " << trial << " b " << b;
      const Prng before = prng;
      auto again = s.RepairToBudget(*r, b, prng);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(*again, *r);
      EXPECT_EQ(prng, before);
    }
  }
  EXPECT_EQ(trials, 5000);
}

// Coarse space (2 layers: one step moves more than 2 %): the band may be out of reach, but repair
// still never exceeds the budget, and when it stops below the band it is because no single
// lowering step fits — exactly the stopping rule of docs/architecture.md §5.
TEST(RepairTest, CoarseSpaceStopsOnlyWhenNoStepFits) {
  const PolicySpace s = MakeSpace(2, UnitKind::kLayer);
  ASSERT_GT(MaxStepFraction(s), kRepairSlack);
  Prng gen(5), prng(6);
  int below_band = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const double b = s.MinReachableRatio() + gen.UniformDouble() * (1 - s.MinReachableRatio());
    Policy p = {static_cast<int>(gen.UniformInt(9)), static_cast<int>(gen.UniformInt(9))};
    auto r = s.RepairToBudget(p, b, prng);
    ASSERT_TRUE(r.ok());
    const double f = *s.Flops(*r);
    ASSERT_LE(f, b * s.dense_flops());
    if (f < (b - kRepairSlack) * s.dense_flops()) {
      ++below_band;
      for (int u = 0; u < 2; ++u) {
        if ((*r)[u] == 0) continue;
        Policy lowered = *r;
        --lowered[u];
        EXPECT_GT(*s.Flops(lowered), b * s.dense_flops()) << "unit " << u << " would fit";
      }
    }
  }
  EXPECT_GT(below_band, 0);  // the coarse case really occurs
}

// "Random unit (FLOPs-weighted)": from the dense policy with a budget a hair below 1, repair
// raises exactly one unit, chosen with probability ∝ its dense FLOPs. Chi-square over 20,000
// repairs with 7 dof (99.9th percentile 24.32).
TEST(RepairTest, RaisedUnitIsFlopsWeighted) {
  const PolicySpace s = MakeSpace(8, UnitKind::kLayer);
  Prng prng(31);
  std::vector<int> counts(8, 0);
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    auto r = s.RepairToBudget(Policy(8, 0), 1 - 1e-9, prng);
    ASSERT_TRUE(r.ok());
    int raised = -1, total = 0;
    for (int u = 0; u < 8; ++u) {
      total += (*r)[u];
      if ((*r)[u] == 1) raised = u;
    }
    ASSERT_EQ(total, 1);
    ++counts[raised];
  }
  double chi = 0;
  for (int u = 0; u < 8; ++u) {
    const double e = s.units().flops_share[u] * draws;
    chi += (counts[u] - e) * (counts[u] - e) / e;
  }
  EXPECT_LT(chi, 24.32);
  // The layers really differ in FLOPs, so this is not the uniform distribution in disguise.
  const auto& share = s.units().flops_share;
  EXPECT_GT(*std::max_element(share.begin(), share.end()),
            1.3 * *std::min_element(share.begin(), share.end()));
}

TEST(RepairTest, SameSeedSameResult) {
  const PolicySpace s = MakeSpace(6, UnitKind::kLinear);
  Prng a(77), b(77);
  for (int i = 0; i < 50; ++i) {
    auto pa = s.RandomFeasiblePolicy(0.6, a);
    auto pb = s.RandomFeasiblePolicy(0.6, b);
    ASSERT_TRUE(pa.ok() && pb.ok());
    EXPECT_EQ(*pa, *pb);
  }
}

TEST(PolicySpaceTest, UniformPolicyForBudget) {
  const PolicySpace s = MakeSpace(4, UnitKind::kLayer);
  EXPECT_EQ(*s.UniformPolicyForBudget(1.0), Policy(4, 0));
  for (double b : {0.95, 0.8, 0.7, 0.6, s.MinReachableRatio() + 1e-9}) {
    auto p = s.UniformPolicyForBudget(b);
    ASSERT_TRUE(p.ok()) << p.status();
    const int k = (*p)[0];
    EXPECT_EQ(*p, Policy(4, k));
    EXPECT_LE(*s.Flops(*p), b * s.dense_flops());
    if (k > 0) EXPECT_GT(*s.Flops(Policy(4, k - 1)), b * s.dense_flops());
  }
}

// F(r, …, r) is a step function with steps at r = k/in for the model's input widths, so the
// smallest feasible common ratio is (to the 1e-9 decimal guard) the smallest step point c whose
// mask-counted F meets the budget: found here by enumerating every step point, independently of
// the bisection. The result never exceeds the budget, F at the next smaller double does, and on
// this model (steps < 2 % of dense FLOPs) it ends within 0.02 of the budget.
TEST(ContinuousTest, UniformRatioIsTheSmallestFeasibleStep) {
  for (UnitKind kind : {UnitKind::kLayer, UnitKind::kLinear}) {
    const PolicySpace s = MakeSpace(6, kind);
    const int n = s.num_units();
    std::set<double> steps = {0.0};
    for (int64_t in : {32, 48, 64, 128, 160, 192, 224}) {  // the synthetic model's input widths
      for (int64_t k = 1; k <= in && double(k) / double(in) <= s.max_ratio(); ++k) {
        steps.insert(double(k) / double(in));
      }
    }
    EXPECT_EQ(*s.UniformContinuousRatio(1.0), 0.0);
    for (double b : {0.99, 0.9, 0.75, 0.6, 0.5, s.MinReachableRatio() + 1e-6}) {
      const double limit = b * s.dense_flops();
      auto r = s.UniformContinuousRatio(b);
      ASSERT_TRUE(r.ok()) << r.status();
      double expected = NAN;
      for (double c : steps) {
        if (MaskCountedFlops(s, std::vector<double>(n, c)) <= limit) {
          expected = c;
          break;
        }
      }
      ASSERT_FALSE(std::isnan(expected)) << b;
      EXPECT_NEAR(*r, expected, 2e-9) << b;
      EXPECT_LE(*r, expected) << b;
      const double f = *s.FlopsOfRatios(std::vector<double>(n, *r));
      EXPECT_LE(f, limit) << b;
      EXPECT_GE(f, (b - kRepairSlack) * s.dense_flops()) << b;
      // On a step: the next smaller ratio prunes one weight per row fewer somewhere.
      const double below = std::nextafter(*r, 0.0);
      EXPECT_GT(*s.FlopsOfRatios(std::vector<double>(n, below)), limit) << b;
      std::printf("[uniform] %s b %.6f: r %.12f, F/F_dense %.6f\n",
                  std::string(UnitKindName(kind)).c_str(), b, *r, f / s.dense_flops());
    }
    EXPECT_EQ(s.UniformContinuousRatio(s.MinReachableRatio() - 0.01).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

TEST(ContinuousTest, ShiftToBudgetKeepsDeviations) {
  const PolicySpace s = MakeSpace(8, UnitKind::kLayer);
  Prng gen(9);
  int checked = 0;
  double max_gap = 0;
  for (int trial = 0; trial < 100; ++trial) {
    std::vector<double> pref(8);
    for (double& p : pref) p = gen.UniformDouble() * 0.6 - 0.1;  // some clamp at 0
    const double b = s.MinReachableRatio() + gen.UniformDouble() * (1 - s.MinReachableRatio());
    auto r = s.ShiftToBudget(pref, b);
    ASSERT_TRUE(r.ok()) << r.status();
    const double f = *s.FlopsOfRatios(*r);
    const double limit = b * s.dense_flops();
    EXPECT_LE(f, limit);
    const bool dense = std::all_of(r->begin(), r->end(), [](double x) { return x == 0; });
    // One common shift where no clamp binds.
    double shift = NAN;
    for (int u = 0; u < 8; ++u) {
      ASSERT_GE((*r)[u], 0.0);
      ASSERT_LE((*r)[u], s.max_ratio());
      if ((*r)[u] > 0 && (*r)[u] < s.max_ratio()) {
        if (std::isnan(shift)) shift = (*r)[u] - pref[u];
        EXPECT_NEAR((*r)[u] - pref[u], shift, 1e-12);
      }
    }
    if (dense || std::isnan(shift)) continue;
    ++checked;
    // The smallest shift meeting the budget: 1e-9 less prunes one weight per row fewer somewhere
    // and exceeds it. The steps of independent units rarely coincide, so F ends close to b·F_dense.
    std::vector<double> less(8);
    for (int u = 0; u < 8; ++u) less[u] = std::clamp(pref[u] + shift - 1e-9, 0.0, s.max_ratio());
    EXPECT_GT(*s.FlopsOfRatios(less), limit) << "trial " << trial;
    EXPECT_GE(f, (b - kRepairSlack) * s.dense_flops()) << "trial " << trial;
    max_gap = std::max(max_gap, (limit - f) / s.dense_flops());
  }
  EXPECT_GT(checked, 80);
  std::printf("[shift] %d trials checked, max (b·F_dense − F)/F_dense %.3g\n", checked, max_gap);
  EXPECT_FALSE(s.ShiftToBudget(std::vector<double>(7, 0.0), 0.7).ok());
  EXPECT_FALSE(s.ShiftToBudget(std::vector<double>{0, 0, 0, 0, 0, 0, 0, NAN}, 0.7).ok());
}

// Must match HASH_CASES in search_test_ref.py.
const std::vector<std::vector<double>> kHashCases = {
    {},
    {0.0},
    {0.1, 0.2, 0.3},
    {0.8, 0.0, 0.5, 0.5, 0.1, 0.7, 0.3},
    {0.123456789, 0.5},
    {0.0000005, 0.0000025, 0.3000005},
};

TEST(PolicyHashTest, MatchesIndependentPythonFnv) {
  const std::vector<std::string> expected = testing_util::RunReference("hash");
  ASSERT_FALSE(expected.empty()) << "search_test_ref.py hash failed";
  std::vector<std::string> got = {absl::StrFormat("fnv_empty %016x", Fnv1a64("")),
                                  absl::StrFormat("fnv_a %016x", Fnv1a64("a"))};
  for (const auto& ratios : kHashCases) {
    got.push_back(absl::StrCat("policy ", ratios.size(), " ", PolicyHashOfRatios(ratios)));
  }
  EXPECT_THAT(got, testing::ElementsAreArray(expected));
  // Published FNV-1a 64 test vector, independent of the script.
  EXPECT_EQ(Fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
}

TEST(PolicyHashTest, DistinctOverASmallSpaceAndIndexFree) {
  const PolicySpace s = MakeSpace(4, UnitKind::kLayer);
  std::set<std::string> seen;
  for (int code = 0; code < 6561; ++code) {
    Policy p(4);
    for (int u = 0, c = code; u < 4; ++u, c /= 9) p[u] = c % 9;
    auto h = s.Hash(p);
    ASSERT_TRUE(h.ok());
    ASSERT_EQ(h->size(), 16u);
    seen.insert(*h);
  }
  EXPECT_EQ(seen.size(), 6561u);
  // The hash encodes ratio values, not indices: the same ratios under another R hash alike.
  const PolicySpace t = MakeSpace(4, UnitKind::kLayer, {0.0, 0.5, 0.8});
  EXPECT_EQ(*t.Hash({1, 2, 0, 1}), *s.Hash({5, 8, 0, 5}));
}

}  // namespace
}  // namespace prunesvc::search

namespace prunesvc::search {
namespace {

TEST(GranularityTest, ParsesAndNames) {
  EXPECT_EQ(*ParseGranularity("STRUCTURED"), Granularity::kStructured);
  EXPECT_EQ(*ParseGranularity("UNSTRUCTURED"), Granularity::kUnstructured);
  EXPECT_EQ(GranularityName(Granularity::kStructured), "STRUCTURED");
  EXPECT_EQ(*ParseGranularity("N_M"), Granularity::kNM);
  EXPECT_EQ(GranularityName(Granularity::kNM), "N_M");
  EXPECT_EQ(GranularityName(Granularity::kUnstructured), "UNSTRUCTURED");
  EXPECT_EQ(*ParseGranularity("structured"), Granularity::kStructured);  // case-insensitive
  EXPECT_EQ(*ParseGranularity("n_m"), Granularity::kNM);
  auto bad = ParseGranularity("structural");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), ::testing::HasSubstr("UNSTRUCTURED, STRUCTURED or N_M"));
}

// STRUCTURED F(π) counted by hand: each layer loses, per token, the multiply-adds of its removed
// q/o columns (g·group·hd each, × hidden), k/v rows (g·hd each), MLP channels (3 × c × hidden) and
// the attention term 2·E[T²]·g·group·hd, with g = floor(r·G), c = floor(r·I).
TEST(StructuredPolicySpaceTest, FlopsCountTheShrunkShapes) {
  const int layers = 5;
  const FlopsModelDims dims = testing_util::SyntheticDims(layers);
  const TokenStats stats = testing_util::SyntheticStats();
  std::vector<DecoderLayerHeads> heads;
  for (const DecoderLayerFlopsDims& d : dims.decoder) {
    heads.push_back({.num_heads = d.q_width / 8, .num_kv_heads = d.kv_width / 8, .head_dim = 8});
  }
  auto space = PolicySpace::CreateStructured(dims, stats, heads, DefaultRatioChoices());
  ASSERT_TRUE(space.ok()) << space.status();
  EXPECT_EQ(space->num_units(), layers);
  EXPECT_EQ(space->units().kind, UnitKind::kLayer);
  auto dense = ComputeDenseFlops(dims, stats);
  ASSERT_TRUE(dense.ok());
  Prng prng(11);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<double> r(layers);
    for (double& x : r) x = double(prng.UniformInt(1000)) / 1000.0;
    double want = dense->Total();
    for (int l = 0; l < layers; ++l) {
      const DecoderLayerFlopsDims& d = dims.decoder[l];
      const int G = heads[l].num_kv_heads, group = heads[l].num_heads / G;
      const double g = std::floor(r[l] * G + 1e-9), c = std::floor(r[l] * d.mlp_width + 1e-9);
      const double q_removed = g * group * 8, kv_removed = g * 8;
      want -= 2.0 * stats.mean_tokens * d.hidden * (2 * q_removed + 2 * kv_removed + 3 * c);
      want -= 2.0 * stats.mean_tokens_sq * q_removed;
    }
    auto got = space->FlopsOfRatios(r);
    ASSERT_TRUE(got.ok());
    EXPECT_NEAR(*got, want, 1e-9 * want) << trial;
  }
  // The all-max policy: the reachable floor; a budget below it names it.
  const double floor_ratio = space->MinReachableRatio();
  EXPECT_GT(floor_ratio, 0.0);
  auto s = space->CheckBudget(floor_ratio * 0.99);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("STRUCTURED"));
  // UNIFORM's solver: never above the budget, and the next smaller double would be.
  auto u = space->UniformContinuousRatio(0.7);
  ASSERT_TRUE(u.ok()) << u.status();
  const double limit = 0.7 * space->dense_flops();
  EXPECT_LE(*space->FlopsOfRatios(std::vector<double>(layers, *u)), limit);
  EXPECT_GT(*space->FlopsOfRatios(std::vector<double>(layers, std::nextafter(*u, 0.0))), limit);
  // Repair lands in budget.
  for (int trial = 0; trial < 20; ++trial) {
    auto p = space->RandomFeasiblePolicy(0.6, prng);
    ASSERT_TRUE(p.ok());
    EXPECT_LE(*space->Flops(*p), 0.6 * space->dense_flops());
  }
  EXPECT_EQ(space->KeptFractionsOf(std::vector<double>(layers, 0.1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Inconsistent head layouts are refused.
  heads[1].num_kv_heads = 5;
  EXPECT_FALSE(PolicySpace::CreateStructured(dims, stats, heads, DefaultRatioChoices()).ok());
}

}  // namespace
}  // namespace prunesvc::search

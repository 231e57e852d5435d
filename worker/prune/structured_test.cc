// STRUCTURED pruning (structured.h, the evaluator's STRUCTURED path, PolicySpace::
// CreateStructured) on a small random LLaVA: orders against a brute-force re-derivation of the
// scores, nesting, masked full-size model == physically shrunk model (logits), FLOPs of a policy
// == a brute-force count over the shrunk model's tensors, Ω against the weights, exact restore,
// and the error paths.
#include "worker/prune/structured.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <vector>

#include "common/policy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model/scoring.h"
#include "worker/prune/evaluator.h"
#include "worker/prune/random_llava.h"

namespace prunesvc::prune {
namespace {

using ::prunesvc::prune::testing::RandomEvalSamples;
using ::prunesvc::prune::testing::RandomLlavaConfig;
using ::prunesvc::prune::testing::RandomLlavaSize;
using ::prunesvc::prune::testing::RandomLlavaTensors;
using ::testing::HasSubstr;

using Problem = ::prunesvc::prune::testing::RandomProblem;

// 3 layers, 4 heads / 2 kv heads of dim 16, 96 MLP channels (RandomLlavaSize defaults); `heads`
// and `kv` override the head layout.
Problem MakeProblem(int num_samples = 10, uint64_t seed = 7, int heads = 4, int kv = 2) {
  RandomLlavaSize size;
  size.heads = heads;
  size.kv_heads = kv;
  auto p = ::prunesvc::prune::testing::MakeRandomProblem(size, num_samples, seed);
  EXPECT_TRUE(p.ok()) << p.status();
  return std::move(*p);
}

std::unique_ptr<CandidateEvaluator> StructuredEvaluator(Problem& p, MaskMethod method) {
  auto ev = CandidateEvaluator::Create(
      p.model.get(), p.samples,
      {.method = method, .granularity = search::Granularity::kStructured, .batch_size = 5});
  EXPECT_TRUE(ev.ok()) << ev.status();
  return ev.ok() ? std::move(*ev) : nullptr;
}

// Per-linear ratios with one ratio per layer.
std::vector<double> LinearRatios(const std::vector<double>& layer_ratios) {
  std::vector<double> out;
  for (double r : layer_ratios) out.insert(out.end(), kNumDecoderLinears, r);
  return out;
}

double Norm2(const at::Tensor& t) { return t.to(at::kDouble).square().sum().item<double>(); }

// Brute-force orders: the scores recomputed element by element, sorted as (score, index) pairs.
std::vector<int64_t> SortedIndices(const std::vector<double>& scores) {
  std::vector<std::pair<double, int64_t>> v;
  for (size_t i = 0; i < scores.size(); ++i) v.push_back({scores[i], int64_t(i)});
  std::sort(v.begin(), v.end());
  std::vector<int64_t> out;
  for (const auto& [s, i] : v) out.push_back(i);
  return out;
}

TEST(StructuredBankTest, OrdersMatchBruteForceAndAreNested) {
  for (MaskMethod method : {MaskMethod::kWanda, MaskMethod::kMagnitude}) {
    Problem p = MakeProblem();
    auto ev = StructuredEvaluator(p, method);
    ASSERT_NE(ev, nullptr);
    const StructuredBank& bank = ev->structured_bank();
    ASSERT_EQ(bank.num_layers(), 3);
    for (int l = 0; l < 3; ++l) {
      const int base = l * kNumDecoderLinears;
      const at::Tensor down = ev->dense_weight(base + int(DecoderLinear::kDown));
      const at::Tensor o = ev->dense_weight(base + int(DecoderLinear::kO));
      const at::Tensor xd =
          ev->calibration().linears[base + int(DecoderLinear::kDown)]->col_sq_norms;
      const at::Tensor xo = ev->calibration().linears[base + int(DecoderLinear::kO)]->col_sq_norms;
      std::vector<double> ch(down.size(1)), gr(2, 0.0);
      for (int64_t j = 0; j < down.size(1); ++j) {
        double w2 = 0;
        for (int64_t r = 0; r < down.size(0); ++r)
          w2 += std::pow(double(down[r][j].item<float>()), 2);
        ch[j] =
            std::sqrt(w2) * (method == MaskMethod::kWanda ? std::sqrt(xd[j].item<double>()) : 1);
      }
      for (int64_t j = 0; j < o.size(1); ++j) {
        double w2 = 0;
        for (int64_t r = 0; r < o.size(0); ++r) w2 += std::pow(double(o[r][j].item<float>()), 2);
        gr[j / 32] += w2 * (method == MaskMethod::kWanda ? xo[j].item<double>() : 1);  // 2 heads·16
      }
      for (double& g : gr) g = std::sqrt(g);
      EXPECT_EQ(bank.layer(l).channel_order, SortedIndices(ch)) << l;
      EXPECT_EQ(bank.layer(l).group_order, SortedIndices(gr)) << l;
      for (int64_t j = 0; j < int64_t(ch.size()); ++j) {
        EXPECT_NEAR(bank.layer(l).channel_scores[j], ch[j], 1e-9 * (1 + ch[j]));
      }
    }
    // Nested: a higher ratio removes a superset of channels and groups.
    std::vector<std::vector<StructuredLayerPlan>> plans;
    for (double r : {0.0, 0.1, 0.3, 0.5, 0.55, 0.8, 0.95}) {
      auto plan = PlanStructured(bank, {r, r, r});
      ASSERT_TRUE(plan.ok()) << plan.status();
      for (const StructuredLayerPlan& lp : *plan) {
        EXPECT_EQ(lp.cut.channels, int64_t(std::floor(r * 96 + 1e-9)));
        EXPECT_EQ(lp.cut.kv_groups, int(std::floor(r * 2 + 1e-9)));  // floor rule for groups
        EXPECT_EQ(lp.kept_channels.size() + lp.removed_channels.size(), 96u);
        EXPECT_TRUE(std::is_sorted(lp.kept_channels.begin(), lp.kept_channels.end()));
      }
      plans.push_back(std::move(*plan));
    }
    for (size_t a = 0; a + 1 < plans.size(); ++a) {
      for (int l = 0; l < 3; ++l) {
        const auto& lo = plans[a][l];
        const auto& hi = plans[a + 1][l];
        std::set<int64_t> removed(hi.removed_channels.begin(), hi.removed_channels.end());
        for (int64_t c : lo.removed_channels) EXPECT_TRUE(removed.count(c)) << c;
        std::set<int64_t> groups(hi.removed_groups.begin(), hi.removed_groups.end());
        for (int64_t g : lo.removed_groups) EXPECT_TRUE(groups.count(g)) << g;
      }
    }
  }
}

// Acceptance (#6): the physically shrunk model computes what the masked full-size model does.
TEST(StructuredTest, ShrunkModelMatchesMaskedModel) {
  for (MaskMethod method : {MaskMethod::kWanda, MaskMethod::kMagnitude}) {
    Problem p = MakeProblem(9);
    auto ev = StructuredEvaluator(p, method);
    ASSERT_NE(ev, nullptr);
    const std::vector<double> layer_ratios = {0.3, 0.5, 0.8};
    ASSERT_TRUE(ev->ApplyRatios(LinearRatios(layer_ratios)).ok());
    std::vector<model::SequenceInput> batch;
    for (const model::ScoringSample& s : ev->scoring_samples()) {
      model::SequenceInput in;
      in.token_ids = s.token_ids;
      in.image_features = s.image_features;
      in.logit_positions.resize(s.token_ids.size());
      std::iota(in.logit_positions.begin(), in.logit_positions.end(), 0);
      batch.push_back(std::move(in));
    }
    auto masked = ev->model().Forward(batch);
    ASSERT_TRUE(masked.ok()) << masked.status();

    auto plan = PlanStructured(ev->structured_bank(), layer_ratios);
    ASSERT_TRUE(plan.ok()) << plan.status();
    // From the dense checkpoint tensors (not the masked model), like finalize does.
    std::map<std::string, at::Tensor> tensors = p.tensors;
    ASSERT_TRUE(ShrinkDecoderTensors(*plan, tensors).ok());
    const model::LlavaConfig config = StructuredConfig(p.config, *plan);
    EXPECT_EQ(config.text.layer_intermediate_sizes, (std::vector<int>{96 - 28, 96 - 48, 96 - 76}));
    EXPECT_EQ(config.text.layer_num_heads, (std::vector<int>{4, 2, 2}));
    EXPECT_EQ(config.raw["text_config"]["prunesvc_num_heads"], nlohmann::json({4, 2, 2}));
    auto shrunk = model::LlavaModel::CreateFromTensors(config, tensors);
    ASSERT_TRUE(shrunk.ok()) << shrunk.status();
    EXPECT_EQ((*shrunk)->decoder_layers()[2].gate.weight.size(0), 20);
    EXPECT_EQ((*shrunk)->decoder_layers()[1].q.weight.size(0), 32);
    EXPECT_EQ((*shrunk)->decoder_layers()[1].k.weight.size(0), 16);
    EXPECT_EQ((*shrunk)->decoder_layers()[1].o.weight.size(1), 32);
    // The projector is the evaluator's version 0 = the tensors' one.
    auto got = (*shrunk)->Forward(batch);
    ASSERT_TRUE(got.ok()) << got.status();
    double max_diff = 0, max_abs = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      max_diff = std::max(max_diff, ((*got)[i] - (*masked)[i]).abs().max().item<double>());
      max_abs = std::max(max_abs, (*masked)[i].abs().max().item<double>());
    }
    std::printf("[structured %s] shrunk vs masked logits: max |diff| %.3g (max |logit| %.3g)\n",
                std::string(MaskMethodName(method)).c_str(), max_diff, max_abs);
    EXPECT_LE(max_diff, 1e-5);
    // ShrinkModel (from the in-memory model) gives the same model.
    ASSERT_TRUE(ev->RestoreDense().ok());
    auto again = ShrinkModel(ev->model(), *plan);
    ASSERT_TRUE(again.ok()) << again.status();
    auto got2 = (*again)->Forward(batch);
    ASSERT_TRUE(got2.ok());
    for (size_t i = 0; i < batch.size(); ++i) EXPECT_TRUE(at::equal((*got2)[i], (*got)[i])) << i;
  }
}

// Acceptance (#6): F(π) of the STRUCTURED policy space == a brute-force count over the shrunk
// model's tensors (2·T̄ per weight of every decoder linear + 2·E[T²] per query row, plus the
// untouched rest of the dense count); the budget solvers stay within budget.
TEST(StructuredTest, PolicyFlopsEqualBruteForceCountOnShrunkModel) {
  Problem p = MakeProblem(6);
  std::vector<model::ScoringSample> scoring;
  for (const EvalSample& e : p.samples) {
    model::ScoringSample s = e.scoring;
    s.image_features = *p.model->ComputeImageFeatures(e.pixels);
    scoring.push_back(std::move(s));
  }
  const TokenStats stats = model::ComputeTokenStats(*p.model, scoring);
  auto space = search::PolicySpace::CreateStructured(
      p.model->FlopsDims(), stats, LayerHeadsOf(*p.model), search::DefaultRatioChoices());
  ASSERT_TRUE(space.ok()) << space.status();
  EXPECT_EQ(space->granularity(), search::Granularity::kStructured);
  auto dense = ComputeDenseFlops(p.model->FlopsDims(), stats);
  ASSERT_TRUE(dense.ok());
  const double rest = dense->Total() - dense->DecoderLinearTotal() - dense->DecoderAttentionTotal();
  EXPECT_DOUBLE_EQ(space->dense_flops(), dense->Total());
  auto ev = StructuredEvaluator(p, MaskMethod::kWanda);
  ASSERT_NE(ev, nullptr);
  for (const std::vector<double>& r : std::vector<std::vector<double>>{
           {0, 0, 0}, {0.1, 0.5, 0.8}, {0.8, 0.8, 0.8}, {0.49, 0.5, 0.2}, {0.37, 0.0, 0.61}}) {
    auto f = space->FlopsOfRatios(r);
    ASSERT_TRUE(f.ok()) << f.status();
    auto plan = PlanStructured(ev->structured_bank(), r);
    ASSERT_TRUE(plan.ok());
    auto shrunk = ShrinkModel(*p.model, *plan);
    ASSERT_TRUE(shrunk.ok()) << shrunk.status();
    double brute = rest;
    for (const model::NamedLinear& nl : (*shrunk)->DecoderLinears()) {
      brute += 2.0 * stats.mean_tokens * double(nl.linear->weight.numel());
    }
    for (const model::DecoderLayer& l : (*shrunk)->decoder_layers()) {
      brute += 2.0 * stats.mean_tokens_sq * double(l.q.weight.size(0));
    }
    EXPECT_NEAR(*f, brute, 1e-12 * brute);
    // And bit-exact with the shrunk model's own FLOPs model (what the job's report counts).
    auto own = ComputeDenseFlops((*shrunk)->FlopsDims(), stats);
    ASSERT_TRUE(own.ok());
    EXPECT_EQ(*f, own->Total());
  }
  // Repair and the continuous uniform solver land within the budget.
  Prng prng(5);
  for (double b : {0.9, 0.8, 0.7}) {
    if (!space->CheckBudget(b).ok()) continue;
    auto pol = space->RandomFeasiblePolicy(b, prng);
    ASSERT_TRUE(pol.ok()) << pol.status();
    EXPECT_LE(*space->Flops(*pol), b * space->dense_flops());
    auto u = space->UniformContinuousRatio(b);
    ASSERT_TRUE(u.ok()) << u.status();
    EXPECT_LE(*space->FlopsOfRatios(std::vector<double>(3, *u)), b * space->dense_flops());
  }
  EXPECT_FALSE(space->KeptFractionsOf(std::vector<double>{0.1, 0.1, 0.1}).ok());
  EXPECT_FALSE(space->CheckBudget(0.01).ok());
}

// Ω from the orders' prefix sums equals Ω from the masked weights; apply → dense is exact.
TEST(StructuredTest, OmegaEqualsBruteForceAndRestoreIsExact) {
  Problem p = MakeProblem(4);
  auto ev = StructuredEvaluator(p, MaskMethod::kWanda);
  ASSERT_NE(ev, nullptr);
  const std::vector<double> a = LinearRatios({0.6, 0.2, 0.9}), b = LinearRatios({0.1, 0.7, 0.5});
  ASSERT_TRUE(ev->ApplyRatios(b).ok());
  ASSERT_TRUE(ev->ApplyRatios(a).ok());  // incremental from b
  double num = 0, den = 0;
  for (int l = 0; l < 3; ++l) {
    double kept = 0, dense = 0, params = 0;
    for (int i = 0; i < kNumDecoderLinears; ++i) {
      const int k = l * kNumDecoderLinears + i;
      kept += Norm2(ev->linears()[k].linear->weight);
      dense += Norm2(ev->dense_weight(k));
      params += double(ev->dense_weight(k).numel());
    }
    num += params * std::sqrt(kept / dense);
    den += params;
  }
  auto omega = ev->Omega(a);
  ASSERT_TRUE(omega.ok());
  EXPECT_NEAR(*omega, num / den, 1e-9);
  // The removed rows/columns are zero, everything else dense.
  const at::Tensor gate =
      ev->linears()[2 * kNumDecoderLinears + int(DecoderLinear::kGate)].linear->weight;
  EXPECT_EQ((gate.abs().sum(1) == 0).sum().item<int64_t>(), int64_t(std::floor(0.9 * 96 + 1e-9)));
  ASSERT_TRUE(ev->RestoreDense().ok());
  for (int i = 0; i < ev->num_linears(); ++i) {
    ASSERT_TRUE(at::equal(ev->dense_weight(i), ev->linears()[i].linear->weight)) << i;
  }
}

TEST(StructuredTest, MalformedInputsGiveClearErrors) {
  Problem p = MakeProblem(4);
  auto ev = StructuredEvaluator(p, MaskMethod::kWanda);
  ASSERT_NE(ev, nullptr);
  std::vector<double> r = LinearRatios({0.2, 0.2, 0.2});
  r[int(DecoderLinear::kK)] = 0.5;  // layer 0: k differs from q
  EXPECT_THAT(ev->ApplyRatios(r).message(), HasSubstr("attention linears have different ratios"));
  r = LinearRatios({0.2, 0.2, 0.2});
  r[kNumDecoderLinears + int(DecoderLinear::kDown)] = 0.1;
  EXPECT_THAT(ev->ApplyRatios(r).message(), HasSubstr("MLP linears have different ratios"));
  EXPECT_FALSE(ev->ApplyRatios(LinearRatios({0.2, 1.5, 0.2})).ok());
  EXPECT_THAT(PlanStructured(ev->structured_bank(), {0.1, 0.2}).status().message(),
              HasSubstr("2 layer ratios for 3"));
  EXPECT_FALSE(PlanStructured(ev->structured_bank(), {0.1, -0.2, 0.0}).ok());
  auto plan = PlanStructured(ev->structured_bank(), {0.5, 0.5, 0.5});
  ASSERT_TRUE(plan.ok());
  {
    std::map<std::string, at::Tensor> t = p.tensors;
    t.erase("language_model.model.layers.1.mlp.up_proj.weight");
    EXPECT_THAT(ShrinkDecoderTensors(*plan, t).message(),
                HasSubstr("no tensor language_model.model.layers.1.mlp.up_proj.weight"));
  }
  {
    std::map<std::string, at::Tensor> t = p.tensors;
    ASSERT_TRUE(ShrinkDecoderTensors(*plan, t).ok());
    EXPECT_THAT(ShrinkDecoderTensors(*plan, t).message(), HasSubstr("has shape"));  // twice
  }
  // Per-linear units are refused by the STRUCTURED evaluator.
  Problem q = MakeProblem(4);
  EvaluatorOptions opt{.granularity = search::Granularity::kStructured};
  opt.unit_of_linear.resize(21);
  std::iota(opt.unit_of_linear.begin(), opt.unit_of_linear.end(), 0);
  auto bad = CandidateEvaluator::Create(q.model.get(), q.samples, opt);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("one unit per decoder layer"));
  // Bank inputs.
  std::vector<at::Tensor> weights;
  for (int i = 0; i < 21; ++i) weights.push_back(ev->dense_weight(i));
  std::vector<DecoderLayerHeads> heads = LayerHeadsOf(ev->model());
  EXPECT_FALSE(StructuredBank::Build(absl::MakeSpan(weights).subspan(0, 14), heads,
                                     MaskMethod::kMagnitude, nullptr)
                   .ok());
  EXPECT_FALSE(StructuredBank::Build(weights, heads, MaskMethod::kWanda, nullptr).ok());
  heads[1].num_kv_heads = 3;
  EXPECT_THAT(
      StructuredBank::Build(weights, heads, MaskMethod::kMagnitude, nullptr).status().message(),
      HasSubstr("multiple of kv heads"));
  heads = LayerHeadsOf(ev->model());
  heads[0].num_heads = 2;
  EXPECT_THAT(
      StructuredBank::Build(weights, heads, MaskMethod::kMagnitude, nullptr).status().message(),
      HasSubstr("q_proj.weight has shape"));
  weights[4] = weights[4].clone();
  weights[4][0][0] = std::nanf("");
  EXPECT_THAT(
      StructuredBank::Build(weights, LayerHeadsOf(ev->model()), MaskMethod::kMagnitude, nullptr)
          .status()
          .message(),
      HasSubstr("non-finite"));
  // The FLOPs side.
  FlopsModelDims dims = ev->model().FlopsDims();
  heads = LayerHeadsOf(ev->model());
  heads[2].head_dim = 8;
  EXPECT_THAT(search::PolicySpace::CreateStructured(dims, {10, 100, 1}, heads,
                                                    search::DefaultRatioChoices())
                  .status()
                  .message(),
              HasSubstr("decoder layer 2"));
  EXPECT_FALSE(ShrinkDecoderDims(dims, LayerHeadsOf(ev->model()), {0.1, 0.1}).ok());
  EXPECT_FALSE(ShrinkDecoderDims(dims, LayerHeadsOf(ev->model()), {0.1, 0.1, 1.1}).ok());
}

// One KV head per layer (MHA with 1 group, or GQA with G = 1): ratios < 1 never remove it.
TEST(StructuredTest, SingleGroupIsNeverRemoved) {
  Problem p = MakeProblem(4, 3, /*heads=*/4, /*kv=*/1);
  auto ev = StructuredEvaluator(p, MaskMethod::kWanda);
  ASSERT_NE(ev, nullptr);
  auto plan = PlanStructured(ev->structured_bank(), {0.8, 0.95, 0.0});
  ASSERT_TRUE(plan.ok());
  for (const StructuredLayerPlan& lp : *plan) {
    EXPECT_EQ(lp.cut.kv_groups, 0);
    EXPECT_EQ(lp.num_heads_after(), 4);
  }
  EXPECT_EQ((*plan)[1].intermediate_after(), 96 - 91);
}

}  // namespace
}  // namespace prunesvc::prune

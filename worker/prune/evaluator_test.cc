#include "worker/prune/evaluator.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

#include "absl/types/span.h"
#include "common/estimators.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/prune/calibration.h"
#include "worker/prune/random_llava.h"

namespace prunesvc::prune {
namespace {

using ::prunesvc::prune::testing::RandomEvalSamples;
using ::prunesvc::prune::testing::RandomLlavaConfig;
using ::prunesvc::prune::testing::RandomLlavaTensors;
using ::prunesvc::prune::testing::WithFeatures;
using ::testing::HasSubstr;

using Problem = ::prunesvc::prune::testing::RandomProblem;

Problem MakeProblem(int num_samples = 12, uint64_t seed = 1) {
  auto p = ::prunesvc::prune::testing::MakeRandomProblem({}, num_samples, seed);
  EXPECT_TRUE(p.ok()) << p.status();
  return std::move(*p);
}

std::vector<double> RandomRatios(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> r(n);
  for (double& x : r) x = 0.1 * double(rng() % 9);  // {0, .1, …, .8}
  return r;
}

// Brute-force keep-mask of one linear: sort each row's (score, column) pairs and drop the first
// floor(r·in) — independent of MaskBank.
at::Tensor BruteForceKeep(const at::Tensor& w, const at::Tensor& norms, MaskMethod method,
                          double ratio) {
  const int64_t out = w.size(0), in = w.size(1);
  at::Tensor keep = at::ones({out, in}, at::kBool);
  const int64_t k = int64_t(std::floor(ratio * in + 1e-9));
  for (int64_t r = 0; r < out; ++r) {
    std::vector<std::pair<double, int64_t>> row;
    for (int64_t c = 0; c < in; ++c) {
      double s = std::fabs(double(w[r][c].item<float>()));
      if (method == MaskMethod::kWanda) s *= std::sqrt(norms[c].item<double>());
      row.push_back({s, c});
    }
    std::sort(row.begin(), row.end());
    for (int64_t t = 0; t < k; ++t) keep[r][row[t].second] = false;
  }
  return keep;
}

TEST(CalibrationTest, BatchSizeInvarianceAndGram) {
  Problem p = MakeProblem(10);
  const auto samples = WithFeatures(*p.model, p.samples);
  auto one = Calibrate(*p.model, samples, {.batch_size = 1, .collect_gram = true});
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->linears.size(), 3u * 7);
  int64_t rows = 0;
  for (const auto& s : samples) rows += p.model->ExpandedLength(s.token_ids) - 1;
  EXPECT_EQ(one->num_rows, rows);
  // Shared inputs: q/k/v and gate/up point to the same statistics.
  EXPECT_EQ(one->linears[0], one->linears[1]);
  EXPECT_EQ(one->linears[0], one->linears[2]);
  EXPECT_NE(one->linears[0], one->linears[3]);
  EXPECT_EQ(one->linears[4], one->linears[5]);
  for (int bs : {3, 10}) {
    auto many = Calibrate(*p.model, samples, {.batch_size = bs});
    ASSERT_TRUE(many.ok()) << many.status();
    // The forward itself is batch-invariant only to float32 rounding (left padding changes the
    // GEMM shapes); squaring doubles that relative error. Measured against each linear's largest
    // column norm, and per element.
    double max_rel = 0, max_elem_rel = 0;
    for (size_t i = 0; i < one->linears.size(); ++i) {
      const at::Tensor a = one->linears[i]->col_sq_norms, b = many->linears[i]->col_sq_norms;
      EXPECT_EQ(many->linears[i]->rows, rows);
      EXPECT_FALSE(many->linears[i]->gram.defined());
      max_rel = std::max(max_rel, ((a - b).abs().max() / a.abs().max()).item<double>());
      max_elem_rel =
          std::max(max_elem_rel, ((a - b).abs() / a.abs().clamp_min(1e-30)).max().item<double>());
    }
    std::printf("[calibration] batch %d vs 1: max |Δ|/max‖X_j‖² = %.3g, per element %.3g\n", bs,
                max_rel, max_elem_rel);
    EXPECT_LE(max_rel, 1e-6);
    EXPECT_LE(max_elem_rel, 5e-6);
  }
  // diag(XᵀX) = ‖X_j‖².
  for (const auto& st : one->linears) {
    EXPECT_LE((st->gram.diagonal() - st->col_sq_norms).abs().max().item<double>(),
              1e-12 * st->col_sq_norms.abs().max().item<double>());
  }
  EXPECT_FALSE(Calibrate(*p.model, samples, {.batch_size = 0}).ok());
}

// Layer 0's attention input is RMSNorm(embeddings) (norm weight 1): its column norms can be
// computed without running the model.
TEST(CalibrationTest, FirstLayerNormsFromEmbeddings) {
  Problem p = MakeProblem(6);
  const auto samples = WithFeatures(*p.model, p.samples);
  auto st = Calibrate(*p.model, samples, {.batch_size = 4});
  ASSERT_TRUE(st.ok());
  const at::Tensor embed = p.tensors["language_model.model.embed_tokens.weight"].to(at::kDouble);
  at::Tensor want = at::zeros({p.config.text.hidden_size}, at::kDouble);
  for (const auto& s : samples) {
    for (int t = 0; t < s.answer_end - 1; ++t) {
      const int id = s.token_ids[t];
      at::Tensor rows = id == p.config.image_token_index ? s.image_features[0].to(at::kDouble)
                                                         : embed[id].unsqueeze(0);
      rows = rows * (rows.square().mean(-1, true) + p.config.text.rms_norm_eps).rsqrt();
      want += rows.square().sum(0);
    }
  }
  const at::Tensor have = st->linears[0]->col_sq_norms;
  const double rel = ((have - want).abs() / want).max().item<double>();
  std::printf("[calibration] layer-0 norms vs brute force: max rel |Δ| = %.3g\n", rel);
  EXPECT_LE(rel, 1e-5);  // float32 RMSNorm in the model vs float64 here
}

class EvaluatorTest : public ::testing::TestWithParam<MaskMethod> {};

// Evaluate(π) equals a model built from scratch with the masked weights zeroed by brute force.
TEST_P(EvaluatorTest, EqualsFromScratchMaskedModel) {
  Problem p = MakeProblem(12);
  auto ev =
      CandidateEvaluator::Create(p.model.get(), p.samples, {.method = GetParam(), .batch_size = 5});
  ASSERT_TRUE(ev.ok()) << ev.status();
  const int n = (*ev)->num_linears();
  ASSERT_EQ(n, 21);
  for (uint64_t seed : {1, 2}) {
    const std::vector<double> ratios = RandomRatios(n, seed);
    auto got = (*ev)->Evaluate(ratios);
    ASSERT_TRUE(got.ok()) << got.status();
    // From scratch: fresh model, brute-force masks.
    auto fresh = model::LlavaModel::CreateFromTensors(p.config, p.tensors);
    ASSERT_TRUE(fresh.ok());
    std::vector<model::NamedLinear> lins = (*fresh)->DecoderLinears();
    for (int i = 0; i < n; ++i) {
      at::Tensor keep =
          BruteForceKeep(lins[i].linear->weight, (*ev)->calibration().linears[i]->col_sq_norms,
                         GetParam(), ratios[i]);
      lins[i].linear->weight.mul_(keep);
      // The evaluator's weights are exactly these.
      ASSERT_TRUE(at::equal(lins[i].linear->weight, (*ev)->linears()[i].linear->weight)) << i;
    }
    auto ref = model::ScoreSamples(**fresh, WithFeatures(**fresh, p.samples), {.batch_size = 12});
    ASSERT_TRUE(ref.ok());
    const model::ScoreSummary sum = model::Summarize(*ref);
    double max_delta = std::fabs(sum.mean_loss - got->loss);
    for (size_t s = 0; s < ref->size(); ++s) {
      max_delta = std::max(max_delta, std::fabs((*ref)[s].loss - got->sample_losses[s]));
    }
    std::printf("[evaluate %s] vs from-scratch masked model: max |Δloss| = %.3g, acc %.3f\n",
                std::string(MaskMethodName(GetParam())).c_str(), max_delta, got->accuracy);
    EXPECT_LE(max_delta, 1e-6);
    EXPECT_EQ(sum.accuracy, got->accuracy);
    EXPECT_EQ(got->num_samples, 12);
    EXPECT_EQ(got->num_multiple_choice, 8);
  }
}

// A, then B, then A again: identical results (incremental weight edits are exact), on both the
// raw-pointer and the generic torch path, and RestoreDense gives back the dense weights bitwise.
TEST_P(EvaluatorTest, ABAIsExactAndPathsAgree) {
  Problem p = MakeProblem(8);
  Problem q = MakeProblem(8);
  auto fast = CandidateEvaluator::Create(p.model.get(), p.samples, {.method = GetParam()});
  auto generic = CandidateEvaluator::Create(q.model.get(), q.samples,
                                            {.method = GetParam(), .generic_mask_path = true});
  ASSERT_TRUE(fast.ok() && generic.ok());
  const int n = (*fast)->num_linears();
  const std::vector<double> a = RandomRatios(n, 3), b = RandomRatios(n, 4);
  auto a1 = (*fast)->Evaluate(a);
  ASSERT_TRUE(a1.ok());
  std::vector<at::Tensor> weights_a;
  for (const auto& l : (*fast)->linears()) weights_a.push_back(l.linear->weight.clone());
  auto b1 = (*fast)->Evaluate(b);
  ASSERT_TRUE(b1.ok());
  EXPECT_NE(a1->loss, b1->loss);
  EXPECT_GT((*fast)->last_timing().linears_changed, 0);
  auto a2 = (*fast)->Evaluate(a);
  ASSERT_TRUE(a2.ok());
  EXPECT_EQ(a1->loss, a2->loss);
  EXPECT_EQ(a1->sample_losses, a2->sample_losses);
  EXPECT_EQ(a1->omega, a2->omega);
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(at::equal(weights_a[i], (*fast)->linears()[i].linear->weight)) << i;
  }
  // Same ratios again: nothing is touched.
  ASSERT_TRUE((*fast)->ApplyRatios(a).ok());
  EXPECT_EQ((*fast)->last_timing().linears_changed, 0);
  // The generic path reaches the same weights through B first.
  ASSERT_TRUE((*generic)->Evaluate(b).ok());
  auto ga = (*generic)->Evaluate(a);
  ASSERT_TRUE(ga.ok());
  EXPECT_EQ(ga->loss, a1->loss);
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(at::equal(weights_a[i], (*generic)->linears()[i].linear->weight)) << i;
  }
  ASSERT_TRUE((*fast)->RestoreDense().ok());
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(at::equal((*fast)->dense_weight(i), (*fast)->linears()[i].linear->weight));
    EXPECT_EQ((*fast)->applied_pruned_per_row(i), 0);
  }
}

// Ω from the bank's prefix sums equals Ω computed from the weights in the model.
TEST_P(EvaluatorTest, OmegaEqualsBruteForce) {
  for (bool per_linear : {false, true}) {
    Problem p = MakeProblem(4);
    EvaluatorOptions opt{.method = GetParam()};
    if (per_linear) {
      opt.unit_of_linear.resize(21);
      std::iota(opt.unit_of_linear.begin(), opt.unit_of_linear.end(), 0);
    }
    auto ev = CandidateEvaluator::Create(p.model.get(), p.samples, opt);
    ASSERT_TRUE(ev.ok());
    EXPECT_EQ((*ev)->num_units(), per_linear ? 21 : 3);
    for (uint64_t seed : {5, 6, 7}) {
      std::vector<double> ratios = RandomRatios(21, seed);
      if (seed == 7) std::fill(ratios.begin(), ratios.begin() + 7, 1.0);  // a unit fully pruned
      auto r = (*ev)->Evaluate(ratios);
      ASSERT_TRUE(r.ok());
      std::vector<double> kept(21, 0), dense(21, 0), params(21, 0);
      for (int i = 0; i < 21; ++i) {
        const int u = (*ev)->unit_of_linear()[i];
        kept[u] += (*ev)->linears()[i].linear->weight.to(at::kDouble).square().sum().item<double>();
        dense[u] += (*ev)->dense_weight(i).to(at::kDouble).square().sum().item<double>();
        params[u] += (*ev)->dense_weight(i).numel();
      }
      double num = 0, den = 0;
      for (int u = 0; u < 21; ++u) {
        if (params[u] == 0) continue;
        num += params[u] * std::sqrt(kept[u] / dense[u]);
        den += params[u];
      }
      std::printf("[omega] per_linear=%d Ω=%.6f brute force %.6f\n", per_linear, r->omega,
                  num / den);
      EXPECT_NEAR(r->omega, num / den, 1e-9);
    }
    auto dense_omega = (*ev)->Omega(std::vector<double>(21, 0.0));
    ASSERT_TRUE(dense_omega.ok());
    EXPECT_DOUBLE_EQ(*dense_omega, 1.0);
  }
}

// Candidates that share leading layers in various ways: per layer, a ratio from a small set, so
// many pairs agree on layer 0 or on layers 0-1 (3 layers of 7 linears). `per_layer` = one ratio
// for the whole layer (what STRUCTURED needs); otherwise each linear its own.
std::vector<std::vector<double>> PrefixCandidates(int count, bool per_layer, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<double>> out;
  while (int(out.size()) < count) {
    std::vector<double> r;
    for (int l = 0; l < 3; ++l) {
      const double base = 0.2 * double(rng() % 3);  // {0, .2, .4}
      for (int i = 0; i < kNumDecoderLinears; ++i) {
        // Per linear: the last layer's linears differ among themselves.
        r.push_back(per_layer || l < 2 ? base : base + 0.1 * double(rng() % 2));
      }
    }
    if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(std::move(r));
  }
  return out;
}

// One Evaluate per candidate, in order: the exhaustive reference.
std::vector<CandidateResult> EvaluateEach(CandidateEvaluator& ev,
                                          const std::vector<std::vector<double>>& cands) {
  std::vector<CandidateResult> out;
  for (const auto& c : cands) {
    auto r = ev.Evaluate(c);
    EXPECT_TRUE(r.ok()) << r.status();
    out.push_back(r.ok() ? *r : CandidateResult{});
  }
  return out;
}

void ExpectSameResult(const CandidateResult& got, const CandidateResult& want, size_t i) {
  EXPECT_FALSE(got.raced_out) << i;
  EXPECT_EQ(got.loss, want.loss) << i;  // bitwise: same batches, same ops
  EXPECT_EQ(got.sample_losses, want.sample_losses) << i;
  EXPECT_EQ(got.accuracy, want.accuracy) << i;
  EXPECT_EQ(got.omega, want.omega) << i;
  EXPECT_EQ(got.num_samples, want.num_samples) << i;
  EXPECT_EQ(got.num_correct, want.num_correct) << i;
  EXPECT_EQ(got.num_multiple_choice, want.num_multiple_choice) << i;
}

// EvaluateMany on `cands`, checked bitwise against one Evaluate per candidate; its timing.
ManyTiming ExpectManyEqualsEach(CandidateEvaluator& ev,
                                const std::vector<std::vector<double>>& cands) {
  auto many = ev.EvaluateMany(cands);
  EXPECT_TRUE(many.ok()) << many.status();
  if (!many.ok()) return {};
  const ManyTiming t = ev.last_many_timing();
  const std::vector<CandidateResult> each = EvaluateEach(ev, cands);
  EXPECT_EQ(many->size(), cands.size());
  for (size_t i = 0; i < std::min(many->size(), cands.size()); ++i) {
    ExpectSameResult((*many)[i], each[i], i);
  }
  return t;
}

// EvaluateMany (prefix sharing) returns bitwise what one Evaluate per candidate returns, in the
// candidates' order, while running fewer decoder layers.
TEST_P(EvaluatorTest, EvaluateManyEqualsEvaluateBitwiseWithFewerLayers) {
  Problem p = MakeProblem(12);
  auto ev =
      CandidateEvaluator::Create(p.model.get(), p.samples, {.method = GetParam(), .batch_size = 5});
  ASSERT_TRUE(ev.ok()) << ev.status();
  const ManyTiming t = ExpectManyEqualsEach(**ev, PrefixCandidates(14, false, 7));
  // 3 batches (5, 5, 2 samples) × 3 layers × 14 candidates without sharing.
  EXPECT_EQ(t.layer_runs_exhaustive, 3 * 3 * 14);
  EXPECT_LT(t.layer_runs, t.layer_runs_exhaustive);
  EXPECT_EQ(t.raced_out, 0);
  std::printf("[evaluate-many %s] layer runs %lld of %lld\n",
              std::string(MaskMethodName(GetParam())).c_str(), (long long)t.layer_runs,
              (long long)t.layer_runs_exhaustive);
}

// Activations kept across EvaluateMany calls (activation_cache.h): a second call whose
// candidates share leading layers with the first call's runs fewer layers and still returns
// bitwise one Evaluate per candidate — with the default budget, with a budget of three
// activations (evicting), and with none (nothing kept). A new sample order or projector empties
// the cache, and the results stay Evaluate's under them.
TEST_P(EvaluatorTest, ActivationsKeptAcrossCallsGiveEvaluatesResultsWithFewerLayers) {
  Problem p = MakeProblem(12);
  const auto first = PrefixCandidates(8, false, 7);
  auto second = PrefixCandidates(8, false, 8);
  second.push_back(first[3]);  // a candidate evaluated before: every kept layer reused
  auto run = [&](std::optional<int64_t> budget, int64_t* layer_runs, int64_t* from_cache,
                 int64_t* entry_bytes) {
    EvaluatorOptions o{.method = GetParam(), .batch_size = 5};
    if (budget.has_value()) o.activation_cache_bytes = *budget;
    auto ev = CandidateEvaluator::Create(p.model.get(), p.samples, o);
    ASSERT_TRUE(ev.ok()) << ev.status();
    ASSERT_TRUE((*ev)->EvaluateMany(first).ok());
    if (entry_bytes != nullptr && (*ev)->activation_cache().size() > 0) {
      *entry_bytes = (*ev)->activation_cache().bytes() / int64_t((*ev)->activation_cache().size());
    }
    const ManyTiming t = ExpectManyEqualsEach(**ev, second);
    *layer_runs = t.layer_runs;
    *from_cache = t.layers_from_cache;
    EXPECT_LE((*ev)->activation_cache().bytes(), o.activation_cache_bytes);
    if (!budget.has_value()) {
      // A new order: nothing kept survives, and the walk matches Evaluate under it.
      ASSERT_GT((*ev)->activation_cache().size(), 0u);
      std::vector<int> reversed(12);
      for (int i = 0; i < 12; ++i) reversed[size_t(i)] = 11 - i;
      ASSERT_TRUE((*ev)->SetSampleOrder(reversed).ok());
      EXPECT_EQ((*ev)->activation_cache().size(), 0u);
      EXPECT_EQ(ExpectManyEqualsEach(**ev, second).layers_from_cache, 0);
      // A new projector: the same.
      ASSERT_GT((*ev)->activation_cache().size(), 0u);
      ProjectorWeights theta = (*ev)->projector();
      theta.linear_2_weight = theta.linear_2_weight * 1.5;
      ASSERT_TRUE((*ev)->SetProjector(1, theta).ok());
      EXPECT_EQ((*ev)->activation_cache().size(), 0u);
      EXPECT_EQ(ExpectManyEqualsEach(**ev, second).layers_from_cache, 0);
    }
  };
  int64_t runs_none = 0, from_none = 0, runs_kept = 0, from_kept = 0, entry = 0;
  run(0, &runs_none, &from_none, nullptr);
  EXPECT_EQ(from_none, 0);
  run(std::nullopt, &runs_kept, &from_kept, &entry);
  EXPECT_GT(from_kept, 0);
  EXPECT_LT(runs_kept, runs_none);
  ASSERT_GT(entry, 0);
  int64_t runs_small = 0, from_small = 0;
  run(3 * entry, &runs_small, &from_small, nullptr);  // evicts; still exact
  EXPECT_LE(runs_kept, runs_small);
  std::printf(
      "[activation cache %s] second call's layer runs: %lld kept none, %lld kept three, "
      "%lld kept all (%lld from the cache)\n",
      std::string(MaskMethodName(GetParam())).c_str(), (long long)runs_none, (long long)runs_small,
      (long long)runs_kept, (long long)from_kept);
}

// A sample order (docs/PERFORMANCE.md §2): position j scores sample order[j]. With batches of
// one sample the batch composition does not change, so each sample's loss is bitwise the one it
// had at its index; with larger batches it is scored beside other samples (padding), so equal
// within float tolerance; EvaluateMany and Evaluate agree bitwise under the order, ranges count
// positions, and calibration (the set's order) is untouched. A bad order is INVALID_ARGUMENT.
TEST_P(EvaluatorTest, ASampleOrderScoresPositionJAsSampleOrderJ) {
  Problem p = MakeProblem(9);
  const std::vector<int> order = {8, 3, 0, 5, 1, 7, 2, 6, 4};
  for (int batch : {1, 4}) {
    SCOPED_TRACE(batch);
    auto ev = CandidateEvaluator::Create(p.model.get(), p.samples,
                                         {.method = GetParam(), .batch_size = batch});
    ASSERT_TRUE(ev.ok()) << ev.status();
    const std::vector<double> ratios = RandomRatios((*ev)->num_linears(), 5);
    auto before = (*ev)->Evaluate(ratios);
    ASSERT_TRUE(before.ok()) << before.status();
    const at::Tensor norms = (*ev)->calibration().linears[0]->col_sq_norms.clone();
    ASSERT_TRUE((*ev)->SetSampleOrder(order).ok());
    EXPECT_EQ((*ev)->sample_order(), order);
    EXPECT_TRUE(at::equal((*ev)->calibration().linears[0]->col_sq_norms, norms));
    auto after = (*ev)->Evaluate(ratios);
    ASSERT_TRUE(after.ok()) << after.status();
    ASSERT_EQ(after->sample_losses.size(), order.size());
    for (size_t j = 0; j < order.size(); ++j) {
      const double want = before->sample_losses[size_t(order[j])];
      if (batch == 1) {
        EXPECT_EQ(after->sample_losses[j], want) << j;
      } else {
        EXPECT_NEAR(after->sample_losses[j], want, 1e-4 * (1 + std::fabs(want))) << j;
      }
    }
    EXPECT_NEAR(after->loss, before->loss, 1e-4 * (1 + before->loss));
    EXPECT_EQ(after->num_correct, before->num_correct);
    auto many = (*ev)->EvaluateMany({ratios});
    ASSERT_TRUE(many.ok()) << many.status();
    ExpectSameResult((*many)[0], *after, 0);
    auto slice = (*ev)->Evaluate(ratios, {.begin = 4, .end = 8});  // positions 4..7
    ASSERT_TRUE(slice.ok()) << slice.status();
    for (size_t j = 0; j < 4; ++j) {
      EXPECT_EQ(slice->sample_losses[j], after->sample_losses[4 + j]) << j;
    }
  }
  auto ev = CandidateEvaluator::Create(p.model.get(), p.samples, {.method = GetParam()});
  ASSERT_TRUE(ev.ok()) << ev.status();
  for (const std::vector<int>& bad : std::vector<std::vector<int>>{{0, 1, 2},
                                                                   {0, 1, 2, 3, 4, 5, 6, 7, 7},
                                                                   {0, 1, 2, 3, 4, 5, 6, 7, 9},
                                                                   {-1, 1, 2, 3, 4, 5, 6, 7, 8}}) {
    const absl::Status s = (*ev)->SetSampleOrder(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("sample order"));
  }
  std::vector<int> identity(9);
  for (int i = 0; i < 9; ++i) identity[size_t(i)] = i;
  EXPECT_EQ((*ev)->sample_order(), identity);  // unchanged by the refused orders
}

// STRUCTURED evaluation through the same walk: bitwise Evaluate's results.
TEST_P(EvaluatorTest, EvaluateManyStructuredEqualsEvaluate) {
  Problem p = MakeProblem(9);
  auto ev = CandidateEvaluator::Create(
      p.model.get(), p.samples,
      {.method = GetParam(), .granularity = search::Granularity::kStructured, .batch_size = 4});
  ASSERT_TRUE(ev.ok()) << ev.status();
  ExpectManyEqualsEach(**ev, PrefixCandidates(8, true, 11));
}

// Racing against the exhaustive results: a candidate is raced out exactly when the replayed
// bound (common/racing.h) says so — and then its exhaustive fitness is above the threshold —
// its result is the bound over its scored prefix; every other result is bitwise exhaustive.
// NORM's policy term, and PAIRED's sample-dependent one (against candidate 0 as the reference).
TEST_P(EvaluatorTest, EvaluateManyRacesOutOnlyCandidatesAboveTheThreshold) {
  Problem p = MakeProblem(12);
  auto ev =
      CandidateEvaluator::Create(p.model.get(), p.samples, {.method = GetParam(), .batch_size = 4});
  ASSERT_TRUE(ev.ok()) << ev.status();
  std::vector<std::vector<double>> cands = PrefixCandidates(10, false, 3);
  for (int i = 0; i < 4; ++i) cands.push_back(std::vector<double>(21, 0.7 + 0.03 * i));
  const std::vector<CandidateResult> each = EvaluateEach(**ev, cands);
  search::RaceLimit norm;
  norm.norm_eta = 0.5;
  norm.num_samples = 12;
  search::RaceLimit paired;
  paired.num_samples = 12;
  paired.paired_eta = 1.5;
  paired.reference_losses = each[0].sample_losses;
  std::vector<int> order(12);
  for (int i = 0; i < 12; ++i) order[i] = 11 - i;
  for (search::RaceLimit* race : {&norm, &paired}) {
    SCOPED_TRACE(race->paired_eta != 0 ? "PAIRED" : "NORM");
    // The exhaustive fitness as the search computes it.
    auto fitness_of = [&](size_t i) {
      const CandidateResult& w = each[i];
      double t = race->Term(i, w.omega);
      if (race->paired_eta != 0) {
        search::TermInputs in{.sample_losses = w.sample_losses,
                              .reference_losses = race->reference_losses};
        t += race->paired_eta * *search::EstimatorTerm(search::Estimator::kPaired, in, order);
      }
      return w.loss + t;
    };
    // Races with `threshold`; checks every result against the exhaustive one; the raced count.
    auto race_with = [&](double threshold) -> int {
      race->threshold = threshold;
      auto many = (*ev)->EvaluateMany(cands, *race);
      EXPECT_TRUE(many.ok()) << many.status();
      if (!many.ok()) return -1;
      int raced = 0;
      for (size_t i = 0; i < cands.size(); ++i) {
        const CandidateResult& w = each[i];
        const std::optional<int> k = search::ReplayRace(w.sample_losses, 4, *race, i, w.omega);
        const CandidateResult& g = (*many)[i];
        EXPECT_EQ(g.raced_out, k.has_value()) << i;
        if (!k || !g.raced_out) {
          ExpectSameResult(g, w, i);
          continue;
        }
        ++raced;
        EXPECT_GT(fitness_of(i), threshold) << i;  // truly worse than the threshold
        EXPECT_EQ(g.samples_scored, *k) << i;
        const std::vector<double> prefix(w.sample_losses.begin(), w.sample_losses.begin() + *k);
        EXPECT_EQ(g.sample_losses, prefix) << i;
        double sum = 0;
        for (double x : prefix) sum += x;
        EXPECT_EQ(g.loss, sum / 12) << i;
        EXPECT_LE(g.loss, w.loss) << i;
        EXPECT_EQ(g.accuracy, 0.0) << i;
        EXPECT_EQ(g.omega, w.omega) << i;
      }
      EXPECT_EQ(raced, (*ev)->last_many_timing().raced_out);
      return raced;
    };
    // As the search sets it: the 4th best fitness ("parents = 4"): the best 4 are never raced out.
    std::vector<double> fitness;
    for (size_t i = 0; i < cands.size(); ++i) fitness.push_back(fitness_of(i));
    std::sort(fitness.begin(), fitness.end());
    EXPECT_LE(race_with(fitness[3]), int(cands.size()) - 4);
    // The median of the bounds after the first batch: at least half go after it.
    std::vector<double> first_bounds;
    for (size_t i = 0; i < cands.size(); ++i) {
      const auto& l = each[i].sample_losses;
      first_bounds.push_back((l[0] + l[1] + l[2] + l[3]) / 12 +
                             race->BoundTerm(i, each[i].omega, absl::MakeConstSpan(l).first(4)));
    }
    std::sort(first_bounds.begin(), first_bounds.end());
    EXPECT_GE(race_with(first_bounds[first_bounds.size() / 2]), int(cands.size()) / 2 - 1);
  }
}

// A second job's evaluator built from the first's shared preparation (preparation_cache.h), on
// another copy of the same model and samples: the same bank object, the same calibration, and
// bitwise the results of computing them itself (UNSTRUCTURED and STRUCTURED); a preparation of
// the other granularity is refused.
TEST_P(EvaluatorTest, ASharedPreparationGivesBitwiseTheSameResults) {
  for (search::Granularity g :
       {search::Granularity::kUnstructured, search::Granularity::kStructured}) {
    SCOPED_TRACE(int(g));
    const EvaluatorOptions opt{.method = GetParam(), .granularity = g, .batch_size = 4};
    Problem first = MakeProblem(9, 5), second = MakeProblem(9, 5), alone = MakeProblem(9, 5);
    auto a = CandidateEvaluator::Create(first.model.get(), first.samples, opt);
    ASSERT_TRUE(a.ok()) << a.status();
    ModelMetrics dense;
    dense.loss = 0.25;
    absl::StatusOr<std::shared_ptr<const Preparation>> shared = (*a)->SharedPreparation(dense);
    ASSERT_TRUE(shared.ok()) << shared.status();
    EvaluatorOptions with = opt;
    with.prepared = *shared;
    auto b = CandidateEvaluator::Create(second.model.get(), second.samples, with);
    ASSERT_TRUE(b.ok()) << b.status();
    auto c = CandidateEvaluator::Create(alone.model.get(), alone.samples, opt);
    ASSERT_TRUE(c.ok()) << c.status();
    if (g == search::Granularity::kStructured) {
      EXPECT_EQ(&(*b)->structured_bank(), &(*a)->structured_bank());
    } else {
      EXPECT_EQ(&(*b)->bank(), &(*a)->bank());
    }
    EXPECT_EQ((*b)->calibration().linears, (*a)->calibration().linears);
    const auto cands = PrefixCandidates(6, g == search::Granularity::kStructured, 13);
    auto rb = (*b)->EvaluateMany(cands);
    auto rc = (*c)->EvaluateMany(cands);
    ASSERT_TRUE(rb.ok() && rc.ok());
    for (size_t i = 0; i < cands.size(); ++i) ExpectSameResult((*rb)[i], (*rc)[i], i);
    // The other granularity's preparation does not fit.
    EvaluatorOptions wrong = opt;
    wrong.granularity = g == search::Granularity::kStructured ? search::Granularity::kUnstructured
                                                              : search::Granularity::kStructured;
    wrong.prepared = *shared;
    Problem third = MakeProblem(9, 5);
    EXPECT_FALSE(CandidateEvaluator::Create(third.model.get(), third.samples, wrong).ok());
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, EvaluatorTest,
                         ::testing::Values(MaskMethod::kMagnitude, MaskMethod::kWanda),
                         [](const auto& info) { return std::string(MaskMethodName(info.param)); });

TEST(EvaluatorErrorsTest, BadInputs) {
  Problem p = MakeProblem(3);
  EXPECT_FALSE(CandidateEvaluator::Create(nullptr, p.samples, {}).ok());
  EXPECT_FALSE(CandidateEvaluator::Create(p.model.get(), {}, {}).ok());
  EXPECT_FALSE(CandidateEvaluator::Create(p.model.get(), p.samples, {.batch_size = 0}).ok());
  EvaluatorOptions bad_units;
  bad_units.unit_of_linear = {0, 1};
  EXPECT_THAT(CandidateEvaluator::Create(p.model.get(), p.samples, bad_units).status().message(),
              HasSubstr("unit_of_linear"));
  auto bad_samples = p.samples;
  bad_samples[1].scoring.answer_end = 1000;
  EXPECT_THAT(CandidateEvaluator::Create(p.model.get(), bad_samples, {}).status().message(),
              HasSubstr("sample 1"));
  auto ev = CandidateEvaluator::Create(p.model.get(), p.samples, {});
  ASSERT_TRUE(ev.ok());
  EXPECT_THAT((*ev)->Evaluate(std::vector<double>(20, 0.1)).status().message(),
              HasSubstr("expected 21"));
  std::vector<double> r(21, 0.1);
  r[4] = 1.5;
  EXPECT_THAT((*ev)->Evaluate(r).status().message(), HasSubstr("mlp.gate_proj"));
  r[4] = NAN;
  EXPECT_FALSE((*ev)->Evaluate(r).ok());
}

// A new projector version changes the image features, the calibration and the bank; the dense
// weights are restored first, and version 0's results come back when it is reinstalled.
TEST(EvaluatorProjectorTest, SetProjectorRebuilds) {
  Problem p = MakeProblem(6);
  auto ev = CandidateEvaluator::Create(p.model.get(), p.samples, {.method = MaskMethod::kWanda});
  ASSERT_TRUE(ev.ok());
  const std::vector<double> ratios = RandomRatios(21, 9);
  auto v0 = (*ev)->Evaluate(ratios);
  ASSERT_TRUE(v0.ok());
  const ProjectorWeights theta0 = (*ev)->projector();
  ProjectorWeights theta1 = theta0;
  theta1.linear_2_weight = theta0.linear_2_weight * 1.5;
  const at::Tensor norms0 = (*ev)->calibration().linears[0]->col_sq_norms.clone();
  ASSERT_TRUE((*ev)->SetProjector(1, theta1).ok());
  EXPECT_EQ((*ev)->projector_version(), 1);
  EXPECT_FALSE(at::equal(norms0, (*ev)->calibration().linears[0]->col_sq_norms));
  EXPECT_TRUE(at::equal(p.model->projector_linear_2().weight, theta1.linear_2_weight));
  auto v1 = (*ev)->Evaluate(ratios);
  ASSERT_TRUE(v1.ok());
  EXPECT_NE(v0->loss, v1->loss);
  ASSERT_TRUE((*ev)->SetProjector(0, theta0).ok());
  auto back = (*ev)->Evaluate(ratios);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->sample_losses, v0->sample_losses);
  ProjectorWeights wrong = theta0;
  wrong.linear_1_weight = at::zeros({3, 3});
  EXPECT_THAT((*ev)->SetProjector(2, wrong).message(), HasSubstr("linear_1.weight"));
}

}  // namespace
}  // namespace prunesvc::prune

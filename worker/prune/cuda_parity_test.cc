// The CUDA path against the CPU path: the same random model and samples on both devices must give
// the same logits, calibration statistics, candidate scores (UNSTRUCTURED and STRUCTURED) and
// SparseGPT weights, to float32 rounding (float64 for SparseGPT). Skipped where libtorch has no
// CUDA or sees no GPU (CI); scripts/gpu_check.sh runs it on a GPU machine (docs/gpu.md).
//
// Tolerances: both devices compute in IEEE float32 (OpenDevice turns TF32 off), but the kernels
// sum in different orders, so results differ by float32 rounding: ~1e-6 relative per GEMM,
// compounded over a few layers. The bounds below are ~10x what such rounding gives and far
// below what a wrong mask, a missed device copy or TF32 (~1e-3 relative) would.
#include <torch/cuda.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/device.h"
#include "worker/model/llava_model.h"
#include "worker/prune/calibration.h"
#include "worker/prune/evaluator.h"
#include "worker/prune/random_llava.h"
#include "worker/prune/sparsegpt.h"

namespace prunesvc::prune {
namespace {

using ::prunesvc::prune::testing::WithFeatures;

class CudaParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available())
      GTEST_SKIP() << "no CUDA device (CPU-only libtorch or no GPU)";
    auto info = model::OpenDevice("cuda:0", 0);
    ASSERT_TRUE(info.ok()) << info.status();
    std::printf("[cuda] %s, %.1f GiB\n", info->name.c_str(),
                double(info->memory_bytes) / (1 << 30));
  }
  const at::Device cuda_{at::kCUDA, 0};
};

double MaxRelDiff(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  return ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item<double>();
}

struct TwoDevices {
  testing::RandomProblem cpu;
  std::unique_ptr<model::LlavaModel> gpu;
};

TwoDevices MakeTwo(at::Device cuda, int num_samples, uint64_t seed) {
  auto p = testing::MakeRandomProblem({}, num_samples, seed);
  EXPECT_TRUE(p.ok()) << p.status();
  TwoDevices t{std::move(*p), nullptr};
  auto g = model::LlavaModel::CreateFromTensors(t.cpu.config, t.cpu.tensors, cuda);
  EXPECT_TRUE(g.ok()) << g.status();
  t.gpu = std::move(*g);
  return t;
}

TEST_F(CudaParityTest, ForwardAndCachedDecodingMatchCpu) {
  TwoDevices t = MakeTwo(cuda_, 8, 3);
  const auto cpu_samples = WithFeatures(*t.cpu.model, t.cpu.samples);
  const auto gpu_samples = WithFeatures(*t.gpu, t.cpu.samples);
  auto to_inputs = [](const std::vector<model::ScoringSample>& samples) {
    std::vector<model::SequenceInput> batch;
    for (const model::ScoringSample& s : samples) {
      model::SequenceInput in;
      in.token_ids = s.token_ids;
      in.image_features = s.image_features;
      for (int k = 0; k < int(in.token_ids.size()); ++k) in.logit_positions.push_back(k);
      batch.push_back(std::move(in));
    }
    return batch;
  };
  const std::vector<model::SequenceInput> cpu_batch = to_inputs(cpu_samples);
  const std::vector<model::SequenceInput> gpu_batch = to_inputs(gpu_samples);
  for (size_t i = 0; i < cpu_samples.size(); ++i) {
    EXPECT_TRUE(gpu_samples[i].image_features.is_cuda());
    EXPECT_LE(MaxRelDiff(gpu_samples[i].image_features, cpu_samples[i].image_features), 1e-5);
  }
  auto a = t.cpu.model->Forward(cpu_batch);
  auto b = t.gpu->Forward(gpu_batch);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  double worst = 0;
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_TRUE((*b)[i].is_cuda());
    worst = std::max(worst, MaxRelDiff((*b)[i], (*a)[i]));
  }
  std::printf("[cuda] batched forward logits: max |Δ|/max|logit| = %.3g\n", worst);
  EXPECT_LE(worst, 1e-4);

  // Incremental decoding with the KV cache: prompt, then two single tokens.
  model::KvCache ca, cg;
  auto la = t.cpu.model->ForwardWithCache(cpu_batch[0], &ca);
  auto lb = t.gpu->ForwardWithCache(gpu_batch[0], &cg);
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_LE(MaxRelDiff(*lb, *la), 1e-4);
  for (int tok : {20, 21}) {
    model::SequenceInput step;
    step.token_ids = {tok};
    la = t.cpu.model->ForwardWithCache(step, &ca);
    lb = t.gpu->ForwardWithCache(step, &cg);
    ASSERT_TRUE(la.ok() && lb.ok());
    EXPECT_LE(MaxRelDiff(*lb, *la), 1e-4);
  }
}

TEST_F(CudaParityTest, CalibrationStatsMatchCpuAndComeBackOnTheCpu) {
  TwoDevices t = MakeTwo(cuda_, 10, 5);
  auto a = Calibrate(*t.cpu.model, WithFeatures(*t.cpu.model, t.cpu.samples),
                     {.batch_size = 4, .collect_gram = true});
  auto b = Calibrate(*t.gpu, WithFeatures(*t.gpu, t.cpu.samples),
                     {.batch_size = 4, .collect_gram = true});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(a->linears.size(), b->linears.size());
  EXPECT_EQ(a->num_rows, b->num_rows);
  double worst = 0;
  for (size_t i = 0; i < a->linears.size(); ++i) {
    EXPECT_TRUE(b->linears[i]->col_sq_norms.is_cpu());
    EXPECT_TRUE(b->linears[i]->gram.is_cpu());
    worst = std::max(worst, MaxRelDiff(b->linears[i]->col_sq_norms, a->linears[i]->col_sq_norms));
    worst = std::max(worst, MaxRelDiff(b->linears[i]->gram, a->linears[i]->gram));
  }
  std::printf("[cuda] calibration ‖X_j‖² and XᵀX: max rel |Δ| = %.3g\n", worst);
  EXPECT_LE(worst, 1e-5);
}

class CudaEvaluatorParityTest : public CudaParityTest,
                                public ::testing::WithParamInterface<search::Granularity> {};

// The same policies scored by an evaluator on each device: equal losses to rounding and the
// same accuracies (a flip would need a near-tie of two option logits; none at this size).
TEST_P(CudaEvaluatorParityTest, CandidateScoresMatchCpu) {
  TwoDevices t = MakeTwo(cuda_, 12, 7);
  const EvaluatorOptions options{
      .method = MaskMethod::kWanda, .granularity = GetParam(), .batch_size = 5};
  auto ec = CandidateEvaluator::Create(t.cpu.model.get(), t.cpu.samples, options);
  auto eg = CandidateEvaluator::Create(t.gpu.get(), t.cpu.samples, options);
  ASSERT_TRUE(ec.ok()) << ec.status();
  ASSERT_TRUE(eg.ok()) << eg.status();
  std::mt19937_64 rng(11);
  double worst = 0;
  for (int round = 0; round < 6; ++round) {
    // {0, .1, …, .7} per linear; STRUCTURED cuts whole heads and channels, so one ratio for a
    // layer's attention linears (q k v o) and one for its MLP (gate up down).
    std::vector<double> ratios((*ec)->num_linears());
    for (size_t i = 0; i < ratios.size(); i += 7) {
      const double att = 0.1 * double(rng() % 8), mlp = 0.1 * double(rng() % 8);
      for (size_t k = 0; k < 7 && i + k < ratios.size(); ++k) {
        const bool structured = GetParam() == search::Granularity::kStructured;
        ratios[i + k] = structured ? (k < 4 ? att : mlp) : 0.1 * double(rng() % 8);
      }
    }
    auto a = (*ec)->Evaluate(ratios);
    auto b = (*eg)->Evaluate(ratios);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    worst = std::max(worst, std::abs(a->loss - b->loss) / std::max(1e-12, std::abs(a->loss)));
    EXPECT_EQ(a->accuracy, b->accuracy) << "round " << round;
    EXPECT_NEAR(a->omega, b->omega, 1e-9 * std::max(1.0, std::abs(a->omega)));
  }
  std::printf("[cuda] %s candidate loss: max rel |Δ| = %.3g over 6 policies\n",
              std::string(search::GranularityName(GetParam())).c_str(), worst);
  EXPECT_LE(worst, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Granularities, CudaEvaluatorParityTest,
                         ::testing::Values(search::Granularity::kUnstructured,
                                           search::Granularity::kStructured));

TEST_F(CudaParityTest, SparseGptMatchesCpu) {
  at::Generator gen = testing::SeededGenerator(13);
  const int64_t out = 48, in = 96, n = 400;
  const at::Tensor w = at::randn({out, in}, gen, at::kFloat);
  const at::Tensor x = at::randn({n, in}, gen, at::kDouble);
  const at::Tensor gram = x.t().mm(x);
  for (const SparseGptOptions& o : {SparseGptOptions{.ratio = 0.5, .block_size = 32},
                                    SparseGptOptions{.nm_n = 2, .nm_m = 4, .block_size = 32}}) {
    auto a = SparseGptPrune(w, gram, n, o);
    auto b = SparseGptPrune(w.to(cuda_), gram.to(cuda_), n, o);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE(b->weight.is_cuda());
    EXPECT_TRUE(b->keep.is_cpu());
    EXPECT_TRUE(at::equal(a->keep, b->keep)) << "nm_m " << o.nm_m;
    EXPECT_EQ(a->pruned, b->pruned);
    const double d = MaxRelDiff(b->weight, a->weight);
    std::printf("[cuda] sparsegpt (nm_m %d) weights: max rel |Δ| = %.3g\n", o.nm_m, d);
    EXPECT_LE(d, 1e-6);  // float64 arithmetic, rounded to float32 at the end
  }
}

}  // namespace
}  // namespace prunesvc::prune

// N:M masks of all three methods (the mask bank's N:M orders for MAGNITUDE / WANDA, SparseGPT's
// N:M mode) and OWL's outlier ratios, against brute force and an independent Python transcription
// of the OWL reference code (testdata/owl_reference.py).
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "common/owl.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/prune/evaluator.h"
#include "worker/prune/mask_bank.h"
#include "worker/prune/owl.h"
#include "worker/prune/random_llava.h"
#include "worker/prune/sparsegpt.h"

namespace prunesvc::prune {
namespace {

using at::indexing::Slice;
using ::testing::HasSubstr;

at::Generator Gen(uint64_t seed) { return ::prunesvc::prune::testing::SeededGenerator(seed); }
const at::TensorOptions kF64 = at::TensorOptions(at::kDouble);

// Values on a coarse grid (both signs) so ties inside groups are common.
at::Tensor TiedWeight(int64_t out, int64_t in, uint64_t seed) {
  return (at::randn({out, in}, Gen(seed), at::TensorOptions(at::kFloat)) * 3).round() / 4;
}

CalibrationStats StatsFor(const std::vector<at::Tensor>& norms) {
  return ::prunesvc::prune::testing::StatsFromNorms(norms);
}

// Brute force: in each group of M columns, prune the M − N lowest scores; among equal scores the
// lower column is pruned first. Returns keep [out, in].
std::vector<std::vector<bool>> BruteForceNmKeep(const at::Tensor& scores, int n, int m) {
  const at::Tensor s = scores.to(at::kDouble).contiguous();
  const int64_t out = s.size(0), in = s.size(1);
  const double* p = s.data_ptr<double>();
  std::vector<std::vector<bool>> keep(out, std::vector<bool>(in, true));
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t g = 0; g < in; g += m) {
      std::vector<int64_t> cols(m);
      std::iota(cols.begin(), cols.end(), g);
      std::sort(cols.begin(), cols.end(), [&](int64_t a, int64_t b) {
        const double sa = p[r * in + a], sb = p[r * in + b];
        return sa != sb ? sa < sb : a < b;
      });
      for (int i = 0; i < m - n; ++i) keep[r][cols[i]] = false;
    }
  }
  return keep;
}

// Every row keeps exactly N of every M consecutive columns.
bool KeepsExactlyN(const at::Tensor& keep, int n, int m) {
  const int64_t out = keep.size(0), in = keep.size(1);
  return (keep.to(at::kLong).reshape({out, in / m, m}).sum(2) == n).all().item<bool>();
}

// (1) MAGNITUDE and WANDA (N:M mask-bank orders) and SPARSEGPT keep exactly N of every M, for
// 2:4 and 4:8, on random weights with ties; the bank's masks equal brute force (ties: the lower
// column pruned), the pruned-mass prefix at the N:M count equals the pruned weights' squared sum,
// and ratio 0 keeps everything.
TEST(NmMasksTest, AllMethodsKeepExactlyNOfEveryM) {
  const int64_t out = 24, in = 64, rows = 400;
  const at::Tensor w = TiedWeight(out, in, 1);
  at::Tensor norms = at::randint(0, 4, {in}, Gen(2), kF64) + 1;
  norms[5] = 0;  // a dead input
  const CalibrationStats stats = StatsFor({norms});
  const at::Tensor x = at::randn({rows, in}, Gen(3), kF64) * norms.sqrt().unsqueeze(0);
  for (NmPattern nm : {NmPattern{2, 4}, NmPattern{4, 8}}) {
    const double ratio = NmPrunedRatio(nm);
    for (MaskMethod method : {MaskMethod::kMagnitude, MaskMethod::kWanda}) {
      auto bank = MaskBank::Build({w}, method, &stats, nm);
      ASSERT_TRUE(bank.ok()) << bank.status();
      auto keep = (*bank)->KeepMask(0, ratio);
      ASSERT_TRUE(keep.ok());
      EXPECT_TRUE(KeepsExactlyN(*keep, nm.n, nm.m)) << NmPatternName(nm);
      auto scores = MaskScores(w, method, norms);
      ASSERT_TRUE(scores.ok());
      const auto expected = BruteForceNmKeep(*scores, nm.n, nm.m);
      int64_t mismatches = 0;
      double pruned_sq = 0;
      for (int64_t r = 0; r < out; ++r) {
        for (int64_t c = 0; c < in; ++c) {
          const bool k = (*keep)[r][c].item<bool>();
          mismatches += k != expected[r][c];
          if (!k) pruned_sq += std::pow(w[r][c].item<double>(), 2);
        }
      }
      EXPECT_EQ(mismatches, 0) << MaskMethodName(method) << " " << NmPatternName(nm);
      const int64_t k = PrunedPerRow(ratio, in);
      EXPECT_EQ(k, in / nm.m * (nm.m - nm.n));
      EXPECT_NEAR((*bank)->PrunedSquaredMass(0, k), pruned_sq, 1e-9);
      auto dense = (*bank)->KeepMask(0, 0.0);
      ASSERT_TRUE(dense.ok());
      EXPECT_TRUE(dense->all().item<bool>());
      // The order's first k columns of each row are exactly the pruned ones (what the
      // evaluator's incremental MoveMask applies).
      const at::Tensor first = (*bank)->order(0).narrow(1, 0, k).to(at::kLong);
      EXPECT_FALSE(keep->gather(1, first).any().item<bool>());
    }
    auto sgpt = SparseGptPrune(w, x.t().matmul(x), rows, {.nm_n = nm.n, .nm_m = nm.m});
    ASSERT_TRUE(sgpt.ok()) << sgpt.status();
    EXPECT_TRUE(KeepsExactlyN(sgpt->keep, nm.n, nm.m)) << "SPARSEGPT " << NmPatternName(nm);
    EXPECT_EQ(sgpt->pruned, out * PrunedPerRow(ratio, in));
    EXPECT_EQ(sgpt->weight.masked_select(sgpt->keep.logical_not()).abs().sum().item<float>(), 0.0f);
  }
  // in not a multiple of M: an error naming the linear.
  auto bad =
      MaskBank::Build({w, TiedWeight(4, 36, 9)}, MaskMethod::kMagnitude, nullptr, NmPattern{4, 8});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("linear 1 has 36 input columns"));
}

// (2) At the same N:M pattern SparseGPT's layer reconstruction error ‖WXᵀ − ŴXᵀ‖ is below Wanda's
// and magnitude's (correlated inputs, so the OBS compensation has something to exploit).
TEST(NmMasksTest, SparseGptReconstructionBeatsWandaAndMagnitude) {
  const int64_t out = 64, in = 256, n = 2048;
  const at::Tensor z = at::randn({n, in}, Gen(10), kF64);
  const at::Tensor a = at::randn({in, in}, Gen(11), kF64) / std::sqrt(in) +
                       0.5 * at::ones({in, in}, kF64) / std::sqrt(in);
  const at::Tensor x = z.matmul(a) * (at::rand({1, in}, Gen(12), kF64) * 2 + 0.2);
  const at::Tensor w = at::randn({out, in}, Gen(13), kF64);
  const at::Tensor norms = x.square().sum(0);
  const CalibrationStats stats = StatsFor({norms});
  auto error = [&](const at::Tensor& w_hat) {
    return (w - w_hat).matmul(x.t()).norm().item<double>();
  };
  for (NmPattern nm : {NmPattern{2, 4}, NmPattern{4, 8}}) {
    auto sgpt = SparseGptPrune(w, x.t().matmul(x), n, {.nm_n = nm.n, .nm_m = nm.m});
    ASSERT_TRUE(sgpt.ok()) << sgpt.status();
    double e[2];
    for (MaskMethod method : {MaskMethod::kMagnitude, MaskMethod::kWanda}) {
      auto bank = MaskBank::Build({w}, method, &stats, nm);
      ASSERT_TRUE(bank.ok());
      auto keep = (*bank)->KeepMask(0, NmPrunedRatio(nm));
      ASSERT_TRUE(keep.ok());
      e[int(method)] = error(w * keep->to(at::kDouble));
    }
    const double e_sgpt = error(sgpt->weight);
    std::printf("%s: ||WX^T - W'X^T||_F sparsegpt %.4f  wanda %.4f  magnitude %.4f\n",
                NmPatternName(nm).c_str(), e_sgpt, e[int(MaskMethod::kWanda)],
                e[int(MaskMethod::kMagnitude)]);
    EXPECT_LT(e_sgpt, e[int(MaskMethod::kWanda)]);
    EXPECT_LT(e_sgpt, e[int(MaskMethod::kMagnitude)]);
  }
}

// (1b) Search time: a CandidateEvaluator built with an N:M bank applies, for ratio 1 − N/M, exactly
// the brute-force N:M WANDA mask of the dense weight (from its own calibration norms), leaves
// ratio-0 linears dense, and restores the dense weights.
TEST(NmMasksTest, EvaluatorAppliesNmMasks) {
  const model::LlavaConfig config = testing::RandomLlavaConfig();
  auto m = model::LlavaModel::CreateFromTensors(config, testing::RandomLlavaTensors(config, 3));
  ASSERT_TRUE(m.ok()) << m.status();
  for (NmPattern nm : {NmPattern{2, 4}, NmPattern{4, 8}}) {
    EvaluatorOptions opt;
    opt.method = MaskMethod::kWanda;
    opt.nm = nm;
    auto ev = CandidateEvaluator::Create(m->get(), testing::RandomEvalSamples(config, 6, 4), opt);
    ASSERT_TRUE(ev.ok()) << ev.status();
    const int n = (*ev)->num_linears();
    std::vector<double> ratios(n);
    for (int i = 0; i < n; ++i) ratios[i] = i % 3 == 1 ? 0.0 : NmPrunedRatio(nm);
    auto result = (*ev)->Evaluate(ratios);
    ASSERT_TRUE(result.ok()) << result.status();
    for (int i = 0; i < n; ++i) {
      const at::Tensor w = (*ev)->linears()[i].linear->weight.detach().to(at::kDouble);
      const at::Tensor dense = (*ev)->dense_weight(i).to(at::kDouble);
      if (ratios[i] == 0) {
        EXPECT_TRUE(at::equal(w, dense)) << i;
        continue;
      }
      auto scores =
          MaskScores(dense, MaskMethod::kWanda, (*ev)->calibration().linears[i]->col_sq_norms);
      ASSERT_TRUE(scores.ok());
      const auto keep = BruteForceNmKeep(*scores, nm.n, nm.m);
      at::Tensor expected = dense.clone();
      for (int64_t r = 0; r < dense.size(0); ++r) {
        for (int64_t c = 0; c < dense.size(1); ++c) {
          if (!keep[r][c]) expected[r][c] = 0.0;
        }
      }
      EXPECT_TRUE(at::equal(w, expected)) << NmPatternName(nm) << " linear " << i;
    }
    ASSERT_TRUE((*ev)->RestoreDense().ok());
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(at::equal((*ev)->linears()[i].linear->weight, (*ev)->dense_weight(i))) << i;
    }
  }
}

// A random LLaMA-like model's statistics: `layers` layers of 7 linears (q k v o gate up down;
// hidden 32, kv 16, mlp 64), heavy-tailed weights, q/k/v and gate/up sharing their input norms,
// and layer l with 2·l "outlier features" (input columns with a 30× larger norm) in its
// attention input, so the layers' outlier ratios differ (not monotonically in l: the injected
// columns also raise the layer's mean score).
struct RandomStats {
  std::vector<at::Tensor> weights;
  std::vector<at::Tensor> norms;
  std::vector<int> unit_of_linear;
};

RandomStats MakeRandomStats(int layers, uint64_t seed) {
  RandomStats s;
  const int64_t h = 32, kv = 16, mlp = 64;
  const int64_t shapes[7][2] = {{h, h}, {kv, h}, {kv, h}, {h, h}, {mlp, h}, {mlp, h}, {h, mlp}};
  for (int l = 0; l < layers; ++l) {
    at::Tensor attn_in = at::rand({h}, Gen(seed + 100 * l), kF64) + 0.5;
    attn_in.narrow(0, 0, 2 * l).mul_(900.0);
    const at::Tensor o_in = at::rand({h}, Gen(seed + 100 * l + 1), kF64) + 0.5;
    const at::Tensor mlp_in = at::rand({h}, Gen(seed + 100 * l + 2), kF64) + 0.5;
    const at::Tensor down_in = at::rand({mlp}, Gen(seed + 100 * l + 3), kF64) + 0.5;
    const at::Tensor in_norms[7] = {attn_in, attn_in, attn_in, o_in, mlp_in, mlp_in, down_in};
    for (int i = 0; i < 7; ++i) {
      const at::Tensor g =
          at::randn({shapes[i][0], shapes[i][1]}, Gen(seed + 100 * l + 10 + i), kF64);
      s.weights.push_back(g * g.abs());  // heavier tails than a Gaussian
      s.norms.push_back(in_norms[i]);
      s.unit_of_linear.push_back(l);
    }
  }
  return s;
}

// (3) OWL: the outlier ratios equal brute force and the Python transcription of the reference
// code; the deviations + S equal the reference's layer sparsities; more outliers → lower ratio.
TEST(OwlOutliersTest, MatchBruteForceAndPythonReference) {
  const int layers = 6;
  const RandomStats rs = MakeRandomStats(layers, 40);
  const CalibrationStats stats = StatsFor(rs.norms);
  auto d = OwlOutlierRatios(rs.weights, stats, rs.unit_of_linear, layers);
  ASSERT_TRUE(d.ok()) << d.status();
  // Brute force: explicit loops, no MaskScores.
  for (int l = 0; l < layers; ++l) {
    double sum = 0, count = 0;
    for (int i = 7 * l; i < 7 * l + 7; ++i) {
      const at::Tensor w = rs.weights[i].contiguous();
      for (int64_t r = 0; r < w.size(0); ++r) {
        for (int64_t c = 0; c < w.size(1); ++c) {
          sum += std::abs(w[r][c].item<double>()) * std::sqrt(rs.norms[i][c].item<double>());
          count += 1;
        }
      }
    }
    const double threshold = search::kOwlOutlierMultiple * sum / count;
    double outliers = 0;
    for (int i = 7 * l; i < 7 * l + 7; ++i) {
      const at::Tensor& w = rs.weights[i];
      for (int64_t r = 0; r < w.size(0); ++r) {
        for (int64_t c = 0; c < w.size(1); ++c) {
          outliers += std::abs(w[r][c].item<double>()) * std::sqrt(rs.norms[i][c].item<double>()) >
                      threshold;
        }
      }
    }
    EXPECT_DOUBLE_EQ((*d)[l], outliers / count) << l;
  }
  // Python (torch, float64), the reference code's own steps.
  const char* src = std::getenv("PRUNESVC_SOURCE");
  const char* py = std::getenv("PRUNESVC_PYTHON");
  const std::string source = src ? src : PRUNESVC_SOURCE_DIR;
  const std::string python = py ? py : "/usr/bin/python3";
  std::string tmpl = (std::filesystem::temp_directory_path() / "owl_ref_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const std::string dir = tmpl;
  const double s = 0.6;
  nlohmann::json linears = nlohmann::json::array();
  for (size_t i = 0; i < rs.weights.size(); ++i) {
    const at::Tensor w = rs.weights[i].contiguous(), n = rs.norms[i].contiguous();
    linears.push_back({rs.unit_of_linear[i], w.size(0), w.size(1)});
    std::ofstream(dir + "/w" + std::to_string(i) + ".f64", std::ios::binary)
        .write(static_cast<const char*>(w.data_ptr()), w.numel() * 8);
    std::ofstream(dir + "/n" + std::to_string(i) + ".f64", std::ios::binary)
        .write(static_cast<const char*>(n.data_ptr()), n.numel() * 8);
  }
  std::ofstream(dir + "/case.json") << nlohmann::json{
      {"linears", linears},
      {"layers", layers},
      {"multiple", search::kOwlOutlierMultiple},
      {"lambda", search::kOwlLambda},
      {"sparsity", s}}.dump();
  const std::string cmd = python + " " + source + "/worker/prune/testdata/owl_reference.py " + dir;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream f(dir + "/result.json");
  const nlohmann::json ref = nlohmann::json::parse(f);
  auto dev = search::OwlDeviations(*d);
  ASSERT_TRUE(dev.ok());
  for (int l = 0; l < layers; ++l) {
    EXPECT_NEAR((*d)[l] * 100, ref["outlier_percent"][l].get<double>(), 1e-12) << l;
    EXPECT_NEAR(s + (*dev)[l], ref["sparsity"][l].get<double>(), 1e-12) << l;
    std::printf("layer %d: outliers %.4f%%  OWL ratio at S=%.2f: %.4f (reference %.4f)\n", l,
                (*d)[l] * 100, s, s + (*dev)[l], ref["sparsity"][l].get<double>());
  }
  // More outliers → lower ratio, for every pair of layers (the outlier ratios do differ here).
  EXPECT_GT(*std::max_element(d->begin(), d->end()), *std::min_element(d->begin(), d->end()));
  for (int a = 0; a < layers; ++a) {
    for (int b = 0; b < layers; ++b) {
      if ((*d)[a] > (*d)[b]) EXPECT_LT((*dev)[a], (*dev)[b]) << a << " " << b;
    }
  }
  std::filesystem::remove_all(dir);
  // Bad input.
  EXPECT_FALSE(OwlOutlierRatios(rs.weights, stats, rs.unit_of_linear, 0).ok());
  EXPECT_FALSE(OwlOutlierRatios(rs.weights, StatsFor({}), rs.unit_of_linear, layers).ok());
  std::vector<int> bad_units = rs.unit_of_linear;
  bad_units[3] = layers;
  EXPECT_FALSE(OwlOutlierRatios(rs.weights, stats, bad_units, layers).ok());
}

}  // namespace
}  // namespace prunesvc::prune

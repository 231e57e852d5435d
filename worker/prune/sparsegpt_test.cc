#include "worker/prune/sparsegpt.h"

#include <ATen/CPUGeneratorImpl.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/flops.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/prune/random_llava.h"

namespace prunesvc::prune {
namespace {

using at::indexing::Slice;
using ::testing::HasSubstr;

at::Generator Gen(uint64_t seed) { return ::prunesvc::prune::testing::SeededGenerator(seed); }

const at::TensorOptions kF64 = at::TensorOptions(at::kDouble);

// Correlated inputs: X = Z·A with a random mixing A (plus uneven column scales), [n, in].
at::Tensor CorrelatedInputs(int64_t n, int64_t in, uint64_t seed) {
  const at::Tensor z = at::randn({n, in}, Gen(seed), kF64);
  const at::Tensor a = at::randn({in, in}, Gen(seed + 1), kF64) / std::sqrt(in) +
                       0.5 * at::ones({in, in}, kF64) / std::sqrt(in);
  const at::Tensor scale = at::rand({1, in}, Gen(seed + 2), kF64) * 2 + 0.2;
  return z.matmul(a) * scale;
}

at::Tensor Gram(const at::Tensor& x) { return x.t().matmul(x); }

// Per-row pruning of the k lowest scores, without any weight update (magnitude / Wanda).
at::Tensor PrunePerRow(const at::Tensor& w, const at::Tensor& scores, int64_t k) {
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, 1, false));
  return w.clone().scatter_(1, order.index({Slice(), Slice(0, k)}), 0.0);
}

double ReconstructionError(const at::Tensor& w, const at::Tensor& w_hat, const at::Tensor& x) {
  return (w - w_hat.to(at::kDouble)).matmul(x.t()).norm().item<double>();
}

// The damped Hessian as docs/architecture.md §5 defines it (no dead columns in these cases).
at::Tensor DampedHessian(const at::Tensor& gram, int64_t n) {
  at::Tensor h = gram * (2.0 / static_cast<double>(n));
  return h + 0.01 * h.diagonal().mean() * at::eye(h.size(0), kF64);
}

// (1) Lower layer reconstruction error than Wanda and magnitude at the same sparsity.
TEST(SparseGptTest, ReconstructionBeatsWandaAndMagnitude) {
  const int64_t out = 64, in = 256, n = 2048;
  const at::Tensor x = CorrelatedInputs(n, in, 1);
  const at::Tensor w = at::randn({out, in}, Gen(4), kF64);
  const at::Tensor col_norms = x.square().sum(0).sqrt();
  for (double ratio : {0.5, 0.7}) {
    auto result = SparseGptPrune(w, Gram(x), n, {.ratio = ratio});
    ASSERT_TRUE(result.ok()) << result.status();
    const int64_t k = PrunedPerRow(ratio, in);
    // Exactly as many weights as the per-row methods prune (adaptively spread over the rows).
    ASSERT_EQ(result->pruned, out * k);
    const at::Tensor magnitude = PrunePerRow(w, w.abs(), k);
    const at::Tensor wanda = PrunePerRow(w, w.abs() * col_norms.unsqueeze(0), k);
    const double e_sgpt = ReconstructionError(w, result->weight, x);
    const double e_wanda = ReconstructionError(w, wanda, x);
    const double e_mag = ReconstructionError(w, magnitude, x);
    std::printf(
        "ratio %.2f: ||WX^T - W'X^T||_F sparsegpt %.4f (%ld pruned)  wanda %.4f  magnitude %.4f "
        "(%ld pruned)\n",
        ratio, e_sgpt, static_cast<long>(result->pruned), e_wanda, e_mag,
        static_cast<long>(out * k));
    EXPECT_LT(e_sgpt, e_wanda);
    EXPECT_LT(e_sgpt, e_mag);
  }
}

// (2) Pruning exactly one weight is the closed-form OBS update. SparseGPT's column order makes it
// the OBS step of the sub-problem whose free weights are columns q.. (the columns before q are
// already final): δw[q:] = −(w_q / [F⁻¹]_00)·F⁻¹[:, 0] with F = H[q:, q:], the chosen q minimising
// w_q² / [F⁻¹]_00 (= w_q² / U_qq²). For q = 0 this is the textbook full OBS update
// δw = −(w_q / [H⁻¹]_qq)·H⁻¹[:, q].
TEST(SparseGptTest, OneWeightIsClosedFormObs) {
  const int64_t in = 16, n = 256;
  const at::Tensor x = CorrelatedInputs(n, in, 7);
  const at::Tensor h = DampedHessian(Gram(x), n);
  for (int trial = 0; trial < 4; ++trial) {
    at::Tensor w = at::randn({1, in}, Gen(20 + trial), kF64);
    if (trial == 0) w.index_put_({0, 0}, 1e-3);  // forces q = 0: the full OBS formula
    auto result = SparseGptPrune(w, Gram(x), n, {.ratio = 1.0 / in});
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->pruned, 1);
    // The expected choice, computed from explicit inverses of the trailing sub-Hessians.
    int64_t q = -1;
    double best = INFINITY;
    for (int64_t j = 0; j < in; ++j) {
      const at::Tensor f_inv = at::inverse(h.index({Slice(j), Slice(j)}));
      const double s =
          std::pow(w.index({0, j}).item<double>(), 2) / f_inv.index({0, 0}).item<double>();
      if (s < best) best = s, q = j;
    }
    EXPECT_FALSE(result->keep.index({0, q}).item<bool>()) << "expected q = " << q;
    if (trial == 0) ASSERT_EQ(q, 0);
    const at::Tensor f_inv = at::inverse(h.index({Slice(q), Slice(q)}));
    at::Tensor expected = w.clone();
    expected.index({0, Slice(q)}) -=
        w.index({0, q}) / f_inv.index({0, 0}) * f_inv.index({Slice(), 0});
    if (q == 0) {
      const at::Tensor h_inv = at::inverse(h);
      const at::Tensor obs = w - w.index({0, 0}) / h_inv.index({0, 0}) * h_inv.index({Slice(), 0});
      EXPECT_LT((obs - expected).abs().max().item<double>(), 1e-12);
    }
    const at::Tensor delta = result->weight - w;
    const at::Tensor delta_ref = expected - w;
    const double rel = (delta - delta_ref).norm().item<double>() / delta_ref.norm().item<double>();
    std::printf("one weight (trial %d): q = %ld, |dw| = %.6g, rel. diff to closed form %.3g\n",
                trial, static_cast<long>(q), delta_ref.norm().item<double>(), rel);
    EXPECT_LE(rel, 1e-6);
    EXPECT_EQ(result->weight.index({0, q}).item<double>(), 0.0);
  }
}

// (3) A dead input (H_jj = 0) prunes that column's weights to exactly zero without NaN; an
// all-zero Gram matrix still works (H becomes the identity).
TEST(SparseGptTest, DeadColumns) {
  const int64_t out = 16, in = 64, n = 500;
  at::Tensor x = CorrelatedInputs(n, in, 30);
  x.index_put_({Slice(), 5}, 0.0);
  x.index_put_({Slice(), 40}, 0.0);
  const at::Tensor w = at::randn({out, in}, Gen(31), kF64);
  auto result = SparseGptPrune(w, Gram(x), n, {.ratio = 0.1});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(at::isfinite(result->weight).all().item<bool>());
  for (int64_t j : {5, 40}) {
    EXPECT_EQ(result->weight.index({Slice(), j}).abs().max().item<double>(), 0.0);
    EXPECT_FALSE(result->keep.index({Slice(), j}).any().item<bool>());
  }
  auto zero = SparseGptPrune(w, at::zeros({in, in}, kF64), n, {.ratio = 0.5});
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(zero->weight.abs().max().item<double>(), 0.0);
}

// (4) The achieved sparsity is exactly the per-row methods' (out·PrunedPerRow(r, in), so
// KeptFraction counts it), each block pruning its width's share; pruned weights are exactly 0; N:M
// keeps exactly N of every M in every row. The dtype of the input is preserved.
TEST(SparseGptTest, SparsityAndNm) {
  const int64_t out = 10, in = 300, n = 900;
  const at::Tensor x = CorrelatedInputs(n, in, 40);
  const at::Tensor w = at::randn({out, in}, Gen(41), kF64).to(at::kFloat);
  for (double ratio : {0.0, 0.29, 0.37, 0.5, 0.9, 1.0}) {
    auto result = SparseGptPrune(w, Gram(x), n, {.ratio = ratio});
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->weight.scalar_type(), at::kFloat);
    const int64_t total = out * PrunedPerRow(ratio, in);
    EXPECT_EQ(result->pruned, total);
    EXPECT_EQ(result->keep.logical_not().sum().item<int64_t>(), total);
    EXPECT_DOUBLE_EQ(1.0 - result->sparsity, KeptFraction(ratio, in));
    for (int64_t b = 0; b < in; b += 128) {
      const int64_t count = std::min<int64_t>(128, in - b);
      const int64_t block_pruned =
          result->keep.index({Slice(), Slice(b, b + count)}).logical_not().sum().item<int64_t>();
      // The block's share of the total, within one weight of its width's fraction.
      EXPECT_NEAR(double(block_pruned), double(total) * count / in, 1.0) << ratio << " " << b;
    }
    EXPECT_EQ(result->weight.masked_select(result->keep.logical_not()).abs().sum().item<float>(),
              0.0f);
  }
  for (auto [nn, m] : {std::pair{2, 4}, std::pair{4, 8}}) {
    const at::Tensor w2 = at::randn({out, 256}, Gen(42), kF64);
    auto result =
        SparseGptPrune(w2, Gram(x.index({Slice(), Slice(0, 256)})), n, {.nm_n = nn, .nm_m = m});
    ASSERT_TRUE(result.ok()) << result.status();
    const at::Tensor kept = result->keep.reshape({out, 256 / m, m}).sum(2);
    EXPECT_TRUE((kept == nn).all().item<bool>()) << nn << ":" << m;
    EXPECT_EQ(result->weight.masked_select(result->keep.logical_not()).abs().sum().item<double>(),
              0.0);
  }
}

TEST(SparseGptTest, RejectsBadInput) {
  const at::Tensor w = at::randn({4, 8}, Gen(50), kF64);
  const at::Tensor g = at::eye(8, kF64);
  EXPECT_THAT(SparseGptPrune(w, at::eye(7, kF64), 10, {.ratio = 0.5}).status().message(),
              HasSubstr("Gram matrix must be [8, 8]"));
  EXPECT_FALSE(SparseGptPrune(at::randn({8}), g, 10, {.ratio = 0.5}).ok());
  EXPECT_FALSE(SparseGptPrune(at::Tensor(), g, 10, {.ratio = 0.5}).ok());
  EXPECT_THAT(SparseGptPrune(w, g, 0, {.ratio = 0.5}).status().message(), HasSubstr("num_rows"));
  EXPECT_THAT(SparseGptPrune(w, g, 10, {.ratio = 1.5}).status().message(), HasSubstr("ratio"));
  EXPECT_FALSE(SparseGptPrune(w, g, 10, {.ratio = NAN}).ok());
  EXPECT_FALSE(SparseGptPrune(w, g, 10, {.ratio = 0.5, .block_size = 0}).ok());
  EXPECT_THAT(SparseGptPrune(w, g, 10, {.nm_n = 2, .nm_m = 3}).status().message(),
              HasSubstr("must divide"));
  EXPECT_FALSE(SparseGptPrune(w, g, 10, {.nm_n = 5, .nm_m = 4}).ok());
  EXPECT_FALSE(SparseGptPrune(w, g, 10, {.nm_n = 2}).ok());
  at::Tensor nan_gram = g.clone();
  nan_gram.index_put_({1, 1}, NAN);
  EXPECT_THAT(SparseGptPrune(w, nan_gram, 10, {.ratio = 0.5}).status().message(),
              HasSubstr("not finite"));
  EXPECT_THAT(SparseGptPrune(w, -g, 10, {.ratio = 0.5}).status().message(),
              HasSubstr("not positive definite"));
}

// (5) The same weights and masks as an independent numpy implementation written from
// docs/architecture.md §5 (worker/prune/testdata/sparsegpt_reference.py), in = 300 so three
// blocks (128, 128, 44) and the lazy cross-block update are exercised; one dead column included.
TEST(SparseGptTest, MatchesPythonReference) {
  const char* src = std::getenv("PRUNESVC_SOURCE");
  const char* py = std::getenv("PRUNESVC_PYTHON");
  const std::string source = src ? src : PRUNESVC_SOURCE_DIR;
  const std::string python = py ? py : "/usr/bin/python3";
  std::string tmpl = (std::filesystem::temp_directory_path() / "sparsegpt_ref_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const std::string dir = tmpl;
  const int64_t out = 12, in = 300, n = 600;
  at::Tensor x = CorrelatedInputs(n, in, 60);
  x.index_put_({Slice(), 17}, 0.0);
  const at::Tensor gram = Gram(x).contiguous();
  const at::Tensor w = at::randn({out, in}, Gen(61), kF64).contiguous();
  struct Case {
    double ratio;
    int nm_n, nm_m;
  };
  for (const Case& c : {Case{0.5, 0, 0}, Case{0.73, 0, 0}, Case{0, 2, 4}}) {
    {
      std::ofstream(dir + "/case.json")
          << nlohmann::json{{"out", out},     {"in", in},       {"num_rows", n}, {"ratio", c.ratio},
                            {"nm_n", c.nm_n}, {"nm_m", c.nm_m}, {"block", 128}}
                 .dump();
      std::ofstream(dir + "/weight.f64", std::ios::binary)
          .write(static_cast<const char*>(w.data_ptr()), w.numel() * 8);
      std::ofstream(dir + "/gram.f64", std::ios::binary)
          .write(static_cast<const char*>(gram.data_ptr()), gram.numel() * 8);
    }
    const std::string cmd =
        python + " " + source + "/worker/prune/testdata/sparsegpt_reference.py " + dir;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    at::Tensor ref_w = at::empty({out, in}, kF64);
    std::ifstream(dir + "/weight_out.f64", std::ios::binary)
        .read(static_cast<char*>(ref_w.data_ptr()), ref_w.numel() * 8);
    std::ifstream f(dir + "/keep.u8", std::ios::binary);
    std::vector<char> keep_bytes((std::istreambuf_iterator<char>(f)),
                                 std::istreambuf_iterator<char>());
    ASSERT_EQ(keep_bytes.size(), static_cast<size_t>(out * in));
    auto result = SparseGptPrune(w, gram, n, {.ratio = c.ratio, .nm_n = c.nm_n, .nm_m = c.nm_m});
    ASSERT_TRUE(result.ok()) << result.status();
    int64_t mismatches = 0;
    const bool* kp = result->keep.data_ptr<bool>();
    for (int64_t e = 0; e < out * in; ++e) mismatches += (keep_bytes[e] != 0) != kp[e];
    EXPECT_EQ(mismatches, 0);
    const double max_diff = (result->weight - ref_w).abs().max().item<double>();
    std::printf("python reference (ratio %.2f, %d:%d): max |dW| = %.3g (max |W| %.3g)\n", c.ratio,
                c.nm_n, c.nm_m, max_diff, ref_w.abs().max().item<double>());
    EXPECT_LE(max_diff, 1e-5);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace prunesvc::prune

#include "worker/prune/mask_bank.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/prune/random_llava.h"

namespace prunesvc::prune {
namespace {

using ::testing::HasSubstr;

at::Generator Gen(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// A weight with many exact ties (values on a coarse grid, both signs) so tie-breaking matters.
at::Tensor TiedWeight(int64_t out, int64_t in, uint64_t seed) {
  return (at::randn({out, in}, Gen(seed), at::TensorOptions(at::kFloat)) * 3).round() / 4;
}

// Column norms with ties too (and one dead column).
at::Tensor TiedNorms(int64_t in, uint64_t seed) {
  at::Tensor n = at::randint(0, 4, {in}, Gen(seed), at::TensorOptions(at::kDouble)) + 1;
  n[in / 2] = 0;
  return n;
}

CalibrationStats StatsFor(const std::vector<at::Tensor>& norms) {
  return ::prunesvc::prune::testing::StatsFromNorms(norms);
}

TEST(MaskMethodTest, Names) {
  EXPECT_EQ(*ParseMaskMethod("WANDA"), MaskMethod::kWanda);
  EXPECT_EQ(*ParseMaskMethod("MAGNITUDE"), MaskMethod::kMagnitude);
  EXPECT_EQ(MaskMethodName(MaskMethod::kWanda), "WANDA");
  EXPECT_EQ(*ParseMaskMethod("wanda"), MaskMethod::kWanda);  // case-insensitive
  EXPECT_THAT(ParseMaskMethod("wand").status().message(),
              HasSubstr("unknown mask method \"wand\""));
  // SPARSEGPT is a method (the final masks) but not a nested bank's.
  EXPECT_EQ(*ParseMaskMethod("SPARSEGPT"), MaskMethod::kSparseGpt);
  EXPECT_EQ(MaskScores(at::ones({2, 2}), MaskMethod::kSparseGpt, at::Tensor()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The pruned set at every k is exactly k entries per row, holds the k lowest scores with ties
// going to the lower column, and is nested in the pruned set at k + 1.
TEST(MaskBankTest, NestedMasksHoldTheExactPerRowRatio) {
  const std::vector<at::Tensor> weights = {TiedWeight(13, 37, 1), TiedWeight(5, 64, 2)};
  const std::vector<at::Tensor> norms = {TiedNorms(37, 3), TiedNorms(64, 4)};
  const CalibrationStats stats = StatsFor(norms);
  for (MaskMethod method : {MaskMethod::kMagnitude, MaskMethod::kWanda}) {
    auto bank = MaskBank::Build(weights, method, &stats);
    ASSERT_TRUE(bank.ok()) << bank.status();
    for (int i = 0; i < 2; ++i) {
      const int64_t out = weights[i].size(0), in = weights[i].size(1);
      EXPECT_EQ((*bank)->order(i).scalar_type(), at::kShort);
      auto scores = MaskScores(weights[i], method, norms[i]);
      ASSERT_TRUE(scores.ok());
      const at::Tensor sc = scores->contiguous();
      at::Tensor prev_keep = at::ones({out, in}, at::kBool);
      std::vector<double> ratios;
      for (int64_t k = 0; k <= in; ++k) ratios.push_back(double(k) / in);
      for (double r : {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85}) ratios.push_back(r);
      std::sort(ratios.begin(), ratios.end());
      for (double r : ratios) {
        auto keep = (*bank)->KeepMask(i, r);
        ASSERT_TRUE(keep.ok());
        const int64_t k = PrunedPerRow(r, in);
        const at::Tensor pruned_per_row = keep->logical_not().sum(1);
        ASSERT_TRUE((pruned_per_row == k).all().item<bool>()) << "ratio " << r;
        // Nested: everything kept now was kept at the lower ratio.
        ASSERT_TRUE((keep->logical_and(prev_keep.logical_not())).sum().item<int64_t>() == 0);
        prev_keep = *keep;
        // Lowest scores pruned; at equal scores the lower column goes first.
        const bool* kp = keep->data_ptr<bool>();
        const double* s = sc.data_ptr<double>();
        for (int64_t row = 0; row < out; ++row) {
          for (int64_t a = 0; a < in; ++a) {
            if (kp[row * in + a]) continue;  // a pruned
            for (int64_t b = 0; b < in; ++b) {
              if (!kp[row * in + b]) continue;  // b kept
              const double sa = s[row * in + a], sb = s[row * in + b];
              ASSERT_TRUE(sa < sb || (sa == sb && a < b))
                  << MaskMethodName(method) << " row " << row << " ratio " << r;
            }
          }
        }
      }
    }
  }
}

TEST(MaskBankTest, WandaScoresEqualBruteForce) {
  const at::Tensor w = at::randn({9, 21}, Gen(5));
  const at::Tensor n = at::rand({21}, Gen(6), at::TensorOptions(at::kDouble)) * 50;
  auto scores = MaskScores(w, MaskMethod::kWanda, n);
  ASSERT_TRUE(scores.ok());
  auto mag = MaskScores(w, MaskMethod::kMagnitude, at::Tensor());
  ASSERT_TRUE(mag.ok());
  double max_rel = 0;
  for (int64_t r = 0; r < 9; ++r) {
    for (int64_t c = 0; c < 21; ++c) {
      const double wv = w[r][c].item<float>();
      const double want = std::fabs(wv) * std::sqrt(n[c].item<double>());
      max_rel = std::max(max_rel, std::fabs((*scores)[r][c].item<double>() - want) / want);
      EXPECT_EQ((*mag)[r][c].item<double>(), std::fabs(wv));
    }
  }
  std::printf("[wanda scores] max rel |Δ| vs scalar loop = %.3g\n", max_rel);
  EXPECT_LE(max_rel, 1e-15);
}

TEST(MaskBankTest, PrunedMassPrefixEqualsBruteForce) {
  const std::vector<at::Tensor> weights = {at::randn({7, 30}, Gen(8))};
  const CalibrationStats stats = StatsFor({at::rand({30}, Gen(9), at::TensorOptions(at::kDouble))});
  auto bank = MaskBank::Build(weights, MaskMethod::kWanda, &stats);
  ASSERT_TRUE(bank.ok());
  const at::Tensor w64 = weights[0].to(at::kDouble);
  EXPECT_NEAR((*bank)->DenseSquaredMass(0), w64.square().sum().item<double>(), 1e-12);
  for (int64_t k = 0; k <= 30; ++k) {
    auto keep = (*bank)->KeepMask(0, double(k) / 30);
    ASSERT_TRUE(keep.ok());
    const double pruned = (w64.square() * keep->logical_not()).sum().item<double>();
    EXPECT_NEAR((*bank)->PrunedSquaredMass(0, k), pruned, 1e-12) << k;
  }
}

TEST(MaskBankTest, WideLinearsUseInt32) {
  const std::vector<at::Tensor> weights = {at::randn({2, 40000}, Gen(10))};
  auto bank = MaskBank::Build(weights, MaskMethod::kMagnitude, nullptr);
  ASSERT_TRUE(bank.ok());
  EXPECT_EQ((*bank)->order(0).scalar_type(), at::kInt);
  EXPECT_EQ((*bank)->MemoryBytes(), 2 * 40000 * 4 + 40001 * 8);
  auto keep = (*bank)->KeepMask(0, 0.25);
  ASSERT_TRUE(keep.ok());
  EXPECT_EQ(keep->logical_not().sum().item<int64_t>(), 2 * 10000);
  // The pruned ones are the smallest magnitudes of each row.
  const at::Tensor a = weights[0].abs();
  for (int r = 0; r < 2; ++r) {
    const double max_pruned = a[r].masked_select((*keep)[r].logical_not()).max().item<float>();
    const double min_kept = a[r].masked_select((*keep)[r]).min().item<float>();
    EXPECT_LE(max_pruned, min_kept);
  }
}

TEST(MaskBankTest, BadInputsAreErrors) {
  at::Tensor w = at::randn({3, 4}, Gen(11));
  EXPECT_THAT(MaskBank::Build({w}, MaskMethod::kWanda, nullptr).status().message(),
              HasSubstr("calibration statistics"));
  const CalibrationStats wrong = StatsFor({at::ones({5}, at::kDouble)});
  EXPECT_THAT(MaskBank::Build({w}, MaskMethod::kWanda, &wrong).status().message(),
              HasSubstr("linear 0 has 4 input columns"));
  at::Tensor bad = w.clone();
  bad[1][2] = NAN;
  EXPECT_THAT(MaskBank::Build({bad}, MaskMethod::kMagnitude, nullptr).status().message(),
              HasSubstr("non-finite weights"));
  at::Tensor neg = at::ones({4}, at::kDouble);
  neg[0] = -1;
  const CalibrationStats negative = StatsFor({neg});
  EXPECT_THAT(MaskBank::Build({w}, MaskMethod::kWanda, &negative).status().message(),
              HasSubstr("negative"));
  EXPECT_FALSE(MaskBank::Build({at::randn({4})}, MaskMethod::kMagnitude, nullptr).ok());
  auto bank = MaskBank::Build({w}, MaskMethod::kMagnitude, nullptr);
  ASSERT_TRUE(bank.ok());
  EXPECT_FALSE((*bank)->KeepMask(0, 1.5).ok());
  EXPECT_FALSE((*bank)->KeepMask(0, NAN).ok());
  EXPECT_FALSE((*bank)->KeepMask(1, 0.5).ok());
}

// The masks equal those of an independent Python implementation of Wanda's recipe.
TEST(MaskBankTest, MatchesPythonWandaReference) {
  const char* src = std::getenv("PRUNESVC_SOURCE");
  const char* py = std::getenv("PRUNESVC_PYTHON");
  const std::string source = src ? src : PRUNESVC_SOURCE_DIR;
  const std::string python = py ? py : "/usr/bin/python3";
  std::string tmpl = (std::filesystem::temp_directory_path() / "wanda_ref_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const std::string dir = tmpl;
  const int64_t out = 23, in = 40;
  const at::Tensor w = TiedWeight(out, in, 12).contiguous();
  const at::Tensor n = TiedNorms(in, 13).contiguous();
  const std::vector<double> ratios = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8};
  for (MaskMethod method : {MaskMethod::kMagnitude, MaskMethod::kWanda}) {
    {
      std::ofstream(dir + "/case.json") << nlohmann::json{
          {"out", out},
          {"in", in},
          {"ratios", ratios},
          {"method", MaskMethodName(method)}}.dump();
      std::ofstream(dir + "/weight.f32", std::ios::binary)
          .write(static_cast<const char*>(w.data_ptr()), w.numel() * 4);
      std::ofstream(dir + "/norms.f64", std::ios::binary)
          .write(static_cast<const char*>(n.data_ptr()), n.numel() * 8);
    }
    const std::string cmd =
        python + " " + source + "/worker/prune/testdata/wanda_reference.py " + dir;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(dir + "/masks.u8", std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ASSERT_EQ(bytes.size(), ratios.size() * out * in);
    const CalibrationStats stats = StatsFor({n});
    auto bank = MaskBank::Build({w}, method, &stats);
    ASSERT_TRUE(bank.ok());
    int64_t mismatches = 0;
    for (size_t r = 0; r < ratios.size(); ++r) {
      auto keep = (*bank)->KeepMask(0, ratios[r]);
      ASSERT_TRUE(keep.ok());
      const bool* kp = keep->data_ptr<bool>();
      for (int64_t e = 0; e < out * in; ++e) {
        mismatches += (bytes[r * out * in + e] != 0) != !kp[e];
      }
    }
    EXPECT_EQ(mismatches, 0) << MaskMethodName(method);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace prunesvc::prune

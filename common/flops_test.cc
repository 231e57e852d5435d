#include "common/flops.h"

#include <cmath>
#include <cstdint>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc {
namespace {

// Tiny model whose FLOPs are worked out by hand below. Layer 1 is "structurally pruned" (half the
// heads and MLP channels) to check per-layer dims.
FlopsModelDims TinyDims() {
  FlopsModelDims d;
  d.vision = {
      .width = 4, .mlp_width = 8, .layers_run = 2, .tokens = 5, .patch_size = 2, .channels = 3};
  d.images_per_sample = 1;
  d.image_tokens = 4;
  d.projector_in = 4;
  d.projector_hidden = 6;
  d.projector_out = 8;
  d.decoder = {{.hidden = 8, .q_width = 8, .kv_width = 4, .mlp_width = 12},
               {.hidden = 8, .q_width = 4, .kv_width = 2, .mlp_width = 6}};
  d.vocab = 10;
  return d;
}

TEST(FlopsTest, HandCountedTinyModel) {
  // One sample of T = 10 tokens with one answer token.
  auto f = ComputeDenseFlops(TinyDims(),
                             {.mean_tokens = 10, .mean_tokens_sq = 100, .mean_answer_tokens = 1});
  ASSERT_TRUE(f.ok()) << f.status();
  // Patch embedding: 4 patches × (3·2·2 inputs × 4 outputs) MACs × 2.
  EXPECT_DOUBLE_EQ(f->vision_patch_embed, 384);
  ASSERT_EQ(f->vision_linear.size(), 2u);
  // q: 5 tokens × 4 × 4 × 2 = 160; fc1: 5 × 4 × 8 × 2 = 320.
  EXPECT_THAT(f->vision_linear[0], testing::ElementsAre(160, 160, 160, 160, 320, 320));
  // Full attention: 2 layers × (QKᵀ 25·4 + AV 25·4 MACs) × 2 = 800.
  EXPECT_DOUBLE_EQ(f->vision_attention, 800);
  // Projector: 4 tokens × (4·6 + 6·8) MACs × 2.
  EXPECT_DOUBLE_EQ(f->projector, 576);
  ASSERT_EQ(f->decoder_linear.size(), 2u);
  EXPECT_THAT(f->decoder_linear[0], testing::ElementsAre(1280, 640, 640, 1280, 1920, 1920, 1920));
  EXPECT_THAT(f->decoder_linear[1], testing::ElementsAre(640, 320, 320, 640, 960, 960, 960));
  // Input widths: q/k/v/gate/up read hidden (8), o reads q_width, down reads mlp_width.
  ASSERT_EQ(f->decoder_linear_in.size(), 2u);
  EXPECT_THAT(f->decoder_linear_in[0], testing::ElementsAre(8, 8, 8, 8, 8, 8, 12));
  EXPECT_THAT(f->decoder_linear_in[1], testing::ElementsAre(8, 8, 8, 4, 8, 8, 6));
  // Causal attention 2·T²·d: 2·100·8 and 2·100·4.
  EXPECT_THAT(f->decoder_attention, testing::ElementsAre(1600, 800));
  EXPECT_DOUBLE_EQ(f->lm_head, 160);  // 1 answer token × 8 × 10 × 2
  EXPECT_DOUBLE_EQ(f->Total(), 21280);
  EXPECT_DOUBLE_EQ(f->DecoderLinearTotal(), 14400);
}

// Counts multiply-adds of the decoder's matrix products by literally enumerating them, for a
// set of samples of different lengths, and compares with the closed form under the mean-T
// statistics. Causal attention is counted as half of the full T×T products (the model's ≈).
TEST(FlopsTest, DecoderMatchesBruteForceEnumeration) {
  const FlopsModelDims dims = TinyDims();
  const std::vector<int> lengths = {3, 7, 12, 5};
  double linear_macs = 0, attn_macs = 0, answer = 2;
  for (int T : lengths) {
    for (const auto& d : dims.decoder) {
      // (out, in) of q, k, v, o, gate, up, down.
      const int shapes[7][2] = {{d.q_width, d.hidden},   {d.kv_width, d.hidden},
                                {d.kv_width, d.hidden},  {d.hidden, d.q_width},
                                {d.mlp_width, d.hidden}, {d.mlp_width, d.hidden},
                                {d.hidden, d.mlp_width}};
      for (const auto& s : shapes) {
        for (int t = 0; t < T; ++t)
          for (int o = 0; o < s[0]; ++o)
            for (int i = 0; i < s[1]; ++i) linear_macs += 1;
      }
      for (int qi = 0; qi < T; ++qi)
        for (int kj = 0; kj < T; ++kj)
          for (int c = 0; c < d.q_width; ++c) attn_macs += 2;  // QKᵀ and AV
    }
  }
  const double n = lengths.size();
  double sum_t = 0, sum_t2 = 0;
  for (int T : lengths) sum_t += T, sum_t2 += double(T) * T;
  auto f = ComputeDenseFlops(
      dims, {.mean_tokens = sum_t / n, .mean_tokens_sq = sum_t2 / n, .mean_answer_tokens = answer});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_DOUBLE_EQ(f->DecoderLinearTotal(), 2 * linear_macs / n);
  EXPECT_DOUBLE_EQ(f->DecoderAttentionTotal(), 2 * (attn_macs / 2) / n);
  EXPECT_DOUBLE_EQ(f->lm_head, 2 * answer * 8 * 10);
}

TEST(FlopsTest, PolicyScalesOnlyPrunedLinears) {
  auto f = ComputeDenseFlops(TinyDims(), {10, 100, 1});
  ASSERT_TRUE(f.ok());
  KeptFractions keep;
  keep.decoder.assign(2, {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5});
  auto half = PolicyFlops(*f, keep);
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_DOUBLE_EQ(*half, 21280 - 7200);
  keep.decoder[1] = {1, 1, 1, 1, 1, 1, 0};  // only layer 1's down_proj removed
  EXPECT_DOUBLE_EQ(*PolicyFlops(*f, keep), 21280 - 4800 - 960);
  EXPECT_DOUBLE_EQ(*PolicyFlops(*f, KeptFractions{}), 21280);
  KeptFractions vision;
  vision.vision.assign(2, {0, 0, 0, 0, 0, 0});
  EXPECT_DOUBLE_EQ(*PolicyFlops(*f, vision), 21280 - 2560);
  EXPECT_DOUBLE_EQ(UnprunableFraction(*f, false), (21280.0 - 14400) / 21280);
  EXPECT_DOUBLE_EQ(UnprunableFraction(*f, true), (21280.0 - 14400 - 2560) / 21280);
}

TEST(PrunedPerRowTest, FloorWithDecimalGuard) {
  EXPECT_EQ(PrunedPerRow(0, 37), 0);
  EXPECT_EQ(PrunedPerRow(1, 37), 37);
  EXPECT_EQ(PrunedPerRow(0.5, 37), 18);    // floor, not round
  EXPECT_EQ(PrunedPerRow(0.99, 37), 36);   // 36.63 → 36
  EXPECT_EQ(PrunedPerRow(0.29, 100), 29);  // 28.999999999999996 in binary
  EXPECT_EQ(PrunedPerRow(0.7, 10), 7);
  EXPECT_EQ(PrunedPerRow(0.1, 4096), 409);
  for (int k = 0; k <= 96; ++k) EXPECT_EQ(PrunedPerRow(double(k) / 96, 96), k) << k;
  EXPECT_EQ(PrunedPerRow(std::nan(""), 37), 0);
  EXPECT_EQ(PrunedPerRow(-0.5, 37), 0);
}

// The kept fraction is what a mask at that ratio keeps, which for in = 48 is well above 1 − r
// (the gap the FLOPs model used to ignore).
TEST(KeptFractionTest, CountsWholePrunedWeights) {
  EXPECT_EQ(KeptFraction(0, 48), 1.0);
  EXPECT_EQ(KeptFraction(1, 48), 0.0);
  EXPECT_EQ(KeptFraction(0.5, 37), 19.0 / 37);
  EXPECT_EQ(KeptFraction(0.3, 48), 34.0 / 48);  // 14.4 → 14 pruned, not 0.7
  EXPECT_GT(KeptFraction(0.3, 48) - 0.7, 0.008);
  EXPECT_EQ(KeptFraction(0.29, 100), 0.71);
  EXPECT_EQ(KeptFraction(0.5, 0), 1.0);  // no weights: nothing to prune
  // Bit-equal to non-zeros / numel of an out × in masked weight: one rounding of the same ratio.
  for (int64_t in : {7, 48, 96, 4096, 11008}) {
    for (double r : {0.1, 0.2, 0.3, 1.0 / 3, 0.45, 0.7, 0.8}) {
      const int64_t out = 4096, k = PrunedPerRow(r, in);
      EXPECT_EQ(KeptFraction(r, in), double(out * (in - k)) / double(out * in)) << in << " " << r;
      // A non-increasing step function, never below 1 − r − 1e-9/in.
      EXPECT_GE(KeptFraction(r, in), 1 - r - 1e-9 / double(in));
      EXPECT_GE(KeptFraction(r, in), KeptFraction(r + 1e-3, in));
    }
  }
}

TEST(FlopsTest, RejectsBadInput) {
  FlopsModelDims d = TinyDims();
  d.decoder[1].mlp_width = -1;
  auto f = ComputeDenseFlops(d, {10, 100, 1});
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f.status().message(), testing::HasSubstr("decoder[1].mlp_width"));
  EXPECT_FALSE(ComputeDenseFlops(TinyDims(), {10, 50, 1}).ok());  // E[T²] < E[T]²
  EXPECT_FALSE(ComputeDenseFlops(TinyDims(), {-1, 100, 1}).ok());
  auto dense = ComputeDenseFlops(TinyDims(), {10, 100, 1});
  ASSERT_TRUE(dense.ok());
  KeptFractions keep;
  keep.decoder.assign(1, {1, 1, 1, 1, 1, 1, 1});  // wrong layer count
  EXPECT_THAT(PolicyFlops(*dense, keep).status().message(), testing::HasSubstr("2"));
  keep.decoder.assign(2, {1, 1, 1, 1, 1, 1, 1.5});
  EXPECT_THAT(PolicyFlops(*dense, keep).status().message(), testing::HasSubstr("[0, 1]"));
}

}  // namespace
}  // namespace prunesvc

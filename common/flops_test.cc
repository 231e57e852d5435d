#include "common/flops.h"

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

// The FLOPs model of a LLaVA-style model (docs/architecture.md §5): the one implementation used by
// the worker's counter (GFLOPs/sample), by the search (budget repair) and by the report.
//
// Conventions:
//  - FLOPs = 2 × multiply-adds. Only matrix products are counted (linears, patch embedding,
//    attention scores and weighted sums); norms, activations, softmax, RoPE and embedding lookups
//    are O(T·d) and are ignored.
//  - Per sample, T = expanded image tokens + prompt tokens + answer tokens, without padding.
//    Linear terms use the mean of T over the sample set, attention terms the mean of T².
//  - Vision tower: only the layers that run (up to the feature layer), full (non-causal)
//    attention over patches + CLS: QKᵀ and AV are each S²·d multiply-adds → 4·S²·d FLOPs.
//  - Decoder attention is causal: "≈ 2·T²·d" FLOPs with d = heads × head_dim of that layer (half
//    of the full 4·T²·d). Unstructured/N:M pruning does not change it; structured pruning shrinks
//    d, which the per-layer dims express.
//  - lm_head is counted at the answer positions only (that is all scoring computes).
//  - F(π) multiplies each prunable linear's dense FLOPs by its kept fraction (kept multiply-adds
//    for unstructured / N:M). Structured policies are expressed by the shrunk dims themselves.
//  - An UNSTRUCTURED ratio r prunes whole weights: PrunedPerRow(r, in) of each output row, so the
//    kept fraction is KeptFraction(r, in) = (in − PrunedPerRow(r, in)) / in, not 1 − r. Every
//    FLOPs count of a ratio policy (the search, the budget, the written artifact) goes through
//    KeptFraction so that they all count exactly the weights the masks keep.
//  - A STRUCTURED ratio r removes, in each decoder layer, PrunedPerRow(r, I) of its I MLP
//    channels and PrunedPerRow(r, G) of its G KV groups (a KV group = one k/v head and the
//    num_heads/G query heads that read it; GQA forces whole groups). Its FLOPs are those of the
//    shrunk shapes (ShrinkDecoderDims → ComputeDenseFlops): q/k/v/o/gate/up/down narrower and
//    the attention term 2·E[T²]·q_width smaller — no kept fractions involved. Ratios < 1 never
//    remove a whole block (floor(r·n) < n).
//
// Torch-free; all functions are pure and thread-safe.
#ifndef PRUNESVC_COMMON_FLOPS_H_
#define PRUNESVC_COMMON_FLOPS_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace prunesvc {

// Index of a decoder linear inside a layer; the order is the canonical one used everywhere a
// per-linear quantity is stored per layer.
enum class DecoderLinear { kQ = 0, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kNumDecoderLinears = 7;
// Vision encoder linears per layer: q, k, v, out, fc1, fc2.
enum class VisionLinear { kQ = 0, kK, kV, kOut, kFc1, kFc2 };
inline constexpr int kNumVisionLinears = 6;

struct VisionFlopsDims {
  int width = 0;       // hidden size D
  int mlp_width = 0;   // intermediate size
  int layers_run = 0;  // encoder layers actually executed (up to the feature layer)
  int tokens = 0;      // sequence length inside the tower: patches + CLS
  int patch_size = 0;
  int channels = 3;
};

struct DecoderLayerFlopsDims {
  int hidden = 0;     // model width (input of q/k/v/gate/up, output of o/down)
  int q_width = 0;    // heads × head_dim of this layer (input of o_proj)
  int kv_width = 0;   // kv_heads × head_dim of this layer
  int mlp_width = 0;  // intermediate size of this layer
};

struct FlopsModelDims {
  VisionFlopsDims vision;
  int images_per_sample = 1;
  int image_tokens = 0;  // projected tokens per image (= image_seq_length)
  int projector_in = 0;
  int projector_hidden = 0;
  int projector_out = 0;
  std::vector<DecoderLayerFlopsDims> decoder;
  int vocab = 0;
};

// Averages over a sample set (see the header comment for what T counts).
struct TokenStats {
  double mean_tokens = 0;
  double mean_tokens_sq = 0;
  double mean_answer_tokens = 0;
};

// Dense per-sample FLOPs, broken down by part.
struct FlopsBreakdown {
  double vision_patch_embed = 0;
  std::vector<std::array<double, kNumVisionLinears>> vision_linear;  // per layer run
  double vision_attention = 0;                                       // all layers run
  double projector = 0;
  std::vector<std::array<double, kNumDecoderLinears>> decoder_linear;  // per decoder layer
  // Input width (in_features, the length of a weight row) of each decoder linear, per layer:
  // q/k/v/gate/up read `hidden`, o reads `q_width`, down reads `mlp_width`. A ratio's kept
  // fraction depends on it (KeptFraction), so it travels with the FLOPs it scales.
  std::vector<std::array<int64_t, kNumDecoderLinears>> decoder_linear_in;
  std::vector<double> decoder_attention;  // per decoder layer
  double lm_head = 0;

  double VisionTotal() const;
  double DecoderLinearTotal() const;
  double DecoderAttentionTotal() const;
  double Total() const;
};

// Kept fraction (0..1) of each prunable linear's multiply-adds. An empty vector means "all dense"
// for that part; otherwise it must have one entry per layer.
struct KeptFractions {
  std::vector<std::array<double, kNumDecoderLinears>> decoder;
  std::vector<std::array<double, kNumVisionLinears>> vision;
};

// Whole weights an UNSTRUCTURED ratio prunes per output row of a linear with `in_features`
// inputs: floor(ratio·in + 1e-9), clamped to [0, in]; 0 for ratio ≤ 0 or NaN. The 1e-9 absorbs
// decimal ratios' binary error (0.29·100 = 28.999…96 → 29); Wanda's int(in·r) would give 28 there
// and agrees everywhere else. `ratio` must be in [0, 1] (callers validate). The mask bank
// (worker/prune/mask_bank.h) prunes exactly this many weights of every row.
int64_t PrunedPerRow(double ratio, int64_t in_features);

// The fraction of a linear's weights (and multiply-adds) a ratio keeps:
// (in − PrunedPerRow(ratio, in)) / in, computed as one correctly rounded division so it equals
// bit for bit non-zeros / numel of the masked weight (out·(in − k) / (out·in) is the same
// rational number). 1 when in_features ≤ 0 (a linear without weights has nothing to prune and no
// FLOPs to scale). A non-increasing step function of the ratio, ≥ 1 − ratio − 1e-9/in.
double KeptFraction(double ratio, int64_t in_features);

// The head layout of a decoder layer (what STRUCTURED pruning removes whole KV groups of).
struct DecoderLayerHeads {
  int num_heads = 0;     // query heads
  int num_kv_heads = 0;  // = KV groups; num_heads must be a multiple (0 and 0: no attention)
  int head_dim = 0;
};

// What a STRUCTURED ratio removes from one layer (see the header comment).
struct StructuredCut {
  int64_t channels = 0;  // MLP channels removed: PrunedPerRow(ratio, intermediate)
  int kv_groups = 0;     // KV groups removed: PrunedPerRow(ratio, num_kv_heads)
};
StructuredCut StructuredCutOf(double ratio, int64_t intermediate, int num_kv_heads);

// Checks `heads` against `dims` (one entry per decoder layer; q_width = num_heads·head_dim,
// kv_width = num_kv_heads·head_dim, num_heads a multiple of num_kv_heads).
absl::Status CheckLayerHeads(const FlopsModelDims& dims,
                             const std::vector<DecoderLayerHeads>& heads);

// `dims` with every decoder layer l shrunk by StructuredCutOf(layer_ratios[l], …): mlp_width −
// channels, q_width − kv_groups·(num_heads/num_kv_heads)·head_dim, kv_width − kv_groups·head_dim.
// The dims of the physically shrunk model, so ComputeDenseFlops of the result is F(π) exactly.
// Ratios must be in [0, 1]; one per decoder layer.
absl::StatusOr<FlopsModelDims> ShrinkDecoderDims(const FlopsModelDims& dims,
                                                 const std::vector<DecoderLayerHeads>& heads,
                                                 const std::vector<double>& layer_ratios);

// Validates `dims` / `stats` (non-negative, consistent) and computes the dense breakdown.
absl::StatusOr<FlopsBreakdown> ComputeDenseFlops(const FlopsModelDims& dims,
                                                 const TokenStats& stats);

// F(π): the dense breakdown with each linear scaled by its kept fraction.
absl::StatusOr<double> PolicyFlops(const FlopsBreakdown& dense, const KeptFractions& keep);

// The part that pruning the decoder linears cannot remove (vision, projector, attention,
// lm_head, and the vision linears unless `prune_vision`) as a fraction of dense FLOPs: the lower
// bound of reachable budgets when every prunable linear is removed entirely.
double UnprunableFraction(const FlopsBreakdown& dense, bool prune_vision);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_FLOPS_H_

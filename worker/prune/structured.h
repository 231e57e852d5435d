// STRUCTURED pruning (docs/architecture.md §5 "Granularities"; issue #6): whole MLP channels and
// whole attention KV groups are removed from the LLaMA decoder, and the artifact's weights are
// physically shrunk (per-layer sizes in config.json), so it is smaller and faster on any hardware.
//
// Scores (from the calibration statistics of the DENSE model under the current projector, like
// the mask bank; higher = more important, the lowest are removed first):
//  - MLP channel j of a layer: WANDA ‖X_j‖₂·‖W_down[:, j]‖₂, where X_j is down_proj's input
//    column j over every calibration token row. ‖x_j w_jᵀ‖_F = ‖x_j‖·‖w_j‖ exactly, so this is
//    the Frobenius norm of the term removing channel j subtracts from the layer's MLP output over
//    the calibration set (the Wanda score aggregated over the channel's column). MAGNITUDE drops
//    the activation factor: ‖W_down[:, j]‖₂.
//  - KV group g (its num_heads/num_kv_heads query heads and one k/v head): the group's o_proj
//    input columns C_g, score sqrt(Σ_{j∈C_g} ‖X_j‖²·‖W_o[:, j]‖²) — the Frobenius norm of the
//    group's contribution to o_proj's output if its columns' contributions were orthogonal (the
//    channel score summed in quadrature; exact for one column). MAGNITUDE: ‖W_o[:, C_g]‖_F.
//    The o_proj side is used because it is where a head's output enters the residual stream.
//  - Orders: a stable ascending sort of the scores (ties: the lower index is removed first).
//    A ratio removes a PREFIX of the order, so orders are nested (a higher ratio removes a
//    superset) and the search can move between ratios by editing only the difference.
//  - Counts (common/flops.h StructuredCutOf): ratio r removes floor(r·I + 1e-9) of the I
//    channels and floor(r·G + 1e-9) of the G KV groups — the same floor rule as UNSTRUCTURED's
//    PrunedPerRow, so a layer never loses more than its ratio and never a whole block below
//    r = 1. Heads are coarse: with G = 2 (the tiny model), r < 0.5 keeps both groups and
//    r ∈ [0.5, 1) removes one.
//
// Search-time masking (CandidateEvaluator with granularity STRUCTURED) zeroes the removed
// channels' gate/up rows and down_proj columns and the removed groups' q/k/v rows and o_proj
// columns: zero down/o columns alone make the removed units contribute exactly nothing, so the
// masked full-size model computes the same function as the shrunk one (float rounding aside).
// Finalize index_selects the kept rows/columns (ascending, so the kept units keep their
// relative order) into new, smaller tensors.
//
// Thread-safety: StructuredBank is immutable after Build; the free functions are thread-safe.
#ifndef PRUNESVC_WORKER_PRUNE_STRUCTURED_H_
#define PRUNESVC_WORKER_PRUNE_STRUCTURED_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/flops.h"
#include "nlohmann/json.hpp"
#include "worker/model/llava_model.h"
#include "worker/prune/calibration.h"
#include "worker/prune/mask_bank.h"

namespace prunesvc::prune {

// The head layout of every decoder layer of `model` (from its actual shapes and head_dim).
std::vector<DecoderLayerHeads> LayerHeadsOf(const model::LlavaModel& model);

// One decoder layer's removal orders.
struct StructuredLayerOrder {
  int64_t intermediate = 0;            // I: MLP channels of the dense layer
  DecoderLayerHeads heads;             // G = heads.num_kv_heads KV groups
  std::vector<double> channel_scores;  // [I]
  std::vector<int64_t> channel_order;  // [I]: channels by increasing score
  std::vector<double> group_scores;    // [G]
  std::vector<int64_t> group_order;    // [G]
  // Squared dense weight mass removed with the first k units of the order (k = 0..I / 0..G):
  // a channel's gate row + up row + down column; a group's q/k/v rows + o_proj columns.
  std::vector<double> channel_mass_prefix;  // [I + 1]
  std::vector<double> group_mass_prefix;    // [G + 1]
  double dense_mass = 0;                    // Σ ‖W‖²_F over the layer's 7 linears
};

class StructuredBank {
 public:
  // `dense_weights` in LlavaModel::DecoderLinears() order (7 per layer), `heads` per layer,
  // `stats` the calibration of the same linears (WANDA; may be null for MAGNITUDE). Shapes must
  // be consistent (q [heads·hd, H], k/v [kv·hd, H], o [H, heads·hd], gate/up [I, H],
  // down [H, I]); non-finite weights or statistics → InvalidArgument naming the linear.
  static absl::StatusOr<std::unique_ptr<StructuredBank>> Build(
      absl::Span<const at::Tensor> dense_weights, const std::vector<DecoderLayerHeads>& heads,
      MaskMethod method, const CalibrationStats* stats);

  StructuredBank(const StructuredBank&) = delete;
  StructuredBank& operator=(const StructuredBank&) = delete;

  MaskMethod method() const { return method_; }
  int num_layers() const { return int(layers_.size()); }
  const StructuredLayerOrder& layer(int l) const { return layers_[l]; }
  StructuredCut Cut(int l, double ratio) const {
    return StructuredCutOf(ratio, layers_[l].intermediate, layers_[l].heads.num_kv_heads);
  }
  // Squared dense weight mass the cut removes from layer l.
  double RemovedSquaredMass(int l, const StructuredCut& cut) const {
    return layers_[l].channel_mass_prefix[cut.channels] +
           layers_[l].group_mass_prefix[cut.kv_groups];
  }

 private:
  explicit StructuredBank(MaskMethod method) : method_(method) {}
  const MaskMethod method_;
  std::vector<StructuredLayerOrder> layers_;
};

// What finalize does to one layer.
struct StructuredLayerPlan {
  double ratio = 0;
  StructuredCut cut;
  int64_t intermediate = 0;               // before
  DecoderLayerHeads heads;                // before
  std::vector<int64_t> kept_channels;     // ascending
  std::vector<int64_t> kept_groups;       // ascending
  std::vector<int64_t> removed_channels;  // in removal order
  std::vector<int64_t> removed_groups;    // in removal order

  int64_t intermediate_after() const { return intermediate - cut.channels; }
  int num_heads_after() const;
  int num_kv_heads_after() const { return heads.num_kv_heads - cut.kv_groups; }
};

// One plan per layer at `layer_ratios` (each in [0, 1]).
absl::StatusOr<std::vector<StructuredLayerPlan>> PlanStructured(
    const StructuredBank& bank, const std::vector<double>& layer_ratios);

// Replaces the decoder tensors of a canonical-name map (LoadCheckpoint's or NamedTensors()) with
// their shrunk versions: q/k/v rows (and biases) and o_proj columns of the kept groups, gate/up
// rows (and biases) and down_proj columns of the kept channels. Dtype and device are kept.
// Missing tensors or shapes that disagree with the plan → InvalidArgument naming the tensor. A
// cut that empties a whole block of a layer whose o_proj / down_proj has a bias is refused (the
// runtime skips an empty block, bias included, while the masked model keeps the bias); ratios
// below 1 never empty a block.
absl::Status ShrinkDecoderTensors(const std::vector<StructuredLayerPlan>& plan,
                                  std::map<std::string, at::Tensor>& tensors);

// `config` with text_config's per-layer sizes set (TextConfig::layer_intermediate_sizes /
// layer_num_heads), and the same in config.raw (`prunesvc_intermediate_sizes`,
// `prunesvc_num_heads` inside `text_config`, created when absent) for writing config.json. The
// uniform intermediate_size / num_attention_heads / num_key_value_heads keep their dense values
// (the per-layer lists override them; num_key_value_heads keeps defining the GQA group size).
model::LlavaConfig StructuredConfig(const model::LlavaConfig& config,
                                    const std::vector<StructuredLayerPlan>& plan);

// The physically shrunk copy of `model` (new tensors; `model` is untouched).
absl::StatusOr<std::unique_ptr<model::LlavaModel>> ShrinkModel(
    const model::LlavaModel& model, const std::vector<StructuredLayerPlan>& plan);

// policy.json's per-layer record of a plan (sizes before/after, removed indices).
nlohmann::json StructuredLayerJson(const StructuredLayerPlan& plan);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_STRUCTURED_H_

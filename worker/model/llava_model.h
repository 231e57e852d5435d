// LLaVA-1.5 forward pass in libtorch (docs/llava.md): CLIP ViT vision tower (only the layers up
// to the feature layer run) → MLP projector → LLaMA decoder, with `<image>` expansion,
// left-padded batches and a KV cache for generation. Numerically it follows
// HuggingFace transformers' modeling_clip.py / modeling_llava.py / modeling_llama.py; the parity
// test (llava_model_test.cc) checks it against an independent float64 reference
// (testdata/llava_reference.py).
//
// Weights are plain at::Tensor members of per-layer structs, so the pruning engine can swap a
// linear's weight in O(1) through MutableWeight() / DecoderLinears(). They are float32 on
// `device()`. The model is built from a config plus tensors under their canonical
// (transformers ≤ 4.51) names; every tensor is shape-checked and unknown tensors are refused.
//
// Structured-pruned models: layer l has TextConfig::NumHeads(l) query heads and
// IntermediateSize(l) MLP channels; with GQA, layer l keeps NumHeads(l) / groups kv heads
// (groups = num_attention_heads / num_key_value_heads: heads are removed by whole groups). A layer
// with 0 heads (or 0 MLP channels) skips that block: the residual passes through unchanged.
//
// Thread-safety: the const methods may run concurrently with each other. Mutating weights (through
// MutableWeight / DecoderLinears) must not overlap any other call. No exceptions escape: libtorch
// errors are returned as absl::Status naming the phase that failed.
#ifndef PRUNESVC_WORKER_MODEL_LLAVA_MODEL_H_
#define PRUNESVC_WORKER_MODEL_LLAVA_MODEL_H_

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/flops.h"
#include "worker/model/config.h"
#include "worker/model/preprocess.h"

namespace prunesvc::model {

struct Checkpoint;

// y = x Wᵀ + b. `bias` is undefined when the layer has none.
struct Linear {
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out] or undefined
};

struct VisionLayer {
  at::Tensor ln1_weight, ln1_bias, ln2_weight, ln2_bias;
  Linear q, k, v, out, fc1, fc2;
};

struct DecoderLayer {
  int num_heads = 0;
  int num_kv_heads = 0;
  at::Tensor input_norm, post_attention_norm;
  Linear q, k, v, o, gate, up, down;
};

// A decoder linear, for the pruning engine. `linear` points into the model and stays valid for
// the model's lifetime.
struct NamedLinear {
  std::string
      name;  // canonical weight name, e.g. "language_model.model.layers.3.mlp.up_proj.weight"
  int layer = 0;
  DecoderLinear kind = DecoderLinear::kQ;
  Linear* linear = nullptr;
};

// One sequence of a batch.
struct SequenceInput {
  // Unexpanded token ids: each `image_token_index` id stands for one image and expands to
  // `image_seq_length` positions filled, in order, with the rows of that image's features.
  std::vector<int> token_ids;
  // [num_images, image_seq_length, text hidden] on the model's device; undefined (or 0 rows)
  // when the prompt has no image token. Its row count must equal the number of image tokens.
  at::Tensor image_features;
  // Indices into `token_ids` whose next-token logits are wanted (an image token's position maps
  // to the last of its expanded slots). Only these rows go through the final norm and lm_head.
  std::vector<int> logit_positions;
};

// Called for every decoder linear with its input rows (the batch's non-padding tokens,
// [rows, in_features]) — the calibration hook for Wanda / SparseGPT statistics.
using LinearObserver = std::function<void(const NamedLinear& linear, const at::Tensor& input)>;

struct ForwardOptions {
  // Record autograd history (e.g. to train the projector through the decoder). Off by default:
  // evaluation runs under NoGradGuard.
  bool enable_grad = false;
  LinearObserver observer;  // optional
};

// Per-layer keys and values of one sequence (batch 1) for incremental decoding.
struct KvCache {
  std::vector<at::Tensor> keys, values;  // per layer [1, kv_heads, length, head_dim]
  int64_t length = 0;                    // expanded positions already processed
};

// A batch's decoder pass split into steps (LlavaModel::StartPass / RunLayer / FinishPass), so
// evaluations whose weights agree on the leading layers can share those layers' activations (the
// candidate evaluator's prefix tree, worker/prune/evaluator.h). StartPass → RunLayer(0 … L−1) →
// FinishPass computes, op for op, what Forward computes: bitwise the same logits for the same
// weights. No autograd history, no observer. Holds only tensors of the batch (the embeddings, the
// RoPE tables and the attention mask); the model's weights are read when each step runs.
class DecoderPass {
 public:
  // The embedded, left-padded batch [B, T, hidden]: the input of layer 0.
  const at::Tensor& input() const { return input_; }

 private:
  friend class LlavaModel;
  at::Tensor input_;
  at::Tensor cos_, sin_, blocked_;     // RoPE tables [B, 1, T, head_dim]; mask [B, 1, T, T]
  at::Tensor logit_rows_;              // flat row indices into [B·T] of the requested logits
  std::vector<int64_t> logit_counts_;  // per sequence
};

// Stacks preprocessed images (CHW float) into a pixel batch [N, C, H, W] on `device`. All images
// must have the same shape and data.size() == C·H·W.
absl::StatusOr<at::Tensor> StackPixels(absl::Span<const PixelValues> images,
                                       at::Device device = at::kCPU);

class LlavaModel {
 public:
  // Builds the model from a loaded checkpoint (canonical names, float32) on `device`.
  static absl::StatusOr<std::unique_ptr<LlavaModel>> Create(const LlavaConfig& config,
                                                            const Checkpoint& checkpoint,
                                                            at::Device device = at::kCPU);
  // Same from a plain name → tensor map (canonical names; any float dtype, converted to float32).
  // Missing, extra or wrong-shaped tensors → InvalidArgument naming the tensor.
  static absl::StatusOr<std::unique_ptr<LlavaModel>> CreateFromTensors(
      const LlavaConfig& config, const std::map<std::string, at::Tensor>& tensors,
      at::Device device = at::kCPU);

  LlavaModel(const LlavaModel&) = delete;
  LlavaModel& operator=(const LlavaModel&) = delete;

  const LlavaConfig& config() const { return config_; }
  at::Device device() const { return device_; }
  int image_seq_length() const { return config_.image_seq_length; }

  // pixels [N, channels, image_size, image_size] float → the selected vision features
  // [N, image_seq_length, vision hidden] (before the projector; cacheable per image).
  absl::StatusOr<at::Tensor> VisionFeatures(const at::Tensor& pixels) const;
  // [N, S, vision hidden] → [N, S, text hidden]. Records autograd history when grad mode is on
  // and the projector weights require grad (projector training).
  absl::StatusOr<at::Tensor> Project(const at::Tensor& vision_features) const;
  // VisionFeatures then Project.
  absl::StatusOr<at::Tensor> ComputeImageFeatures(const at::Tensor& pixels) const;

  // Runs a batch (left-padded internally; positions = cumsum(mask) − 1 so RoPE does not shift)
  // and returns, per sample in input order, the logits [logit_positions.size(), vocab].
  absl::StatusOr<std::vector<at::Tensor>> Forward(absl::Span<const SequenceInput> batch,
                                                  const ForwardOptions& options = {}) const;

  // Forward in steps (DecoderPass above). RunLayer's `x` is the pass's input or a previous
  // RunLayer's output (layer − 1); `layer` in [0, num_hidden_layers). FinishPass returns, per
  // sample in input order, the logits [logit_positions.size(), vocab], like Forward. Errors as
  // Forward's (invalid sequences name the sample; torch failures are Internal).
  absl::StatusOr<DecoderPass> StartPass(absl::Span<const SequenceInput> batch) const;
  absl::StatusOr<at::Tensor> RunLayer(const DecoderPass& pass, int layer,
                                      const at::Tensor& x) const;
  absl::StatusOr<std::vector<at::Tensor>> FinishPass(const DecoderPass& pass,
                                                     const at::Tensor& x) const;

  // Incremental decoding of one sequence: processes `chunk.token_ids` (with images, if any)
  // after the `cache->length` positions already in `cache`, appends their keys/values, and
  // returns the logits of the chunk's last position [vocab]. `chunk.logit_positions` is ignored.
  absl::StatusOr<at::Tensor> ForwardWithCache(const SequenceInput& chunk, KvCache* cache) const;

  // Number of positions `token_ids` occupies after `<image>` expansion.
  int64_t ExpandedLength(absl::Span<const int> token_ids) const;

  // The tensor behind a canonical weight name (nullptr if unknown), to swap or edit in place.
  at::Tensor* MutableWeight(std::string_view canonical_name);
  // All decoder linears in layer order, q k v o gate up down within a layer.
  std::vector<NamedLinear> DecoderLinears();
  // Canonical name → tensor for every parameter the model holds (tied lm_head appears once,
  // as embed_tokens). For writing artifacts and counting parameters.
  std::map<std::string, at::Tensor> NamedTensors() const;

  // The dims of the FLOPs model, from the actual weight shapes (so shrunk layers count exactly).
  FlopsModelDims FlopsDims() const;

  // Direct access for the pruning engine and projector training.
  std::vector<DecoderLayer>& decoder_layers() { return decoder_; }
  Linear& projector_linear_1() { return proj1_; }
  Linear& projector_linear_2() { return proj2_; }

 private:
  LlavaModel(const LlavaConfig& config, at::Device device);
  absl::Status Load(const std::map<std::string, at::Tensor>& tensors);

  at::Tensor VisionFeaturesImpl(const at::Tensor& pixels) const;
  at::Tensor ProjectImpl(const at::Tensor& x) const;
  // Token embeddings of one unexpanded sequence with image rows spliced in: [T, hidden].
  at::Tensor EmbedSequence(const SequenceInput& input) const;
  // Runs the decoder on embeds [B, T, H]. key_valid [B, T_past + T] marks real (non-pad) keys;
  // positions [B, T]. `cache` (batch 1 only) supplies past keys/values and receives the new ones.
  at::Tensor RunDecoder(at::Tensor x, const at::Tensor& positions, const at::Tensor& key_valid,
                        KvCache* cache, const ForwardOptions& options) const;
  // RoPE tables [B, 1, T, head_dim] and the attention mask (true = blocked) [B, 1, T, past + T]
  // of RunDecoder's inputs.
  void DecoderTables(const at::Tensor& positions, const at::Tensor& key_valid, int64_t past,
                     at::Tensor* cos, at::Tensor* sin, at::Tensor* blocked) const;
  // One decoder layer of RunDecoder. `observe` (may be empty) sees each linear's input.
  using LayerObserver = std::function<void(int layer, DecoderLinear kind, const at::Tensor&)>;
  at::Tensor LayerForward(int li, at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                          const at::Tensor& blocked, KvCache* cache,
                          const LayerObserver& observe) const;
  // The padded batch of Forward: embeddings [B, T, H], key_valid [B, T], positions [B, T] and
  // the flat indices of the requested logit rows (validated sequences).
  absl::StatusOr<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> PadBatch(
      absl::Span<const SequenceInput> batch) const;
  // Final norm + lm_head of the requested rows of x [B, T, H], split per sequence.
  std::vector<at::Tensor> SplitLogits(const at::Tensor& x, const at::Tensor& rows,
                                      absl::Span<const int64_t> counts) const;
  at::Tensor Logits(const at::Tensor& hidden_rows) const;

  // Constant after construction.
  const LlavaConfig config_;
  const at::Device device_;
  int num_vision_layers_run_ = 0;

  // Weights (mutable by the pruning engine; see the thread-safety note).
  at::Tensor patch_embedding_;     // [D, C, p, p]
  at::Tensor class_embedding_;     // [D]
  at::Tensor position_embedding_;  // [P + 1, D]
  at::Tensor pre_layrnorm_weight_, pre_layrnorm_bias_;
  std::vector<VisionLayer> vision_;  // only the layers that run
  Linear proj1_, proj2_;
  at::Tensor embed_tokens_;  // [V, H]
  std::vector<DecoderLayer> decoder_;
  at::Tensor final_norm_;
  at::Tensor lm_head_;  // [V, H]; shares storage with embed_tokens_ when tied
  std::map<std::string, at::Tensor*, std::less<>> by_name_;
};

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_LLAVA_MODEL_H_

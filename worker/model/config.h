// LLaVA-1.5 `config.json` parsing (torch-free).
//
// Applies the defaults HuggingFace transformers applies when a key is absent (LlavaConfig,
// CLIPVisionConfig, LlamaConfig), so a config that loads in HF loads here with the same values:
//   - no `vision_config` at all → LlavaConfig's CLIP ViT-L/14-336 (1024/4096/16 heads/24 layers,
//     patch 14, image 336); a `vision_config` object → CLIPVisionConfig's own defaults for its
//     missing keys (768/3072/12/12, patch 32, image 224), exactly as HF does;
//   - no `text_config` → LlamaConfig() (4096/11008/32/32, vocab 32000, 2048 positions,
//     rms_norm_eps 1e-6); num_key_value_heads absent → num_attention_heads; head_dim absent →
//     hidden_size / num_attention_heads; `text_config.model_type` absent → llama.
// NOTE: the member initialisers below are the llava-1.5-7b values (for code that builds configs
// by hand); the parser overrides each member with HF's default when the key is absent.
//
// Unsupported models are refused with a message naming the field: llava_next / anyres, non-CLIP
// vision towers, non-LLaMA text models, unknown activations, rope scaling, multi-layer features.
// `image_seq_length` is derived from the vision config and must agree with config.json if given.
//
// Thread-safety: plain values; the functions are thread-safe.
#ifndef PRUNESVC_WORKER_MODEL_CONFIG_H_
#define PRUNESVC_WORKER_MODEL_CONFIG_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace prunesvc::model {

struct VisionConfig {
  int hidden_size = 1024, intermediate_size = 4096, num_attention_heads = 16,
      num_hidden_layers = 24, patch_size = 14, image_size = 336, num_channels = 3;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";  // "quick_gelu" or "gelu"

  int num_patches() const;  // (image_size / patch_size)^2, integer division as HF's conv floors
  int head_dim() const;     // hidden_size / num_attention_heads
};

struct TextConfig {
  int hidden_size = 4096, intermediate_size = 11008, num_attention_heads = 32,
      num_key_value_heads = 32, num_hidden_layers = 32, head_dim = 128, vocab_size = 32064,
      max_position_embeddings = 4096, bos_token_id = 1, eos_token_id = 2;
  std::optional<int> pad_token_id;
  double rms_norm_eps = 1e-6, rope_theta = 10000.0;
  std::string hidden_act = "silu";
  bool attention_bias = false, mlp_bias = false;
  // Per-layer sizes of STRUCTURED-pruned models, from the prunesvc extension keys
  // `prunesvc_intermediate_sizes` / `prunesvc_num_heads` in text_config. Empty = uniform; else
  // exactly num_hidden_layers entries, each ≥ 0 / in [0, num_attention_heads] (0 = the
  // block is removed entirely).
  std::vector<int> layer_intermediate_sizes;
  std::vector<int> layer_num_heads;

  // The layer's size (the uniform value when no per-layer list or `layer` is out of range).
  int IntermediateSize(int layer) const;
  int NumHeads(int layer) const;
};

struct LlavaConfig {
  VisionConfig vision;
  TextConfig text;
  int image_token_index = 32000;  // `image_token_index`, or its newer alias `image_token_id`
  std::optional<int> pad_token_id;
  int vision_feature_layer = -2;  // Python-style index into CLIP's L+1 hidden states
  std::string vision_feature_select_strategy = "default";  // "default" drops CLS; "full" keeps
  std::string projector_hidden_act = "gelu";
  bool multimodal_projector_bias = true;
  bool tie_word_embeddings = false;  // top level OR text_config's, as HF resolves it
  int image_seq_length = 576;        // derived: num_patches (+1 for "full")
  std::string torch_dtype;           // `torch_dtype` (or newer `dtype`); "" if absent
  nlohmann::json raw;                // the original, for writing artifacts

  // How many CLIP encoder layers must run to produce the feature layer (feature layer k ≥ 0 →
  // k; k < 0 → L + 1 + k; e.g. 23 for −2 with 24 layers).
  int NumVisionLayersToRun() const;
};

// Parses config.json text. `source_name` (e.g. the path) prefixes every error, which also names
// the field: "config.json: text_config.hidden_size: expected a positive integer".
absl::StatusOr<LlavaConfig> ParseLlavaConfig(std::string_view json_text,
                                             std::string_view source_name);
// Reads and parses `model_dir`/config.json.
absl::StatusOr<LlavaConfig> LoadLlavaConfig(const std::string& model_dir);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_CONFIG_H_

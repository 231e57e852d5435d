// Test and benchmark helper: small random LLaVA configs and weights built in memory (no files, no
// Python). Weights are drawn from a seeded CPU generator and scaled by 1/sqrt(fan_in) so
// activations stay O(1) through the layers. Used by the pruning engine's tests and the
// benchmarks. Header-only; thread-compatible.
#ifndef PRUNESVC_WORKER_MODEL_RANDOM_LLAVA_H_
#define PRUNESVC_WORKER_MODEL_RANDOM_LLAVA_H_

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "worker/model/config.h"

namespace prunesvc::model::testing {

struct RandomLlavaSize {
  int vision_hidden = 32, vision_mlp = 64, vision_heads = 2, vision_layers = 2;
  int patch = 8, image = 16;  // 4 patches
  int hidden = 64, mlp = 96, heads = 4, kv_heads = 2, head_dim = 16, layers = 3;
  int vocab = 128;
};

inline LlavaConfig RandomLlavaConfig(const RandomLlavaSize& s = {}) {
  LlavaConfig c;
  c.vision.hidden_size = s.vision_hidden;
  c.vision.intermediate_size = s.vision_mlp;
  c.vision.num_attention_heads = s.vision_heads;
  c.vision.num_hidden_layers = s.vision_layers;
  c.vision.patch_size = s.patch;
  c.vision.image_size = s.image;
  c.text.hidden_size = s.hidden;
  c.text.intermediate_size = s.mlp;
  c.text.num_attention_heads = s.heads;
  c.text.num_key_value_heads = s.kv_heads;
  c.text.head_dim = s.head_dim;
  c.text.num_hidden_layers = s.layers;
  c.text.vocab_size = s.vocab;
  c.image_token_index = s.vocab - 4;
  c.vision_feature_layer = -2;
  c.image_seq_length = (s.image / s.patch) * (s.image / s.patch);
  return c;
}

// Canonical name → tensor for `c`.
inline std::map<std::string, at::Tensor> RandomLlavaTensors(const LlavaConfig& c, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto randn = [&](at::IntArrayRef shape) {
    return at::randn(shape, gen, at::TensorOptions(at::kFloat));
  };
  std::map<std::string, at::Tensor> t;
  const int64_t D = c.vision.hidden_size, M = c.vision.intermediate_size;
  const int64_t H = c.text.hidden_size, I = c.text.intermediate_size, V = c.text.vocab_size;
  const int64_t kv = int64_t(c.text.num_key_value_heads) * c.text.head_dim;
  const int64_t q = int64_t(c.text.num_attention_heads) * c.text.head_dim;
  auto lin = [&](const std::string& n, int64_t o, int64_t i, bool bias) {
    t[n + ".weight"] = randn({o, i}) / std::sqrt(double(i));
    if (bias) t[n + ".bias"] = randn({o}) * 0.1;
  };
  const std::string vp = "vision_tower.vision_model.";
  const int64_t p = c.vision.patch_size;
  t[vp + "embeddings.patch_embedding.weight"] = randn({D, 3, p, p}) / std::sqrt(3.0 * p * p);
  t[vp + "embeddings.class_embedding"] = randn({D});
  t[vp + "embeddings.position_embedding.weight"] = randn({c.vision.num_patches() + 1, D});
  t[vp + "pre_layrnorm.weight"] = at::ones({D});
  t[vp + "pre_layrnorm.bias"] = at::zeros({D});
  for (int l = 0; l < c.vision.num_hidden_layers; ++l) {
    const std::string pre = absl::StrCat(vp, "encoder.layers.", l, ".");
    for (const char* n : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      lin(pre + "self_attn." + n, D, D, true);
    }
    lin(pre + "mlp.fc1", M, D, true);
    lin(pre + "mlp.fc2", D, M, true);
    for (const char* n : {"layer_norm1", "layer_norm2"}) {
      t[pre + n + ".weight"] = at::ones({D});
      t[pre + n + ".bias"] = at::zeros({D});
    }
  }
  lin("multi_modal_projector.linear_1", H, D, true);
  lin("multi_modal_projector.linear_2", H, H, true);
  const std::string tp = "language_model.model.";
  t[tp + "embed_tokens.weight"] = randn({V, H});
  for (int l = 0; l < c.text.num_hidden_layers; ++l) {
    const std::string pre = absl::StrCat(tp, "layers.", l, ".");
    lin(pre + "self_attn.q_proj", q, H, false);
    lin(pre + "self_attn.k_proj", kv, H, false);
    lin(pre + "self_attn.v_proj", kv, H, false);
    lin(pre + "self_attn.o_proj", H, q, false);
    lin(pre + "mlp.gate_proj", I, H, false);
    lin(pre + "mlp.up_proj", I, H, false);
    lin(pre + "mlp.down_proj", H, I, false);
    t[pre + "input_layernorm.weight"] = at::ones({H});
    t[pre + "post_attention_layernorm.weight"] = at::ones({H});
  }
  t[tp + "norm.weight"] = at::ones({H});
  t["language_model.lm_head.weight"] = randn({V, H}) / std::sqrt(double(H));
  return t;
}

}  // namespace prunesvc::model::testing

#endif  // PRUNESVC_WORKER_MODEL_RANDOM_LLAVA_H_

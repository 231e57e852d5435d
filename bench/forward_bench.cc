// forward-bench: the dense LLaVA forward rate on a small random config as a fraction of this
// machine's fp32 GEMM rate, both measured in the same run with the same thread count
// (DESIGN.md §10: benchmarks print ratios; nothing asserts a wall-clock time).
//
// Usage: forward-bench [--threads=N] [--seconds=S]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/flops.h"
#include "worker/model/config.h"
#include "worker/model/llava_model.h"

namespace {

using prunesvc::model::LlavaConfig;
using prunesvc::model::LlavaModel;
using prunesvc::model::SequenceInput;

// Runs `f` until `seconds` have passed (at least 3 times) after one warm-up; seconds per call.
double TimeIt(const std::function<void()>& f, double seconds) {
  f();
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  int n = 0;
  double elapsed = 0;
  do {
    f();
    ++n;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds || n < 3);
  return elapsed / n;
}

LlavaConfig SmallConfig() {
  LlavaConfig c;
  c.vision.hidden_size = 128;
  c.vision.intermediate_size = 512;
  c.vision.num_attention_heads = 4;
  c.vision.num_hidden_layers = 4;
  c.vision.patch_size = 8;
  c.vision.image_size = 64;  // 64 patches
  c.text.hidden_size = 256;
  c.text.intermediate_size = 688;
  c.text.num_attention_heads = 8;
  c.text.num_key_value_heads = 8;
  c.text.head_dim = 32;
  c.text.num_hidden_layers = 6;
  c.text.vocab_size = 1024;
  c.image_token_index = 1000;
  c.vision_feature_layer = -2;
  c.image_seq_length = 64;
  return c;
}

// Random weights under the canonical names (scaled 1/sqrt(fan_in) so activations stay sane).
std::map<std::string, at::Tensor> RandomTensors(const LlavaConfig& c) {
  std::map<std::string, at::Tensor> t;
  const int64_t D = c.vision.hidden_size, M = c.vision.intermediate_size;
  const int64_t H = c.text.hidden_size, I = c.text.intermediate_size, V = c.text.vocab_size;
  const int64_t kv = int64_t(c.text.num_key_value_heads) * c.text.head_dim;
  const int64_t q = int64_t(c.text.num_attention_heads) * c.text.head_dim;
  auto lin = [&](const std::string& n, int64_t o, int64_t i, bool bias) {
    t[n + ".weight"] = at::randn({o, i}) / std::sqrt(double(i));
    if (bias) t[n + ".bias"] = at::zeros({o});
  };
  const std::string vp = "vision_tower.vision_model.";
  const int64_t p = c.vision.patch_size;
  t[vp + "embeddings.patch_embedding.weight"] = at::randn({D, 3, p, p}) / std::sqrt(3.0 * p * p);
  t[vp + "embeddings.class_embedding"] = at::randn({D});
  t[vp + "embeddings.position_embedding.weight"] = at::randn({c.vision.num_patches() + 1, D});
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
  t[tp + "embed_tokens.weight"] = at::randn({V, H});
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
  t["language_model.lm_head.weight"] = at::randn({V, H}) / std::sqrt(double(H));
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = int(std::thread::hardware_concurrency());
  double seconds = 2.0;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--seconds=", 10) == 0) {
      seconds = std::atof(argv[i] + 10);
    } else {
      std::fprintf(stderr, "usage: forward-bench [--threads=N] [--seconds=S]\n");
      return 2;
    }
  }
  if (threads < 1) threads = 1;
  // Debian's libtorch starts with one intra-op thread; set it explicitly (DESIGN.md §3).
  at::set_num_threads(threads);
  at::manual_seed(0);
  at::NoGradGuard no_grad;

  const int64_t n = 1024;
  at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  const double gemm_s = TimeIt([&] { at::mm(a, b); }, seconds);
  const double gemm_rate = 2.0 * n * n * n / gemm_s;

  const LlavaConfig config = SmallConfig();
  auto model = LlavaModel::CreateFromTensors(config, RandomTensors(config));
  if (!model.ok()) {
    std::fprintf(stderr, "forward-bench: %s\n", model.status().ToString().c_str());
    return 1;
  }
  // A batch of 8 samples: BOS + 10 tokens + <image> + 20 tokens + 1 answer token, MC-style
  // (logits at one position per sample), vision tower included.
  const int batch = 8;
  const at::Tensor pixels = at::randn({batch, 3, 64, 64});
  std::vector<int> ids = {1};
  for (int i = 0; i < 10; ++i) ids.push_back(3 + i);
  ids.push_back(config.image_token_index);
  for (int i = 0; i < 21; ++i) ids.push_back(20 + i);
  const double T = double((*model)->ExpandedLength(ids));
  bool ok = true;
  const double fwd_s = TimeIt(
      [&] {
        auto feats = (*model)->ComputeImageFeatures(pixels);
        if (!feats.ok()) {
          ok = false;
          return;
        }
        std::vector<SequenceInput> in;
        for (int i = 0; i < batch; ++i) {
          in.push_back({ids, feats->narrow(0, i, 1), {int(ids.size()) - 1}});
        }
        ok = ok && (*model)->Forward(in).ok();
      },
      seconds);
  if (!ok) {
    std::fprintf(stderr, "forward-bench: forward failed\n");
    return 1;
  }
  // The two halves separately, to see where the time goes.
  auto feats = (*model)->ComputeImageFeatures(pixels);
  const double vision_s = TimeIt([&] { (void)(*model)->ComputeImageFeatures(pixels); }, seconds);
  std::vector<SequenceInput> in;
  for (int i = 0; i < batch; ++i)
    in.push_back({ids, feats->narrow(0, i, 1), {int(ids.size()) - 1}});
  const double decoder_s = TimeIt([&] { (void)(*model)->Forward(in); }, seconds);
  auto flops = prunesvc::ComputeDenseFlops(
      (*model)->FlopsDims(), {.mean_tokens = T, .mean_tokens_sq = T * T, .mean_answer_tokens = 1});
  if (!flops.ok()) {
    std::fprintf(stderr, "forward-bench: %s\n", flops.status().ToString().c_str());
    return 1;
  }
  const double fwd_rate = batch * flops->Total() / fwd_s;
  std::printf("threads                 %d\n", threads);
  std::printf("fp32 GEMM 1024^3        %.2f GFLOP/s\n", gemm_rate / 1e9);
  std::printf(
      "dense forward           %.2f GFLOP/s (%.3f GFLOP/sample, T=%.0f, batch %d, "
      "%.2f ms/batch)\n",
      fwd_rate / 1e9, flops->Total() / 1e9, T, batch, fwd_s * 1e3);
  const double vision_flops = batch * (flops->VisionTotal() + flops->projector);
  std::printf("  vision + projector    %.2f GFLOP/s (%.2f ms/batch)\n",
              vision_flops / vision_s / 1e9, vision_s * 1e3);
  std::printf("  decoder + lm_head     %.2f GFLOP/s (%.2f ms/batch)\n",
              (batch * flops->Total() - vision_flops) / decoder_s / 1e9, decoder_s * 1e3);
  std::printf("forward / GEMM ratio    %.3f\n", fwd_rate / gemm_rate);
  return 0;
}

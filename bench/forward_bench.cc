// forward-bench: the dense LLaVA forward rate on a small random config as a fraction of this
// machine's fp32 GEMM rate, both measured in the same run with the same thread count
// (docs/architecture.md §10: benchmarks print ratios; nothing asserts a wall-clock time).
//
// Usage: forward-bench [--threads=N] [--seconds=S]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

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
#include "common/malloc_tuning.h"
#include "worker/model/config.h"
#include "worker/model/llava_model.h"
#include "worker/model/random_llava.h"

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
  prunesvc::model::testing::RandomLlavaSize size;
  size.vision_hidden = 128;
  size.vision_mlp = 512;
  size.vision_heads = 4;
  size.vision_layers = 4;
  size.patch = 8;
  size.image = 64;  // 64 patches
  size.hidden = 256;
  size.mlp = 688;
  size.heads = 8;
  size.kv_heads = 8;
  size.head_dim = 32;
  size.layers = 6;
  size.vocab = 1024;
  return prunesvc::model::testing::RandomLlavaConfig(size);
}

}  // namespace

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
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
  // Debian's libtorch starts with one intra-op thread; set it explicitly (docs/architecture.md §3).
  at::set_num_threads(threads);
  at::manual_seed(0);
  at::NoGradGuard no_grad;

  const int64_t n = 1024;
  at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  const double gemm_s = TimeIt([&] { at::mm(a, b); }, seconds);
  const double gemm_rate = 2.0 * n * n * n / gemm_s;

  const LlavaConfig config = SmallConfig();
  auto model = LlavaModel::CreateFromTensors(
      config, prunesvc::model::testing::RandomLlavaTensors(config, /*seed=*/0));
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

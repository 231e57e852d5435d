// eval-bench: the cost of a search-time candidate evaluation (docs/architecture.md §5, issue 5)
// relative to a plain dense forward over the same samples, on a random LLaVA config, same process,
// same thread count (docs/architecture.md §10: benchmarks print ratios; nothing asserts a
// wall-clock time).
//
// A candidate evaluation = apply the policy's masks (incremental in-place weight edits from the
// mask bank) + the batched scoring forward over the samples (vision features cached) + Ω. Its
// floor is 1.0: unstructured zeros do not make the dense GEMMs faster, so the forward costs what
// the dense one costs and everything else is overhead. The bench prints where the time goes.
//
// Two policy streams are timed: "random" (every policy drawn uniformly from R per unit, so nearly
// every linear changes — the worst case) and "mutation" (each policy = the previous one with 20%
// of the units redrawn — what a search generation looks like after crossover + mutation).
//
// Usage: eval-bench [--threads=N] [--samples=N] [--seconds=S] [--method=WANDA|MAGNITUDE]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/malloc_tuning.h"
#include "worker/model/scoring.h"
#include "worker/prune/evaluator.h"
#include "worker/prune/random_llava.h"

namespace {

using prunesvc::prune::CandidateEvaluator;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Runs `f` until `seconds` have passed (at least `min_calls` times) after one warm-up.
double TimeIt(const std::function<bool()>& f, double seconds, int min_calls, bool* ok) {
  *ok = *ok && f();
  const auto start = Clock::now();
  int n = 0;
  do {
    *ok = *ok && f();
    ++n;
  } while (Since(start) < seconds || n < min_calls);
  return Since(start) / n;
}

}  // namespace

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  int threads = int(std::thread::hardware_concurrency());
  int num_samples = 64;
  double seconds = 3.0;
  std::string method_name = "WANDA";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--samples=", 10) == 0) {
      num_samples = std::atoi(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--seconds=", 10) == 0) {
      seconds = std::atof(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--method=", 9) == 0) {
      method_name = argv[i] + 9;
    } else {
      std::fprintf(stderr,
                   "usage: eval-bench [--threads=N] [--samples=N] [--seconds=S] "
                   "[--method=WANDA|MAGNITUDE]\n");
      return 2;
    }
  }
  auto method = prunesvc::prune::ParseMaskMethod(method_name);
  if (!method.ok() || num_samples < 1) {
    std::fprintf(stderr, "eval-bench: bad --method or --samples\n");
    return 2;
  }
  if (threads < 1) threads = 1;
  at::set_num_threads(threads);

  // forward-bench's decoder (6 layers, width 256, MLP 688), 64 image tokens per sample.
  prunesvc::prune::testing::RandomLlavaSize size;
  size.vision_hidden = 64, size.vision_mlp = 128, size.vision_heads = 2, size.vision_layers = 2;
  size.patch = 8, size.image = 64;
  size.hidden = 256, size.mlp = 688, size.heads = 8, size.kv_heads = 8, size.head_dim = 32;
  size.layers = 6, size.vocab = 1024;
  const auto config = prunesvc::prune::testing::RandomLlavaConfig(size);
  auto model = prunesvc::model::LlavaModel::CreateFromTensors(
      config, prunesvc::prune::testing::RandomLlavaTensors(config, 1));
  if (!model.ok()) {
    std::fprintf(stderr, "eval-bench: %s\n", model.status().ToString().c_str());
    return 1;
  }
  auto samples = prunesvc::prune::testing::RandomEvalSamples(config, num_samples, 2, 30);
  const int batch = num_samples < 16 ? num_samples : 16;
  const auto setup_start = Clock::now();
  auto ev = CandidateEvaluator::Create(model->get(), std::move(samples),
                                       {.method = *method, .batch_size = batch});
  if (!ev.ok()) {
    std::fprintf(stderr, "eval-bench: %s\n", ev.status().ToString().c_str());
    return 1;
  }
  const double setup_s = Since(setup_start);
  CandidateEvaluator& e = **ev;
  const int n = e.num_linears();
  double tokens = 0;
  for (const auto& s : e.scoring_samples()) tokens += (*model)->ExpandedLength(s.token_ids) - 1;

  bool ok = true;
  // Dense forward over the same samples with the same cached features and batch size.
  if (!e.RestoreDense().ok()) return 1;
  const double dense_s = TimeIt(
      [&] {
        return prunesvc::model::ScoreSamples(**model, e.scoring_samples(), {.batch_size = batch})
            .ok();
      },
      seconds, 3, &ok);

  const std::vector<double> choices = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8};
  std::mt19937_64 rng(7);
  std::vector<double> policy(n, 0.0);
  auto run_stream = [&](bool mutation_only, double* apply_s, double* forward_s, double* writes) {
    double apply = 0, forward = 0, w = 0;
    int calls = 0;
    const double total = TimeIt(
        [&] {
          for (int u = 0; u < config.text.num_hidden_layers; ++u) {
            if (mutation_only && rng() % 5 != 0) continue;
            const double r = choices[rng() % choices.size()];
            for (int k = 0; k < 7; ++k) policy[u * 7 + k] = r;
          }
          auto r = e.Evaluate(policy);
          if (calls++ > 0) {  // the first call is TimeIt's warm-up, not in its average
            apply += e.last_timing().apply_seconds;
            forward += e.last_timing().forward_seconds;
            w += double(e.last_timing().weights_written);
          }
          return r.ok();
        },
        seconds, 5, &ok);
    *apply_s = apply / (calls - 1);
    *forward_s = forward / (calls - 1);
    *writes = w / (calls - 1);
    return total;
  };
  double rand_apply, rand_fwd, rand_writes, mut_apply, mut_fwd, mut_writes;
  const double rand_s = run_stream(false, &rand_apply, &rand_fwd, &rand_writes);
  const double mut_s = run_stream(true, &mut_apply, &mut_fwd, &mut_writes);
  if (!ok) {
    std::fprintf(stderr, "eval-bench: an evaluation failed\n");
    return 1;
  }
  double params = 0;
  for (int i = 0; i < n; ++i) params += double(e.dense_weight(i).numel());
  std::printf("threads                      %d\n", threads);
  std::printf(
      "model                        %d decoder layers, width %d, MLP %d (%.2f M decoder "
      "linear weights)\n",
      size.layers, size.hidden, size.mlp, params / 1e6);
  std::printf("samples                      %d (%.0f token rows, batch %d), mask method %s\n",
              num_samples, tokens, batch, method_name.c_str());
  std::printf("setup (vision, calib, bank)  %.1f ms, bank %.2f MB\n", setup_s * 1e3,
              e.bank().MemoryBytes() / 1e6);
  std::printf("dense forward                %.2f ms\n", dense_s * 1e3);
  for (int k = 0; k < 2; ++k) {
    const bool mut = k == 1;
    const double t = mut ? mut_s : rand_s, a = mut ? mut_apply : rand_apply,
                 f = mut ? mut_fwd : rand_fwd, w = mut ? mut_writes : rand_writes;
    std::printf(
        "candidate eval (%s)     %.2f ms = apply %.3f ms (%.0f weights written, "
        "%.0f%% of the decoder) + forward %.2f ms + other %.3f ms\n",
        mut ? "mutation" : "random  ", t * 1e3, a * 1e3, w, 100 * w / params, f * 1e3,
        (t - a - f) * 1e3);
    std::printf("  eval / dense forward       %.3f   (floor 1.0; mask application alone %.3f)\n",
                t / dense_s, a / dense_s);
  }
  return 0;
}

// Test and benchmark helper: random search samples built in memory for the pruning engine's tests
// and eval-bench; the random models themselves come from worker/model/random_llava.h.
// Header-only; thread-compatible.
#ifndef PRUNESVC_WORKER_PRUNE_RANDOM_LLAVA_H_
#define PRUNESVC_WORKER_PRUNE_RANDOM_LLAVA_H_

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/model/config.h"
#include "worker/model/random_llava.h"
#include "worker/prune/evaluator.h"

namespace prunesvc::prune::testing {

using model::testing::RandomLlavaConfig;
using model::testing::RandomLlavaSize;
using model::testing::RandomLlavaTensors;

// `n` samples with one image each: BOS, 1–6 random tokens, <image>, 1–10 random tokens, then a
// multiple-choice letter answer (4 options, ids 10..13) for two thirds of them and a 1–4 token
// open answer for the rest. Token ids avoid the image token.
inline std::vector<EvalSample> RandomEvalSamples(const model::LlavaConfig& c, int n, uint64_t seed,
                                                 int max_prompt = 10) {
  std::mt19937_64 rng(seed);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x9e3779b97f4a7c15ULL);
  const int image_id = c.image_token_index;
  auto rand_tok = [&] { return 14 + int(rng() % uint64_t(image_id - 14)); };
  const std::vector<int> letters = {10, 11, 12, 13};
  std::vector<EvalSample> out;
  for (int i = 0; i < n; ++i) {
    EvalSample e;
    model::ScoringSample& s = e.scoring;
    s.token_ids = {1};
    const int before = 1 + int(rng() % 6), after = 1 + int(rng() % uint64_t(max_prompt));
    for (int k = 0; k < before; ++k) s.token_ids.push_back(rand_tok());
    s.token_ids.push_back(image_id);
    for (int k = 0; k < after; ++k) s.token_ids.push_back(rand_tok());
    s.answer_begin = int(s.token_ids.size());
    if (i % 3 != 2) {
      s.option_token_ids = letters;
      s.correct_option = int(rng() % 4);
      s.token_ids.push_back(letters[s.correct_option]);
    } else {
      const int len = 1 + int(rng() % 4);
      for (int k = 0; k < len; ++k) s.token_ids.push_back(rand_tok());
    }
    s.answer_end = int(s.token_ids.size());
    e.pixels = at::randn({1, 3, c.vision.image_size, c.vision.image_size}, gen,
                         at::TensorOptions(at::kFloat));
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace prunesvc::prune::testing

#endif  // PRUNESVC_WORKER_PRUNE_RANDOM_LLAVA_H_

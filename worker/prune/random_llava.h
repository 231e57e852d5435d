// Test and benchmark helpers: random search samples and whole random problems (model + samples)
// built in memory for the pruning engine's tests and eval-bench, plus small shared fixtures
// (seeded generators, calibration statistics from given norms); the random models themselves come
// from worker/model/random_llava.h.
// Header-only; thread-compatible.
#ifndef PRUNESVC_WORKER_PRUNE_RANDOM_LLAVA_H_
#define PRUNESVC_WORKER_PRUNE_RANDOM_LLAVA_H_

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/model/config.h"
#include "worker/model/llava_model.h"
#include "worker/model/random_llava.h"
#include "worker/prune/calibration.h"
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

// The samples as the scorer takes them: each with its image features from `m`'s vision tower and
// projector (on `m`'s device).
inline std::vector<model::ScoringSample> WithFeatures(const model::LlavaModel& m,
                                                      const std::vector<EvalSample>& samples) {
  std::vector<model::ScoringSample> out;
  for (const EvalSample& e : samples) {
    model::ScoringSample s = e.scoring;
    s.image_features = *m.ComputeImageFeatures(e.pixels);
    out.push_back(std::move(s));
  }
  return out;
}

// A seeded CPU generator for at::randn & co.
inline at::Generator SeededGenerator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

// Calibration statistics holding only the given squared column norms (float64 [in] each), one
// linear per entry — what MAGNITUDE/WANDA masks read.
inline CalibrationStats StatsFromNorms(const std::vector<at::Tensor>& col_sq_norms) {
  CalibrationStats stats;
  for (const at::Tensor& n : col_sq_norms) {
    auto s = std::make_shared<LinearInputStats>();
    s->in_features = n.size(0);
    s->col_sq_norms = n;
    stats.linears.push_back(s);
  }
  return stats;
}

// A random model of `size` (weights from `seed`) and `num_samples` random search samples (seed +
// 100), as the evaluator tests use them.
struct RandomProblem {
  model::LlavaConfig config;
  std::map<std::string, at::Tensor> tensors;
  std::unique_ptr<model::LlavaModel> model;
  std::vector<EvalSample> samples;
};
inline absl::StatusOr<RandomProblem> MakeRandomProblem(const RandomLlavaSize& size, int num_samples,
                                                       uint64_t seed) {
  RandomProblem p;
  p.config = RandomLlavaConfig(size);
  p.tensors = RandomLlavaTensors(p.config, seed);
  auto m = model::LlavaModel::CreateFromTensors(p.config, p.tensors);
  if (!m.ok()) return m.status();
  p.model = std::move(*m);
  p.samples = RandomEvalSamples(p.config, num_samples, seed + 100);
  return p;
}

}  // namespace prunesvc::prune::testing

#endif  // PRUNESVC_WORKER_PRUNE_RANDOM_LLAVA_H_

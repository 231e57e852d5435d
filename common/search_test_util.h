// Helpers shared by the search_test sources (prng_test, policy_test, evolution_test): running
// the independent Python reference and building small synthetic models for the FLOPs model.
#ifndef PRUNESVC_COMMON_SEARCH_TEST_UTIL_H_
#define PRUNESVC_COMMON_SEARCH_TEST_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/flops.h"

namespace prunesvc::testing_util {

inline std::string EnvOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

// Runs common/search_test_ref.py with `arg` and returns its stdout split into lines; an empty
// vector when the script failed (the caller's EXPECT then fails with the mismatch).
inline std::vector<std::string> RunReference(const std::string& arg) {
  const std::string cmd = absl::StrCat(EnvOr("PRUNESVC_PYTHON", PRUNESVC_PYTHON_EXE), " ",
                                       EnvOr("PRUNESVC_SOURCE", PRUNESVC_SOURCE_DIR),
                                       "/common/search_test_ref.py ", arg);
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return {};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  if (pclose(pipe) != 0) return {};
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  return lines;
}

// A small LLaMA-like decoder whose layers differ in width (so units differ in FLOPs), with a
// vision tower, projector and lm_head that pruning cannot touch.
inline FlopsModelDims SyntheticDims(int layers) {
  FlopsModelDims d;
  d.vision = {
      .width = 32, .mlp_width = 64, .layers_run = 2, .tokens = 17, .patch_size = 4, .channels = 3};
  d.images_per_sample = 1;
  d.image_tokens = 16;
  d.projector_in = 32;
  d.projector_hidden = 64;
  d.projector_out = 64;
  for (int l = 0; l < layers; ++l) {
    const int q = 64 - 16 * (l % 3);  // 64, 48, 32, …
    d.decoder.push_back(
        {.hidden = 64, .q_width = q, .kv_width = q / 2, .mlp_width = 128 + 32 * (l % 4)});
  }
  d.vocab = 100;
  return d;
}

inline TokenStats SyntheticStats() {
  return {.mean_tokens = 40, .mean_tokens_sq = 1700, .mean_answer_tokens = 2};
}

}  // namespace prunesvc::testing_util

#endif  // PRUNESVC_COMMON_SEARCH_TEST_UTIL_H_

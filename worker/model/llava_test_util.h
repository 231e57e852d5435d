// Test-only helpers shared by llava_model_test.cc and scoring_test.cc: runs the independent
// Python reference (testdata/llava_reference.py) once into a temp dir and loads its cases.
#ifndef PRUNESVC_WORKER_MODEL_LLAVA_TEST_UTIL_H_
#define PRUNESVC_WORKER_MODEL_LLAVA_TEST_UTIL_H_

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/model/checkpoint.h"
#include "worker/model/config.h"
#include "worker/model/llava_model.h"

namespace prunesvc::model::testing {

inline std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

// Directory with the reference cases; generated once per test binary.
inline const std::string& ReferenceDir() {
  static const std::string* dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "llava_ref_XXXXXX").string();
    char* made = mkdtemp(tmpl.data());
    if (made == nullptr) return new std::string();
#ifdef PRUNESVC_SOURCE_DIR
    const std::string source = Env("PRUNESVC_SOURCE", PRUNESVC_SOURCE_DIR);
#else
    const std::string source = Env("PRUNESVC_SOURCE", ".");
#endif
    const std::string script = source + "/worker/model/testdata/llava_reference.py";
    const std::string cmd =
        Env("PRUNESVC_PYTHON", "/usr/bin/python3") + " " + script + " " + tmpl + " >&2";
    if (std::system(cmd.c_str()) != 0) return new std::string();
    return new std::string(tmpl);
  }();
  return *dir;
}

struct ReferenceSample {
  std::vector<int> ids;
  at::Tensor pixels;  // [num_images, 3, S, S]
};

struct ReferenceCase {
  std::string dir;
  LlavaConfig config;
  std::unique_ptr<LlavaModel> model;
  std::vector<ReferenceSample> samples;
  at::Tensor ref_logits;  // [num_samples, 2, vocab]: positions len-2 and len-1
};

inline std::vector<float> ReadFloats(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

// Loads a case through the production path: LoadLlavaConfig + LoadCheckpoint + Create.
inline void LoadCase(const std::string& name, ReferenceCase* c) {
  ASSERT_FALSE(ReferenceDir().empty()) << "the Python reference script failed";
  c->dir = ReferenceDir() + "/" + name;
  auto config = LoadLlavaConfig(c->dir);
  ASSERT_TRUE(config.ok()) << config.status();
  c->config = *config;
  auto ckpt = LoadCheckpoint(c->dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto model = LlavaModel::Create(*config, *ckpt);
  ASSERT_TRUE(model.ok()) << model.status();
  c->model = std::move(*model);
  std::ifstream in(c->dir + "/inputs.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  const int64_t S = j["image_size"].get<int64_t>();
  const int64_t V = j["vocab"].get<int64_t>();
  std::vector<float> pixels = ReadFloats(c->dir + "/pixels.bin");
  size_t off = 0;
  for (const auto& s : j["samples"]) {
    ReferenceSample r;
    r.ids = s["ids"].get<std::vector<int>>();
    const int64_t n = s["num_images"].get<int64_t>();
    const size_t count = n * 3 * S * S;
    ASSERT_LE(off + count, pixels.size());
    r.pixels = at::from_blob(pixels.data() + off, {n, 3, S, S}, at::kFloat).clone();
    off += count;
    c->samples.push_back(std::move(r));
  }
  ASSERT_EQ(off, pixels.size());
  std::vector<float> logits = ReadFloats(c->dir + "/ref_logits.bin");
  const int64_t N = c->samples.size();
  ASSERT_EQ(int64_t(logits.size()), N * 2 * V);
  c->ref_logits = at::from_blob(logits.data(), {N, 2, V}, at::kFloat).clone();
}

inline const std::vector<std::string>& CaseNames() {
  static const std::vector<std::string> names = {"old_fp32_mha", "new_fp16_gqa", "tied_bf16_full"};
  return names;
}

}  // namespace prunesvc::model::testing

#endif  // PRUNESVC_WORKER_MODEL_LLAVA_TEST_UTIL_H_

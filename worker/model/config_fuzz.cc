// libFuzzer target for config.json and samples.jsonl parsing (build with -DPRUNESVC_FUZZ=ON and
// clang). Any input must yield OK or an error — never a crash, hang, or out-of-bounds read
// (ASan/UBSan). The first byte picks the parser: even → ParseLlavaConfig, odd →
// ParseSamplesJsonl (at most 64 samples, so each run stays fast), plus NormalizeRelativePath on
// every sample's image path it accepted.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "worker/model/config.h"
#include "worker/model/samples.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace prunesvc::model;
  if (size < 1) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1) {
    auto samples = ParseSamplesJsonl(rest, "fuzz.jsonl", 64);
    if (samples.ok()) {
      for (const Sample& s : *samples) (void)NormalizeRelativePath(s.image_path);
    }
    return 0;
  }
  auto config = ParseLlavaConfig(rest, "fuzz.json");
  if (config.ok()) {
    // Exercise the derived accessors on whatever was accepted.
    for (int l = 0; l < config->text.num_hidden_layers && l < 256; ++l) {
      (void)config->text.IntermediateSize(l);
      (void)config->text.NumHeads(l);
    }
    (void)config->vision.num_patches();
  }
  return 0;
}

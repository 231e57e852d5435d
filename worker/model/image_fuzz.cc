// libFuzzer target for image decoding and preprocessor_config.json parsing (build with
// -DPRUNESVC_FUZZ=ON and clang). Any input must yield OK or an error — never a crash, hang or
// out-of-bounds read (ASan/UBSan). The first byte picks the parser.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "worker/model/image.h"
#include "worker/model/preprocess.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace prunesvc::model;
  if (size < 1) return 0;
  const absl::Span<const uint8_t> rest(data + 1, size - 1);
  if (data[0] & 1) {
    auto cfg = ParsePreprocessorConfig(
        std::string_view(reinterpret_cast<const char*>(rest.data()), rest.size()), "fuzz");
    (void)cfg;
    return 0;
  }
  // Small limits keep each run fast; the header check is what is being exercised.
  DecodeOptions options;
  options.max_width = 512;
  options.max_height = 512;
  auto image = DecodeImage(rest, "fuzz", options);
  if (!image.ok()) return 0;
  ClipPreprocessConfig cfg;
  cfg.shortest_edge = 24;
  cfg.crop_height = 20;
  cfg.crop_width = 28;
  auto pv = PreprocessImage(*image, cfg);
  (void)pv;
  return 0;
}

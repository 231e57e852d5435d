// libFuzzer target for the safetensors parser (build with -DPRUNESVC_FUZZ=ON and clang).
// Any input must yield OK or an error — never a crash, hang or out-of-bounds read (ASan/UBSan).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "worker/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using prunesvc::model::ParseSafetensors;
  auto header = ParseSafetensors(absl::Span<const uint8_t>(data, size), "fuzz");
  if (!header.ok()) return 0;
  // Every validated span must be readable and convertible.
  for (const auto& t : header->tensors) {
    const uint8_t* bytes = data + header->data_offset + t.begin;
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < t.num_bytes(); ++i) sink = sink ^ bytes[i];
    if (t.dtype != prunesvc::model::DType::kOther && t.num_elements() < (1u << 20)) {
      std::vector<float> out(t.num_elements());
      (void)prunesvc::model::ConvertToFloat32(
          t.dtype, absl::Span<const uint8_t>(bytes, t.num_bytes()), absl::MakeSpan(out));
    }
  }
  return 0;
}

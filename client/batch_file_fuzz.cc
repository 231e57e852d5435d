// libFuzzer target: `prunectl batch` files (client/batch_file.cc) on arbitrary bytes: parsed, and
// when they parse, expanded (every job validated) and given request ids. Any input must give a
// result or an INVALID_ARGUMENT, never a crash (yaml-cpp's node lifetimes included).
#include <cstddef>
#include <cstdint>
#include <string>

#include "client/batch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto file = prunesvc::client::ParseBatchFile(text, "fuzz.yaml");
  if (!file.ok()) {
    if (!absl::IsInvalidArgument(file.status())) __builtin_trap();
    return 0;
  }
  if (file->grid.size() > 4) return 0;  // keep the product small
  size_t product = 1;
  for (const auto& [field, values] : file->grid) product *= values.size();
  if (product > 64) return 0;
  auto jobs = prunesvc::client::ExpandBatch(*file, "sha256:" + std::string(64, 'a'), "");
  if (!jobs.ok()) {
    if (!absl::IsInvalidArgument(jobs.status())) __builtin_trap();
    return 0;
  }
  for (const auto& j : *jobs) {
    if (prunesvc::client::BatchRequestId(file->name, j.request.spec).size() != 38) __builtin_trap();
  }
  return 0;
}

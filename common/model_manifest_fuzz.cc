// libFuzzer target: a stored model's manifest (what a worker parses after fetching it, and what
// the scheduler re-reads for every job on a blob:// model). Must never crash; a manifest it
// accepts must serialize and parse back to the same value.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/model_manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<prunesvc::ModelManifest> m = prunesvc::ParseModelManifest(text, "fuzz");
  if (m.ok()) {
    const std::string again = prunesvc::SerializeModelManifest(*m);
    absl::StatusOr<prunesvc::ModelManifest> back = prunesvc::ParseModelManifest(again, "again");
    if (!back.ok() || !(*back == *m)) __builtin_trap();
  }
  (void)prunesvc::BlobModelId(text, "model_uri");
  if (!text.empty()) (void)prunesvc::ValidateModelPath(text);
  return 0;
}

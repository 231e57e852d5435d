// libFuzzer target for prunectl's job-file parser: the first byte picks JSON (even) or YAML
// (odd), the rest is the file. Any input must return a Status, never crash or throw.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "client/job_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto format = (data[0] & 1) ? prunesvc::client::JobFileFormat::kYaml
                                    : prunesvc::client::JobFileFormat::kJson;
  absl::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  prunesvc::client::JobRequest request;
  (void)prunesvc::client::ParseJobFile(text, format, "fuzz", request);
  (void)prunesvc::client::ValidateJobRequest(request);
  return 0;
}

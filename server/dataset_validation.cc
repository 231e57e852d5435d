#include "server/dataset_validation.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/image_header.h"

namespace prunesvc::server {

absl::StatusOr<model::SampleSet> ValidateDatasetTar(const std::string& path,
                                                    const std::string& display_name,
                                                    const model::SampleLimits& limits) {
  absl::StatusOr<model::SampleSet> set = model::LoadSampleSet(path, limits);
  if (!set.ok()) {
    std::string msg = absl::StrReplaceAll(set.status().message(), {{path, display_name}});
    if (absl::IsResourceExhausted(set.status())) return absl::ResourceExhaustedError(msg);
    return absl::InvalidArgumentError(absl::StrCat("dataset: ", msg));
  }
  for (const model::Sample& s : set->samples) {
    absl::string_view bytes(reinterpret_cast<const char*>(s.image_bytes.data()),
                            s.image_bytes.size());
    absl::Status h = CheckImageHeader(bytes);
    if (!h.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("dataset: ", display_name,
                                                     ":samples.jsonl:", s.line, ": image \"",
                                                     s.image_path, "\": ", h.message()));
    }
  }
  return set;
}

}  // namespace prunesvc::server

// What the scheduler checks of an uploaded dataset before storing it (docs/operations.md): the
// torch-free sample-set loader over the spooled tar (entries, samples.jsonl lines, limits), then
// every image's header (server/image_header.h). Errors name the line or entry with the file
// shown as `display_name` ("upload:samples.jsonl:3: …"): INVALID_ARGUMENT for bad input,
// RESOURCE_EXHAUSTED for a limit.
//
// Pure function of the file's bytes; thread-safe. The fuzz target dataset_upload_fuzz drives it.
#ifndef PRUNESVC_SERVER_DATASET_VALIDATION_H_
#define PRUNESVC_SERVER_DATASET_VALIDATION_H_

#include <string>

#include "absl/status/statusor.h"
#include "worker/model/samples.h"

namespace prunesvc::server {

absl::StatusOr<model::SampleSet> ValidateDatasetTar(const std::string& path,
                                                    const std::string& display_name,
                                                    const model::SampleLimits& limits = {});

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_DATASET_VALIDATION_H_

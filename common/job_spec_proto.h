// prune.v1.JobSpec ⇄ prunesvc::JobSpec (common/job_spec.h): the API's optional fields become the
// documented defaults (knowing the granularity), every present-but-invalid field is
// INVALID_ARGUMENT naming the proto field, and ToProto writes every field explicitly — what the
// scheduler stores ("defaults filled in") and what it sends to workers.
//
// References: model_uri must be `file:///…` (an absolute path; the allowed roots are checked
// where the path is resolved, by the scheduler and again by the worker); dataset ids are
// "sha256:" + 64 lowercase hex digits.
//
// Pure functions; thread-safe.
#ifndef PRUNESVC_COMMON_JOB_SPEC_PROTO_H_
#define PRUNESVC_COMMON_JOB_SPEC_PROTO_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/job_spec.h"
#include "prune/v1/job.pb.h"
#include "prune/v1/worker.pb.h"

namespace prunesvc {

// Converts and validates (JobSpec::Validate plus the references).
absl::StatusOr<JobSpec> JobSpecFromProto(const ::prune::v1::JobSpec& proto);
// Every field set (proto3 optionals present), so a stored spec reads back identically.
::prune::v1::JobSpec JobSpecToProto(const JobSpec& spec);

// The job's policy space from a worker's PrepareResponse (its FLOPs dims, token statistics and
// head layout): what the scheduler searches over, equal to the worker's own (BuildPolicySpace).
absl::StatusOr<search::PolicySpace> PolicySpaceFromPrepare(const JobSpec& spec,
                                                           const ::prune::v1::PrepareResponse& r);

// "sha256:" + 64 lowercase hex digits.
bool IsContentId(absl::string_view id);
// `file:///abs/path` → "/abs/path"; other schemes, relative paths and empty paths are
// INVALID_ARGUMENT naming `field`.
absl::StatusOr<std::string> FileUriPath(absl::string_view uri, absl::string_view field);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_JOB_SPEC_PROTO_H_

// prunectl's job description: a JSON or YAML job file and/or `submit` flags turned into a
// ::prune::v1::JobSpec that carries only the fields the user set (proto3 optional presence), so
// the scheduler fills the documented defaults. Keys are JobSpec's proto field names (snake_case,
// or the proto JSON lowerCamel form); enum values are their names (case-insensitive; nm_pattern
// also takes "2:4" / "4:8"). Errors name the key and its line (file) or the flag (command line),
// before any call is made.
//
// Pure functions; thread-safe.
#ifndef PRUNESVC_CLIENT_JOB_FILE_H_
#define PRUNESVC_CLIENT_JOB_FILE_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "prune/v1/job.pb.h"

namespace prunesvc::client {

enum class JobFileFormat { kJson, kYaml };

// Where each set field came from ("--population", "job.yaml:4"), keyed by proto field name;
// used to name the origin in validation errors.
using FieldOrigins = std::map<std::string, std::string>;

// A job description under construction: the sparse spec and the origin of each field.
struct JobRequest {
  ::prune::v1::JobSpec spec;
  FieldOrigins origins;
};

// Guesses the format from the extension (.json / .yaml / .yml), else from the first non-blank
// character ('{' = JSON).
JobFileFormat DetectJobFileFormat(absl::string_view path, absl::string_view text);

// Parses a job file's text into `request` (fields it sets override those already there).
// `source` names the file in errors. Unknown keys, wrong types, duplicate keys and syntax errors
// are INVALID_ARGUMENT naming the key and line.
absl::Status ParseJobFile(absl::string_view text, JobFileFormat format, absl::string_view source,
                          JobRequest& request);

// Sets proto field `field` from its text form (scalars; ratio_choices as a comma list; labels as
// "k=v"; eta as "auto" or a number; model_uri as a URI or a plain path made file:// absolute).
// `origin` names the source in errors. Overrides what is there (labels: per key).
absl::Status SetFieldFromText(absl::string_view field, absl::string_view text,
                              absl::string_view origin, JobRequest& request);

// `submit`'s flags (hyphenated, without "--") and the proto field each sets.
const std::vector<std::pair<std::string, std::string>>& SubmitFlagFields();

// Applies the flags the user set, in order: (flag name without "--", value). Unknown flag names
// are INVALID_ARGUMENT.
absl::Status ApplySubmitFlags(const std::vector<std::pair<std::string, std::string>>& flags,
                              JobRequest& request);

// "k=v" → (k, v); an empty key or a missing '=' is INVALID_ARGUMENT naming `origin`.
absl::StatusOr<std::pair<std::string, std::string>> ParseLabel(absl::string_view text,
                                                               absl::string_view origin);

// A plain path → "file://" + its absolute, lexically normal form; a URI ("scheme://…") as is.
std::string ModelUriFromArg(absl::string_view arg);

// Validates with the torch-free JobSpec (ranges, combinations, references) without changing the
// sparse spec; the error names the flag or file line the bad field came from.
absl::Status ValidateJobRequest(const JobRequest& request);

}  // namespace prunesvc::client

#endif  // PRUNESVC_CLIENT_JOB_FILE_H_

// `prunectl batch FILE`: many pruning jobs from one YAML file (issue 18). The file names the
// samples, the fields every job shares, and a grid whose axes are multiplied out:
//
//   name: tiny-sweep                 # prefixes request ids and output names (default: file stem)
//   dataset: /data/shapes-search     # a directory or tar (uploaded), or a sha256: dataset id
//   eval_dataset: /data/shapes-eval  # optional, the same forms
//   out: results/tiny-sweep          # artifacts and summary (default: batch-NAME)
//   spec: {population: 8, generations: 4}   # JobSpec fields for every job
//   grid:                            # each axis a JobSpec field and its values, in this order
//     model_uri: [models/tiny-llava-shapes]
//     flops_budget: [0.5, 0.7]
//     strategy: [EFFICIENTLLAVA, UNIFORM]
//     granularity: [UNSTRUCTURED]
//     seed: [0, 1]
//
// Every job gets a request id derived from the batch name and its whole spec (datasets by
// content id), so re-running the file submits nothing that exists (SubmitJob deduplicates) and
// fetches nothing already unpacked: an interrupted batch is resumed by running it again.
//
// Pure parsing and expansion are separate from the run (which needs a Client) for tests.
// Thread-compatible.
#ifndef PRUNESVC_CLIENT_BATCH_H_
#define PRUNESVC_CLIENT_BATCH_H_

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/client.h"
#include "client/job_file.h"

namespace prunesvc::client {

struct BatchFile {
  std::string name;
  std::string dataset, eval_dataset;  // as written: a path or a dataset id
  std::string out;
  JobRequest shared;  // `spec:` fields (with their origins)
  // Axis field name → its values as text (each value's origin "FILE:LINE").
  struct Value {
    std::string text, origin;
  };
  std::vector<std::pair<std::string, std::vector<Value>>> grid;
};

// Parses the batch YAML; errors name FILE:LINE and the key.
absl::StatusOr<BatchFile> ParseBatchFile(absl::string_view text, absl::string_view source);

struct BatchJob {
  std::string name;  // e.g. "tiny-llava-shapes.0.5.UNIFORM": the axis values, file-safe
  JobRequest request;
};

// The grid multiplied out in file order (the last axis varies fastest), each job the shared
// fields plus its axis values, datasets set to the given ids. Errors name the value's line.
absl::StatusOr<std::vector<BatchJob>> ExpandBatch(const BatchFile& file,
                                                  const std::string& dataset_id,
                                                  const std::string& eval_dataset_id);

// "batch-" + 32 hex digits of sha256(batch name, the spec's deterministic serialization).
std::string BatchRequestId(const std::string& batch_name, const ::prune::v1::JobSpec& spec);

struct BatchOptions {
  bool tty = false;  // live lines (redrawn) instead of one line per change
  absl::Duration poll = absl::Seconds(1);
  FILE* progress = stderr;
};

// Uploads, submits, follows every job to its end, fetches the SUCCEEDED ones into OUT/NAME, and
// writes OUT/summary.csv and OUT/summary.md (also printed on stdout). Returns prunectl's exit
// code: 0 when every job SUCCEEDED, else 1 (a bad file is 2 before anything is sent).
int RunBatch(Client& client, const std::string& path, const BatchOptions& options);

}  // namespace prunesvc::client

#endif  // PRUNESVC_CLIENT_BATCH_H_

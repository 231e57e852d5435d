// prune-local --dry-run (docs/architecture.md §12 "Pre-flight"): validates the spec, loads the
// model and sample sets, checks the budget, times one dense forward and estimates the job's memory
// and time. Writes nothing. An unreachable budget is reported (budget_reachable = false) rather
// than returned as an error, so the range can be printed; everything else fails as the job would.
#ifndef PRUNESVC_WORKER_PRUNE_PREFLIGHT_H_
#define PRUNESVC_WORKER_PRUNE_PREFLIGHT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prunesvc::prune {

struct LocalJobSpec;

struct PreflightReport {
  double min_reachable_ratio = 0;        // F(every unit at the largest ratio) / F(dense)
  double smallest_reachable_budget = 0;  // the same rounded up at 4 decimals: accepted as is
  double dense_flops_per_sample = 0;
  double prunable_fraction = 0;  // decoder linears' share of dense FLOPs
  std::vector<std::string> unit_names;
  std::vector<double> unit_flops_share;
  int num_search_samples = 0;
  int num_eval_samples = 0;           // 0 without an eval set
  int64_t parameters = 0;             // tensors the model runs (what memory estimates use)
  int64_t checkpoint_parameters = 0;  // every tensor of the weight files (report.json's count)
  int64_t planned_evaluations = 0;
  double forward_seconds_per_sample = 0;  // measured: one timed dense forward of a batch
  double estimated_seconds = 0;
  int64_t estimated_peak_bytes = 0;
  bool budget_reachable = false;
  std::string budget_error;  // when unreachable: the error the real run would give
  std::vector<std::string> warnings;
};

absl::StatusOr<PreflightReport> RunPreflight(const LocalJobSpec& spec);
std::string PreflightText(const LocalJobSpec& spec, const PreflightReport& report);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_PREFLIGHT_H_

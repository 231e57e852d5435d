// A whole pruning job in one process (docs/architecture.md §5), as prune-local runs it: a short
// orchestrator of the engine's steps (steps.h) — Prepare; the strategy (the EFFICIENTLLAVA /
// RANDOM_SEARCH evolutionary search driving EvaluatePolicies and TrainProjector in process, or
// UNIFORM / OWL's continuous ratios); the optional audit (audit.h); Finalize, which writes the
// artifact (model/ in HF layout, policy.json, report.json, MANIFEST.sha256, README.md) atomically.
// The worker service runs the same steps for the scheduler, so a distributed run reproduces this
// one's policy sequence, final policy and artifact bytes.
//
// The search options of issue 14 (JobSpec: estimator, eta rule, UNIFORM / OWL seeds, repaired
// uniform seed, mutation step, slack step) reach the search's config; UNIFORM's and OWL's seeds
// are solved here from the prepared job (OWL's outlier ratios are prepared when seeding with OWL).
// With uniform_guard, after the search (and the audit) UNIFORM's policy is scored on the search
// samples under the final projector with the search's fitness and replaces the search's pick when
// it is strictly better (one more evaluation, in search.evaluations). report.json records the
// options in use in "search", η's estimator / rule / CV ρ in "eta" and the guard's outcome in
// "guard" — only when an option is non-default, so default reports keep their bytes.
//
// An existing non-empty OUT is refused before any work; a failed or cancelled job leaves OUT
// absent (or the empty directory it was) — see artifact.h.
//
// STRUCTURED (worker/prune/structured.h): units are layers; a layer's ratio removes whole MLP
// channels and KV groups, scored with `mask_method` from the same nested orders in the search and
// at finalize — there is no final mask method. The artifact's decoder tensors are physically
// smaller and config.json records the per-layer sizes.
//
// Cancellation: ProgressSink::StopRequested() is polled at safe points; the job then returns
// CancelledError.
//
// Thread-safety: RunLocalJob sets libtorch's global intra-op thread count and uses the model
// exclusively; run one job per process at a time. The sink is called from the calling thread.
#ifndef PRUNESVC_WORKER_PRUNE_JOB_H_
#define PRUNESVC_WORKER_PRUNE_JOB_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job_spec.h"
#include "worker/prune/preflight.h"
#include "worker/prune/progress.h"
#include "worker/prune/steps.h"

namespace prunesvc::prune {

// The torch-free JobSpec (common/job_spec.h) plus what only a local run has: paths, the device,
// the audit and batch sizes.
struct LocalJobSpec : JobSpec {
  std::string model_dir;
  std::string samples_path;       // search samples: directory or tar
  std::string eval_samples_path;  // held-out set; "" = none (accuracy is then on the search set)
  std::string out_dir;            // required unless dry-run
  bool force = false;             // replace a non-empty out_dir, once the new artifact is complete
  std::string command_line;       // recorded in report.json's provenance
  // Continue the search saved in ResumeStatePath(out_dir) by an interrupted run with the same
  // flags (see job.cc); without a saved state the run starts from the beginning.
  bool resume = false;
  // Keep ResumeStatePath(out_dir) after a successful run instead of removing it: the finished
  // search's state, every evaluation's per-sample losses included (scripts/paired_pick.py reads
  // it to compare the pick with UNIFORM's policy sample by sample).
  bool keep_search_state = false;
  // A policy.json (an artifact's, or hand-written: {"format": "prunesvc.policy.v1", "units":
  // [{"name", "ratio"}, ...]} in the model's unit order) applied instead of a search: re-prune
  // with another final mask method, or port a policy. Its FLOPs must meet flops_budget.
  std::string policy_path;
  int threads = 0;             // torch intra-op threads; 0 = number of cores
  std::string device = "cpu";  // cpu, cuda or cuda:N (model/device.h)

  // Audit (docs/RESULTS.md's ablations; audit.h). 0 = off. Needs an eval set and a searching
  // strategy.
  int audit = 0;

  int batch_size = 16;            // samples per scoring forward
  int activation_cache_mb = 256;  // activations kept across generations (evaluator.h); 0 = none
  int eval_batch_size = 8;        // the reload check's batch (llava-eval's default, so they agree)
  int latency_repeats = 5;        // timed forwards per model (median reported), after one warm-up
  int latency_batch = 8;          // samples in the timed batch (capped by the search set)

  // JobSpec::Validate (errors name flags) plus the local fields (no files touched).
  absl::Status Validate(bool dry_run) const;
  PrepareOptions ToPrepareOptions() const;
};

using JobResult = FinalizeResult;

// Where a searching run saves its state after every generation: OUT.search-state.json (beside
// OUT; removed when the run succeeds).
inline std::string ResumeStatePath(const std::string& out_dir) {
  return out_dir + ".search-state.json";
}

// Runs the job. Errors as steps.h says, plus FailedPrecondition for an existing non-empty out_dir.
absl::StatusOr<JobResult> RunLocalJob(const LocalJobSpec& spec, ProgressSink* sink = nullptr);

// The human-readable end-of-job summary (dense vs pruned, FLOPs and latency ratios, policy).
std::string JobSummaryTable(const JobResult& result);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_JOB_H_

// A whole pruning job in one process (DESIGN.md §5): load + pre-flight, dense baseline,
// calibration + mask bank, the strategy (EFFICIENTLLAVA search with projector training,
// RANDOM_SEARCH, or UNIFORM continuous ratios), finalize, and the artifact (model/ in HF layout,
// policy.json, report.json, MANIFEST.sha256, README.md). `prune-local` is a thin main over
// RunLocalJob; the worker will call the same phases later, and a distributed run must reproduce
// this one's policy sequence and final policy.
//
// Artifact atomicity: everything is written into `OUT.partial-<pid>/`, renamed to OUT as the very
// last step. An existing non-empty OUT is refused before any work; a failed or cancelled job
// removes its partial directory, so OUT is either absent (or the empty directory it was) or
// complete.
//
// The budget is a hard limit on the ARTIFACT: a ratio r prunes PrunedPerRow(r, in) =
// floor(r·in + 1e-9) whole weights per row (common/flops.h), and the search's FLOPs model counts
// exactly those (KeptFraction), so the policy the search (or UNIFORM's solver) found within the
// budget is written as is, with its per-linear `pruned_per_row` in policy.json. The report's
// flops_ratio is recounted from the written weights' non-zeros; a count above the budget fails
// the job (Internal) instead of writing a report that lies.
//
// STRUCTURED (LocalJobSpec::granularity, worker/prune/structured.h): units are layers; a layer's
// ratio removes whole MLP channels and KV groups, scored with `mask_method` (WANDA or MAGNITUDE
// structured scores) from the same nested orders in the search and at finalize —
// `final_mask_method` does not apply (prune-local refuses it on the command line). The artifact's
// decoder tensors are physically smaller, config.json gets text_config.prunesvc_intermediate_sizes
// / prunesvc_num_heads, flops_ratio is counted from the written shapes (it must equal the
// search's figure to the last bit), and the latency row compares the dense model with the shrunk
// one.
//
// Cancellation: ProgressSink::StopRequested() is polled at safe points (between phases and
// between candidate evaluations); the job then returns CancelledError and removes its partial
// directory. A running forward pass is not interrupted.
//
// Thread-safety: RunLocalJob sets libtorch's global intra-op thread count and uses the model
// exclusively; run one job per process at a time. The sink is called from the calling thread.
#ifndef PRUNESVC_WORKER_PRUNE_JOB_H_
#define PRUNESVC_WORKER_PRUNE_JOB_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/evolution.h"
#include "common/nm_sparsity.h"
#include "common/policy.h"
#include "nlohmann/json.hpp"
#include "worker/prune/mask_bank.h"

namespace prunesvc::prune {

// The final artifact's mask method. SPARSEGPT (worker/prune/sparsegpt.h: OBS mask + weight
// compensation from the calibration Gram matrix) is the documented default (DESIGN.md §5); the
// default is still the search's method until the lead switches it.
enum class FinalMaskMethod { kMagnitude, kWanda, kSparseGpt };
// "MAGNITUDE" | "WANDA" | "SPARSEGPT".
absl::StatusOr<FinalMaskMethod> ParseFinalMaskMethod(std::string_view name);
std::string_view FinalMaskMethodName(FinalMaskMethod method);

// Granularity: search::Granularity (common/policy.h). Under N_M, UNIFORM = every unit N:M, and
// OWL keeps the units with the most outliers dense while the budget allows (common/owl.h); OWL
// (UNSTRUCTURED) shifts per-layer outlier-weighted ratios to the budget.

struct LocalJobSpec {
  std::string model_dir;
  std::string samples_path;       // search samples: directory or tar
  std::string eval_samples_path;  // held-out set; "" = none (accuracy is then on the search set)
  std::string out_dir;            // required unless dry-run
  double flops_budget = 0;        // b ∈ (0, 1]: F(artifact) ≤ b·F(dense)

  search::Strategy strategy = search::Strategy::kEfficientLlava;
  MaskMethod mask_method = MaskMethod::kWanda;                      // search masks
  FinalMaskMethod final_mask_method = FinalMaskMethod::kSparseGpt;  // DESIGN §5 default
  search::UnitKind unit = search::UnitKind::kLayer;
  // STRUCTURED needs unit = layer and ignores final_mask_method (see the header comment).
  search::Granularity granularity = search::Granularity::kUnstructured;
  NmPattern nm;  // N_M only: the pattern (2:4 or 4:8)
  uint64_t seed = 0;
  int generations = 12;
  int population = 32;
  int parents = 8;
  double mutation = 0.2;
  std::vector<double> ratio_choices = search::DefaultRatioChoices();
  std::optional<double> eta;  // nullopt = auto
  int projector_every = 4;    // 0 = never
  int projector_steps = 50;
  double projector_lr = 1e-4;
  double projector_decay = 1e-3;  // μ of μ‖θ − θ₀‖²
  int threads = 0;                // torch intra-op threads; 0 = number of cores
  std::string device = "cpu";     // cpu, cuda or cuda:N (model/device.h)

  // Audit (docs/RESULTS.md's ablations): after the search, up to `audit` of the distinct policies
  // it evaluated (evenly spaced in evaluation order, plus the chosen one) are re-scored under the
  // final projector on the search set and scored on the eval set; report.json gets
  // `audit` {policies: [...], spearman_...}. 0 = off. Needs an eval set and a searching strategy.
  int audit = 0;

  int batch_size = 16;      // samples per scoring forward
  int eval_batch_size = 8;  // the reload check's batch (llava-eval's default, so they agree)
  int latency_repeats = 5;  // timed forwards per model (median reported), after one warm-up
  int latency_batch = 8;    // samples in the timed batch (capped by the search set)

  // Field ranges and supported combinations (no files touched). Errors are InvalidArgument and
  // name the flag.
  absl::Status Validate(bool dry_run) const;
};

enum class JobPhase {
  kLoad,
  kBaseline,
  kCalibration,
  kSearch,
  kFinalize,
  kWrite,
  kVerify,
  kDone,
};
std::string_view JobPhaseName(JobPhase phase);

struct JobProgress {
  JobPhase phase = JobPhase::kLoad;
  int generation = -1;      // last finished generation; -1 before the first
  int generations = 0;      // generations scored in all (spec.generations + 1); 0 without a search
  int64_t evaluations = 0;  // candidate evaluations so far
  int64_t planned_evaluations = 0;  // the search's nominal count (re-scoring excluded)
  std::optional<search::GenerationStats> latest;  // stats of the last finished generation
  double elapsed_seconds = 0;
  double eta_seconds = -1;  // estimated remaining seconds of the search; -1 = unknown
};

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  // A phase started, or a candidate evaluation finished.
  virtual void OnProgress(const JobProgress& progress) {}
  // A generation finished (progress.latest is set).
  virtual void OnGeneration(const JobProgress& progress) {}
  // Something the user should read (also recorded in report.json's `warnings`).
  virtual void OnWarning(const std::string& message) {}
  // Polled at safe points; true → the job stops with CancelledError.
  virtual bool StopRequested() { return false; }
};

struct ModelMetrics {
  std::optional<double> accuracy;  // nullopt when the set has no multiple-choice samples
  double loss = 0;
  int num_samples = 0;
};

struct JobResult {
  std::string out_dir;
  nlohmann::json report;  // what report.json holds
  nlohmann::json policy;  // what policy.json holds
  double flops_ratio = 0;
  std::optional<double> accuracy;  // the reloaded artifact's, on accuracy_set
  std::string accuracy_set;        // "eval" | "search"
  ModelMetrics dense, pruned;      // on accuracy_set
  double dense_latency_ms = 0, pruned_latency_ms = 0;
  std::vector<std::string> unit_names;
  std::vector<double> unit_ratios;
  std::vector<std::string> warnings;
};

// Runs the job. Errors: InvalidArgument / NotFound / ResourceExhausted / DataLoss for bad
// input, FailedPrecondition for an unreachable budget (the message names the smallest reachable
// ratio) or an existing non-empty out_dir, Cancelled when the sink
// asked to stop, Internal for failures of the computation (including a realized FLOPs ratio above
// the budget).
absl::StatusOr<JobResult> RunLocalJob(const LocalJobSpec& spec, ProgressSink* sink = nullptr);

struct PreflightReport {
  double min_reachable_ratio = 0;  // F(every unit at the largest ratio) / F(dense)
  double dense_flops_per_sample = 0;
  double prunable_fraction = 0;  // decoder linears' share of dense FLOPs
  std::vector<std::string> unit_names;
  std::vector<double> unit_flops_share;
  int num_search_samples = 0;
  int num_eval_samples = 0;  // 0 without an eval set
  int64_t parameters = 0;
  int64_t planned_evaluations = 0;
  double forward_seconds_per_sample = 0;  // measured: one timed dense forward of a batch
  double estimated_seconds = 0;
  int64_t estimated_peak_bytes = 0;
  bool budget_reachable = false;
  std::string budget_error;  // when unreachable: the error the real run would give
  std::vector<std::string> warnings;
};

// --dry-run: validates the spec, loads the model and sample sets, checks the budget, times one
// forward and estimates the job's memory and time. Writes nothing. An unreachable budget is
// reported (budget_reachable = false) rather than returned as an error, so the range can be
// printed; everything else fails as RunLocalJob would.
absl::StatusOr<PreflightReport> RunPreflight(const LocalJobSpec& spec);
std::string PreflightText(const LocalJobSpec& spec, const PreflightReport& report);

// The human-readable end-of-job summary (dense vs pruned, FLOPs and latency ratios, policy).
std::string JobSummaryTable(const JobResult& result);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_JOB_H_

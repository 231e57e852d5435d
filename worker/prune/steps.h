// The pruning engine as the steps the worker protocol names (proto/prune/v1/worker.proto,
// docs/architecture.md §5): Prepare, EvaluatePolicies, TrainProjector, Finalize. `prune-local`
// (job.h's RunLocalJob) and the worker service (worker/worker_service.h) are two thin callers of
// these, so a distributed run reproduces prune-local's policy sequence, final policy and artifact
// bytes.
//
//  - PreparedJob::Prepare loads the model and sample sets (pre-flight: supported architecture,
//    every sample and held-out sample valid, FLOPs model, the policy space, the budget), scores
//    the dense model on the search samples, then calibrates and builds the mask bank
//    (CandidateEvaluator), orders the samples hardest first by a probe policy's losses (racing
//    cuts sooner) and, for OWL or seed_with_owl, computes the dense model's outlier ratios. Its
//    Summary is what PrepareResponse carries: everything the torch-free scheduler needs to build
//    the same PolicySpace (common/job_spec.h BuildPolicySpace) and to solve UNIFORM / OWL.
//  - Evaluate scores discrete policies under a projector version: on the whole sample set in
//    groups that share decoder prefixes and may race (CandidateEvaluator::EvaluateMany), each
//    group's results reported through `on_result` as it completes; the context is polled between
//    scoring batches.
//  - TrainProjector trains from one version on the top-k policies and registers the result under
//    the version number the CALLER names, so versions agree across workers; RegisterProjector
//    installs a version trained elsewhere (fetched as a blob). Training is deterministic: its seed
//    derives from the job seed and the version trained from.
//  - Finalize prunes the chosen per-unit ratios with the final mask method, measures the dense
//    and pruned model (held-out set, latency), writes the artifact directory atomically and
//    verifies it by reloading. It consumes the prepared state (the model is pruned in place), so
//    a PreparedJob is unusable afterwards (FAILED_PRECONDITION).
//
// Errors: InvalidArgument / NotFound / ResourceExhausted / DataLoss for bad input,
// FailedPrecondition for an unreachable budget (the message names the smallest reachable ratio)
// or a finalized job, Cancelled when the context asked to stop, Internal for failures of the
// computation. Exceptions from libtorch are caught at this boundary (model/torch_guard.h); an
// out-of-memory fault is ResourceExhausted with model::IsOutOfMemory(status) true.
//
// Thread-safety: a PreparedJob owns its model and is used by one step at a time (the worker
// serializes steps per job); steps set libtorch's global intra-op thread count.
#ifndef PRUNESVC_WORKER_PRUNE_STEPS_H_
#define PRUNESVC_WORKER_PRUNE_STEPS_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/evolution.h"
#include "common/flops.h"
#include "common/job_spec.h"
#include "common/policy.h"
#include "nlohmann/json.hpp"
#include "worker/model/device.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/samples.h"
#include "worker/prune/artifact.h"
#include "worker/prune/evaluator.h"
#include "worker/prune/local_policy_evaluator.h"
#include "worker/prune/measure.h"
#include "worker/prune/progress.h"

namespace prunesvc::prune {

struct PrepareOptions {
  JobSpec spec;                   // validated by Prepare too
  std::string model_dir;          // a resolved local directory
  std::string samples_path;       // search samples: directory or tar
  std::string eval_samples_path;  // held-out set; "" = none (validated here, scored at Finalize)
  std::string device = "cpu";     // cpu, cuda or cuda:N
  int threads = 0;                // torch intra-op threads; 0 = number of cores
  int batch_size = 16;            // samples per scoring forward
  // EvaluateMany's activations kept across generations (EvaluatorOptions; 0 = none).
  int64_t activation_cache_bytes = int64_t(256) << 20;
  int latency_batch = 8;  // search samples kept with pixels for Finalize's latency
  // Preparation shared across jobs (preparation_cache.h); null = every job prepares alone. The
  // context names what the key needs beyond what the job knows itself: the model's weights and
  // side files (their SHA-256), the device's name and the build.
  PreparationCache* preparations = nullptr;
  std::string preparation_context;
  std::string model_sha256;  // of model_dir's weights when the caller computed it ("" = unknown)
};

// What Prepare learned that the caller (prune-local's strategies, the scheduler) needs.
struct PrepareSummary {
  FlopsModelDims dims;
  TokenStats token_stats;                  // of the search samples
  std::vector<DecoderLayerHeads> heads;    // per decoder layer
  std::vector<double> owl_outlier_ratios;  // OWL or seed_with_owl only: per decoder layer
  ModelMetrics dense_search;               // the dense model on the search samples
  int num_samples = 0;
  int num_eval_samples = 0;  // 0 without an eval set
  std::string dataset_sha256, eval_dataset_sha256;
  int threads = 0;  // torch threads in effect
  // The dense scores, vision features, calibration and bank came from another job's preparation
  // (PrepareOptions::preparations), not computed here.
  bool shared_preparation = false;
  // The order the samples are scored in (PreparedJob::OrderSamples; position j is sample
  // sample_order[j]): every per-sample loss, range and racing checkpoint counts positions.
  std::vector<int> sample_order;
  double sample_order_probe = -1;  // the probe's ratio (PreparedJob::ProbeRatio)
};

// What Finalize needs beyond the prepared state: the chosen ratios, the projector, and what the
// strategy recorded for report.json.
struct FinalizeOptions {
  std::vector<double> unit_ratios;  // per unit of the policy space
  int projector_version = 0;        // registered with this PreparedJob
  std::string out_dir;              // must not exist or be empty; written atomically
  bool replace_out = false;         // --force: a non-empty out_dir is replaced at the commit
  std::string command_line;         // the invoking command, for report.json's provenance
  // OUT.partial-<pid> created by the caller before the search (prune-local finds an unwritable
  // --out before spending the search on it); null = Finalize creates it.
  std::unique_ptr<PartialDir> partial;
  // report.json parts produced by the strategy (null when not applicable): history, evaluated,
  // search.best, eta, audit, owl, uniform_ratio; `evaluations` = search.evaluations.
  // `search_options` (keys merged into report.json's "search" object) and `guard` are set only
  // when an issue-14 option is in use, so default reports stay byte-identical.
  nlohmann::json history = nlohmann::json::array();
  nlohmann::json evaluated = nlohmann::json::array();
  nlohmann::json search_best;
  nlohmann::json eta;
  nlohmann::json audit;
  nlohmann::json owl;
  nlohmann::json search_options;
  nlohmann::json guard;
  // prune-local --policy: {path, sha256} of the policy file applied instead of a search.
  nlohmann::json given_policy;
  std::optional<double> uniform_ratio;
  int64_t evaluations = 0;
  std::vector<std::string> warnings;  // earlier steps' warnings, for report.json
  double started_seconds_ago = 0;     // for report.json's wall_seconds
  std::string started_at;             // UTC, for report.json
  int eval_batch_size = 8;            // the reload check's batch (llava-eval's default)
  int latency_repeats = 5;            // timed forwards per model (median), after one warm-up
};

struct FinalizeResult {
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

// spec.flops_budget against the space: FailedPrecondition naming the smallest reachable ratio
// (and, under N_M, that N:M alone cannot go lower).
absl::Status CheckBudget(const JobSpec& spec, const search::PolicySpace& space);

// Policies scored together per EvaluateMany call: results stream (and cancellation is seen) at
// least every group, while neighbours in lexicographic order still share their prefixes.
inline constexpr size_t kEvaluateGroup = 8;

class PreparedJob {
 public:
  static absl::StatusOr<std::unique_ptr<PreparedJob>> Prepare(const PrepareOptions& options,
                                                              StepContext& ctx);
  // The load phase alone (no baseline, no calibration), for the pre-flight (preflight.h); the
  // budget is not checked. Only the accessors below the line are meaningful on such a job.
  static absl::StatusOr<std::unique_ptr<PreparedJob>> LoadOnly(const PrepareOptions& options,
                                                               StepContext& ctx);
  ~PreparedJob();

  const PrepareOptions& options() const { return options_; }
  const JobSpec& spec() const { return options_.spec; }
  const PrepareSummary& summary() const { return summary_; }
  const search::PolicySpace& space() const { return *space_; }

  // Scores `policies` under projector `version` (registered) on the search samples in `range`
  // (default: all; a slice's loss and accuracy are the slice's); `on_result(i, result)` for
  // each policy i, with the counts a scheduler combines slices from. On all samples the policies
  // are scored kEvaluateGroup at a time in lexicographic order (CandidateEvaluator::EvaluateMany:
  // shared prefixes, and racing with an active `race`), so `on_result` comes group by group and
  // not in request order; a slice scores one policy at a time, in order, and ignores `race`.
  // The results are the same either way (bitwise).
  absl::StatusOr<std::vector<search::EvalResult>> Evaluate(
      const std::vector<search::Policy>& policies, int version, StepContext& ctx,
      const std::function<void(int, const CandidateResult&)>& on_result = nullptr,
      SampleRange range = {}, const search::RaceLimit& race = {});
  // Trains from `from_version` on `top_k` and registers the result as `new_version`
  // (> every registered version).
  absl::StatusOr<search::ProjectorUpdate> TrainProjector(const std::vector<search::Policy>& top_k,
                                                         int from_version, int new_version,
                                                         StepContext& ctx);
  // Scores the search samples in `order` from now on (a permutation of [0, n): position j is
  // sample order[j]) — the order the scheduler names for every worker of a job, since a sample's
  // loss depends on the batch it is scored in. INVALID_ARGUMENT (naming sample_order) otherwise.
  absl::Status UseSampleOrder(const std::vector<int>& order);
  // Installs a projector trained elsewhere; a version already registered must be identical.
  absl::Status RegisterProjector(int version, const ProjectorWeights& weights);
  bool HasProjector(int version) const;
  // What TrainProjector reported for `version` when this job trained it (nullptr when it was
  // registered from elsewhere): a repeated TrainProjector (a scheduler that restarted after the
  // training) answers the same losses without training again.
  const search::ProjectorUpdate* TrainedUpdate(int version) const;
  const ProjectorWeights* projector(int version) const;
  int latest_projector_version() const;

  // Scores the held-out set with the weights the last Evaluate left in the model (the audit).
  absl::StatusOr<ModelMetrics> ScoreEvalSet();
  // The search-side evaluator (prune-local's strategies drive the search through it).
  LocalPolicyEvaluator& local_evaluator() { return *local_; }
  CandidateEvaluator& candidate_evaluator() { return *evaluator_; }
  const model::SampleSet& eval_set() const { return eval_set_; }
  bool has_eval() const { return has_eval_; }

  // ----
  const model::LlavaBundle& bundle() const { return *bundle_; }
  const FlopsBreakdown& dense_flops() const { return dense_flops_; }
  // After LoadOnly: every search sample, prepared, with pixels.
  const std::vector<model::PreparedSample>& loaded_samples() const { return latency_batch_; }

  // See the file comment; the PreparedJob is spent afterwards.
  absl::StatusOr<FinalizeResult> Finalize(FinalizeOptions options, StepContext& ctx);

 private:
  explicit PreparedJob(PrepareOptions options) : options_(std::move(options)) {}
  absl::Status Load(StepContext& ctx);
  // The evaluator, from `shared` (another job's preparation) when given.
  absl::Status Calibrate(StepContext& ctx, std::shared_ptr<const Preparation> shared);
  // This job's key in PrepareOptions::preparations (after Load: it names the samples' content).
  std::string PreparationKey() const;
  absl::Status ComputeOwlOutliers();
  // Orders the search samples hardest first: by the losses of the probe policy (every unit at
  // ProbeRatio(): independent of the seed), descending, ties by index — or takes the order of
  // `shared` when it came from the same probe. Racing cuts a candidate sooner when the samples
  // that carry most of its loss come first (docs/PERFORMANCE.md §2).
  absl::Status OrderSamples(const std::shared_ptr<const Preparation>& shared);
  // The ratio choice nearest UNIFORM's continuous ratio at the job's budget — with the default
  // uniform_ratio_choice that ratio itself, so the probe is the search's own reference policy
  // (PAIRED's) — or nearest 0.5 where UNIFORM has no continuous ratio (PolicySpace::SnapToGrid).
  absl::StatusOr<double> ProbeRatio() const;
  absl::Status CheckUsable() const;

  const PrepareOptions options_;
  model::DeviceInfo device_;
  std::unique_ptr<model::LlavaBundle> bundle_;
  model::SampleSet search_set_;
  model::SampleSet eval_set_;
  bool has_eval_ = false;
  std::vector<model::PreparedSample> latency_batch_;  // with pixels, for Finalize
  FlopsBreakdown dense_flops_;
  std::unique_ptr<search::PolicySpace> space_;
  PrepareSummary summary_;
  std::vector<int> unit_of_linear_;
  std::unique_ptr<CandidateEvaluator> evaluator_;
  std::unique_ptr<LocalPolicyEvaluator> local_;
  bool spent_ = false;                              // Finalize ran (or failed half-way)
  std::map<int, search::ProjectorUpdate> trained_;  // by version, what TrainProjector returned

  friend class Finalizer;
};

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_STEPS_H_

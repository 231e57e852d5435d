// The torch-free pruning job specification (docs/architecture.md §6 JobSpec): every knob of a job,
// its defaults and one validation, shared by prune-local's flags, the scheduler's SubmitJob and the
// worker (which validates again: it may be reached by other clients than the scheduler).
//
// Defaults are filled in knowing the granularity: STRUCTURED has no final mask method (the
// search's channel/head orders cut the artifact), so `final_mask_method` is nullopt there and
// SPARSEGPT elsewhere; N_M's pattern defaults to 2:4.
//
// The search's defaults (issue 14; docs/results/SELECTION.md, docs/results/FINDINGS.md): the PAIRED
// estimator with η = 1 (a policy outranks UNIFORM's only when its per-sample improvement over it
// is more than one paired standard error above 0) from 32 search samples up and η = 0 (the loss
// alone) below (eta_rule SAMPLES), no projector training, and UNIFORM inside the
// search — its continuous ratio in the ratio grid (uniform_ratio_choice) and its policy, repaired
// into the budget band, in the initial population (seed_with_uniform, repair_uniform_seed; it is
// PAIRED's reference). On the selection set ("paired1", 5 seeds) it is within 0.3 points of
// UNIFORM at the easy budgets of both granularities and at or ahead of the loss alone with UNIFORM
// inside ("eta0-grid", the default before it) at every budget; the loss alone picked policies
// that beat UNIFORM on the 64 search samples by less than their noise and lost up to 1.7 held-out
// points (STRUCTURED 0.7). Held out (docs/results/STUDY.md, 5 seeds): no budget more than 0.5
// points under UNIFORM, +6.9 at UNSTRUCTURED 0.35 — but η = 1 was 2.2 points under η = 0 with 16
// search samples, where the paired SE is too noisy to help; there the selection set also chose
// η = 0 (88.5 % against 87.0 / 86.6 at η = 0.5 / 1), hence the SAMPLES rule. The other search
// options are off. SetStrategy
// gives RANDOM_SEARCH, UNIFORM and OWL their own (the estimator is EFFICIENTLLAVA's: RANDOM_SEARCH
// ranks by the loss).
//
// Ranges (the ones proto/prune/v1/job.proto documents): flops_budget in (0, 1]; population in
// [4, 1024]; generations in [1, 1000]; parents in [2, population); mutation in [0, 1]; each ratio
// choice in [0, 1), sorted, distinct (search::ValidateRatioChoices); eta finite ≥ 0;
// projector_every in [0, 1000]; projector_steps in [0, 100000]; projector_lr and projector_decay
// finite ≥ 0; priority in [-100, 100]; ≤ 32 labels; request_id ≤ 128 bytes; rerank_top_k ≥ 0;
// mutation_step in [0, 1]; slack_evaluations in [0, 100000].
// Supported combinations: OWL and STRUCTURED need unit LAYER; N_M has its own unit choices (no
// ratio_choices). The search options of issue 14 (evolution.h's options; defaults above):
// estimator, eta_rule (CV needs η unset), slack_evaluations and uniform_guard need a searching
// strategy (EFFICIENTLLAVA or RANDOM_SEARCH); seed_with_uniform, seed_with_owl,
// repair_uniform_seed, mutation_step and uniform_ratio_choice shape EFFICIENTLLAVA's population and
// need that strategy (uniform_ratio_choice has no effect under N_M); seed_with_owl needs unit LAYER
// (OWL's ratios are per decoder layer). Not implemented yet, and so INVALID_ARGUMENT "not supported
// yet" naming the field: prune_vision, rerank_top_k > 0, a SPARSEGPT search mask.
//
// Errors name the field the way the caller's user wrote it: proto field names for the API
// (`population`), flags for prune-local (`--population`) — see FieldNaming.
//
// Pure value type; thread-compatible.
#ifndef PRUNESVC_COMMON_JOB_SPEC_H_
#define PRUNESVC_COMMON_JOB_SPEC_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/evolution.h"
#include "common/nm_sparsity.h"
#include "common/policy.h"
#include "nlohmann/json.hpp"

namespace prunesvc {

// How a linear's weights are scored for removal. MAGNITUDE and WANDA masks are nested (the
// search's mask bank); SPARSEGPT (OBS with error compensation) is not, so it prunes the artifact.
enum class MaskMethod { kMagnitude, kWanda, kSparseGpt };
// "MAGNITUDE" | "WANDA" | "SPARSEGPT" (case-sensitive, as in the API).
absl::StatusOr<MaskMethod> ParseMaskMethod(absl::string_view name);
std::string_view MaskMethodName(MaskMethod method);

// Search-time estimator of the generalization term (proto Estimator): the search's own enum
// (common/estimators.h: NORM | UCB | SPLIT | CAPACITY).
using Estimator = search::Estimator;
using search::EstimatorName;
using search::ParseEstimator;

// How error messages name a field.
enum class FieldNaming {
  kProto,  // `flops_budget`, `nm_pattern`, `eta_auto`
  kFlag,   // `--flops-budget`, `--nm`, `--eta`
};
// The field `proto_name` as `naming` writes it.
std::string FieldName(absl::string_view proto_name, FieldNaming naming);

inline constexpr int kMinPopulation = 4;
inline constexpr int kMaxPopulation = 1024;
inline constexpr int kMaxGenerations = 1000;
inline constexpr int kMaxProjectorEvery = 1000;
inline constexpr int kMaxProjectorSteps = 100000;
inline constexpr int kMaxPriority = 100;
inline constexpr int kMaxLabels = 32;
inline constexpr size_t kMaxRequestIdBytes = 128;
inline constexpr int kMaxSlackEvaluations = 100000;

struct JobSpec {
  // References, checked where they are resolved (the scheduler's SubmitJob, the worker): a
  // `file://` URI and dataset ids "sha256:<hex>". prune-local leaves them empty (it has paths).
  std::string model_uri;
  std::string dataset_id;
  std::optional<std::string> eval_dataset_id;

  double flops_budget = 0;  // b ∈ (0, 1]: F(artifact) ≤ b·F(dense); required
  search::Granularity granularity = search::Granularity::kUnstructured;
  NmPattern nm;  // N_M only
  search::UnitKind unit = search::UnitKind::kLayer;
  bool prune_vision = false;
  MaskMethod mask_method = MaskMethod::kWanda;  // search masks
  // The artifact's masks; nullopt exactly when STRUCTURED (see the file comment).
  std::optional<MaskMethod> final_mask_method = MaskMethod::kSparseGpt;
  search::Strategy strategy = search::Strategy::kEfficientLlava;

  int population = 32;
  int generations = 12;
  int parents = 8;
  double mutation = 0.2;
  std::vector<double> ratio_choices = search::DefaultRatioChoices();
  // With the PAIRED estimator, the z of the paired lower confidence bound. nullopt = resolved by
  // eta_rule: by default SAMPLES, i.e. 1 from 32 search samples up and 0 below (the file
  // comment). docs/results/SELECTION.md measured the other terms (auto, CV, UCB) at or below
  // η = 0.
  std::optional<double> eta;
  // The generalization term of the fitness J = L̂ + η·T (common/estimators.h).
  Estimator estimator = Estimator::kPaired;
  // How η is resolved when `eta` is unset: SAMPLES (search::SamplesEta, the default), AUTO
  // (std(η·T) = std(L̂) over the first population) or CV (cross-validated on the search samples
  // over search::DefaultEtaGrid()). An η asked for as "auto" (prune-local --eta=auto, the
  // proto's eta_auto) or implied by an estimator without an η is AUTO's unless a rule is given.
  search::EtaRule eta_rule = search::EtaRule::kSamples;
  // EFFICIENTLLAVA's initial population also holds UNIFORM's / OWL's continuous solution, snapped
  // to the ratio grid and repaired into the budget band (SearchConfig::seed_unit_ratios).
  // UNIFORM's is in by default (see the file comment).
  bool seed_with_uniform = true;
  bool seed_with_owl = false;
  // Repair the discrete uniform seed into the budget band like every other policy. Default on.
  bool repair_uniform_seed = true;
  // Probability that a mutation moves one grid step instead of jumping (0 = always jump).
  double mutation_step = 0;
  // Evaluations the final slack step may spend lowering units into the FLOPs left under the
  // budget (RANDOM_SEARCH: exactly this many more random policies); 0 = off.
  int slack_evaluations = 0;
  // Before finalizing, score UNIFORM's policy on the search samples with the same fitness and
  // keep it if it beats the search's pick ("never worse than the baseline").
  bool uniform_guard = false;
  // Add UNIFORM's continuous ratio at the budget to the ratio choices (BuildPolicySpace), so
  // UNIFORM's own policy is in the search space. EFFICIENTLLAVA only; no effect under N_M.
  // Default on.
  bool uniform_ratio_choice = true;
  // EFFICIENTLLAVA only: a SUCCEEDED job of the same tenant and inputs whose ranked policies join
  // the initial population (repaired into this job's band); empty = none. The service checks the
  // job; prune-local has no jobs (and no flag for it).
  std::string warm_start_job_id;
  // Race each generation's candidates (common/racing.h; SearchConfig::race): same survivors and
  // final policy as exhaustive evaluation, fewer forwards. Default on.
  bool race = true;
  // 0 = never, the default: re-training the projector did not raise held-out accuracy on the
  // bundled model (docs/results/FINDINGS.md) and is most of a search's time.
  int projector_every = 0;
  int projector_steps = 50;
  double projector_lr = 1e-4;
  double projector_decay = 1e-3;  // μ of μ‖θ − θ₀‖²
  uint64_t seed = 0;

  int priority = 0;
  std::map<std::string, std::string> labels;
  std::string request_id;
  int rerank_top_k = 0;

  // Ranges and supported combinations (the file comment); references are not checked here.
  absl::Status Validate(FieldNaming naming = FieldNaming::kProto) const;

  // EFFICIENTLLAVA and RANDOM_SEARCH run the evolutionary driver; UNIFORM and OWL solve ratios.
  bool searching() const;
  // The policy space's ratio choices: N_M → {0, 1 − N/M}, else ratio_choices.
  std::vector<double> EffectiveRatioChoices() const;
  // The final masks the artifact is pruned with: final_mask_method, or under STRUCTURED the
  // search's mask_method.
  MaskMethod EffectiveFinalMaskMethod() const;
  // The evolutionary search's config (strategy, budget, sizes, η, projector cadence, seed and the
  // opt-in options); num_samples and seed_unit_ratios (which need the model) are the caller's.
  search::SearchConfig ToSearchConfig(int num_samples) const;

  friend bool operator==(const JobSpec&, const JobSpec&) = default;
};

// The job's policy space from the model's FLOPs dimensions, the search samples' token statistics
// and the per-layer attention layout (STRUCTURED cuts heads): what the worker's Prepare builds
// from the loaded model and the scheduler from PrepareResponse, so both hold the same space.
// With uniform_ratio_choice the choices also hold UNIFORM's continuous ratio at the budget (when
// the budget is reachable and the ratio is not within 1e-6 of a choice already).
// N_M also checks every decoder linear's in_features is a multiple of M.
absl::StatusOr<search::PolicySpace> BuildPolicySpace(const JobSpec& spec,
                                                     const FlopsModelDims& dims,
                                                     const TokenStats& stats,
                                                     const std::vector<DecoderLayerHeads>& heads);

// report.json's "eta" object for a search: the η in use and how it was set (explicit, auto,
// samples, or zero for RANDOM_SEARCH). prune-local and the scheduler's search driver both write
// it.
nlohmann::json EtaReportJson(const JobSpec& spec, double eta);
// EtaReportJson with the issue-14 options: the estimator (non-NORM), the eta_rule (non-AUTO) and,
// when CV chose η, how (its ρ and every grid value's, from generation 0 of `history`). The
// default options give EtaReportJson's object as is.
nlohmann::json SearchEtaJson(const JobSpec& spec, double eta,
                             const std::vector<search::GenerationStats>& history);
// The issue-14 options in use, for report.json's "search" object: only the non-default ones (a
// default report keeps its bytes), plus what the slack step spent over `history`.
nlohmann::json SearchOptionsJson(const JobSpec& spec,
                                 const std::vector<search::GenerationStats>& history);

// Sets the strategy and fills the search options' defaults for it (the issue-14 fields):
// EFFICIENTLLAVA gets JobSpec's member defaults; RANDOM_SEARCH the ones that apply to it
// (estimator, slack_evaluations, uniform_guard: at equal settings it never gets fewer evaluations
// than the search); UNIFORM and OWL none. Explicit values are applied after it.
void SetStrategy(JobSpec& spec, search::Strategy strategy);

// Sets the granularity and fills the defaults that depend on it (final_mask_method: nullopt for
// STRUCTURED, SPARSEGPT otherwise).
void SetGranularity(JobSpec& spec, search::Granularity granularity);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_JOB_SPEC_H_

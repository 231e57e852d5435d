// LocalPolicyEvaluator: the search's PolicyEvaluator (common/evolution.h) served in-process by a
// CandidateEvaluator — what prune-local runs, and the reference a distributed run reproduces.
//
// A policy (per-unit indices into the PolicySpace's ratio choices) becomes per-linear ratios:
// unit = layer → the 7 linears of the layer share the unit's ratio; unit = linear → each its own.
// Ω uses the same units (the CandidateEvaluator must be created with UnitOfLinear(space.units())).
//
// Projector versions: version 0 is the projector the evaluator was created with (θ₀, the anchor
// of every training's μ-term); TrainProjector(top_k, v) trains from version v and registers the
// result as (largest version so far) + 1, then installs it (new image features, calibration and
// mask bank), so the driver's re-scoring runs under it. Evaluate(…, v) switches the evaluator to
// version v first when needed (every registered version's weights are kept; a projector is small).
//
// Each training call's round-robin seed is derived from the base seed and the version trained
// from, so the whole search is deterministic for a fixed seed.
//
// Thread-safety: not thread-safe (one search drives it).
#ifndef PRUNESVC_WORKER_PRUNE_LOCAL_POLICY_EVALUATOR_H_
#define PRUNESVC_WORKER_PRUNE_LOCAL_POLICY_EVALUATOR_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/evolution.h"
#include "common/policy.h"
#include "worker/prune/evaluator.h"
#include "worker/prune/projector_training.h"

namespace prunesvc::prune {

// Unit index of every decoder linear (layer-major, q k v o gate up down) for `units`; linears of
// no unit → InvalidArgument (every decoder linear must belong to exactly one unit).
absl::StatusOr<std::vector<int>> UnitOfLinear(const search::PruningUnits& units, int num_layers);

class LocalPolicyEvaluator : public search::PolicyEvaluator {
 public:
  // Neither pointer is owned; both must outlive this object. The evaluator must be at projector
  // version 0 and use the space's units for Ω.
  static absl::StatusOr<std::unique_ptr<LocalPolicyEvaluator>> Create(
      CandidateEvaluator* evaluator, const search::PolicySpace* space,
      const ProjectorTrainingOptions& training = {});

  // All policies on all samples in one CandidateEvaluator::EvaluateMany (prefix sharing; with
  // EvaluateRaced, racing too).
  absl::StatusOr<std::vector<search::EvalResult>> Evaluate(
      const std::vector<search::Policy>& policies, int projector_version) override;
  absl::StatusOr<std::vector<search::EvalResult>> EvaluateRaced(
      const std::vector<search::Policy>& policies, int projector_version,
      const search::RaceLimit& race) override;
  // The same with the evaluator's whole results (counts included), in policy order.
  absl::StatusOr<std::vector<CandidateResult>> EvaluateCandidates(
      const std::vector<search::Policy>& policies, int projector_version,
      const search::RaceLimit& race, const std::function<absl::Status()>& poll = nullptr);
  // One policy under `projector_version` on the search samples in `range` (a worker's share of
  // a policy the scheduler split by samples), with the counts a whole-set result is combined from.
  absl::StatusOr<CandidateResult> EvaluateSlice(const search::Policy& policy, int projector_version,
                                                SampleRange range);
  // Registers the trained projector as (largest version so far) + 1.
  absl::StatusOr<search::ProjectorUpdate> TrainProjector(const std::vector<search::Policy>& top_k,
                                                         int from_version) override;
  // Registers the trained projector as `new_version`, which must exceed every registered version
  // (the scheduler names versions so workers agree).
  absl::StatusOr<search::ProjectorUpdate> TrainProjectorAs(const std::vector<search::Policy>& top_k,
                                                           int from_version, int new_version);
  // A projector trained elsewhere (same shapes as version 0). Registering a known version again
  // is OK when the weights are identical, an error otherwise.
  absl::Status RegisterProjector(int version, const ProjectorWeights& weights);
  // Installs `version` in the evaluator (image features, calibration, mask bank) if not current.
  absl::Status SwitchTo(int version);

  // Continuous per-unit ratios (UNIFORM / OWL) under the current projector version.
  absl::StatusOr<CandidateResult> EvaluateUnitRatios(std::span<const double> unit_ratios);
  // Per-linear ratios of per-unit ratios.
  absl::StatusOr<std::vector<double>> LinearRatios(std::span<const double> unit_ratios) const;

  // The projector of a registered version (nullptr if unknown), and the latest version.
  const ProjectorWeights* projector(int version) const;
  int latest_version() const { return projectors_.rbegin()->first; }
  CandidateEvaluator& evaluator() { return *evaluator_; }
  // Candidate evaluations run so far (Evaluate + EvaluateUnitRatios).
  int64_t evaluations() const { return evaluations_; }

 private:
  LocalPolicyEvaluator(CandidateEvaluator* evaluator, const search::PolicySpace* space,
                       const ProjectorTrainingOptions& training)
      : evaluator_(evaluator), space_(space), training_(training) {}

  CandidateEvaluator* const evaluator_;
  const search::PolicySpace* const space_;
  const ProjectorTrainingOptions training_;
  std::vector<int> unit_of_linear_;
  std::map<int, ProjectorWeights> projectors_;
  int64_t evaluations_ = 0;
};

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_LOCAL_POLICY_EVALUATOR_H_

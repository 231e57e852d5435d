// Projector training on the top-k pruned models (docs/architecture.md §5 "Projector training", the
// EfficientLLaVA search-space evolution): Adam on the projector's linear_1/linear_2 weights and
// biases minimising
//     mean over the top-k policies of L̂(π; θ)  +  μ·‖θ − θ₀‖²,
// with θ₀ the ORIGINAL dense projector (version 0), not the version training starts from — an
// explicit term, since Adam's weight_decay would pull toward 0 instead.
//
// Schedule (the default, kRoundRobin): each Adam step uses ONE policy, taken in a seeded
// shuffled order that visits every top-k policy once per cycle of k steps, with the loss over all
// samples (gradients accumulated over sample batches). 50 steps then cost 50 forward+backward
// passes instead of 50·k, so projector training stays comparable to the search's own evaluations
// (k = 8: 8× cheaper); each step is an unbiased estimate of the mean-over-policies gradient and
// every policy gets ⌊steps/k⌋ or ⌈steps/k⌉ steps. kAllPolicies uses every policy in every step
// (the exact gradient of the objective above, k× the cost).
//
// The decoder weights are set per policy through CandidateEvaluator::ApplyRatios (masks of the
// evaluator's current bank, i.e. the projector version training starts from); every forward's
// graph is consumed by backward() before the next weight edit.
//
// Returns the loss before/after (mean over the top-k of L̂ with the same masks, starting vs
// trained projector) and the trained projector; the evaluator is left at its current version
// (the caller installs the result as version + 1 with CandidateEvaluator::SetProjector).
//
// Determinism: for a fixed seed, model, samples, policies and thread count the result is
// bitwise identical (CPU).
//
// Thread-safety: as CandidateEvaluator (exclusive use of the evaluator and its model).
#ifndef PRUNESVC_WORKER_PRUNE_PROJECTOR_TRAINING_H_
#define PRUNESVC_WORKER_PRUNE_PROJECTOR_TRAINING_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/prune/evaluator.h"

namespace prunesvc::prune {

enum class ProjectorSchedule { kRoundRobin, kAllPolicies };

struct ProjectorTrainingOptions {
  double learning_rate = 1e-4;
  int steps = 50;
  double mu = 1e-3;
  ProjectorSchedule schedule = ProjectorSchedule::kRoundRobin;
  int batch_size = 8;  // samples per forward/backward
  uint64_t seed = 0;   // order of the round robin
};

struct ProjectorTrainingResult {
  double loss_before = 0;  // mean over the top-k of L̂, starting projector
  double loss_after = 0;   // same masks, trained projector
  ProjectorWeights projector;
  // Per step: the loss part of the objective (mean L̂ of the step's policies, before the update)
  // and the μ‖θ − θ₀‖² part.
  std::vector<double> step_losses;
  std::vector<double> step_penalties;
};

// L̂ of the evaluator's model as currently masked, with the image features projected from its
// cached vision features by `projector` (no grad): the mean over samples of each sample's mean
// answer-token CE — the same number CandidateEvaluator::Evaluate reports for the evaluator's own
// projector.
absl::StatusOr<double> AnswerLoss(CandidateEvaluator& evaluator, const ProjectorWeights& projector,
                                  int batch_size);

// `top_k` holds per-linear ratio vectors (CandidateEvaluator::ApplyRatios's format); `theta0`
// the original projector. Errors: empty top_k, steps < 0, non-finite/negative lr or μ,
// batch_size < 1, bad ratio vectors, forward/backward failures, a non-finite loss.
absl::StatusOr<ProjectorTrainingResult> TrainProjector(
    CandidateEvaluator& evaluator, const std::vector<std::vector<double>>& top_k,
    const ProjectorWeights& theta0, const ProjectorTrainingOptions& options = {});

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_PROJECTOR_TRAINING_H_

// Generalization terms of the search fitness (docs/architecture.md §5 "Fitness", issue 14) as pure,
// torch-free functions over per-sample losses and per-unit ratios, so that the evolutionary
// search (evolution.h), the scheduler and the tests compute one and the same number.
//
// The search minimises J(π) = L̂(π) + η · T(π), where T is the estimator's term on the search
// samples (m of them, in the order of a fixed index list):
//  - NORM (default, today's): T = Ω(π)/√m, Ω the evaluator's kept norm mass. Concave in each
//    unit's ratio: at a fixed FLOPs budget it prefers corner policies (FINDINGS.md 1).
//  - UCB: T = SE = sd(losses)/√m, sd the sample standard deviation (÷ (m − 1)); with η = z,
//    J = L̂ + z·SE is an upper confidence bound on the expected loss.
//  - SPLIT: T = |L̂_A − L̂_B|, A = the first ⌊m/2⌋ indices of the list, B the rest (the proto's
//    Estimator SPLIT; the list is a seeded permutation, so the split is a fixed random half).
//  - CAPACITY: T = C(π)/√m with C(π) = Σ_u P_u·r_u² / Σ_u P_u, the parameter-weighted mean of
//    the squared pruned fraction. Why this one: C is strictly convex in every unit's ratio, so
//    at a fixed FLOPs budget (FLOPs ≈ linear in the ratios) it is smallest where the ratios are
//    spread evenly and grows towards the corners of R — the opposite pull of Ω, i.e. a shrinkage
//    towards UNIFORM, the baseline that wins where pruning hurts little, while L̂ decides where
//    the data wants a unit to deviate. It needs only the policy (PolicySpace terms) and is 0 for
//    the dense policy; like Ω it lies in [0, 1] and is divided by √m so η has Ω's scale.
//  - PAIRED: T = SE_D = sd(ℓ(π) − ℓ_ref)/√m, the standard error of the per-sample loss
//    differences against a reference policy's losses ℓ_ref on the same samples (the search's
//    reference is UNIFORM's policy: evolution.h). With η = z the fitness is
//        J(π) = L̂_ref − (D̂ − z·SE_D),   D̂ = L̂_ref − L̂(π) the mean improvement,
//    i.e. the search ranks policies by the lower confidence bound of their improvement over the
//    reference, and the reference itself (T = 0) has J = L̂_ref: a policy outranks it only when
//    its improvement is more than z paired standard errors above 0 — a one-sided paired z-test.
//    Why paired: per-sample losses vary mostly with the sample's difficulty, which every policy
//    shares; UCB's SE carries that variation and ranks almost as the loss does, the difference
//    cancels it (docs/results/FINDINGS.md: search picks 0.0001–0.05 below UNIFORM's loss on 64
//    samples, t = 0.3–1.7, that lose up to 1.7 held-out points).
//
// Cross-validated η (EtaRule CV): split the n samples into halves A and B (a seeded permutation's
// first ⌊n/2⌋ and the rest); for each η of a grid, rank the evaluated policies by J_A = L̂_A + η·T_A
// (T computed on A's samples alone) and score the η by Spearman's ρ between J_A and L̂_B; the
// η with the largest ρ wins, ties to the smaller η; an η whose ρ is undefined (fewer than 3
// policies, or a constant side) never wins; when none is defined, the smallest grid value.
//
// Determinism: permutations come from Prng(seed).Fork(stream) — never from the search's own
// stream, so enabling an estimator does not move the search's draws; sums run in index-list
// order. Thread-safe (pure functions).
#ifndef PRUNESVC_COMMON_ESTIMATORS_H_
#define PRUNESVC_COMMON_ESTIMATORS_H_

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prunesvc::search {

enum class Estimator { kNorm, kUcb, kSplit, kCapacity, kPaired };
// "NORM" | "UCB" | "SPLIT" | "CAPACITY" | "PAIRED" (case-insensitive).
absl::StatusOr<Estimator> ParseEstimator(absl::string_view name);
absl::string_view EstimatorName(Estimator estimator);
// UCB, SPLIT and PAIRED read per-sample losses; NORM and CAPACITY do not.
bool EstimatorNeedsSampleLosses(Estimator estimator);

// How η is resolved when SearchConfig::eta is not given: AUTO = today's rule (std(η·T) = std(L̂)
// over the first population), CV = cross-validated on the search samples (above), SAMPLES = by
// the number of search samples alone (SamplesEta; known before any evaluation, like an explicit
// η: the default, issue 14).
enum class EtaRule { kAuto, kCrossValidated, kSamples };
// "AUTO" | "CV" | "SAMPLES".
absl::StatusOr<EtaRule> ParseEtaRule(absl::string_view name);
absl::string_view EtaRuleName(EtaRule rule);

// {0, 0.1, 0.3, 1, 3, 10, 30, 100}.
std::vector<double> DefaultEtaGrid();

// The SAMPLES rule: η = 1 with at least kSamplesEtaMinSamples search samples, 0 below. Chosen on
// the selection set (docs/results/SELECTION.md, "few samples"): at the hard budget PAIRED with
// z = 1 beat the loss alone at 64 samples and tied it at 32, but with 16 samples its paired
// standard error is too noisy to rank by and z = 0 scored best (z = 0 / 0.5 / 1: 88.5 / 87.0 /
// 86.6 %).
inline constexpr int kSamplesEtaMinSamples = 32;
double SamplesEta(int num_samples);

// Fork stream ids of the two seeded permutations (distinct so SPLIT's halves and CV's halves are
// unrelated draws).
inline constexpr uint64_t kSplitStream = 0x53504c4954;  // "SPLIT"
inline constexpr uint64_t kCvStream = 0x43562d455441;   // "CV-ETA"

// A uniformly random permutation of 0..n−1: Prng(seed).Fork(stream).Shuffle of the identity.
std::vector<int> SamplePermutation(uint64_t seed, uint64_t stream, int n);

// Mean of losses[i] over i in `indices` (in list order); 0 for an empty list.
double MeanOver(std::span<const double> losses, std::span<const int> indices);
// sd (÷ (m − 1)) / √m over `indices`; 0 when m < 2.
double StandardErrorOver(std::span<const double> losses, std::span<const int> indices);
// |mean of the first ⌊m/2⌋ indices − mean of the rest|; 0 when m < 2.
double SplitGapOver(std::span<const double> losses, std::span<const int> indices);
// sd (÷ (m − 1)) of losses[i] − reference[i] over `indices`, / √m; 0 when m < 2.
double PairedStandardErrorOver(std::span<const double> losses, std::span<const double> reference,
                               std::span<const int> indices);
// C(π) = Σ_u P_u·r_u² / Σ_u P_u (0 when Σ P_u = 0). Sizes must agree.
double SquaredCapacity(std::span<const double> unit_ratios, std::span<const int64_t> params);

// What an estimator needs about one evaluated policy.
struct TermInputs {
  double omega = 0;                          // Ω(π), NORM
  double capacity = 0;                       // C(π), CAPACITY
  std::span<const double> sample_losses;     // UCB, SPLIT, PAIRED (indices refer to these)
  std::span<const double> reference_losses;  // PAIRED: the reference policy's, same samples
};

// T(π) on the samples `indices` (m = indices.size() ≥ 1; for UCB/SPLIT/PAIRED every index must
// be < sample_losses.size(), and for PAIRED < reference_losses.size() — checked:
// INVALID_ARGUMENT otherwise).
absl::StatusOr<double> EstimatorTerm(Estimator estimator, const TermInputs& in,
                                     std::span<const int> indices);

// The outcome of CrossValidateEta.
struct CvChoice {
  double eta = 0;
  std::optional<double> rho;                // ρ of the chosen η (nullopt: none defined)
  std::vector<std::optional<double>> rhos;  // per grid value, in grid order
};
// `policies`: one TermInputs per evaluated policy, with the losses of all n samples. Chooses η from
// `grid` (non-empty, finite, ≥ 0; any order) by the rule above, with A = the first ⌊n/2⌋ entries of
// `permutation` and B the rest (n = permutation.size() ≥ 2; every policy's sample_losses must have
// n entries).
absl::StatusOr<CvChoice> CrossValidateEta(Estimator estimator, std::span<const TermInputs> policies,
                                          std::span<const double> grid,
                                          std::span<const int> permutation);

}  // namespace prunesvc::search

#endif  // PRUNESVC_COMMON_ESTIMATORS_H_

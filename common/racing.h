// Racing (issue 20): stop scoring a candidate policy once it provably cannot reach the top of its
// generation, so a generation costs less than one full evaluation per candidate.
//
// Soundness. The fitness the search ranks by must be J = L̂ + t(π): the mean of per-sample
// losses over the n search samples plus a term that depends on the policy only (NORM's η·Ω/√n,
// CAPACITY's η·C; not UCB or SPLIT, whose terms depend on the samples), or PAIRED's η·SE_D (below).
// Every per-sample loss is a cross-entropy, ≥ 0, so after the first k samples (in sample order,
// partial sum S_k)
//     J ≥ S_k / n + t(π) + η·b_k                                          (the bound)
// with b_k = 0 except for PAIRED. PAIRED's term is the paired standard error over all n samples,
// SE_D = √(SS_n / (n − 1)) / √n, SS_n = Σ (d_i − d̄_n)², d_i = loss_i − reference_i. Dropping
// samples from a sum of squares and moving its centre to the prefix's own mean (which minimizes
// it) can only lower it: SS_n ≥ Σ_{i<k} (d_i − d̄_n)² ≥ Σ_{i<k} (d_i − d̄_k)² = SS_k, so
//     b_k = √(SS_k / (n − 1)) / √n ≤ SE_D,
// computed by PairedTermLowerBound with a margin for rounding (relative 1e-9, absolute 1e-12).
// A candidate far from the reference on the samples seen so far is cut earlier than by the loss
// alone: its standard error already counts.
// A candidate whose bound exceeds the threshold τ — the fitness of the `parents`-th best policy
// already fully scored in the generation (the survivors, whose results are cached) — is strictly
// worse than `parents` policies and cannot survive, whatever its remaining samples say. So the
// top `parents`, their order, the next generation and the final policy are exactly those of
// exhaustive evaluation; only the raced-out candidates' reported results differ (a lower bound
// instead of the value).
//
// Checkpoints. The bound is checked after each scoring batch but the last (samples [0, k) with k
// a multiple of the batch size), never inside a batch, so a raced-out result is a pure function
// of the policy's per-sample losses, the batch size, t and τ: a worker that scored the whole set,
// one that raced, and the scheduler combining sample slices (ReplayRace) report the same thing.
//
// What a raced-out candidate reports (search::EvalResult): raced_out = true, samples_scored = k,
// loss = S_k / n (the lower bound of its mean loss; its fitness is then the bound: the search
// gives a raced-out PAIRED result the term b_k from its k losses), accuracy = 0
// (not measured: a sample-sliced evaluation could not say it over the first k samples),
// sample_losses = the k scored losses.
//
// Pure functions; thread-safe.
#ifndef PRUNESVC_COMMON_RACING_H_
#define PRUNESVC_COMMON_RACING_H_

#include <limits>
#include <optional>
#include <span>
#include <vector>

namespace prunesvc::search {

// What an evaluator needs to race a batch of candidates; threshold = +∞ turns racing off.
struct RaceLimit {
  double threshold = std::numeric_limits<double>::infinity();
  // The policy term t of candidate i with evaluated Ω: norm_eta·Ω/√num_samples (NORM's term,
  // computed as the search's fitness computes it) + extra[i] (a policy-only term the driver
  // computed, e.g. CAPACITY's η·C; empty = 0).
  double norm_eta = 0;
  int num_samples = 0;
  std::vector<double> extra;
  // PAIRED: η and the reference policy's per-sample losses over the n samples (num_samples of
  // them; empty or η = 0: no PAIRED part, which is still a sound, looser bound).
  double paired_eta = 0;
  std::vector<double> reference_losses;

  bool active() const { return threshold < std::numeric_limits<double>::infinity(); }
  // The policy-only part of the bound's term.
  double Term(size_t i, double omega) const;
  // The whole term of the bound after the first scored.size() samples: Term(i, omega) plus
  // paired_eta · PairedTermLowerBound(scored, reference_losses, num_samples).
  double BoundTerm(size_t i, double omega, std::span<const double> scored) const;
};

// PAIRED's term's lower bound b_k (above) from the first k = scored.size() per-sample losses of
// a policy and the reference's (the first k of `reference`), for a term over num_samples: 0 when
// k < 2, num_samples < 2 or the reference is shorter than k. A pure function of its inputs, summed
// in sample order, so the evaluator that cut a candidate and the search that ranks its raced-out
// result compute the same bits.
double PairedTermLowerBound(std::span<const double> scored, std::span<const double> reference,
                            int num_samples);

// The bound check after `scored` of `num_samples` samples (partial_sum = their in-order sum):
// true when scored < num_samples and partial_sum / num_samples + term > threshold.
bool RacedOut(double partial_sum, int scored, int num_samples, double term, double threshold);

// Replays the checkpoints (after every `batch` samples, the last batch excluded) over a policy's
// whole-set per-sample losses, as an evaluator racing candidate i (Ω = omega) under `race` checks
// them: the number of samples after which it is raced out, or nullopt when it survives (always,
// when the race is inactive). batch ≤ 0 = one checkpoint per sample.
std::optional<int> ReplayRace(std::span<const double> sample_losses, int batch,
                              const RaceLimit& race, size_t i, double omega);
// The same over the first sample_losses.size() ≤ num_samples losses of a policy scored on
// `num_samples`: the checkpoints within that prefix. A cut it finds is the cut the whole set's
// replay finds; nullopt says nothing about the samples after the prefix (a raced-out result
// reused under another threshold: RemotePolicyEvaluator's cache across jobs).
std::optional<int> ReplayRacePrefix(std::span<const double> sample_losses, int num_samples,
                                    int batch, const RaceLimit& race, size_t i, double omega);

}  // namespace prunesvc::search

#endif  // PRUNESVC_COMMON_RACING_H_

// Racing (issue 20): stop scoring a candidate policy once it provably cannot reach the top of its
// generation, so a generation costs less than one full evaluation per candidate.
//
// Soundness. The fitness the search ranks by must be J = L̂ + t(π): the mean of per-sample
// losses over the n search samples plus a term that depends on the policy only (NORM's η·Ω/√n,
// CAPACITY's η·C; not UCB or SPLIT, whose terms depend on the samples). Every per-sample loss is
// a cross-entropy, ≥ 0, so after the first k samples (in sample order, partial sum S_k)
//     J ≥ S_k / n + t(π)                                                  (the bound)
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
// loss = S_k / n (the lower bound of its mean loss; its fitness is then the bound), accuracy = 0
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

  bool active() const { return threshold < std::numeric_limits<double>::infinity(); }
  double Term(size_t i, double omega) const;
};

// The bound check after `scored` of `num_samples` samples (partial_sum = their in-order sum):
// true when scored < num_samples and partial_sum / num_samples + term > threshold.
bool RacedOut(double partial_sum, int scored, int num_samples, double term, double threshold);

// Replays the checkpoints (after every `batch` samples, the last batch excluded) over a policy's
// whole-set per-sample losses: the number of samples after which it is raced out, or nullopt
// when it survives. batch ≤ 0 = one checkpoint per sample.
std::optional<int> ReplayRace(std::span<const double> sample_losses, int batch, double term,
                              double threshold);
// The same over the first sample_losses.size() ≤ num_samples losses of a policy scored on
// `num_samples`: the checkpoints within that prefix. A cut it finds is the cut the whole set's
// replay finds; nullopt says nothing about the samples after the prefix (a raced-out result
// reused under another threshold: RemotePolicyEvaluator's cache across jobs).
std::optional<int> ReplayRacePrefix(std::span<const double> sample_losses, int num_samples,
                                    int batch, double term, double threshold);

}  // namespace prunesvc::search

#endif  // PRUNESVC_COMMON_RACING_H_

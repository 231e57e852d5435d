// How RemotePolicyEvaluator cuts one generation's cache misses into worker requests, and how it
// puts a policy split by samples back together.
//
// With at most as many workers as policies, each worker gets a contiguous run of policies on all
// search samples. With more workers than policies, each policy's samples are cut into slices, one
// per worker, on multiples of the workers' scoring batch: a worker scores a slice in the same
// batches as a whole-set evaluation would, so each per-sample loss is bitwise the same, and
// CombineSlices sums them in sample order exactly as model::Summarize does. The search therefore
// sees identical results however a generation was split.
//
// Pure functions; thread-safe.
#ifndef PRUNESVC_SERVER_EVALUATION_PLAN_H_
#define PRUNESVC_SERVER_EVALUATION_PLAN_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/evolution.h"
#include "common/racing.h"

namespace prune::v1 {
class PolicyEvaluation;
}  // namespace prune::v1

namespace prunesvc::server {

// One worker request: policies [policy_begin, policy_end) on search samples
// [sample_begin, sample_end); both sample bounds 0 = every sample (the request's encoding).
struct EvalChunk {
  int policy_begin = 0;
  int policy_end = 0;
  int sample_begin = 0;
  int sample_end = 0;
  bool whole() const { return sample_begin == 0 && sample_end == 0; }
  bool operator==(const EvalChunk&) const = default;
};

// The most requests worth sending for `num_policies` over `num_samples` scored in batches of
// `batch` (one per policy and batch); batch ≤ 0 (unknown) = one per policy.
int MaxUsefulChunks(int num_policies, int num_samples, int batch);

// Splits `num_policies` (≥ 1) over `num_workers` (≥ 1). Workers ≤ policies: num_workers chunks
// of contiguous policies, sizes differing by at most one. More workers: every policy alone, the
// first (workers mod policies) policies in one slice more, each policy's batches split as evenly
// as possible; at most MaxUsefulChunks chunks. Chunks are in (policy, sample) order.
std::vector<EvalChunk> PlanChunks(int num_policies, int num_workers, int num_samples, int batch);

// A worker's result for one policy on one chunk's samples.
struct SliceResult {
  search::EvalResult result;  // the slice's loss / accuracy / sample_losses; the policy's Ω
  int num_correct = 0;
  int num_multiple_choice = 0;
};

// The whole-set result of a policy from its slices in sample order: loss = the in-order sum of
// the concatenated sample losses / num_samples, accuracy = Σ correct / Σ multiple-choice (0 when
// none), Ω and sample_losses as a whole-set evaluation gives them. A single slice is returned as
// the worker computed it. Errors: the slices' sample losses do not add up to num_samples.
absl::StatusOr<search::EvalResult> CombineSlices(absl::Span<const SliceResult> slices,
                                                 int num_samples);

// A whole-set result cut back to what a worker racing it reports when it stops after the first
// `scored` samples (common/racing.h): loss = their in-order sum / num_samples, accuracy 0,
// sample_losses the first `scored`, raced_out set. `whole` must have num_samples sample losses.
search::EvalResult RacedOutResult(search::EvalResult whole, int scored, int num_samples);

// What a worker racing policy i of a request under `race` reports, from a result holding the
// policy's first sample_losses.size() losses in sample order (all num_samples of them, or a
// raced-out prefix): raced out where the replayed checkpoints (search::ReplayRacePrefix) cut
// inside what is known; the result itself when it holds every sample and is not cut (always the
// case with an inactive race); nullopt for a prefix the race does not cut (the rest is unknown).
std::optional<search::EvalResult> RaceAsWorker(search::EvalResult r, int num_samples, int batch,
                                               const search::RaceLimit& race, size_t i);

// The result fields of a worker's (or the cache's) PolicyEvaluation: loss, accuracy, Ω, sample
// losses, raced_out and samples_scored.
search::EvalResult EvalResultFromProto(const ::prune::v1::PolicyEvaluation& e);

// The evaluation cache across jobs (remote_policy_evaluator.h) stores a policy's result as a
// serialized prune.v1.PolicyEvaluation: a whole-set result (num_samples losses) or a raced-out
// one (its first samples_scored < num_samples losses, a prefix of the whole set's).
bool CachedEvaluationStorable(const search::EvalResult& r, int num_samples);
std::string CachedEvaluationValue(const search::EvalResult& r);
// What a worker would return, under `race` (for policy i of the request), for a policy whose
// stored value is `value`: a whole-set value as stored, or raced out by replaying its
// checkpoints; a raced-out prefix only when the replay under `race` cuts inside it. nullopt: the
// value cannot answer (a prefix the race does not cut, a prefix without a race) or is malformed
// (does not parse, or its losses do not match num_samples / samples_scored) — evaluate afresh.
std::optional<search::EvalResult> CachedEvaluationResult(const std::string& value, int num_samples,
                                                         int batch, const search::RaceLimit& race,
                                                         size_t i);

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_EVALUATION_PLAN_H_

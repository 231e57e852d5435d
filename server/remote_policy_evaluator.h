// The search's second PolicyEvaluator (common/evolution.h; the first is the worker's
// LocalPolicyEvaluator): evaluations and projector training run as PruningWorker steps through
// the job's SearchDriver. Evaluate splits a batch (one generation's cache misses) over the workers
// the dispatcher can lease at once — contiguous runs of policies, or, with more workers than
// policies, slices of each policy's samples (evaluation_plan.h; the slices combine into exactly
// the whole-set result) — runs them in parallel and reassembles the results in request order; a
// chunk whose worker failed in a retryable way is re-run (with retries) on another worker.
// EvaluateRaced passes a racing limit along (common/racing.h).
//
// Evaluations across jobs (DispatcherOptions::evaluation_cache): a policy whose result the
// tenant's earlier jobs stored under the same key — the worker's PrepareResponse.evaluation_key
// (model files, samples, granularity, N:M, unit, mask method, worker batch / threads / device /
// build), the projector (the model's own, or the trained projector's blob id) and the exact unit
// ratios — is not dispatched. Whole-set results and raced-out ones (the prefix of losses scored)
// are stored; a hit is raced by replaying its checkpoints (ReplayRacePrefix), as a combined slice
// is, and a raced-out prefix is used only when the replay cuts within it — so every result is
// bitwise what a worker would have returned, and the search, its report and its events are
// unchanged. A longer result replaces a shorter one under the same key.
// TrainProjector names the new version (latest + 1) so every worker agrees, and records the
// uploaded projector's blob for later steps.
//
// Thread-compatible: called by the one search of its driver.
#ifndef PRUNESVC_SERVER_REMOTE_POLICY_EVALUATOR_H_
#define PRUNESVC_SERVER_REMOTE_POLICY_EVALUATOR_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/evolution.h"
#include "common/policy.h"
#include "nlohmann/json.hpp"
#include "server/evaluation_plan.h"
#include "server/job_store.h"

namespace prunesvc::server {

class SearchDriver;

class RemotePolicyEvaluator : public search::PolicyEvaluator {
 public:
  // Neither pointer is owned.
  RemotePolicyEvaluator(SearchDriver* driver, const search::PolicySpace* space, int latest_version)
      : driver_(driver), space_(space), latest_(latest_version) {}
  // Writes the cache entries nobody took (TakeCacheEntries).
  ~RemotePolicyEvaluator() override;

  absl::StatusOr<std::vector<search::EvalResult>> Evaluate(
      const std::vector<search::Policy>& policies, int projector_version) override;
  // Racing (common/racing.h): whole-set chunks carry the limit to their workers; a policy split
  // into sample slices is combined and then raced by replaying the checkpoints (ReplayRace), so
  // either way its result is what one worker racing it would report.
  absl::StatusOr<std::vector<search::EvalResult>> EvaluateRaced(
      const std::vector<search::Policy>& policies, int projector_version,
      const search::RaceLimit& race) override;
  absl::StatusOr<search::ProjectorUpdate> TrainProjector(const std::vector<search::Policy>& top_k,
                                                         int from_version) override;

  int latest_version() const { return latest_; }
  // report.json's "evaluated": {hash, projector_version} in evaluation order.
  nlohmann::json& evaluated() { return evaluated_; }
  int64_t evaluations() const { return evaluations_; }
  void set_evaluations(int64_t n) { evaluations_ = n; }
  // Policies answered from the evaluation cache across jobs (the driver logs it and keeps it in its
  // search report; the worker copies only prune-local's fields into report.json).
  int64_t reused() const { return reused_; }
  // The evaluation cache entries of the results evaluated since the last call: the driver writes
  // them with the generation's commit (Checkpoint::cache_entries), off the search's critical path
  // and without a transaction of their own. Empty when the job does not use the cache.
  CacheEntries TakeCacheEntries();
  // Runs `f` once, on the calling thread, right after the next dispatch has started its workers'
  // calls (before it waits for them); nullptr clears it. The driver starts a generation's write
  // there, so that the write's CPU does not delay the call starts.
  void set_after_dispatch(std::function<void()> f) { after_dispatch_ = std::move(f); }

 private:
  // Runs `policies` on workers (no cache): chunks, retries, reassembly.
  absl::StatusOr<std::vector<search::EvalResult>> Dispatch(
      const std::vector<search::Policy>& policies, int projector_version,
      const search::RaceLimit& race);
  // The cache key of each policy under `projector_version`; empty when this job cannot use the
  // cache (off, an old worker without an evaluation key, an unknown projector blob).
  std::vector<std::string> CacheKeys(const std::vector<search::Policy>& policies,
                                     int projector_version) const;
  // The per-policy results, in request order, from each chunk's slice results.
  absl::StatusOr<std::vector<search::EvalResult>> Reassemble(
      const std::vector<EvalChunk>& chunks, const std::vector<std::vector<SliceResult>>& parts,
      int num_samples, const search::RaceLimit& race) const;

  SearchDriver* const driver_;
  const search::PolicySpace* const space_;
  int latest_;
  nlohmann::json evaluated_ = nlohmann::json::array();
  int64_t evaluations_ = 0;
  int64_t reused_ = 0;
  // New cache entries not yet taken. This job never looks them up itself (its SearchState cache
  // answers a policy it evaluated first), so they need not be stored before the next Evaluate.
  CacheEntries pending_cache_;
  std::function<void()> after_dispatch_;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_REMOTE_POLICY_EVALUATOR_H_

#include "server/remote_policy_evaluator.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/blocking_counter.h"
#include "common/fault.h"
#include "common/logging.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "server/dispatcher.h"
#include "server/evaluation_plan.h"
#include "server/search_driver.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;

absl::StatusOr<pb::EvaluatePoliciesRequest> ChunkRequest(SearchDriver& driver,
                                                         const search::PolicySpace& space,
                                                         const std::vector<search::Policy>& ps,
                                                         const EvalChunk& chunk, int version,
                                                         const search::RaceLimit& race) {
  pb::EvaluatePoliciesRequest req;
  req.mutable_header()->set_job_id(driver.job_id());
  *req.mutable_spec() = driver.spec_proto();
  req.set_projector_version(version);
  auto blob = driver.projector_blobs().find(version);
  if (blob != driver.projector_blobs().end()) req.set_projector_blob_id(blob->second);
  for (int i = chunk.policy_begin; i < chunk.policy_end; ++i) {
    ASSIGN_OR_RETURN(std::vector<double> ratios, space.UnitRatios(ps[i]));
    req.add_policies()->mutable_ratios()->Assign(ratios.begin(), ratios.end());
  }
  req.set_sample_begin(chunk.sample_begin);
  req.set_sample_end(chunk.sample_end);
  req.mutable_sample_order()->Assign(driver.sample_order().begin(), driver.sample_order().end());
  if (race.active() && chunk.whole()) {  // slices are raced after CombineSlices
    req.set_race_threshold(race.threshold);
    req.set_race_norm_eta(race.norm_eta);
    if (!race.extra.empty()) {
      req.mutable_race_extra()->Assign(race.extra.begin() + chunk.policy_begin,
                                       race.extra.begin() + chunk.policy_end);
    }
    if (race.paired_eta != 0 && !race.reference_losses.empty()) {
      req.set_race_paired_eta(race.paired_eta);
      req.mutable_race_reference_losses()->Assign(race.reference_losses.begin(),
                                                  race.reference_losses.end());
    }
  }
  return req;
}

// Collects one chunk's streamed results: one SliceResult per policy into `out`, in request order
// (the worker streams them in any order, each with its index).
class ChunkResults {
 public:
  ChunkResults(std::string worker_id, size_t want, std::vector<SliceResult>& out)
      : worker_id_(std::move(worker_id)), want_(want), seen_(want, false), out_(out) {
    out_.assign(want, SliceResult{});
  }

  void Add(const pb::EvaluatePoliciesResponse& r) {
    if (r.index() < 0 || size_t(r.index()) >= want_ || seen_[r.index()]) {
      order_ = absl::InternalError(absl::StrCat("worker ", worker_id_, " sent result ", r.index(),
                                                " twice or outside the ", want_,
                                                " policies of the request"));
      return;
    }
    seen_[r.index()] = true;
    ++got_;
    out_[r.index()] = SliceResult{.result = EvalResultFromProto(r.evaluation()),
                                  .num_correct = r.num_correct(),
                                  .num_multiple_choice = r.num_multiple_choice()};
    FaultPoint("scheduler.evaluate");  // a batch is half answered
  }

  // The chunk's status once the call ended with `call`.
  absl::Status Finish(const absl::Status& call) const {
    RETURN_IF_ERROR(call);
    RETURN_IF_ERROR(order_);
    if (got_ != want_) {
      return WithRetryable(absl::UnavailableError(absl::StrCat("worker ", worker_id_, " returned ",
                                                               got_, " of ", want_, " results")),
                           true);
    }
    return absl::OkStatus();
  }

 private:
  const std::string worker_id_;
  const size_t want_;
  std::vector<bool> seen_;
  size_t got_ = 0;
  absl::Status order_ = absl::OkStatus();
  std::vector<SliceResult>& out_;
};

// One chunk on one lease, waiting for it (a retry).
absl::Status RunChunk(SearchDriver& driver, pb::EvaluatePoliciesRequest req,
                      const WorkerLease& lease, StepCancel* cancel, std::vector<SliceResult>& out) {
  req.mutable_header()->set_step_id(driver.NextStepId("evaluate"));
  ChunkResults results(lease.worker_id, size_t(req.policies_size()), out);
  const absl::Status s = lease.client->EvaluatePolicies(
      req, driver.dispatcher()->options().evaluate_deadline, cancel,
      [&](const pb::EvaluatePoliciesResponse& r) { results.Add(r); });
  return results.Finish(s);
}

}  // namespace

absl::StatusOr<std::vector<search::EvalResult>> RemotePolicyEvaluator::Evaluate(
    const std::vector<search::Policy>& policies, int version) {
  return EvaluateRaced(policies, version, {});
}

absl::StatusOr<std::vector<search::EvalResult>> RemotePolicyEvaluator::EvaluateRaced(
    const std::vector<search::Policy>& policies, int version, const search::RaceLimit& race) {
  if (policies.empty()) return std::vector<search::EvalResult>{};
  Dispatcher& d = *driver_->dispatcher();
  const int num_samples = driver_->prepared().num_samples();
  const std::vector<std::string> keys = CacheKeys(policies, version);
  std::map<std::string, std::string> stored;
  if (!keys.empty()) {
    absl::StatusOr<std::map<std::string, std::string>> got = d.store()->GetCachedEvaluations(keys);
    if (got.ok()) {
      stored = *std::move(got);
    } else {
      spdlog::warn("job={} evaluation cache unreadable (evaluating everything): {}",
                   driver_->job_id(), got.status().message());
    }
  }
  // Hits come from the cache, raced as a worker would race them; the rest go to the workers.
  std::vector<std::optional<search::EvalResult>> out(policies.size());
  std::vector<search::Policy> missing;
  std::vector<size_t> missing_at;
  search::RaceLimit missing_race = race;
  missing_race.extra.clear();
  const int batch = driver_->prepared().scoring_batch_size();
  for (size_t i = 0; i < policies.size(); ++i) {
    auto it = keys.empty() ? stored.end() : stored.find(keys[i]);
    if (it != stored.end())
      out[i] = CachedEvaluationResult(it->second, num_samples, batch, race, i);
    if (out[i].has_value()) continue;
    missing.push_back(policies[i]);
    missing_at.push_back(i);
    if (!race.extra.empty()) missing_race.extra.push_back(race.extra[i]);
  }
  if (!keys.empty()) {
    reused_ += int64_t(policies.size() - missing.size());
    d.metrics().evaluation_cache_hits->Increment(double(policies.size() - missing.size()));
    d.metrics().evaluation_cache_misses->Increment(double(missing.size()));
  }
  if (!missing.empty()) {
    ASSIGN_OR_RETURN(std::vector<search::EvalResult> fresh,
                     Dispatch(missing, version, missing_race));
    for (size_t j = 0; j < fresh.size(); ++j) {
      const size_t i = missing_at[j];
      if (!keys.empty() && CachedEvaluationStorable(fresh[j], num_samples)) {
        pending_cache_.emplace_back(keys[i], CachedEvaluationValue(fresh[j]));
      }
      out[i] = std::move(fresh[j]);
    }
  }
  std::vector<search::EvalResult> results;
  results.reserve(out.size());
  for (size_t i = 0; i < policies.size(); ++i) {
    ASSIGN_OR_RETURN(std::string hash, space_->Hash(policies[i]));
    ASSIGN_OR_RETURN(double flops, space_->FlopsRatio(policies[i]));
    evaluated_.push_back(search::EvaluatedJson(hash, version, *out[i], flops));
    results.push_back(*std::move(out[i]));
  }
  evaluations_ += int64_t(policies.size());
  d.metrics().evaluations->Increment(double(policies.size()));
  return results;
}

RemotePolicyEvaluator::~RemotePolicyEvaluator() {
  // Entries no generation's commit took (the search stopped early): written on their own.
  if (pending_cache_.empty()) return;
  if (absl::Status s = driver_->dispatcher()->store()->PutCachedEvaluations(pending_cache_);
      !s.ok()) {
    spdlog::warn("job={} evaluation cache not written (the job goes on): {}", driver_->job_id(),
                 s.message());
  }
}

CacheEntries RemotePolicyEvaluator::TakeCacheEntries() { return std::exchange(pending_cache_, {}); }

std::vector<std::string> RemotePolicyEvaluator::CacheKeys(
    const std::vector<search::Policy>& policies, int version) const {
  const std::string& evaluation_key = driver_->prepared().evaluation_key();
  if (!driver_->dispatcher()->options().evaluation_cache || evaluation_key.empty()) return {};
  std::string projector = "model";  // version 0: the model's own projector
  if (version != 0) {
    auto blob = driver_->projector_blobs().find(version);
    if (blob == driver_->projector_blobs().end() || blob->second.empty()) return {};
    projector = blob->second;
  }
  // The per-sample losses count positions of the job's sample order (in v1 keys: index order).
  const std::string order = absl::StrJoin(driver_->sample_order(), ",");
  // Every key hashes the same prefix, then the policy's ratios: the prefix is hashed once and its
  // state copied (the same bytes, so the same digests as hashing each whole text).
  Sha256 prefix;
  prefix.Update(absl::StrCat("prunesvc cached evaluation v2\ntenant ", driver_->tenant(),
                             "\nworker ", evaluation_key, "\nsample order ", order, "\nprojector ",
                             projector, "\nratios "));
  std::vector<std::string> keys;
  keys.reserve(policies.size());
  for (const search::Policy& p : policies) {
    absl::StatusOr<std::vector<double>> ratios = space_->UnitRatios(p);
    if (!ratios.ok()) return {};
    // The exact doubles the worker is sent (their bits, not a decimal rendering).
    Sha256 h = prefix;
    h.Update(absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(ratios->data()),
                                       ratios->size() * sizeof(double)));
    keys.push_back(DigestHex(h.Final()));
  }
  return keys;
}

absl::StatusOr<std::vector<search::EvalResult>> RemotePolicyEvaluator::Dispatch(
    const std::vector<search::Policy>& policies, int version, const search::RaceLimit& race) {
  Dispatcher& d = *driver_->dispatcher();
  const int num_samples = driver_->prepared().num_samples();
  const int batch = driver_->prepared().scoring_batch_size();
  // One worker at least (waiting for it), then as many more as are idle and have work: a policy
  // each, or, with more workers than policies, a slice of a policy's samples each.
  ASSIGN_OR_RETURN(WorkerLease first, d.Acquire(driver_->job_id(), driver_->priority(),
                                                [this] { return driver_->stopped(); }));
  std::vector<WorkerLease> leases = {first};
  const int useful = MaxUsefulChunks(int(policies.size()), num_samples, batch);
  for (WorkerLease& l : d.TryAcquireMore(driver_->job_id(), driver_->priority(), useful - 1)) {
    leases.push_back(std::move(l));
  }
  const std::vector<EvalChunk> chunks =
      PlanChunks(int(policies.size()), int(leases.size()), num_samples, batch);
  while (leases.size() > chunks.size()) {
    d.Release(leases.back(), false);
    leases.pop_back();
  }
  const size_t k = chunks.size();
  std::vector<std::vector<SliceResult>> parts(k);
  std::vector<absl::Status> results(k);
  std::vector<std::unique_ptr<ChunkResults>> collected(k);
  absl::BlockingCounter running{static_cast<int>(k)};
  // Every chunk's call is started from this thread (no thread per call); each ends on a transport
  // thread, which records it and hands its worker back.
  for (size_t c = 0; c < k; ++c) {
    StepCancel* cancel = driver_->NewCancel();
    const auto t0 = std::chrono::steady_clock::now();
    auto done = [&, c, cancel, t0](absl::Status s) {
      results[c] = collected[c] != nullptr ? collected[c]->Finish(s) : s;
      driver_->RecordStep(
          "evaluate", results[c],
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      driver_->DropCancel(cancel);
      d.NoteAffinity(driver_->job_id(), leases[c].worker_id);
      d.Release(leases[c], IsRetryable(results[c]));
      running.DecrementCount();
    };
    absl::StatusOr<pb::EvaluatePoliciesRequest> req =
        ChunkRequest(*driver_, *space_, policies, chunks[c], version, race);
    if (!req.ok()) {
      done(req.status());
      continue;
    }
    req->mutable_header()->set_step_id(driver_->NextStepId("evaluate"));
    collected[c] =
        std::make_unique<ChunkResults>(leases[c].worker_id, size_t(req->policies_size()), parts[c]);
    leases[c].client->StartEvaluatePolicies(
        *req, d.options().evaluate_deadline, cancel,
        [r = collected[c].get()](const pb::EvaluatePoliciesResponse& resp) { r->Add(resp); },
        std::move(done), d.step_threads());
  }
  if (after_dispatch_) std::exchange(after_dispatch_, nullptr)();
  running.Wait();
  // A chunk lost with its worker runs again elsewhere (retries with backoff).
  for (size_t c = 0; c < k; ++c) {
    if (results[c].ok()) continue;
    if (!IsRetryable(results[c])) return results[c];
    spdlog::warn("job={} evaluate on worker={} failed (retrying elsewhere): {}", driver_->job_id(),
                 leases[c].worker_id, results[c].message());
    d.metrics().retries->Increment();
    ASSIGN_OR_RETURN(auto req, ChunkRequest(*driver_, *space_, policies, chunks[c], version, race));
    RETURN_IF_ERROR(driver_->RunStep("evaluate", d.options().evaluate_deadline,
                                     [&](const WorkerLease& lease, StepCancel* cancel) {
                                       return RunChunk(*driver_, req, lease, cancel, parts[c]);
                                     }));
  }
  return Reassemble(chunks, parts, num_samples, race);
}

absl::StatusOr<std::vector<search::EvalResult>> RemotePolicyEvaluator::Reassemble(
    const std::vector<EvalChunk>& chunks, const std::vector<std::vector<SliceResult>>& parts,
    int num_samples, const search::RaceLimit& race) const {
  std::vector<search::EvalResult> out;
  std::vector<SliceResult> slices;  // of the policy being combined, in sample order
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (chunks[c].whole()) {
      for (const SliceResult& s : parts[c]) out.push_back(s.result);
      continue;
    }
    slices.push_back(parts[c].at(0));
    if (c + 1 < chunks.size() && chunks[c + 1].policy_begin == chunks[c].policy_begin) continue;
    search::EvalResult r;
    ASSIGN_OR_RETURN(r, CombineSlices(slices, num_samples));
    if (slices.size() > 1) driver_->dispatcher()->metrics().split_evaluations->Increment();
    slices.clear();
    // CombineSlices gives every sample's loss, so the race's answer is always known.
    std::optional<search::EvalResult> raced = RaceAsWorker(
        std::move(r), num_samples, driver_->prepared().scoring_batch_size(), race, out.size());
    if (!raced.has_value()) return absl::InternalError("combined slices lack sample losses");
    out.push_back(*std::move(raced));
  }
  return out;
}

absl::StatusOr<search::ProjectorUpdate> RemotePolicyEvaluator::TrainProjector(
    const std::vector<search::Policy>& top_k, int from_version) {
  ::prune::v1::TrainProjectorRequest req;
  req.mutable_header()->set_job_id(driver_->job_id());
  *req.mutable_spec() = driver_->spec_proto();
  req.set_projector_version(from_version);
  auto blob = driver_->projector_blobs().find(from_version);
  if (blob != driver_->projector_blobs().end()) req.set_projector_blob_id(blob->second);
  const int version = latest_ + 1;
  req.set_new_projector_version(version);
  req.mutable_sample_order()->Assign(driver_->sample_order().begin(),
                                     driver_->sample_order().end());
  for (const search::Policy& p : top_k) {
    ASSIGN_OR_RETURN(std::vector<double> ratios, space_->UnitRatios(p));
    req.add_top_policies()->mutable_ratios()->Assign(ratios.begin(), ratios.end());
  }
  ::prune::v1::TrainProjectorResponse resp;
  RETURN_IF_ERROR(driver_->RunStep(
      "train", driver_->dispatcher()->options().train_deadline,
      [&](const WorkerLease& lease, StepCancel* cancel) -> absl::Status {
        req.mutable_header()->set_step_id(driver_->NextStepId("train"));
        ASSIGN_OR_RETURN(resp, lease.client->TrainProjector(
                                   req, driver_->dispatcher()->options().train_deadline, cancel));
        return absl::OkStatus();
      }));
  if (resp.projector_version() != version || resp.projector_blob_id().empty()) {
    return absl::InternalError(absl::StrCat("TrainProjector answered version ",
                                            resp.projector_version(), " for ", version));
  }
  FaultPoint("scheduler.projector");  // trained and stored, not yet checkpointed
  driver_->projector_blobs()[version] = resp.projector_blob_id();
  latest_ = version;
  return search::ProjectorUpdate{
      .version = version, .loss_before = resp.loss_before(), .loss_after = resp.loss_after()};
}

}  // namespace prunesvc::server

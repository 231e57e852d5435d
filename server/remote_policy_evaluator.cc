#include "server/remote_policy_evaluator.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/dispatcher.h"
#include "server/search_driver.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;

absl::StatusOr<pb::EvaluatePoliciesRequest> ChunkRequest(SearchDriver& driver,
                                                         const search::PolicySpace& space,
                                                         const std::vector<search::Policy>& ps,
                                                         size_t begin, size_t end, int version) {
  pb::EvaluatePoliciesRequest req;
  req.mutable_header()->set_job_id(driver.job_id());
  *req.mutable_spec() = driver.spec_proto();
  req.set_projector_version(version);
  auto blob = driver.projector_blobs().find(version);
  if (blob != driver.projector_blobs().end()) req.set_projector_blob_id(blob->second);
  for (size_t i = begin; i < end; ++i) {
    ASSIGN_OR_RETURN(std::vector<double> ratios, space.UnitRatios(ps[i]));
    req.add_policies()->mutable_ratios()->Assign(ratios.begin(), ratios.end());
  }
  return req;
}

// One chunk on one lease: results into out[begin, end).
absl::Status RunChunk(SearchDriver& driver, pb::EvaluatePoliciesRequest req, size_t begin,
                      size_t end, const WorkerLease& lease, StepCancel* cancel,
                      std::vector<search::EvalResult>& out) {
  req.mutable_header()->set_step_id(driver.NextStepId("evaluate"));
  size_t next = 0;
  absl::Status order = absl::OkStatus();
  absl::Status s = lease.client->EvaluatePolicies(
      req, driver.dispatcher()->options().evaluate_deadline, cancel,
      [&](const pb::EvaluatePoliciesResponse& r) {
        if (r.index() != int(next) || begin + next >= end) {
          order = absl::InternalError(absl::StrCat("worker ", lease.worker_id, " sent result ",
                                                   r.index(), " out of order"));
          return;
        }
        const pb::PolicyEvaluation& e = r.evaluation();
        out[begin + next] = {.loss = e.loss(), .accuracy = e.accuracy(), .omega = e.omega()};
        ++next;
      });
  RETURN_IF_ERROR(s);
  RETURN_IF_ERROR(order);
  if (begin + next != end) {
    return WithRetryable(
        absl::UnavailableError(absl::StrCat("worker ", lease.worker_id, " returned ", next, " of ",
                                            end - begin, " results")),
        true);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<search::EvalResult>> RemotePolicyEvaluator::Evaluate(
    const std::vector<search::Policy>& policies, int version) {
  std::vector<search::EvalResult> out(policies.size());
  if (policies.empty()) return out;
  Dispatcher& d = *driver_->dispatcher();
  // One worker at least (waiting for it), then as many more as are idle, one chunk each.
  ASSIGN_OR_RETURN(WorkerLease first, d.Acquire(driver_->job_id(), driver_->priority(),
                                                [this] { return driver_->stopped(); }));
  std::vector<WorkerLease> leases = {first};
  for (WorkerLease& l :
       d.TryAcquireMore(driver_->job_id(), driver_->priority(), int(policies.size()) - 1)) {
    leases.push_back(std::move(l));
  }
  const size_t k = leases.size();
  std::vector<std::pair<size_t, size_t>> chunks;
  for (size_t c = 0; c < k; ++c) {
    chunks.emplace_back(policies.size() * c / k, policies.size() * (c + 1) / k);
  }
  std::vector<absl::Status> results(k);
  std::vector<std::thread> threads;
  for (size_t c = 0; c < k; ++c) {
    threads.emplace_back([&, c] {
      StepCancel* cancel = driver_->NewCancel();
      absl::StatusOr<::prune::v1::EvaluatePoliciesRequest> req =
          ChunkRequest(*driver_, *space_, policies, chunks[c].first, chunks[c].second, version);
      results[c] = req.ok() ? RunChunk(*driver_, *std::move(req), chunks[c].first, chunks[c].second,
                                       leases[c], cancel, out)
                            : req.status();
      driver_->DropCancel(cancel);
      d.NoteAffinity(driver_->job_id(), leases[c].worker_id);
      d.Release(leases[c], IsRetryable(results[c]));
    });
  }
  for (std::thread& t : threads) t.join();
  // A chunk lost with its worker runs again elsewhere (retries with backoff).
  for (size_t c = 0; c < k; ++c) {
    if (results[c].ok()) continue;
    if (!IsRetryable(results[c])) return results[c];
    d.metrics().retries->Increment();
    ASSIGN_OR_RETURN(auto req, ChunkRequest(*driver_, *space_, policies, chunks[c].first,
                                            chunks[c].second, version));
    RETURN_IF_ERROR(driver_->RunStep("evaluate", d.options().evaluate_deadline,
                                     [&](const WorkerLease& lease, StepCancel* cancel) {
                                       return RunChunk(*driver_, req, chunks[c].first,
                                                       chunks[c].second, lease, cancel, out);
                                     }));
  }
  for (const search::Policy& p : policies) {
    ASSIGN_OR_RETURN(std::string hash, space_->Hash(p));
    evaluated_.push_back({{"hash", hash}, {"projector_version", version}});
  }
  evaluations_ += int64_t(policies.size());
  d.metrics().evaluations->Increment(double(policies.size()));
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
  driver_->projector_blobs()[version] = resp.projector_blob_id();
  latest_ = version;
  return search::ProjectorUpdate{
      .version = version, .loss_before = resp.loss_before(), .loss_after = resp.loss_after()};
}

}  // namespace prunesvc::server

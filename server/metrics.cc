#include "server/metrics.h"

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/family.h"

namespace prunesvc::server {

SchedulerMetrics::SchedulerMetrics() : registry(std::make_shared<prometheus::Registry>()) {
  worker_registrations = &prometheus::BuildCounter()
                              .Name("prunesvc_worker_registrations_total")
                              .Help("Worker registrations accepted (including re-registrations).")
                              .Register(*registry)
                              .Add({});
  local_worker_restarts = &prometheus::BuildCounter()
                               .Name("prunesvc_local_worker_restarts_total")
                               .Help("Local worker processes restarted after they exited.")
                               .Register(*registry)
                               .Add({});
  auto& submissions = prometheus::BuildCounter()
                          .Name("prunesvc_submissions_total")
                          .Help("SubmitJob calls by outcome.")
                          .Register(*registry);
  submissions_accepted = &submissions.Add({{"outcome", "accepted"}});
  submissions_deduplicated = &submissions.Add({{"outcome", "deduplicated"}});
  submissions_invalid = &submissions.Add({{"outcome", "invalid"}});
  submissions_error = &submissions.Add({{"outcome", "error"}});
  auto& uploads = prometheus::BuildCounter()
                      .Name("prunesvc_uploads_total")
                      .Help("UploadDataset calls by outcome.")
                      .Register(*registry);
  uploads_stored = &uploads.Add({{"outcome", "stored"}});
  uploads_already_present = &uploads.Add({{"outcome", "already_present"}});
  uploads_invalid = &uploads.Add({{"outcome", "invalid"}});
  uploads_too_large = &uploads.Add({{"outcome", "too_large"}});
  uploads_error = &uploads.Add({{"outcome", "error"}});
  blob_bytes_stored = &prometheus::BuildCounter()
                           .Name("prunesvc_blob_bytes_stored_total")
                           .Help("Bytes written into the blob store (uploads and PutBlob).")
                           .Register(*registry)
                           .Add({});
  blob_bytes_served = &prometheus::BuildCounter()
                           .Name("prunesvc_blob_bytes_served_total")
                           .Help("Bytes read out of the blob store (FetchArtifact, FetchBlob).")
                           .Register(*registry)
                           .Add({});
  watch_resyncs = &prometheus::BuildCounter()
                       .Name("prunesvc_watch_resyncs_total")
                       .Help("WatchJob streams that fell behind and re-read the job store.")
                       .Register(*registry)
                       .Add({});
  auto& refused = prometheus::BuildCounter()
                      .Name("prunesvc_auth_refused_total")
                      .Help("Calls refused by authentication or authorization, by reason.")
                      .Register(*registry);
  auth_unauthenticated = &refused.Add({{"reason", "unauthenticated"}});
  auth_worker_unauthenticated = &refused.Add({{"reason", "worker_unauthenticated"}});
  auth_permission_denied = &refused.Add({{"reason", "permission_denied"}});
  quota_exceeded = &prometheus::BuildCounter()
                        .Name("prunesvc_quota_exceeded_total")
                        .Help("Calls refused because a tenant quota was reached.")
                        .Register(*registry)
                        .Add({});
}

std::vector<prometheus::MetricFamily> JobsCollector::Collect() const {
  auto counts = store_->CountJobsByState("");
  if (!counts.ok()) return {};
  prometheus::MetricFamily family;
  family.name = "prunesvc_jobs";
  family.help = "Jobs by state (all tenants).";
  family.type = prometheus::MetricType::Gauge;
  const std::pair<::prune::v1::JobState, const char*> states[] = {
      {::prune::v1::QUEUED, "queued"},       {::prune::v1::PREPARING, "preparing"},
      {::prune::v1::SEARCHING, "searching"}, {::prune::v1::FINALIZING, "finalizing"},
      {::prune::v1::SUCCEEDED, "succeeded"}, {::prune::v1::FAILED, "failed"},
      {::prune::v1::CANCELLED, "cancelled"}};
  for (const auto& [state, name] : states) {
    prometheus::ClientMetric m;
    m.label.push_back({"state", name});
    auto it = counts->find(state);
    m.gauge.value = it == counts->end() ? 0 : static_cast<double>(it->second);
    family.metric.push_back(std::move(m));
  }
  return {family};
}

std::vector<prometheus::MetricFamily> WorkersCollector::Collect() const {
  prometheus::MetricFamily family;
  family.name = "prunesvc_workers";
  family.help = "Registered workers by state.";
  family.type = prometheus::MetricType::Gauge;
  auto counts = table_->CountByState();
  const std::pair<prune::v1::WorkerState, const char*> states[] = {
      {prune::v1::WORKER_IDLE, "idle"},
      {prune::v1::WORKER_BUSY, "busy"},
      {prune::v1::WORKER_LOST, "lost"},
      {prune::v1::WORKER_DRAINING, "draining"}};
  for (const auto& [state, name] : states) {
    prometheus::ClientMetric m;
    m.label.push_back({"state", name});
    m.gauge.value = counts[state];
    family.metric.push_back(std::move(m));
  }
  return {family};
}

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartExposer(
    const std::string& bind_address,
    const std::vector<std::shared_ptr<prometheus::Collectable>>& collectables) {
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(bind_address, /*num_threads=*/2);
    for (const auto& c : collectables) exposer->RegisterCollectable(c);
    return exposer;
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve /metrics on ", bind_address, ": ", e.what(),
                     " (is the port in use? pick another with --metrics-port)"));
  }
}

}  // namespace prunesvc::server

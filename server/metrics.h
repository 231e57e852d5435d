// Scheduler metrics (docs/architecture.md §9): a prometheus-cpp registry with the scheduler's
// counters, a scrape-time collector for workers by state, and the process collector. Served by
// prometheus-cpp's pull Exposer (fine here: the scheduler never loads libtorch,
// docs/architecture.md §3). Counter/gauge handles are thread-safe; labels stay low-cardinality (no
// worker ids; job ids only on the dispatcher's two per-running-search gauges, removed when the
// search ends).
#ifndef PRUNESVC_SERVER_METRICS_H_
#define PRUNESVC_SERVER_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/process_metrics.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/job_store.h"
#include "server/worker_table.h"

namespace prunesvc::server {

struct SchedulerMetrics {
  SchedulerMetrics();

  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Counter* worker_registrations;
  prometheus::Counter* local_worker_restarts;

  // prunesvc_submissions_total{outcome="accepted|deduplicated|invalid|error"}.
  prometheus::Counter* submissions_accepted;
  prometheus::Counter* submissions_deduplicated;
  prometheus::Counter* submissions_invalid;
  prometheus::Counter* submissions_error;
  // prunesvc_uploads_total{outcome="stored|already_present|invalid|too_large|error"}.
  prometheus::Counter* uploads_stored;
  prometheus::Counter* uploads_already_present;
  prometheus::Counter* uploads_invalid;
  prometheus::Counter* uploads_too_large;
  prometheus::Counter* uploads_error;
  // prunesvc_blob_bytes_stored_total / _served_total: bytes written into / read out of the blob
  // store (UploadDataset, PutBlob; FetchArtifact, FetchBlob).
  prometheus::Counter* blob_bytes_stored;
  prometheus::Counter* blob_bytes_served;
  // prunesvc_watch_resyncs_total: a WatchJob client fell more than the backlog behind (or saw a
  // gap) and re-read the store.
  prometheus::Counter* watch_resyncs;
  // Refused calls: no or unknown client token; no or wrong worker token (or a blob the worker
  // may not fetch); a role or worker that may not do what it asked.
  prometheus::Counter* auth_unauthenticated;
  prometheus::Counter* auth_worker_unauthenticated;
  prometheus::Counter* auth_permission_denied;
  prometheus::Counter* quota_exceeded;
};

// prunesvc_jobs{state="queued|preparing|searching|finalizing|succeeded|failed|cancelled"}, from
// JobStore::CountJobsByState when scraped (all tenants). A store error yields no samples.
class JobsCollector : public prometheus::Collectable {
 public:
  explicit JobsCollector(JobStore* store) : store_(store) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  JobStore* const store_;
};

// prunesvc_workers{state="idle|busy|lost|draining"}, computed when scraped.
class WorkersCollector : public prometheus::Collectable {
 public:
  explicit WorkersCollector(WorkerTable* table) : table_(table) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  WorkerTable* const table_;
};

// Starts the exposer on `bind_address` ("0.0.0.0:9464"; port 0 picks a free one) serving all
// collectables at /metrics. The exposer keeps only weak pointers: the caller owns them. Returns an
// error instead of throwing when the port is taken.
absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartExposer(
    const std::string& bind_address,
    const std::vector<std::shared_ptr<prometheus::Collectable>>& collectables);

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_METRICS_H_

// Runs jobs on the registered workers (docs/architecture.md §1, §7): one SearchDriver thread per
// running job (search_driver.h) — never a gRPC reactor thread — and a pool that leases idle workers
// to the drivers' steps.
//
// Placement: a step asks for a worker with its job's priority; the pool grants idle workers to
// the highest-priority waiter first and, among equal priorities, to the one that has waited
// longest — so jobs of one priority take turns (round robin), and a higher-priority job's steps
// are dispatched before a lower one's. A step prefers workers that already prepared its job
// (affinity: their prepared state is warm). A generation's evaluations may take several idle
// workers at once (TryAcquireMore), but only when nobody of equal or higher priority is waiting,
// and only up to the job's fair share: the live workers divided among the running jobs of equal
// or higher priority (rounded up). Without the cap the first of 8 jobs to reach its generation
// took 32 of 64 workers for one-policy chunks while the others waited for them; with it each
// takes 8, four policies each (issue 20, figure 5's 8-job row).
// A worker whose step failed in a retryable way (died, timed out, out of memory) is avoided for
// `quarantine` before it is leased again.
//
// Thread-safe. Enqueue/Cancel never block (the JobRunner contract).
#ifndef PRUNESVC_SERVER_DISPATCHER_H_
#define PRUNESVC_SERVER_DISPATCHER_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/thread_cache.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/job_runner.h"
#include "server/job_store.h"
#include "server/registry_service.h"
#include "server/worker_client.h"
#include "server/worker_table.h"

namespace prunesvc::server {

class SearchDriver;

struct DispatcherOptions {
  // Per-step deadlines (a step past its deadline loses its worker and is retried elsewhere).
  absl::Duration prepare_deadline = absl::Minutes(30);
  absl::Duration evaluate_deadline = absl::Minutes(30);
  absl::Duration train_deadline = absl::Minutes(30);
  absl::Duration finalize_deadline = absl::Minutes(60);
  int max_attempts = 4;                                    // per step, across workers
  absl::Duration retry_backoff = absl::Milliseconds(200);  // doubles per attempt
  absl::Duration quarantine = absl::Seconds(5);
  int max_running_jobs = 16;  // drivers running at once; further jobs wait QUEUED
  // Reuse evaluations across a tenant's jobs (RemotePolicyEvaluator; JobStore's cache;
  // --evaluation-cache): docs/PERFORMANCE.md measures what it saves and costs.
  bool evaluation_cache = true;
  // A tenant's running-jobs quota (0 = none beyond max_running_jobs); unset = no per-tenant
  // quota. A job over its tenant's quota waits QUEUED while later jobs of other tenants start.
  std::function<int64_t(const std::string& tenant)> tenant_max_running;
  // A commit the store refuses for want of space (RESOURCE_EXHAUSTED: the state dir is full) is
  // retried after this, doubling up to commit_retry_max, until it succeeds or the job stops: a
  // job waits for space rather than failing (its failure could not be recorded either).
  absl::Duration commit_retry_backoff = absl::Seconds(1);
  absl::Duration commit_retry_max = absl::Seconds(30);
};

// The scheduler's step metrics (docs/architecture.md §9; low-cardinality labels only).
struct DispatcherMetrics {
  explicit DispatcherMetrics(prometheus::Registry& registry);
  prometheus::Family<prometheus::Counter>* steps;           // {step, outcome}
  prometheus::Family<prometheus::Histogram>* step_seconds;  // {step}
  prometheus::Counter* retries;
  prometheus::Counter* commit_retries;  // store commits retried for want of space
  prometheus::Counter* evaluations;
  prometheus::Counter* split_evaluations;  // policies scored in sample slices
  // Policies found in / missing from the evaluation cache across jobs ({result="hit"|"miss"}).
  prometheus::Counter* evaluation_cache_hits;
  prometheus::Counter* evaluation_cache_misses;
  prometheus::Gauge* queue_depth;  // steps waiting for a worker
  prometheus::Gauge* running_jobs;
  // Per running search (the dashboard's one per-job series; removed when its driver ends):
  // prunesvc_search_best_accuracy / _best_flops_ratio {job_id}, the best policy so far.
  prometheus::Family<prometheus::Gauge>* search_best_accuracy;
  prometheus::Family<prometheus::Gauge>* search_best_flops_ratio;
};

class Dispatcher : public JobRunner, public BlobAccess {
 public:
  // None of the pointers is owned; all must outlive the dispatcher. `blobs` (may be null: then
  // jobs on blob:// models fail) holds uploaded models' manifests.
  Dispatcher(DispatcherOptions options, JobStore* store, EventHub* hub, WorkerTable* table,
             WorkerConnector* connector, prometheus::Registry* registry,
             BlobStore* blobs = nullptr);
  ~Dispatcher() override;

  void Enqueue(const std::string& job_id) override;
  void Cancel(const std::string& job_id) override;
  // Enqueues every non-terminal job in the store (scheduler start-up: resume).
  absl::Status ResumeAll();
  // Stops every driver without changing its job's state (they resume on the next start) and
  // waits for them.
  void Shutdown();

  // ---- for drivers ----
  // Blocks until a worker is granted (see the file comment) or `stop()` → Cancelled.
  absl::StatusOr<WorkerLease> Acquire(const std::string& job_id, int priority,
                                      const std::function<bool()>& stop);
  // Up to `max` more idle workers now, when no waiter of equal or higher priority waits, and no
  // more than the job's fair share in all (the file comment).
  std::vector<WorkerLease> TryAcquireMore(const std::string& job_id, int priority, int max);
  // `failed`: the step failed in a retryable way on it (quarantined for a while).
  void Release(const WorkerLease& lease, bool failed);
  // The blobs (datasets, projectors) the job's steps read, and whose index (tenant) resolves
  // them: what a worker leased to the job may fetch (BlobAccess).
  void SetJobBlobs(const std::string& job_id, const std::string& tenant,
                   std::set<std::string> blob_ids);
  absl::StatusOr<std::string> FetchTenant(const std::string& worker_id,
                                          const std::string& blob_id) const override;
  absl::Status MayPut(const std::string& worker_id) const override;
  // The running search's best policy so far, for the per-job gauges (DispatcherMetrics).
  void ReportSearchBest(const std::string& job_id, double accuracy, double flops_ratio);
  // Workers that ran a step of the job (affinity), and recording one.
  void NoteAffinity(const std::string& job_id, const std::string& worker_id);

  const DispatcherOptions& options() const { return options_; }
  DispatcherMetrics& metrics() { return metrics_; }
  JobStore* store() { return store_; }
  BlobStore* blobs() { return blobs_; }
  EventHub* hub() { return hub_; }
  // Threads for blocking work beside the drivers, reused: each generation's commit, and the step
  // calls of transports without an asynchronous API (WorkerClient::StartEvaluatePolicies' default;
  // the gRPC transport starts a generation's calls from the driver's thread).
  ThreadCache& step_threads() { return step_threads_; }
  // Steps waiting for a worker (tests wait on it).
  int waiting() const;

 private:
  struct Waiter {
    int priority;
    int64_t ticket;
    std::string job_id;
  };
  void StartDriver(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts queued jobs, in order, while there is room overall and in their tenants' quotas.
  void StartRunnableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool TenantHasRoomLocked(const std::string& tenant) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DriverFinished(const std::string& job_id);
  // Idle workers (registered, not lost, not leased, not quarantined), affinity first.
  std::vector<::prune::v1::WorkerInfo> IdleWorkersLocked(const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsHeadLocked(int64_t ticket) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The most workers TryAcquireMore lets a job of `priority` hold (≥ 1), and how many it holds.
  int FairShareLocked(const std::string& job_id, int priority) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int LeasesOfLocked(const std::string& job_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  WorkerLease LeaseLocked(const ::prune::v1::WorkerInfo& w, const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const DispatcherOptions options_;
  JobStore* const store_;
  BlobStore* const blobs_;
  EventHub* const hub_;
  WorkerTable* const table_;
  WorkerConnector* const connector_;
  DispatcherMetrics metrics_;

  mutable absl::Mutex mu_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, std::unique_ptr<SearchDriver>> drivers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> finished_threads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> queued_jobs_ ABSL_GUARDED_BY(mu_);          // waiting for room, in order
  std::map<std::string, std::string> tenant_of_ ABSL_GUARDED_BY(mu_);  // queued and running jobs
  std::map<std::string, int> running_by_tenant_ ABSL_GUARDED_BY(mu_);
  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  int64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, std::string> leased_ ABSL_GUARDED_BY(mu_);  // worker id → job id
  // Per running job: its tenant and the blobs its steps may fetch (SetJobBlobs).
  // Per running search: its best-accuracy and best-FLOPs gauges (ReportSearchBest).
  std::map<std::string, std::pair<prometheus::Gauge*, prometheus::Gauge*>> search_gauges_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::pair<std::string, std::set<std::string>>> job_blobs_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Time> quarantined_ ABSL_GUARDED_BY(mu_);  // until
  std::map<std::string, std::set<std::string>> affinity_ ABSL_GUARDED_BY(mu_);
  // Per running job that asked for a worker: the priority it asked with (fair shares).
  std::map<std::string, int> priority_of_ ABSL_GUARDED_BY(mu_);
  // Bumped when a worker is released or a waiter leaves: Acquire's waiters wait for a change.
  int64_t wake_seq_ ABSL_GUARDED_BY(mu_) = 0;
  ThreadCache step_threads_;  // thread-safe
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_DISPATCHER_H_

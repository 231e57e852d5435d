// PruningService (proto/prune/v1/pruning_service.proto): the scheduler's client API, backed by
// the JobStore (jobs, events, the blob index), the BlobStore (bytes), the EventHub (live events
// for WatchJob) and a JobRunner (the dispatcher; a no-op until the scheduler sets one, so jobs
// stay QUEUED).
//
// Threading: callback-API reactors. Anything that may block (SQLite transactions, which fsync;
// dataset validation; blob commits) runs on the ThreadPool, never on a reactor thread; blob
// chunks (<= 1 MiB) are read and written on reactor threads. Every streaming reactor keeps one
// write in flight and frees itself in OnDone.
//
// Tenancy: every call is authenticated first (server/auth.h: UNAUTHENTICATED without a valid
// token) and acts for the caller's tenant: another tenant's jobs, datasets and artifacts are
// NOT_FOUND, also through ListJobs, WatchJob, CancelJob, FetchArtifact and a dataset id in
// SubmitJob; dataset de-duplication is per tenant. The admin role sees every tenant's jobs and
// the workers (ListWorkers is admin only). Quotas (queued jobs, stored bytes) are per tenant
// and RESOURCE_EXHAUSTED names the quota; the running-jobs quota is the dispatcher's.
//
// Thread-safety: thread-safe; the dependencies must outlive the service and every call.
#ifndef PRUNESVC_SERVER_PRUNING_SERVICE_H_
#define PRUNESVC_SERVER_PRUNING_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job_spec.h"
#include "prune/v1/pruning_service.grpc.pb.h"
#include "server/auth.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/job_runner.h"
#include "server/job_store.h"
#include "server/metrics.h"
#include "server/storage_sweeper.h"
#include "server/thread_pool.h"
#include "server/worker_table.h"

namespace prunesvc::server {

inline constexpr int64_t kDefaultMaxUploadBytes = int64_t{256} << 20;
inline constexpr int64_t kMaxChunkBytes = int64_t{1} << 20;
inline constexpr size_t kMaxDatasetNameBytes = 256;

struct PruningServiceOptions {
  // Realpath'ed directories a job's model_uri must lie in; empty = every model is refused.
  std::vector<std::string> allowed_model_roots;
  int64_t max_upload_bytes = kDefaultMaxUploadBytes;
  // Where uploads are spooled while being validated (same file system as the blobs is best).
  std::string upload_dir;
  // A watcher more than this many live events behind drops its queue and re-reads the store.
  int max_watch_backlog = 256;
  // Limits (issue 16); exceeding one is RESOURCE_EXHAUSTED naming it and its value.
  int max_watchers_per_job = 256;  // concurrent WatchJob streams on one job
};

// RESOURCE_EXHAUSTED "quota NAME: tenant "T" WHAT (its limit is LIMIT); ADVICE".
absl::Status QuotaError(absl::string_view quota, const std::string& tenant, absl::string_view what,
                        int64_t limit, absl::string_view advice);

// Jobs stay QUEUED: what the scheduler runs until a dispatcher is set.
class NoopJobRunner final : public JobRunner {
 public:
  void Enqueue(const std::string&) override {}
  void Cancel(const std::string&) override {}
};

struct PruningServiceDeps {
  JobStore* store = nullptr;
  BlobStore* blobs = nullptr;
  EventHub* hub = nullptr;
  ThreadPool* pool = nullptr;  // job RPCs, watch replays, artifact reads
  // Dataset validation and storing (seconds for a large set), so that uploads never hold up
  // the job RPCs; nullptr = `pool`.
  ThreadPool* upload_pool = nullptr;
  WorkerTable* workers = nullptr;
  SchedulerMetrics* metrics = nullptr;
  // Woken after DeleteJob / DeleteDataset so freed blobs go soon; nullptr = none.
  PeriodicSweeper* sweeper = nullptr;
  // Who calls, and the tenants' quotas; nullptr = open (every caller the admin of tenant "",
  // no quota).
  const Authenticator* auth = nullptr;
};

// Concurrent WatchJob streams per job. Thread-safe.
class WatcherCounts {
 public:
  explicit WatcherCounts(int max) : max_(max) {}
  // False when the job has max_ already.
  bool TryAdd(const std::string& job_id);
  void Remove(const std::string& job_id);
  int max() const { return max_; }

 private:
  const int max_;
  absl::Mutex mu_;
  std::map<std::string, int> counts_ ABSL_GUARDED_BY(mu_);
};

class PruningServiceImpl final : public ::prune::v1::PruningService::CallbackService {
 public:
  PruningServiceImpl(PruningServiceDeps deps, PruningServiceOptions options);

  // Replaces the runner (nullptr = the no-op one). `runner` must outlive the service.
  void SetJobRunner(JobRunner* runner);
  JobRunner* runner() const { return runner_.load(); }

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const ::prune::v1::SubmitJobRequest* req,
                                      ::prune::v1::SubmitJobResponse* resp) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const ::prune::v1::GetJobRequest* req,
                                   ::prune::v1::Job* resp) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const ::prune::v1::ListJobsRequest* req,
                                     ::prune::v1::ListJobsResponse* resp) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const ::prune::v1::CancelJobRequest* req,
                                      ::prune::v1::Job* resp) override;
  grpc::ServerWriteReactor<::prune::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* ctx, const ::prune::v1::WatchJobRequest* req) override;
  grpc::ServerReadReactor<::prune::v1::UploadDatasetRequest>* UploadDataset(
      grpc::CallbackServerContext* ctx, ::prune::v1::UploadDatasetResponse* resp) override;
  grpc::ServerReadReactor<::prune::v1::UploadModelRequest>* UploadModel(
      grpc::CallbackServerContext* ctx, ::prune::v1::UploadModelResponse* resp) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const ::prune::v1::ListModelsRequest* req,
                                       ::prune::v1::ListModelsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx,
                                        const ::prune::v1::DeleteModelRequest* req,
                                        ::prune::v1::DeleteModelResponse* resp) override;
  grpc::ServerWriteReactor<::prune::v1::FetchArtifactResponse>* FetchArtifact(
      grpc::CallbackServerContext* ctx, const ::prune::v1::FetchArtifactRequest* req) override;
  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx,
                                        const ::prune::v1::ListWorkersRequest* req,
                                        ::prune::v1::ListWorkersResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* ctx,
                                      const ::prune::v1::DeleteJobRequest* req,
                                      ::prune::v1::DeleteJobResponse* resp) override;
  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* ctx,
                                         const ::prune::v1::ListDatasetsRequest* req,
                                         ::prune::v1::ListDatasetsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteDataset(grpc::CallbackServerContext* ctx,
                                          const ::prune::v1::DeleteDatasetRequest* req,
                                          ::prune::v1::DeleteDatasetResponse* resp) override;

  // The blocking bodies of the unary RPCs (run on the pool; public for tests).
  absl::StatusOr<::prune::v1::SubmitJobResponse> DoSubmit(const Principal& caller,
                                                          const ::prune::v1::JobSpec& spec);
  absl::StatusOr<::prune::v1::Job> DoGet(const Principal& caller, const std::string& job_id);
  absl::StatusOr<::prune::v1::ListJobsResponse> DoList(const Principal& caller,
                                                       const ::prune::v1::ListJobsRequest& req);
  absl::StatusOr<::prune::v1::Job> DoCancel(const Principal& caller, const std::string& job_id,
                                            const std::string& reason);

 private:
  // The authenticated caller (counted in the metrics when refused).
  absl::StatusOr<Principal> Caller(grpc::CallbackServerContext* ctx) const;
  TenantQuota QuotaOf(const std::string& tenant) const;
  // The queued-jobs and stored-bytes quotas admit one more job of `tenant`.
  absl::Status CheckSubmitQuotas(const std::string& tenant) const;
  // A file:// model_uri resolves (realpath) inside an allowed root; a blob:// one names a model
  // the tenant uploaded.
  absl::Status CheckModelUri(const std::string& tenant, const std::string& uri) const;
  // `id` is a dataset the tenant has uploaded.
  // spec.warm_start_job_id, when set: a SUCCEEDED job of `tenant` with the same inputs.
  absl::Status CheckWarmStart(const std::string& tenant, const JobSpec& spec) const;
  absl::Status CheckDataset(const std::string& tenant, const std::string& id,
                            const char* field) const;

  const PruningServiceDeps deps_;
  const PruningServiceOptions options_;
  NoopJobRunner noop_runner_;
  std::atomic<JobRunner*> runner_;
  WatcherCounts watchers_;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_PRUNING_SERVICE_H_

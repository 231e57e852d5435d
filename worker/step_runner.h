// The worker's side of the PruningWorker protocol (proto/prune/v1/worker.proto): turns each step
// request into the engine's steps (worker/prune/steps.h) and their results into responses.
//
//  - Prepared state is cached: an LRU of PreparedJobs keyed by (job id, the spec's bytes), bounded
//    by `max_prepared_jobs`, so the steps of one job land warm (a second Prepare of the same job
//    is a cache hit, counted in prunesvc_worker_cache_total{result="hit"}). A step that finds no
//    prepared state prepares it first (steps are idempotent given their inputs).
//  - Datasets and projectors arrive as blob ids, fetched through the BlobCache (local disk, by
//    sha256); a dataset's content hash must equal its id. Trained projectors and artifacts are
//    uploaded with PutBlob.
//  - A file:// model_uri, resolved with realpath, must lie under one of `allowed_model_roots`
//    (also resolved): on a cluster the worker may see other paths than the scheduler, so it
//    checks again. No roots = every file:// model is refused. A blob:// model_uri (uploaded with
//    UploadModel) is fetched through the BlobCache — the manifest, then each file, verified
//    against its sha256 — and laid out once as CACHE_DIR/models/<hex>/ (hard links to the cached
//    blobs, built in a temp directory and renamed into place, so a directory there is complete);
//    later jobs on the same model reuse it. No shared volume is needed.
//  - Steps run one at a time (one device): a step waits for the device, polling its stop
//    function. A step stops at the next safe point when its stop function says so — the call's
//    context was cancelled — or when CancelSteps named its step id (the heartbeat's
//    cancel_steps).
//  - Errors are absl::Status; StepErrorOf classifies them for the scheduler (retryable or not).
//
// Thread-safe: any number of calls may arrive; they serialize on the device.
#ifndef PRUNESVC_WORKER_STEP_RUNNER_H_
#define PRUNESVC_WORKER_STEP_RUNNER_H_

#include <functional>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prune/v1/worker.pb.h"
#include "worker/blob_client.h"
#include "worker/prune/steps.h"
#include "worker/registrar.h"
#include "worker/step_executor.h"

namespace prunesvc::worker {

struct StepRunnerOptions {
  std::string cache_dir;                         // blobs and scratch space
  std::vector<std::string> allowed_model_roots;  // realpath'ed at Create
  size_t max_prepared_jobs = 2;
  // Jobs with the same model, samples and pruning choices share their preparation
  // (prune/preparation_cache.h); this many are kept when no prepared job holds them.
  int kept_preparations = 1;
  std::string device = "cpu";
  std::string device_name;  // CPU model or GPU name (model::DeviceInfo), in the evaluation key
  int threads = 0;
  int batch_size = 16;
  // Per prepared job: EvaluateMany's activations kept across generations (0 = none).
  int64_t activation_cache_bytes = int64_t(256) << 20;
  // Testing only: "STEP:oom" throws std::bad_alloc inside step STEP ("prepare", "evaluate",
  // "train", "finalize") at the model boundary, as a real out-of-memory fault would.
  std::string inject_fault;
};

// How the scheduler should treat a failed step.
::prune::v1::StepError StepErrorOf(const absl::Status& status, std::string_view phase);

class StepRunner : public StepExecutor {
 public:
  // `blobs` is not owned and must outlive the runner.
  static absl::StatusOr<std::unique_ptr<StepRunner>> Create(StepRunnerOptions options,
                                                            BlobCache* blobs,
                                                            prometheus::Registry* registry);
  ~StepRunner();

  absl::StatusOr<::prune::v1::PrepareResponse> Prepare(const ::prune::v1::PrepareRequest& req,
                                                       const StopFn& stop) override;
  // `emit` is called with each policy's result as soon as it is ready (PreparedJob::Evaluate:
  // group by group on the whole sample set, each with its index).
  absl::Status EvaluatePolicies(const ::prune::v1::EvaluatePoliciesRequest& req, const StopFn& stop,
                                const EmitFn& emit) override;
  absl::StatusOr<::prune::v1::TrainProjectorResponse> TrainProjector(
      const ::prune::v1::TrainProjectorRequest& req, const StopFn& stop) override;
  absl::StatusOr<::prune::v1::FinalizeResponse> Finalize(const ::prune::v1::FinalizeRequest& req,
                                                         const StopFn& stop) override;

  // Steps whose id is named stop at their next safe point (also ones not started yet).
  void CancelSteps(const std::vector<std::string>& step_ids) override;
  std::vector<std::string> ActiveSteps() override;
  // Job ids with prepared state here (empty while a step holds the device).
  std::vector<std::string> CachedJobs() override;

 private:
  struct CacheEntry {
    std::string key;
    std::string job_id;
    std::unique_ptr<prune::PreparedJob> job;
  };
  class StepScope;

  StepRunner(StepRunnerOptions options, BlobCache* blobs, prometheus::Registry* registry);
  // The prepared job for the request's header and spec, preparing it if needed (the device lock
  // is held by the caller).
  absl::StatusOr<prune::PreparedJob*> GetOrPrepare(const ::prune::v1::StepHeader& header,
                                                   const ::prune::v1::JobSpec& spec,
                                                   prune::StepContext& ctx, bool* cache_hit);
  absl::StatusOr<prune::PrepareOptions> ResolvePrepareOptions(const ::prune::v1::JobSpec& spec);
  absl::StatusOr<std::string> ResolveModelDir(const std::string& uri);
  // CACHE_DIR/models/<hex> for model id "sha256:<hex>", fetched and laid out first if needed.
  absl::StatusOr<std::string> EnsureBlobModel(const std::string& model_id);
  absl::StatusOr<std::string> FetchDataset(const std::string& id, const std::string& field);
  absl::Status EnsureProjector(prune::PreparedJob& job, int version, const std::string& blob_id);
  // PrepareResponse.evaluation_key of `job` on this worker (worker.proto); on a step's thread
  // (it reads the thread count in effect).
  absl::StatusOr<std::string> EvaluationKey(const prune::PreparedJob& job,
                                            const std::string& model_sha256) const;
  absl::StatusOr<std::string> UploadProjector(const prune::ProjectorWeights& w, int version);
  absl::Status MaybeInjectFault(std::string_view step) const;

  // Constant after construction.
  const StepRunnerOptions options_;
  BlobCache* const blobs_;
  prometheus::Family<prometheus::Counter>* cache_family_;
  prometheus::Counter* cache_hits_;
  prometheus::Counter* cache_misses_;
  prometheus::Family<prometheus::Counter>* steps_family_;
  prometheus::Family<prometheus::Histogram>* step_seconds_family_;
  prometheus::Counter* evaluations_;

  prune::PreparationCache preparations_;  // thread-safe itself

  // Held for the whole of a step: one step on the device at a time. Guards the cache.
  mutable absl::Mutex device_mu_;
  std::list<CacheEntry> cache_ ABSL_GUARDED_BY(device_mu_);  // most recently used first

  mutable absl::Mutex mu_;
  std::set<std::string> active_steps_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> cancelled_steps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_STEP_RUNNER_H_

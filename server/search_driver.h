// One job's run on the scheduler (docs/architecture.md §5, §7): Prepare on a worker → the policy
// space built from its response (common/job_spec.h BuildPolicySpace; the scheduler never loads a
// model) → the strategy — EFFICIENTLLAVA / RANDOM_SEARCH drive common/'s EvolutionarySearch through
// a RemotePolicyEvaluator that splits each generation's cache misses across idle workers and
// reassembles them in order; UNIFORM and OWL solve their ratios from Prepare's data → Finalize on
// a worker (the artifact arrives as a blob) → SUCCEEDED.
//
// Durability: every state change, generation and projector update is one JobStore::Commit of the
// job row, its events and (during the search) the checkpoint — its head (the SearchState less its
// cache, the projector blobs) and the generation's new cache entries and evaluation records,
// appended to the job's checkpoint log (server/search_checkpoint.h) — so a restarted scheduler
// resumes the search at the last committed generation boundary with no event lost or renumbered.
// A generation's commit runs while the next generation is evaluated (one in flight; a crash may
// resume one generation earlier), every other commit on the driver's thread after it. Events are
// published to the EventHub after each commit.
//
// Failures: a step is retried on another worker with backoff up to max_attempts when the failure
// is retryable (worker died, timed out, out of memory); bad input fails the job at once with the
// step's code and message. An unreachable budget FAILS the job with FAILED_PRECONDITION naming
// the smallest reachable ratio. Cancel() stops the driver at its next step and cancels its
// in-flight worker calls; the job's CANCELLED state was committed by the caller.
//
// Determinism: for a fixed seed the evaluated sequence and final policy equal prune-local's
// (evaluations are pure functions of policy, projector version and the job's inputs, whichever
// worker computes them).
//
// Thread-compatible: Run() on the dispatcher's thread for this job; Cancel() from any thread.
#ifndef PRUNESVC_SERVER_SEARCH_DRIVER_H_
#define PRUNESVC_SERVER_SEARCH_DRIVER_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/evolution.h"
#include "common/job_spec.h"
#include "nlohmann/json.hpp"
#include "prune/v1/worker.pb.h"
#include "server/job_store.h"
#include "server/search_checkpoint.h"
#include "server/worker_client.h"

namespace prunesvc::server {

class Dispatcher;

class SearchDriver {
 public:
  SearchDriver(Dispatcher* dispatcher, std::string job_id);

  // Runs the job to a terminal state (or until cancelled / shut down).
  void Run();
  // From any thread: stop at the next step; in-flight worker calls are cancelled.
  void Cancel();
  const std::string& job_id() const { return job_id_; }
  const std::string& tenant() const { return tenant_; }

  // ---- for RemotePolicyEvaluator ----
  // One step with retries on other workers (see the file comment). `call` runs on a lease.
  absl::Status RunStep(const std::string& kind, absl::Duration deadline,
                       const std::function<absl::Status(const WorkerLease&, StepCancel*)>& call);
  bool stopped() const { return stop_.load(); }
  // Counts one step and its wall time (prunesvc_steps_total, prunesvc_step_seconds); RunStep
  // does it for its attempts, the evaluator for the chunks it runs in parallel.
  void RecordStep(const std::string& kind, const absl::Status& status, double seconds);
  // A fresh StepCancel that Cancel() reaches; release with DropCancel.
  StepCancel* NewCancel();
  void DropCancel(StepCancel* c);
  std::string NextStepId(const std::string& kind);
  const ::prune::v1::JobSpec& spec_proto() const { return spec_proto_; }
  int priority() const { return priority_; }
  Dispatcher* dispatcher() { return dispatcher_; }
  // The worker's answer to the job's Prepare (sample count, scoring batch, …).
  const ::prune::v1::PrepareResponse& prepared() const { return prepared_; }
  // Projector blobs by version (0 = the model's own: no blob).
  std::map<int, std::string>& projector_blobs() { return projector_blobs_; }
  // The order the job's workers score the samples in (PrepareResponse.sample_order, or a
  // resumed checkpoint's): sent with every EvaluatePolicies and TrainProjector; empty = each
  // worker's own.
  const std::vector<int>& sample_order() const { return sample_order_; }

 private:
  absl::Status RunJob();
  // A blob:// model's blobs, from its manifest (model_blobs_).
  absl::Status LoadModelBlobs();
  absl::Status Prepare();
  absl::Status Search();
  absl::Status SolveUniform();
  // UNIFORM's and OWL's continuous per-unit ratios at the budget (strategies and search seeds).
  absl::StatusOr<std::vector<double>> UniformRatios() const;
  absl::StatusOr<std::vector<double>> OwlRatios() const;
  // spec_.warm_start_job_id's ranked policies (its last scored generation, best first, at most
  // `limit`) as unit ratios of its own grid, for SearchConfig::seed_unit_ratios.
  absl::StatusOr<std::vector<std::vector<double>>> WarmStartRatios(size_t limit) const;
  absl::Status SolveOwl();
  absl::Status Finalize();
  // Commits (publishing the events); FAILED_PRECONDITION when the job turned terminal.
  absl::Status Commit(const JobMutation& mutation, std::vector<::prune::v1::JobEvent> events,
                      const std::optional<Checkpoint>& checkpoint = std::nullopt);
  absl::Status Transition(::prune::v1::JobState to, const std::string& reason);
  void Fail(const absl::Status& status);
  // The generations, each written (its checkpoint, events and job row) while the next one is
  // evaluated: at most one write in flight (pending_commit_), awaited before the next is
  // prepared and before Search returns. A crash therefore resumes at most one generation earlier
  // than with a write on the critical path; nothing the search decides depends on the write.
  // Generation g's write starts once g + 1's calls are out (RemotePolicyEvaluator's after-dispatch
  // hook), so its serialization and SQLite work do not compete with the call starts for the
  // scheduler's CPU, or, when g + 1 dispatches nothing, just before g + 1's state replaces g's
  // (EvolutionarySearch::Step's hook): its snapshot is always of g's state.
  absl::Status SearchGenerations();
  struct GenerationCommit {
    JobMutation mutation;
    std::vector<::prune::v1::JobEvent> events;
    int generation = 0;
    // Takes the snapshot when the write starts (the search's state is the generation's until the
    // next Step returns); cleared once taken.
    std::function<CheckpointSnapshot()> take_snapshot;
    CheckpointSnapshot snapshot;  // serialized on the commit's thread
    CacheEntries cache_entries;   // the generation's new evaluations, for the cache across jobs
  };
  struct PendingCommit {
    absl::Notification done;
    absl::Status status;  // written before done is notified
  };
  // What the generation just stepped writes. `evaluated`: report.json's record of evaluations so
  // far (RemotePolicyEvaluator::evaluated). Both must outlive the write's start (take_snapshot
  // reads them, the evaluated records as they are now).
  absl::StatusOr<GenerationCommit> PrepareGenerationCommit(const search::EvolutionarySearch& search,
                                                           const nlohmann::json& evaluated,
                                                           bool trained);
  // Writes `gc` on one of the dispatcher's step threads (pending_commit_).
  void StartCommit(GenerationCommit gc);
  // Starts deferred_commit_, if any (StartCommit); only while no write is in flight.
  void StartDeferredCommit();
  // Starts the deferred write, if any, and waits for the write in flight, if any: its status.
  absl::Status AwaitCommit();
  ::prune::v1::PolicyEvaluation BestProto(const search::ScoredPolicy& best) const;
  // What a worker running one of the job's steps may fetch: its datasets, projectors and (a
  // blob:// model) the model's manifest and files.
  std::set<std::string> StepBlobs() const;
  // Indexes a blob a worker stored (under tenant "") for the job's tenant too, so that the
  // tenant can fetch it and it counts against the tenant's stored bytes.
  absl::Status IndexForTenant(const std::string& blob_id, BlobKind kind);

  Dispatcher* const dispatcher_;
  const std::string job_id_;
  std::atomic<bool> stop_{false};
  absl::Mutex cancel_mu_;
  std::set<StepCancel*> cancels_ ABSL_GUARDED_BY(cancel_mu_);

  // The job, as the driver runs it.
  std::string tenant_;
  ::prune::v1::JobSpec spec_proto_;
  JobSpec spec_;
  int priority_ = 0;
  ::prune::v1::JobState state_ = ::prune::v1::QUEUED;
  ::prune::v1::PrepareResponse prepared_;
  std::unique_ptr<search::PolicySpace> space_;
  std::map<int, std::string> projector_blobs_;
  std::vector<int> sample_order_;
  // What of the search's checkpoint the store holds already (the log's records).
  // Written by the commit in flight (StartCommit), read only after AwaitCommit.
  CheckpointLog checkpoint_log_;
  std::unique_ptr<PendingCommit> pending_commit_;
  // Prepared, not started yet (SearchGenerations, which starts it before it returns): at most
  // one, and only while no write is in flight. Driver thread only.
  std::optional<GenerationCommit> deferred_commit_;
  // A blob:// model's manifest and files (empty for file:// models).
  std::set<std::string> model_blobs_;
  std::atomic<int64_t> step_counter_{0};
  // What Finalize embeds in report.json.
  nlohmann::json report_ = nlohmann::json::object();
  std::vector<double> unit_ratios_;
  int final_projector_version_ = 0;
  int64_t evaluations_ = 0;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_SEARCH_DRIVER_H_

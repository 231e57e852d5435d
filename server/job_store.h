// The scheduler's durable state (docs/architecture.md §7): jobs, each job's event log, the latest
// search checkpoint per job, and the index of stored blobs (datasets, projectors, artifacts). An
// interface so the service and the search driver can be tested against any implementation;
// SqliteJobStore (sqlite_job_store.h) is the production one.
//
// Invariants every implementation keeps:
// - A job's events have sequences 1, 2, 3, … without gaps, assigned by the store inside the
//   transaction that appends them; Job.last_event_sequence is the highest one.
// - Commit() is atomic: the job row update, the appended events and the checkpoint are all
//   stored, or none is (an error leaves the job exactly as it was).
// - A terminal job (SUCCEEDED, FAILED, CANCELLED) is final: every later Commit is
//   FAILED_PRECONDITION, so the terminal StateChanged event is the last event of its log.
// - Every call that returns OK after writing has made the write durable (a submit is
//   acknowledged only once durable).
// - Jobs are ordered by creation (insertion) order; ListJobs returns the newest first.
//
// Thread-safety: every method may be called concurrently from any thread.
#ifndef PRUNESVC_SERVER_JOB_STORE_H_
#define PRUNESVC_SERVER_JOB_STORE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "prune/v1/job.pb.h"

namespace prunesvc::server {

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsTerminalState(prune::v1::JobState state);

struct CreateJobResult {
  prune::v1::Job job;
  bool deduplicated = false;  // true: (tenant, spec.request_id) matched an existing job
};

// Changes a Commit makes to the job row; an unset field is left as it is. update_time is always
// set to the store clock's now.
struct JobMutation {
  // Commit fails with FAILED_PRECONDITION (writing nothing) unless the job's current state is one
  // of these; empty = any non-terminal state. Lets a caller decide on a state it read earlier
  // (e.g. CancelJob vs. the driver finishing) without a lost update.
  std::vector<prune::v1::JobState> expected_states;

  std::optional<prune::v1::JobState> state;
  std::optional<int32_t> generation;
  std::optional<int32_t> projector_version;
  std::optional<prune::v1::PolicyEvaluation> best;
  std::optional<double> progress;
  std::optional<std::string> error;
  std::optional<int32_t> error_code;  // canonical gRPC code
  std::optional<std::string> artifact_id;
  std::optional<std::string> artifact_sha256;
};

// A job's latest search checkpoint: the SearchState JSON (common/evolution.h) as text, and the
// generation it was taken after. The store does not parse the JSON.
// A search's checkpoint: a head that each commit replaces and a log that commits append to
// (server/search_checkpoint.h: the records each written once, so a commit costs what changed).
// Entries of the evaluation cache across jobs: (key, value) pairs (JobStore::PutCachedEvaluations).
using CacheEntries = std::vector<std::pair<std::string, std::string>>;

struct Checkpoint {
  int32_t generation = 0;
  std::string search_state_json;  // the head
  // Commit: records to append to the job's log, in order. LoadCheckpoint: the whole log.
  std::vector<std::string> log;
  absl::Time update_time;  // when it was stored; set by the store (ignored on input)
  // Commit only: evaluation cache entries (key, value) written with it, as PutCachedEvaluations
  // would, in the same transaction — the generation's new evaluations ride along with its
  // checkpoint instead of a write of their own. If they cannot be written the commit still
  // stands. LoadCheckpoint leaves it empty.
  CacheEntries cache_entries;
};

struct CommitResult {
  prune::v1::Job job;  // after the update
  // The appended events as stored: job_id, sequence (the assigned sequences, in the order the
  // events were passed) and time filled in. Ready to hand to live watchers.
  std::vector<prune::v1::JobEvent> events;
};

struct ListJobsQuery {
  std::string tenant;                         // empty = every tenant (admin)
  std::vector<prune::v1::JobState> states;    // empty = every state
  std::map<std::string, std::string> labels;  // the job must carry every pair
  int32_t page_size = 0;                      // 0 = 50; clamped to 500; negative is invalid
  std::string page_token;                     // from the previous page; bound to the filters
};

struct ListJobsPage {
  std::vector<prune::v1::Job> jobs;  // newest first
  std::string next_page_token;       // empty when there are no more
};

// kModel: a model's manifest (server/model_upload.h); kModelFile: one file of a model.
enum class BlobKind { kDataset, kProjector, kArtifact, kModel, kModelFile };
// "dataset", "projector", "artifact", "model", "model_file"
absl::string_view BlobKindName(BlobKind kind);

// One tenant's reference to a content-addressed blob. The same content uploaded by two tenants
// is one file on disk (BlobStore) and two index records, so each sees only its own.
struct BlobRecord {
  std::string blob_id;  // "sha256:<64 lowercase hex>"
  BlobKind kind = BlobKind::kDataset;
  int64_t size_bytes = 0;
  std::string tenant;
  absl::Time create_time;
  int32_t num_samples = 0;  // datasets only
  // The BlobStore id holding the bytes; empty on input = blob_id. They differ for datasets: a
  // dataset's id is its sample-set hash (independent of how the tar was packed), while the stored
  // file is named by the hash of the uploaded bytes.
  std::string content_id;
  // datasets: the display name of the first upload ("" before schema 2); models: the manifest's
  // name; model files: the path of the file (of the first model that stored it).
  std::string name;
};

struct DeleteBlobResult {
  std::string content_id;            // the file the deleted record referenced
  int64_t remaining_references = 0;  // records (any tenant) still referencing that file
};

struct PutBlobResult {
  BlobRecord record;             // as stored (the existing record when already_present)
  bool already_present = false;  // (blob_id, tenant) was indexed before; nothing was changed
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Stores a new QUEUED job for `tenant` with a fresh "job-…" id and the given spec (stored as
  // is: fill in defaults first), then appends `initial_events` (sequences from 1) in the same
  // transaction. When spec.request_id is non-empty and (tenant, request_id) already names a job,
  // returns that job unchanged with deduplicated = true (the spec passed is ignored).
  virtual absl::StatusOr<CreateJobResult> CreateJob(
      absl::string_view tenant, const prune::v1::JobSpec& spec,
      const std::vector<prune::v1::JobEvent>& initial_events) = 0;

  // NOT_FOUND when no such job. Tenant checks are the caller's (Job.tenant is returned).
  virtual absl::StatusOr<prune::v1::Job> GetJob(absl::string_view job_id) = 0;

  // INVALID_ARGUMENT for a negative page size, a malformed page token or one issued for other
  // filters. Tokens are keyset cursors: jobs created after the first page never shift later pages.
  virtual absl::StatusOr<ListJobsPage> ListJobs(const ListJobsQuery& query) = 0;

  // Applies `mutation` to the job, appends `events` (their job_id is set, sequence assigned, time
  // set to now unless already set) and, when given, replaces the job's checkpoint — atomically.
  // NOT_FOUND for an unknown job; FAILED_PRECONDITION for a terminal job or an unexpected state;
  // INVALID_ARGUMENT for an event naming another job. On error nothing is written.
  virtual absl::StatusOr<CommitResult> Commit(absl::string_view job_id, const JobMutation& mutation,
                                              const std::vector<prune::v1::JobEvent>& events,
                                              const std::optional<Checkpoint>& checkpoint) = 0;

  // Events with sequence > after_sequence, in order, at most `limit` (1..10000; 0 = 1000).
  // NOT_FOUND for an unknown job.
  virtual absl::StatusOr<std::vector<prune::v1::JobEvent>> ReadEvents(absl::string_view job_id,
                                                                      int64_t after_sequence,
                                                                      int32_t limit) = 0;

  // The job's latest checkpoint, or nullopt if it has none. NOT_FOUND for an unknown job.
  virtual absl::StatusOr<std::optional<Checkpoint>> LoadCheckpoint(absl::string_view job_id) = 0;

  // Every job not in a terminal state, oldest first: what a restarted scheduler resumes.
  virtual absl::StatusOr<std::vector<prune::v1::Job>> ListNonTerminalJobs() = 0;

  // Number of jobs per state (states with none are absent), for one tenant or, with an empty
  // tenant, all: the jobs-by-state gauge and per-tenant queued-job limits.
  virtual absl::StatusOr<std::map<prune::v1::JobState, int64_t>> CountJobsByState(
      absl::string_view tenant) = 0;

  // Blob index. It records who may see which blob; the bytes are in a BlobStore. Keep the two
  // in this order so a record never names a missing file: store the blob, then PutBlob; on
  // removal DeleteBlob first, and delete the file once no record references it.
  // PutBlob validates both ids ("sha256:" + 64 lowercase hex) and size (>= 0).
  virtual absl::StatusOr<PutBlobResult> PutBlob(const BlobRecord& record) = 0;
  // NOT_FOUND unless `tenant` has indexed `blob_id`.
  virtual absl::StatusOr<BlobRecord> GetBlob(absl::string_view tenant,
                                             absl::string_view blob_id) = 0;
  // Oldest first. Empty tenant = every tenant; no kind = every kind.
  virtual absl::StatusOr<std::vector<BlobRecord>> ListBlobs(absl::string_view tenant,
                                                            std::optional<BlobKind> kind) = 0;
  // Removes the tenant's record; NOT_FOUND if there was none. Says how many records (of any
  // tenant) still reference its file, so a caller knows when the file itself may go.
  virtual absl::StatusOr<DeleteBlobResult> DeleteBlob(absl::string_view tenant,
                                                      absl::string_view blob_id) = 0;
  // Sum of size_bytes over the tenant's records (per-tenant storage limits).
  virtual absl::StatusOr<int64_t> TenantBlobBytes(absl::string_view tenant) = 0;

  // Lifecycle (issue 16). Removes a terminal job with its events, labels and checkpoint, in one
  // transaction; FAILED_PRECONDITION for a job that is not terminal, NOT_FOUND for an unknown
  // one. Blob records are not touched (the storage sweep removes what nothing references).
  virtual absl::Status DeleteJob(absl::string_view job_id) = 0;
  // Terminal jobs whose last change is before `t`, oldest first (retention).
  virtual absl::StatusOr<std::vector<std::string>> ListJobsFinishedBefore(absl::Time t) = 0;
  // Every (tenant, blob id) a stored job references: its datasets, its artifact and the
  // projectors its ProjectorUpdated events name. What the storage sweep must keep.
  virtual absl::StatusOr<std::set<std::pair<std::string, std::string>>> ReferencedBlobs() = 0;

  // The evaluation cache across jobs (issue 20; server/remote_policy_evaluator.h composes the
  // keys and values). Get: the stored values of those `keys` that are stored. Put: stores each
  // entry — under an existing key only when the new value is longer (a whole-set result replaces
  // a raced-out prefix of it) — and keeps only the newest entries beyond the store's bound. The
  // cache is an optimization: callers go on without it when it fails.
  virtual absl::StatusOr<std::map<std::string, std::string>> GetCachedEvaluations(
      const std::vector<std::string>& keys) = 0;
  virtual absl::Status PutCachedEvaluations(const CacheEntries& entries) = 0;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_JOB_STORE_H_

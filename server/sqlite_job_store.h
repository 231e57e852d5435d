// JobStore on SQLite (Debian's libsqlite3): one database file, STATE_DIR/jobs.db, in WAL mode
// with synchronous=FULL, so a transaction that returned is on disk (the WAL is fsynced at every
// commit) and survives a crash of the process or the machine. Schema in sqlite_job_store.cc;
// `schema_version` holds its version: a fresh file gets the current one, an older or newer
// (unknown) version is refused with FAILED_PRECONDITION rather than guessed at.
//
// Rows that cannot be decoded (a spec, event or evaluation that does not parse, an unknown state
// or blob kind) are reported as DATA_LOSS naming the job or blob, never a crash.
//
// Thread-safety: thread-safe. One connection, serialised by mu_; each write is one
// BEGIN IMMEDIATE transaction, so another process opening the same file (a second scheduler is
// locked out by Scheduler, but e.g. a backup tool) waits up to busy_timeout, then UNAVAILABLE.
// Concurrent Commits are grouped: whatever queued while one transaction was written goes into
// the next, one fsync for all, each commit still all-or-nothing on its own (see Writer).
// The evaluation cache is mirrored in memory (loaded at Create): every key, and the values of the
// newest entries within a byte budget. A lookup reads the table (under mu_, which a group commit
// holds through its fsync) only for a stored key whose value is not resident.
#ifndef PRUNESVC_SERVER_SQLITE_JOB_STORE_H_
#define PRUNESVC_SERVER_SQLITE_JOB_STORE_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "server/job_store.h"
#include "server/sqlite_db.h"

namespace prunesvc::server {

struct SqliteJobStoreOptions {
  // Directory holding jobs.db; created if missing.
  std::string state_dir;
  const Clock* clock = RealClock::Get();
  absl::Duration busy_timeout = absl::Seconds(5);
  // Returns a fresh job id ("job-" + 16 random lowercase hex when unset). Tests make it
  // deterministic; a collision with an existing id is retried a few times.
  std::function<std::string()> new_job_id;
  // Entries the evaluation cache across jobs keeps (the oldest go first); ~0.6 KB each with 64
  // search samples.
  int64_t max_cached_evaluations = 200000;
  // Bytes of those entries' values also kept in memory (the newest first; older hits are read
  // from the table). Every key is in memory too (~0.1 KB each).
  int64_t cached_evaluation_memory_bytes = int64_t{64} << 20;
};

class SqliteJobStore : public JobStore {
 public:
  // The schema version this binary writes and reads.
  // 2: blobs.name and jobs_by_state_update; a version-1 store is migrated on open. 3: the
  // checkpoint log. 4: the evaluation cache across jobs.
  static constexpr int kSchemaVersion = 4;
  static constexpr const char* kFileName = "jobs.db";

  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Create(SqliteJobStoreOptions options);

  absl::StatusOr<CreateJobResult> CreateJob(
      absl::string_view tenant, const prune::v1::JobSpec& spec,
      const std::vector<prune::v1::JobEvent>& initial_events) override;
  absl::StatusOr<prune::v1::Job> GetJob(absl::string_view job_id) override;
  absl::StatusOr<ListJobsPage> ListJobs(const ListJobsQuery& query) override;
  absl::StatusOr<CommitResult> Commit(absl::string_view job_id, const JobMutation& mutation,
                                      const std::vector<prune::v1::JobEvent>& events,
                                      const std::optional<Checkpoint>& checkpoint) override;
  absl::StatusOr<std::vector<prune::v1::JobEvent>> ReadEvents(absl::string_view job_id,
                                                              int64_t after_sequence,
                                                              int32_t limit) override;
  absl::StatusOr<std::optional<Checkpoint>> LoadCheckpoint(absl::string_view job_id) override;
  absl::StatusOr<std::vector<prune::v1::Job>> ListNonTerminalJobs() override;
  absl::StatusOr<std::map<prune::v1::JobState, int64_t>> CountJobsByState(
      absl::string_view tenant) override;

  absl::StatusOr<PutBlobResult> PutBlob(const BlobRecord& record) override;
  absl::StatusOr<BlobRecord> GetBlob(absl::string_view tenant, absl::string_view blob_id) override;
  absl::StatusOr<std::vector<BlobRecord>> ListBlobs(absl::string_view tenant,
                                                    std::optional<BlobKind> kind) override;
  absl::StatusOr<DeleteBlobResult> DeleteBlob(absl::string_view tenant,
                                              absl::string_view blob_id) override;
  absl::StatusOr<int64_t> TenantBlobBytes(absl::string_view tenant) override;
  absl::Status DeleteJob(absl::string_view job_id) override;
  absl::StatusOr<std::vector<std::string>> ListJobsFinishedBefore(absl::Time t) override;
  absl::StatusOr<std::set<std::pair<std::string, std::string>>> ReferencedBlobs() override;
  absl::StatusOr<std::map<std::string, std::string>> GetCachedEvaluations(
      const std::vector<std::string>& keys) override;
  absl::Status PutCachedEvaluations(const CacheEntries& entries) override;

  const std::string& path() const { return path_; }

  // The evaluation cache's memory mirror: entries indexed, how many of their values are resident
  // and those values' bytes (≤ cached_evaluation_memory_bytes once a write returned).
  struct CacheMirrorStats {
    int64_t entries = 0;
    int64_t resident_entries = 0;
    int64_t resident_bytes = 0;
  };
  CacheMirrorStats cache_mirror_stats() ABSL_LOCKS_EXCLUDED(cache_mu_);

 private:
  SqliteJobStore(SqliteJobStoreOptions options, std::unique_ptr<SqliteDb> db);

  // Row helpers; all run inside the caller's lock (and transaction where they write).
  absl::StatusOr<std::optional<prune::v1::Job>> FindJobLocked(absl::string_view job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<prune::v1::Job> GetJobLocked(absl::string_view job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::optional<prune::v1::Job>> FindByRequestIdLocked(absl::string_view tenant,
                                                                      absl::string_view request_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::string> InsertJobLocked(absl::string_view tenant,
                                              const prune::v1::JobSpec& spec)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteJobLocked(const prune::v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends to `job` (advancing its last_event_sequence; the caller writes the row).
  absl::StatusOr<std::vector<prune::v1::JobEvent>> AppendEventsLocked(
      prune::v1::Job& job, const std::vector<prune::v1::JobEvent>& events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PutCheckpointLocked(absl::string_view job_id, const Checkpoint& checkpoint)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entries' rows, inside the caller's transaction.
  absl::Status PutCachedEvaluationsLocked(const CacheEntries& entries)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the evaluation cache into memory at Create: every key, oldest first, and the newest
  // values that fit the budget.
  absl::Status LoadCacheMirror() ABSL_LOCKS_EXCLUDED(mu_, cache_mu_);
  // Records in memory what PutCachedEvaluationsLocked stored, with the table's rules (a new key is
  // the newest; a stored key keeps its place and the longer value; the oldest go beyond
  // max_cached_evaluations), then drops the oldest resident values beyond the byte budget.
  void MirrorCachedLocked(const CacheEntries& entries) ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache_mu_);
  // Appends a key (oldest first) with its value ("" when not resident).
  void AppendMirrorLocked(std::string key, std::string value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache_mu_);

  // Group commit (leveldb's DBImpl::Write): a Commit (or a PutCachedEvaluations) that arrives
  // while another is being written queues; the queue's head writes every queued one in one
  // transaction, one fsync, each in its own savepoint (so each succeeds or fails alone, as if
  // written by itself), and hands each waiter its result.
  struct Writer;
  // Queues `w` and returns its result once a head (maybe this call) wrote it.
  absl::StatusOr<CommitResult> Write(Writer& w) ABSL_LOCKS_EXCLUDED(writers_mu_, mu_);
  // Writes `batch` (the queue's first commits) in one transaction: each one's result, in order.
  std::vector<absl::StatusOr<CommitResult>> WriteBatch(const std::vector<Writer*>& batch)
      ABSL_LOCKS_EXCLUDED(mu_);
  // One commit inside the open transaction, in a savepoint rolled back if it fails.
  absl::StatusOr<CommitResult> CommitOneLocked(Writer& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Evaluation cache entries inside the open transaction, in a savepoint rolled back if it fails
  // (an empty value is refused: the mirror reads "" as "not resident").
  absl::Status PutCachedInSavepointLocked(const CacheEntries& entries)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<prune::v1::Job>> QueryJobsLocked(SqliteStatement& stmt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<BlobRecord>> QueryBlobsLocked(SqliteStatement& stmt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string NewJobIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const SqliteJobStoreOptions options_;
  const std::string path_;

  absl::Mutex mu_;
  // The connection; its use (not the pointer) is guarded by mu_.
  const std::unique_ptr<SqliteDb> db_ ABSL_PT_GUARDED_BY(mu_);
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);  // for job ids

  absl::Mutex writers_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::deque<Writer*> writers_ ABSL_GUARDED_BY(writers_mu_);  // waiting Commits, in order

  // The evaluation cache's mirror. It follows the table: changed (under mu_ too) only after the
  // table's transaction committed, so a key the table has since dropped reads as a miss.
  // Invariants: cached_order_ holds every key of cached_ once, in the table's id order (pointers
  // to cached_'s keys, whose nodes do not move); the values of cached_order_[0, first_resident_)
  // are "" and the rest are resident (stored values are never empty), resident_bytes_ their sum.
  absl::Mutex cache_mu_ ABSL_ACQUIRED_AFTER(mu_);
  absl::node_hash_map<std::string, std::string> cached_ ABSL_GUARDED_BY(cache_mu_);
  std::deque<const std::string*> cached_order_ ABSL_GUARDED_BY(cache_mu_);
  size_t first_resident_ ABSL_GUARDED_BY(cache_mu_) = 0;
  int64_t resident_bytes_ ABSL_GUARDED_BY(cache_mu_) = 0;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_SQLITE_JOB_STORE_H_

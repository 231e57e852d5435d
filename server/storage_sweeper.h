// The scheduler's storage lifecycle (issue 16; docs/operations.md "Storage"): what DeleteJob,
// retention and crashes leave behind is removed, and nothing a stored job references ever is.
//
// One sweep, in order:
//   1. retention: terminal jobs whose last change is older than `retain` are deleted
//      (JobStore::DeleteJob: the job, its events, labels, checkpoint); retain = 0 keeps them;
//   2. projector and artifact records that no stored job references (JobStore::ReferencedBlobs:
//      datasets, artifact, ProjectorUpdated blob ids — of live jobs too) and that are older than
//      `grace` are removed. Dataset records are never swept: they go by DeleteDataset only;
//   3. blob files that no record names (content_id) and that are older than `grace` are deleted —
//      what a removed record, a crash between storing a blob and indexing it, or a projector
//      trained for a generation that never committed leaves.
// `grace` keeps what is being written now: a blob stored but not yet indexed, a projector indexed
// but not yet named by its generation's commit. A blob re-stored while its old orphan file is
// being deleted is the one race left (it needs identical bytes and a sweep in the same
// microseconds); the next upload of it stores it again.
//
// Thread-compatible: one sweep at a time (the Scheduler runs them on one thread).
#ifndef PRUNESVC_SERVER_STORAGE_SWEEPER_H_
#define PRUNESVC_SERVER_STORAGE_SWEEPER_H_

#include <cstdint>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/blob_store.h"
#include "server/job_store.h"

namespace prunesvc::server {

struct SweepOptions {
  absl::Duration retain = absl::ZeroDuration();  // finished jobs kept this long; 0 = forever
  absl::Duration grace = absl::Hours(1);         // younger records and files are kept
};

struct SweepReport {
  int jobs_deleted = 0;
  int records_deleted = 0;
  int files_deleted = 0;
  int64_t bytes_freed = 0;
};

absl::StatusOr<SweepReport> SweepStorage(JobStore& store, BlobStore& blobs,
                                         const SweepOptions& options, absl::Time now);

// Runs SweepStorage on a thread of its own: at start, every `interval`, and soon after Wake()
// (DeleteJob, DeleteDataset). Failures are logged and retried at the next round.
// Thread-safe; the store and blob store must outlive it.
class PeriodicSweeper {
 public:
  PeriodicSweeper(JobStore* store, BlobStore* blobs, SweepOptions options, absl::Duration interval);
  ~PeriodicSweeper();  // stops and joins
  void Wake();
  // Sweeps completed so far (tests wait on it).
  int64_t sweeps() const;

 private:
  void Loop();

  // Constant after construction.
  JobStore* const store_;
  BlobStore* const blobs_;
  const SweepOptions options_;
  const absl::Duration interval_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
  int64_t sweeps_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // last: starts after the members above
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_STORAGE_SWEEPER_H_

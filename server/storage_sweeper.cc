#include "server/storage_sweeper.h"

#include <set>
#include <string>
#include <utility>

#include "common/logging.h"
#include "common/status_macros.h"

namespace prunesvc::server {

absl::StatusOr<SweepReport> SweepStorage(JobStore& store, BlobStore& blobs,
                                         const SweepOptions& options, absl::Time now) {
  SweepReport report;
  if (options.retain > absl::ZeroDuration()) {
    ASSIGN_OR_RETURN(std::vector<std::string> old,
                     store.ListJobsFinishedBefore(now - options.retain));
    for (const std::string& id : old) {
      absl::Status s = store.DeleteJob(id);
      if (s.ok()) {
        ++report.jobs_deleted;
      } else if (!absl::IsNotFound(s)) {  // NOT_FOUND: deleted meanwhile
        return s;
      }
    }
  }
  ASSIGN_OR_RETURN(auto referenced, store.ReferencedBlobs());
  ASSIGN_OR_RETURN(std::vector<BlobRecord> records, store.ListBlobs("", std::nullopt));
  std::set<std::string> named;  // content ids a remaining record names
  for (const BlobRecord& r : records) {
    // Datasets and models stay until their owner deletes them.
    const bool owned = r.kind == BlobKind::kDataset || r.kind == BlobKind::kModel ||
                       r.kind == BlobKind::kModelFile;
    const bool keep =
        owned || referenced.count({r.tenant, r.blob_id}) > 0 || r.create_time > now - options.grace;
    if (keep) {
      named.insert(r.content_id);
      continue;
    }
    absl::StatusOr<DeleteBlobResult> d = store.DeleteBlob(r.tenant, r.blob_id);
    if (!d.ok() && !absl::IsNotFound(d.status())) return d.status();
    if (d.ok()) ++report.records_deleted;
  }
  ASSIGN_OR_RETURN(std::vector<StoredBlobFile> files, blobs.List());
  for (const StoredBlobFile& f : files) {
    if (named.count(f.blob_id) > 0 || f.modify_time > now - options.grace) continue;
    absl::Status s = blobs.Delete(f.blob_id);
    if (!s.ok() && !absl::IsNotFound(s)) return s;
    if (s.ok()) {
      ++report.files_deleted;
      report.bytes_freed += f.size_bytes;
    }
  }
  if (report.jobs_deleted + report.records_deleted + report.files_deleted > 0) {
    spdlog::info("storage sweep: {} jobs, {} blob records, {} files ({} bytes) removed",
                 report.jobs_deleted, report.records_deleted, report.files_deleted,
                 report.bytes_freed);
  }
  return report;
}

PeriodicSweeper::PeriodicSweeper(JobStore* store, BlobStore* blobs, SweepOptions options,
                                 absl::Duration interval)
    : store_(store), blobs_(blobs), options_(options), interval_(interval), thread_([this] {
        Loop();
      }) {}

PeriodicSweeper::~PeriodicSweeper() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void PeriodicSweeper::Wake() {
  absl::MutexLock lock(&mu_);
  woken_ = true;
}

int64_t PeriodicSweeper::sweeps() const {
  absl::MutexLock lock(&mu_);
  return sweeps_;
}

void PeriodicSweeper::Loop() {
  while (true) {
    absl::StatusOr<SweepReport> r = SweepStorage(*store_, *blobs_, options_, absl::Now());
    if (!r.ok())
      spdlog::warn("storage sweep failed (retried next round): {}", r.status().message());
    absl::MutexLock lock(&mu_);
    ++sweeps_;
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || woken_; };
    mu_.AwaitWithTimeout(absl::Condition(&ready), interval_);
    if (stop_) return;
    woken_ = false;
  }
}

}  // namespace prunesvc::server

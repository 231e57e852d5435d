#include "server/pruning_service.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "common/callback_util.h"
#include "common/grpc_status.h"
#include "common/job_spec_proto.h"
#include "common/logging.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "server/dataset_validation.h"
#include "server/image_header.h"
#include "server/model_upload.h"
#include "server/stream_reactors.h"
#include "worker/model/samples.h"

namespace prunesvc::server {

absl::Status QuotaError(absl::string_view quota, const std::string& tenant, absl::string_view what,
                        int64_t limit, absl::string_view advice) {
  return absl::ResourceExhaustedError(absl::StrCat("quota ", quota, ": tenant \"", tenant, "\" ",
                                                   what, " (its limit is ", limit, "); ", advice));
}

namespace {

namespace pb = ::prune::v1;

constexpr int32_t kEventPage = 256;

bool IsTerminalEvent(const pb::JobEvent& e) {
  return e.has_state_changed() && IsTerminalState(e.state_changed().to());
}

pb::JobEvent StateEvent(pb::JobState from, pb::JobState to, const std::string& reason) {
  pb::JobEvent e;
  e.mutable_state_changed()->set_from(from);
  e.mutable_state_changed()->set_to(to);
  e.mutable_state_changed()->set_reason(reason);
  return e;
}

// ---- WatchJob ----------------------------------------------------------------------------------

// Subscribes to the hub first, then replays the store after from_sequence (in pages, on the
// pool), then writes live events, skipping those at or below the last sequence it has taken.
// Live events queue per watcher; past max_backlog the queue is dropped and the watcher re-reads
// the store, so a slow client costs the publisher nothing but a push. A gap in the live sequence
// (after a drop) also sends it back to the store.
//
// Ownership of the stream: `busy_` is true while a write is in flight or a pump runs or is
// scheduled; only that owner writes or finishes. OnCancel and live events take ownership only
// when nobody has it.
class WatchReactor final : public grpc::ServerWriteReactor<pb::JobEvent> {
 public:
  WatchReactor(const PruningServiceDeps& deps, Principal caller, std::string job_id,
               int64_t from_sequence, int max_backlog, WatcherCounts* watchers)
      : deps_(deps),
        caller_(std::move(caller)),
        job_id_(std::move(job_id)),
        max_backlog_(max_backlog),
        watchers_(watchers),
        last_seq_(from_sequence) {
    if (from_sequence < 0) {
      busy_ = true;
      FinishOwned(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "from_sequence must be >= 0"));
      return;
    }
    if (!watchers_->TryAdd(job_id_)) {
      busy_ = true;
      FinishOwned(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("max_watchers_per_job: job ", job_id_, " has ", watchers_->max(),
                       " watchers already (the limit, --max-watchers-per-job)")));
      return;
    }
    counted_ = true;
    busy_ = true;
    handle_ = deps_.hub->Subscribe(job_id_, [this](const pb::JobEvent& e) { OnLive(e); });
    deps_.pool->Schedule([this] { Pump(/*on_pool=*/true); });
  }

  void OnWriteDone(bool ok) override {
    bool finish_ok;
    {
      absl::MutexLock lock(&mu_);
      finish_ok = finish_after_write_;
      if (!ok) cancelled_ = true;
    }
    if (!ok) return FinishOwned(grpc::Status(grpc::StatusCode::CANCELLED, "watcher went away"));
    if (finish_ok) return FinishOwned(grpc::Status::OK);
    Pump(/*on_pool=*/false);
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (busy_ || finished_) return;  // the owner sees cancelled_
      busy_ = true;
    }
    FinishOwned(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    if (handle_ != 0) deps_.hub->Unsubscribe(handle_);
    if (counted_) watchers_->Remove(job_id_);
    delete this;
  }

 private:
  void OnLive(const pb::JobEvent& e) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      if (static_cast<int>(live_.size()) >= max_backlog_) {
        live_.clear();
        if (!need_read_) deps_.metrics->watch_resyncs->Increment();
        need_read_ = true;  // the store has every event: catch up from there
      } else {
        live_.push_back(e);
      }
      if (busy_) return;
      busy_ = true;
    }
    Pump(/*on_pool=*/false);
  }

  enum class Step { kWrite, kIdle, kScheduled, kRead, kCancelled, kDone };

  // Called by the owner: writes the next event, goes idle, reads the store (on the pool) or
  // finishes.
  void Pump(bool on_pool) {
    for (;;) {
      int64_t after = 0;
      bool check_job = false;
      const Step step = NextStep(on_pool, &after, &check_job);
      switch (step) {
        case Step::kWrite:
          StartWrite(&msg_);
          return;
        case Step::kIdle:
        case Step::kScheduled:
          return;
        case Step::kCancelled:
          return FinishOwned(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
        case Step::kDone:
          return FinishOwned(grpc::Status::OK);
        case Step::kRead:
          if (absl::Status s = ReadStore(after, check_job); !s.ok()) {
            return FinishOwned(ToGrpcStatus(s));
          }
          break;
      }
    }
  }

  Step NextStep(bool on_pool, int64_t* after, bool* check_job) {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return Step::kCancelled;
    if (!pending_.empty()) {
      msg_ = std::move(pending_.front());
      pending_.pop_front();
    } else if (need_read_ || !TakeLiveLocked()) {
      if (done_ok_) return Step::kDone;
      if (!need_read_) {
        busy_ = false;  // idle until a live event arrives
        return Step::kIdle;
      }
      if (!on_pool) {
        deps_.pool->Schedule([this] { Pump(/*on_pool=*/true); });
        return Step::kScheduled;
      }
      *after = last_seq_;
      *check_job = !job_checked_;
      return Step::kRead;
    }
    finish_after_write_ = IsTerminalEvent(msg_);
    return Step::kWrite;
  }

  // Moves the next new live event into msg_. A gap sends the watcher back to the store.
  bool TakeLiveLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (!live_.empty() && live_.front().sequence() <= last_seq_) live_.pop_front();
    if (live_.empty()) return false;
    if (live_.front().sequence() != last_seq_ + 1) {
      live_.clear();
      deps_.metrics->watch_resyncs->Increment();
      need_read_ = true;
      return false;
    }
    msg_ = std::move(live_.front());
    live_.pop_front();
    last_seq_ = msg_.sequence();
    return true;
  }

  // One page of stored events after `after` into pending_. On the pool, owner only.
  absl::Status ReadStore(int64_t after, bool check_job) {
    if (check_job) {
      absl::StatusOr<pb::Job> job = deps_.store->GetJob(job_id_);
      if (!job.ok() || (job->tenant() != caller_.tenant && !caller_.admin())) {
        return absl::NotFoundError(absl::StrCat("no job ", job_id_));
      }
    }
    ASSIGN_OR_RETURN(std::vector<pb::JobEvent> events,
                     deps_.store->ReadEvents(job_id_, after, kEventPage));
    bool terminal = false;
    if (events.empty()) {
      // Caught up: if the job is already terminal its last event is behind us; the stream ends.
      ASSIGN_OR_RETURN(pb::Job job, deps_.store->GetJob(job_id_));
      terminal = IsTerminalState(job.state()) && job.last_event_sequence() <= after;
    }
    absl::MutexLock lock(&mu_);
    job_checked_ = true;
    if (static_cast<int32_t>(events.size()) < kEventPage) need_read_ = false;
    for (pb::JobEvent& e : events) {
      last_seq_ = e.sequence();
      pending_.push_back(std::move(e));
    }
    if (terminal) done_ok_ = true;
    return absl::OkStatus();
  }

  void FinishOwned(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    Finish(status);
  }

  const PruningServiceDeps deps_;
  const Principal caller_;
  const std::string job_id_;
  const int max_backlog_;
  int64_t handle_ = 0;  // set in the constructor, read in OnDone
  WatcherCounts* const watchers_;
  bool counted_ = false;  // set in the constructor, read in OnDone

  absl::Mutex mu_;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool need_read_ ABSL_GUARDED_BY(mu_) = true;
  bool job_checked_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ok_ ABSL_GUARDED_BY(mu_) = false;  // nothing more will come: finish OK
  bool finish_after_write_ ABSL_GUARDED_BY(mu_) = false;
  int64_t last_seq_ ABSL_GUARDED_BY(mu_);  // highest sequence taken (written or pending)
  std::deque<pb::JobEvent> pending_ ABSL_GUARDED_BY(mu_);  // from the store, in order
  std::deque<pb::JobEvent> live_ ABSL_GUARDED_BY(mu_);     // from the hub
  pb::JobEvent msg_;                                       // the write in flight; the owner's
};

// ---- UploadDataset -----------------------------------------------------------------------------

// Spools the upload to a temp file (hashing it, enforcing the size limit) on the reactor thread,
// one <= 1 MiB chunk at a time; at the end of the stream validates and stores it on the pool.
// Nothing reaches the blob store or the index unless the whole dataset is valid.
class UploadReactor final : public grpc::ServerReadReactor<pb::UploadDatasetRequest> {
 public:
  UploadReactor(grpc::CallbackServerContext* ctx, const PruningServiceDeps& deps,
                const PruningServiceOptions& options, std::string tenant, int64_t max_stored_bytes,
                pb::UploadDatasetResponse* resp)
      : ctx_(ctx),
        deps_(deps),
        options_(options),
        tenant_(std::move(tenant)),
        max_stored_bytes_(max_stored_bytes),
        resp_(resp) {
    StartRead(&req_);
  }
  ~UploadReactor() override {
    if (fd_ >= 0) close(fd_);
    if (!path_.empty()) unlink(path_.c_str());
  }

  void OnReadDone(bool ok) override {
    if (!ok && ctx_->IsCancelled()) {
      deps_.metrics->uploads_error->Increment();
      return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled"));
    }
    if (!ok) {  // the client is done: validate and store off the reactor thread
      ThreadPool* pool = deps_.upload_pool != nullptr ? deps_.upload_pool : deps_.pool;
      pool->Schedule([this] { Finish(ToGrpcStatus(Count(Complete()))); });
      return;
    }
    absl::Status s = Accept();
    if (!s.ok()) return Finish(ToGrpcStatus(Count(s)));
    StartRead(&req_);
  }
  void OnDone() override { delete this; }

 private:
  absl::Status TooLarge() const {
    return absl::ResourceExhaustedError(absl::StrCat("dataset upload exceeds the limit of ",
                                                     options_.max_upload_bytes,
                                                     " bytes (--max-upload-bytes)"));
  }

  absl::Status Accept() {
    if (req_.has_info()) {
      if (got_info_) return absl::InvalidArgumentError("info: sent twice");
      got_info_ = true;
      info_ = req_.info();
      return Open();
    }
    if (!got_info_) return absl::InvalidArgumentError("info: the first message must carry info");
    const std::string& data = req_.data();
    if (static_cast<int64_t>(data.size()) > kMaxChunkBytes) {
      return absl::InvalidArgumentError("data: chunks may be at most 1 MiB");
    }
    received_ += static_cast<int64_t>(data.size());
    if (received_ > options_.max_upload_bytes) return TooLarge();
    hash_.Update(data);
    for (size_t off = 0; off < data.size();) {
      ssize_t n = write(fd_, data.data() + off, data.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return StorageError(errno, "spooling upload");
      off += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  absl::Status Open() {
    if (!info_.format().empty() && info_.format() != "tar") {
      return absl::InvalidArgumentError(
          absl::StrCat("format: \"", info_.format(), "\" is not supported (use \"tar\")"));
    }
    if (info_.size_bytes() < 0) return absl::InvalidArgumentError("size_bytes: negative");
    if (info_.name().size() > kMaxDatasetNameBytes) {
      return absl::InvalidArgumentError(absl::StrCat("name: at most ", kMaxDatasetNameBytes,
                                                     " bytes, got ", info_.name().size()));
    }
    if (info_.size_bytes() > options_.max_upload_bytes) return TooLarge();
    if (!info_.sha256().empty() && !IsContentId(absl::StrCat("sha256:", info_.sha256()))) {
      return absl::InvalidArgumentError("sha256: must be 64 lowercase hex digits (no prefix)");
    }
    std::string tmpl = options_.upload_dir + "/upload-XXXXXX";
    fd_ = mkstemp(tmpl.data());
    if (fd_ < 0) return StorageError(errno, "spooling upload");
    path_ = tmpl;
    return absl::OkStatus();
  }

  absl::Status Count(absl::Status s) {
    SchedulerMetrics* m = deps_.metrics;
    if (s.ok()) {
      (resp_->already_present() ? m->uploads_already_present : m->uploads_stored)->Increment();
    } else if (absl::IsInvalidArgument(s)) {
      m->uploads_invalid->Increment();
    } else if (absl::IsResourceExhausted(s)) {
      m->uploads_too_large->Increment();
    } else {
      m->uploads_error->Increment();
    }
    if (!s.ok()) spdlog::info("dataset upload refused: {}", s.message());
    return s;
  }

  // On the pool: checks, validates, stores, indexes.
  absl::Status Complete() {
    if (!got_info_) return absl::InvalidArgumentError("info: the first message must carry info");
    if (info_.size_bytes() != 0 && info_.size_bytes() != received_) {
      return absl::InvalidArgumentError(absl::StrCat("size_bytes: info says ", info_.size_bytes(),
                                                     " but ", received_, " bytes arrived"));
    }
    const std::string upload_hex = DigestHex(hash_.Final());
    if (!info_.sha256().empty() && info_.sha256() != upload_hex) {
      return absl::InvalidArgumentError(absl::StrCat("sha256: the uploaded bytes hash to ",
                                                     upload_hex, ", not ", info_.sha256()));
    }
    ASSIGN_OR_RETURN(model::SampleSet set, Validate());
    const std::string dataset_id = absl::StrCat("sha256:", set.sha256);
    absl::StatusOr<BlobRecord> existing = deps_.store->GetBlob(tenant_, dataset_id);
    if (existing.ok() && existing->kind == BlobKind::kDataset) {
      return Respond(*existing, /*already_present=*/true);
    }
    RETURN_IF_ERROR(CheckStoredBytes());
    ASSIGN_OR_RETURN(BlobCommitResult blob, StoreBlob(BlobIdFromHex(upload_hex)));
    BlobRecord record;
    record.blob_id = dataset_id;
    record.kind = BlobKind::kDataset;
    record.size_bytes = blob.size_bytes;
    record.tenant = tenant_;
    record.num_samples = static_cast<int32_t>(set.samples.size());
    record.content_id = blob.blob_id;
    record.name = info_.name();
    ASSIGN_OR_RETURN(PutBlobResult put, deps_.store->PutBlob(record));
    spdlog::info("dataset stored dataset_id={} samples={} bytes={} name={}", dataset_id,
                 record.num_samples, record.size_bytes, info_.name());
    return Respond(put.record, put.already_present);
  }

  // The tenant's stored bytes plus this upload stay within its max_stored_bytes quota.
  absl::Status CheckStoredBytes() {
    if (max_stored_bytes_ <= 0) return absl::OkStatus();
    ASSIGN_OR_RETURN(int64_t stored, deps_.store->TenantBlobBytes(tenant_));
    if (stored + received_ <= max_stored_bytes_) return absl::OkStatus();
    deps_.metrics->quota_exceeded->Increment();
    return QuotaError("max_stored_bytes", tenant_,
                      absl::StrCat("stores ", stored, " bytes and this upload adds ", received_),
                      max_stored_bytes_, "delete datasets or finished jobs first");
  }

  absl::Status Respond(const BlobRecord& record, bool already_present) {
    resp_->set_dataset_id(record.blob_id);
    resp_->set_num_samples(record.num_samples);
    resp_->set_size_bytes(record.size_bytes);
    resp_->set_already_present(already_present);
    return absl::OkStatus();
  }

  // The torch-free loader over the spooled tar, then every image's header. Errors name the line
  // or file ("upload:samples.jsonl:3: …"); a missing image is INVALID_ARGUMENT here.
  absl::StatusOr<model::SampleSet> Validate() { return ValidateDatasetTar(path_, "upload"); }

  absl::StatusOr<BlobCommitResult> StoreBlob(const std::string& expected_id) {
    ASSIGN_OR_RETURN(std::unique_ptr<BlobWriter> writer,
                     deps_.blobs->NewWriter(options_.max_upload_bytes));
    std::string buf(kMaxChunkBytes, '\0');
    for (off_t off = 0;;) {
      ssize_t n = pread(fd_, buf.data(), buf.size(), off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return StorageError(errno, "reading upload");
      if (n == 0) break;
      RETURN_IF_ERROR(writer->Append(absl::string_view(buf.data(), static_cast<size_t>(n))));
      off += n;
    }
    ASSIGN_OR_RETURN(BlobCommitResult r, writer->Commit(expected_id));
    if (!r.already_present) deps_.metrics->blob_bytes_stored->Increment(double(r.size_bytes));
    return r;
  }

  grpc::CallbackServerContext* const ctx_;
  const PruningServiceDeps deps_;
  const PruningServiceOptions& options_;
  const std::string tenant_;
  const int64_t max_stored_bytes_;  // 0 = unlimited
  pb::UploadDatasetResponse* const resp_;
  pb::UploadDatasetRequest req_;
  bool got_info_ = false;
  pb::DatasetInfo info_;
  int64_t received_ = 0;
  Sha256 hash_;
  int fd_ = -1;
  std::string path_;
};

// ---- FetchArtifact -----------------------------------------------------------------------------

// info, data chunks from the offset, trailer. Runs on the pool, one message per call.
class ArtifactProducer {
 public:
  ArtifactProducer(const PruningServiceDeps& deps, Principal caller, pb::FetchArtifactRequest req)
      : deps_(deps), caller_(std::move(caller)), req_(std::move(req)) {}

  absl::StatusOr<std::optional<pb::FetchArtifactResponse>> operator()() {
    pb::FetchArtifactResponse r;
    if (reader_ == nullptr) {
      if (done_) return std::nullopt;
      RETURN_IF_ERROR(Open());
      r.mutable_info()->set_artifact_id(record_.blob_id);
      r.mutable_info()->set_size_bytes(reader_->size());
      r.mutable_info()->set_format("tar");
      return r;
    }
    if (offset_ < reader_->size()) {
      ASSIGN_OR_RETURN(std::string data, reader_->Read(offset_, kMaxChunkBytes));
      if (data.empty()) return absl::DataLossError("artifact ended early");
      offset_ += static_cast<int64_t>(data.size());
      deps_.metrics->blob_bytes_served->Increment(double(data.size()));
      r.set_data(std::move(data));
      return r;
    }
    // The trailer: the artifact's id is the sha256 of its bytes (content-addressed).
    r.mutable_trailer()->set_sha256(record_.content_id);
    reader_.reset();
    done_ = true;
    return r;
  }

 private:
  absl::Status Open() {
    const std::string& id = req_.artifact_id();
    ASSIGN_OR_RETURN(record_, FindArtifact(id));
    ASSIGN_OR_RETURN(reader_, deps_.blobs->Open(record_.content_id));
    if (req_.offset() < 0) return absl::InvalidArgumentError("offset: negative");
    if (req_.offset() > reader_->size()) {
      return absl::OutOfRangeError(absl::StrCat(
          "offset: ", req_.offset(), " is past the artifact's end (", reader_->size(), " bytes)"));
    }
    offset_ = req_.offset();
    return absl::OkStatus();
  }

  // The caller's artifact `id`; an admin's may be any tenant's.
  absl::StatusOr<BlobRecord> FindArtifact(const std::string& id) {
    absl::StatusOr<BlobRecord> rec = deps_.store->GetBlob(caller_.tenant, id);
    if (rec.ok() && rec->kind == BlobKind::kArtifact) return rec;
    if (!rec.ok() && !absl::IsNotFound(rec.status())) return rec.status();
    if (caller_.admin()) {
      ASSIGN_OR_RETURN(std::vector<BlobRecord> all,
                       deps_.store->ListBlobs("", BlobKind::kArtifact));
      for (BlobRecord& r : all) {
        if (r.blob_id == id && !r.tenant.empty()) return std::move(r);
      }
    }
    return absl::NotFoundError(absl::StrCat("artifact_id: no artifact ", id));
  }

  const PruningServiceDeps deps_;
  const Principal caller_;
  const pb::FetchArtifactRequest req_;
  BlobRecord record_;
  std::shared_ptr<BlobReader> reader_;
  int64_t offset_ = 0;
  bool done_ = false;
};

}  // namespace

// ---- PruningServiceImpl ------------------------------------------------------------------------

PruningServiceImpl::PruningServiceImpl(PruningServiceDeps deps, PruningServiceOptions options)
    : deps_(deps),
      options_(std::move(options)),
      runner_(&noop_runner_),
      watchers_(options_.max_watchers_per_job) {}

void PruningServiceImpl::SetJobRunner(JobRunner* runner) {
  runner_.store(runner == nullptr ? &noop_runner_ : runner);
}

absl::Status PruningServiceImpl::CheckModelUri(const std::string& tenant,
                                               const std::string& uri) const {
  if (IsBlobModelUri(uri)) {
    ASSIGN_OR_RETURN(std::string model_id, BlobModelId(uri, "model_uri"));
    return LoadModelManifest(*deps_.store, *deps_.blobs, tenant, model_id).status();
  }
  ASSIGN_OR_RETURN(std::string path, FileUriPath(uri, "model_uri"));
  if (options_.allowed_model_roots.empty()) {
    return absl::InvalidArgumentError(
        "model_uri: no model is allowed: the scheduler runs without --allowed-model-roots");
  }
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("model_uri: cannot resolve ", path, ": ", strerror(errno)));
  }
  const std::string real(resolved);
  for (const std::string& root : options_.allowed_model_roots) {
    if (real == root || absl::StartsWith(real, root == "/" ? root : root + "/")) {
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("model_uri: ", real, " is not under --allowed-model-roots (",
                   absl::StrJoin(options_.allowed_model_roots, ","), ")"));
}

absl::Status PruningServiceImpl::CheckDataset(const std::string& tenant, const std::string& id,
                                              const char* field) const {
  absl::StatusOr<BlobRecord> rec = deps_.store->GetBlob(tenant, id);
  if (rec.ok() && rec->kind == BlobKind::kDataset) return absl::OkStatus();
  if (!rec.ok() && !absl::IsNotFound(rec.status())) return rec.status();
  // NOT_FOUND, like every other tenant's object: whether another tenant holds it stays hidden.
  return absl::NotFoundError(
      absl::StrCat(field, ": unknown dataset ", id, " (upload it with UploadDataset first)"));
}

absl::Status PruningServiceImpl::CheckWarmStart(const std::string& tenant,
                                                const JobSpec& spec) const {
  const std::string& id = spec.warm_start_job_id;
  if (id.empty()) return absl::OkStatus();
  absl::StatusOr<pb::Job> source = deps_.store->GetJob(id);
  if (absl::IsNotFound(source.status()) || (source.ok() && source->tenant() != tenant)) {
    return absl::NotFoundError(absl::StrCat("warm_start_job_id: no job ", id));
  }
  if (!source.ok()) return source.status();
  if (source->state() != pb::SUCCEEDED) {
    return absl::FailedPreconditionError(
        absl::StrCat("warm_start_job_id: job ", id, " is ", pb::JobState_Name(source->state()),
                     "; only a SUCCEEDED job's ranked policies can start another search"));
  }
  ASSIGN_OR_RETURN(JobSpec from, JobSpecFromProto(source->spec()));
  const std::pair<const char*, bool> same[] = {
      {"model_uri", from.model_uri == spec.model_uri},
      {"dataset_id", from.dataset_id == spec.dataset_id},
      {"granularity", from.granularity == spec.granularity},
      {"nm_pattern", NmPatternName(from.nm) == NmPatternName(spec.nm)},
      {"unit", from.unit == spec.unit}};
  for (const auto& [field, equal] : same) {
    if (!equal) {
      return absl::InvalidArgumentError(absl::StrCat(
          "warm_start_job_id: job ", id, " has another ", field,
          "; a search starts only from a job of the same model, samples, granularity and unit"));
    }
  }
  if (!from.searching()) {
    return absl::InvalidArgumentError(absl::StrCat("warm_start_job_id: job ", id, " ran strategy ",
                                                   search::StrategyName(from.strategy),
                                                   ", which ranks no policies"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Principal> PruningServiceImpl::Caller(grpc::CallbackServerContext* ctx) const {
  if (deps_.auth == nullptr) return Principal{"", Role::kAdmin};
  absl::StatusOr<Principal> who = deps_.auth->Authenticate(*ctx);
  if (!who.ok()) deps_.metrics->auth_unauthenticated->Increment();
  return who;
}

TenantQuota PruningServiceImpl::QuotaOf(const std::string& tenant) const {
  if (deps_.auth == nullptr) return TenantQuota{0, 0, 0};
  return deps_.auth->QuotaOf(tenant);
}

absl::Status PruningServiceImpl::CheckSubmitQuotas(const std::string& tenant) const {
  const TenantQuota quota = QuotaOf(tenant);
  const int64_t max_queued = quota.max_queued_jobs.value_or(0);
  if (max_queued > 0) {
    ASSIGN_OR_RETURN(auto counts, deps_.store->CountJobsByState(tenant));
    if (counts[pb::QUEUED] >= max_queued) {
      deps_.metrics->quota_exceeded->Increment();
      return QuotaError("max_queued_jobs", tenant,
                        absl::StrCat("has ", counts[pb::QUEUED], " jobs QUEUED"), max_queued,
                        "wait for some to start, or cancel some (--max-queued-jobs or the "
                        "tokens file set it)");
    }
  }
  const int64_t max_bytes = quota.max_stored_bytes.value_or(0);
  if (max_bytes > 0) {
    ASSIGN_OR_RETURN(int64_t stored, deps_.store->TenantBlobBytes(tenant));
    if (stored >= max_bytes) {
      deps_.metrics->quota_exceeded->Increment();
      return QuotaError("max_stored_bytes", tenant, absl::StrCat("stores ", stored, " bytes"),
                        max_bytes, "a job's artifact would not fit: delete datasets or jobs first");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<pb::SubmitJobResponse> PruningServiceImpl::DoSubmit(const Principal& caller,
                                                                   const pb::JobSpec& proto) {
  const std::string& tenant = caller.tenant;
  ASSIGN_OR_RETURN(JobSpec spec, JobSpecFromProto(proto));
  if (spec.uniform_guard) {
    // The guard scores UNIFORM's continuous ratios, which EvaluatePolicies (grid ratios) cannot
    // carry yet.
    return absl::InvalidArgumentError(
        "uniform_guard is not supported by the service yet (prune-local --uniform-guard has it)");
  }
  RETURN_IF_ERROR(CheckModelUri(tenant, spec.model_uri));
  RETURN_IF_ERROR(CheckDataset(tenant, spec.dataset_id, "dataset_id"));
  if (spec.eval_dataset_id.has_value()) {
    RETURN_IF_ERROR(CheckDataset(tenant, *spec.eval_dataset_id, "eval_dataset_id"));
  }
  RETURN_IF_ERROR(CheckWarmStart(tenant, spec));
  RETURN_IF_ERROR(CheckSubmitQuotas(tenant));
  const pb::JobEvent queued = StateEvent(pb::JOB_STATE_UNSPECIFIED, pb::QUEUED, "submitted");
  ASSIGN_OR_RETURN(CreateJobResult created,
                   deps_.store->CreateJob(tenant, JobSpecToProto(spec), {queued}));
  pb::SubmitJobResponse resp;
  resp.set_deduplicated(created.deduplicated);
  const std::string job_id = created.job.job_id();
  *resp.mutable_job() = std::move(created.job);
  if (resp.deduplicated()) return resp;
  // Durable now: tell live watchers (a watcher that subscribed before this also reads the store)
  // and the runner.
  absl::StatusOr<std::vector<pb::JobEvent>> events = deps_.store->ReadEvents(job_id, 0, 1);
  if (events.ok()) deps_.hub->Publish(*events);
  runner_.load()->Enqueue(job_id);
  spdlog::info("job submitted job_id={} strategy={} budget={}", job_id,
               pb::Strategy_Name(resp.job().spec().strategy()), spec.flops_budget);
  return resp;
}

absl::StatusOr<pb::Job> PruningServiceImpl::DoGet(const Principal& caller,
                                                  const std::string& job_id) {
  absl::StatusOr<pb::Job> job = deps_.store->GetJob(job_id);
  if (absl::IsNotFound(job.status()) ||
      (job.ok() && job->tenant() != caller.tenant && !caller.admin())) {
    return absl::NotFoundError(absl::StrCat("no job ", job_id));
  }
  return job;
}

absl::StatusOr<pb::ListJobsResponse> PruningServiceImpl::DoList(const Principal& caller,
                                                                const pb::ListJobsRequest& req) {
  ListJobsQuery q;
  q.tenant = caller.admin() ? "" : caller.tenant;  // "" lists every tenant's
  for (int s : req.states()) q.states.push_back(static_cast<pb::JobState>(s));
  q.labels.insert(req.labels().begin(), req.labels().end());
  q.page_size = req.page_size();
  q.page_token = req.page_token();
  ASSIGN_OR_RETURN(ListJobsPage page, deps_.store->ListJobs(q));
  pb::ListJobsResponse resp;
  for (pb::Job& j : page.jobs) *resp.add_jobs() = std::move(j);
  resp.set_next_page_token(page.next_page_token);
  return resp;
}

absl::StatusOr<pb::Job> PruningServiceImpl::DoCancel(const Principal& caller,
                                                     const std::string& job_id,
                                                     const std::string& reason) {
  const std::string why = reason.empty() ? "cancelled by CancelJob" : reason;
  // The state may move between the read and the commit (the driver); expected_states makes the
  // commit fail rather than write a wrong `from`, and the loop reads again.
  for (int attempt = 0; attempt < 16; ++attempt) {
    ASSIGN_OR_RETURN(pb::Job job, DoGet(caller, job_id));
    if (IsTerminalState(job.state())) return job;
    JobMutation m;
    m.expected_states = {job.state()};
    m.state = pb::CANCELLED;
    absl::StatusOr<CommitResult> r =
        deps_.store->Commit(job_id, m, {StateEvent(job.state(), pb::CANCELLED, why)}, std::nullopt);
    if (absl::IsFailedPrecondition(r.status())) continue;
    if (!r.ok()) return r.status();
    deps_.hub->Publish(r->events);
    runner_.load()->Cancel(job_id);
    spdlog::info("job cancelled job_id={} from={} reason={}", job_id,
                 pb::JobState_Name(job.state()), why);
    return r->job;
  }
  return absl::AbortedError(absl::StrCat("job ", job_id, " kept changing state; retry CancelJob"));
}

grpc::ServerUnaryReactor* PruningServiceImpl::SubmitJob(grpc::CallbackServerContext* ctx,
                                                        const pb::SubmitJobRequest* req,
                                                        pb::SubmitJobResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(deps_.pool, ctx, resp, [this, req, caller = *who] {
    absl::StatusOr<pb::SubmitJobResponse> r = DoSubmit(caller, req->spec());
    SchedulerMetrics* m = deps_.metrics;
    if (r.ok()) {
      (r->deduplicated() ? m->submissions_deduplicated : m->submissions_accepted)->Increment();
    } else if (absl::IsInvalidArgument(r.status())) {
      m->submissions_invalid->Increment();
    } else {
      m->submissions_error->Increment();
    }
    return r;
  });
}

grpc::ServerUnaryReactor* PruningServiceImpl::GetJob(grpc::CallbackServerContext* ctx,
                                                     const pb::GetJobRequest* req, pb::Job* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(deps_.pool, ctx, resp,
                        [this, req, caller = *who] { return DoGet(caller, req->job_id()); });
}

grpc::ServerUnaryReactor* PruningServiceImpl::ListJobs(grpc::CallbackServerContext* ctx,
                                                       const pb::ListJobsRequest* req,
                                                       pb::ListJobsResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(deps_.pool, ctx, resp,
                        [this, req, caller = *who] { return DoList(caller, *req); });
}

grpc::ServerUnaryReactor* PruningServiceImpl::CancelJob(grpc::CallbackServerContext* ctx,
                                                        const pb::CancelJobRequest* req,
                                                        pb::Job* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(deps_.pool, ctx, resp, [this, req, caller = *who] {
    return DoCancel(caller, req->job_id(), req->reason());
  });
}

grpc::ServerWriteReactor<pb::JobEvent>* PruningServiceImpl::WatchJob(
    grpc::CallbackServerContext* ctx, const pb::WatchJobRequest* req) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return new FinishedWriteReactor<pb::JobEvent>(ToGrpcStatus(who.status()));
  return new WatchReactor(deps_, *who, req->job_id(), req->from_sequence(),
                          options_.max_watch_backlog, &watchers_);
}

grpc::ServerReadReactor<pb::UploadDatasetRequest>* PruningServiceImpl::UploadDataset(
    grpc::CallbackServerContext* ctx, pb::UploadDatasetResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) {
    return new FinishedReadReactor<pb::UploadDatasetRequest>(ToGrpcStatus(who.status()));
  }
  return new UploadReactor(ctx, deps_, options_, who->tenant,
                           QuotaOf(who->tenant).max_stored_bytes.value_or(0), resp);
}

grpc::ServerReadReactor<pb::UploadModelRequest>* PruningServiceImpl::UploadModel(
    grpc::CallbackServerContext* ctx, pb::UploadModelResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) {
    return new FinishedReadReactor<pb::UploadModelRequest>(ToGrpcStatus(who.status()));
  }
  return NewModelUploadReactor(ctx, deps_, who->tenant,
                               QuotaOf(who->tenant).max_stored_bytes.value_or(0), resp);
}

grpc::ServerUnaryReactor* PruningServiceImpl::ListModels(grpc::CallbackServerContext* ctx,
                                                         const pb::ListModelsRequest*,
                                                         pb::ListModelsResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(deps_.pool, ctx, resp, [this, tenant = who->tenant] {
    return server::ListModels(*deps_.store, *deps_.blobs, tenant);
  });
}

grpc::ServerUnaryReactor* PruningServiceImpl::DeleteModel(grpc::CallbackServerContext* ctx,
                                                          const pb::DeleteModelRequest* req,
                                                          pb::DeleteModelResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(deps_.pool, ctx, resp, [this, req, tenant = who->tenant] {
    absl::StatusOr<pb::DeleteModelResponse> r =
        server::DeleteModel(*deps_.store, *deps_.blobs, tenant, req->model_id());
    if (r.ok() && deps_.sweeper != nullptr) deps_.sweeper->Wake();
    return r;
  });
}

grpc::ServerWriteReactor<pb::FetchArtifactResponse>* PruningServiceImpl::FetchArtifact(
    grpc::CallbackServerContext* ctx, const pb::FetchArtifactRequest* req) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) {
    return new FinishedWriteReactor<pb::FetchArtifactResponse>(ToGrpcStatus(who.status()));
  }
  auto producer = std::make_shared<ArtifactProducer>(deps_, *who, *req);
  return new ProducerWriteReactor<pb::FetchArtifactResponse>(deps_.pool,
                                                             [producer] { return (*producer)(); });
}

grpc::ServerUnaryReactor* PruningServiceImpl::ListWorkers(grpc::CallbackServerContext* ctx,
                                                          const pb::ListWorkersRequest*,
                                                          pb::ListWorkersResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  if (!who->admin()) {
    deps_.metrics->auth_permission_denied->Increment();
    return FinishUnary(
        ctx, grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "ListWorkers needs the admin role"));
  }
  for (auto& w : deps_.workers->List()) *resp->add_workers() = std::move(w);
  return FinishUnary(ctx, grpc::Status::OK);
}

bool WatcherCounts::TryAdd(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  int& n = counts_[job_id];
  if (n >= max_) return false;
  ++n;
  return true;
}

void WatcherCounts::Remove(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = counts_.find(job_id);
  if (it != counts_.end() && --it->second <= 0) counts_.erase(it);
}

// ---- storage lifecycle -------------------------------------------------------------------------

grpc::ServerUnaryReactor* PruningServiceImpl::DeleteJob(grpc::CallbackServerContext* ctx,
                                                        const pb::DeleteJobRequest* req,
                                                        pb::DeleteJobResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(deps_.pool, ctx, resp,
                        [this, req, caller = *who]() -> absl::StatusOr<pb::DeleteJobResponse> {
                          RETURN_IF_ERROR(DoGet(caller, req->job_id()).status());
                          RETURN_IF_ERROR(deps_.store->DeleteJob(req->job_id()));
                          spdlog::info("job deleted job_id={}", req->job_id());
                          if (deps_.sweeper != nullptr) deps_.sweeper->Wake();
                          return pb::DeleteJobResponse();
                        });
}

grpc::ServerUnaryReactor* PruningServiceImpl::ListDatasets(grpc::CallbackServerContext* ctx,
                                                           const pb::ListDatasetsRequest*,
                                                           pb::ListDatasetsResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(deps_.pool, ctx, resp,
                        [this, tenant = who->tenant]() -> absl::StatusOr<pb::ListDatasetsResponse> {
                          ASSIGN_OR_RETURN(std::vector<BlobRecord> records,
                                           deps_.store->ListBlobs(tenant, BlobKind::kDataset));
                          pb::ListDatasetsResponse r;
                          for (const BlobRecord& b : records) {
                            if (b.tenant != tenant) continue;  // ListBlobs("") is every tenant's
                            pb::Dataset* d = r.add_datasets();
                            d->set_dataset_id(b.blob_id);
                            d->set_name(b.name);
                            d->set_num_samples(b.num_samples);
                            d->set_size_bytes(b.size_bytes);
                            const int64_t us = absl::ToUnixMicros(b.create_time);
                            d->mutable_create_time()->set_seconds(us / 1000000);
                            d->mutable_create_time()->set_nanos(int32_t(us % 1000000) * 1000);
                          }
                          return r;
                        });
}

grpc::ServerUnaryReactor* PruningServiceImpl::DeleteDataset(grpc::CallbackServerContext* ctx,
                                                            const pb::DeleteDatasetRequest* req,
                                                            pb::DeleteDatasetResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return FinishUnary(ctx, ToGrpcStatus(who.status()));
  return RunUnaryOnPool(
      deps_.pool, ctx, resp,
      [this, req, tenant = who->tenant]() -> absl::StatusOr<pb::DeleteDatasetResponse> {
        const std::string& id = req->dataset_id();
        ASSIGN_OR_RETURN(BlobRecord record, deps_.store->GetBlob(tenant, id));
        if (record.kind != BlobKind::kDataset) {
          return absl::NotFoundError(absl::StrCat("dataset ", id, " not found"));
        }
        // A job that may still read it keeps it.
        ASSIGN_OR_RETURN(std::vector<pb::Job> live, deps_.store->ListNonTerminalJobs());
        for (const pb::Job& j : live) {
          if (j.tenant() == tenant &&
              (j.spec().dataset_id() == id || j.spec().eval_dataset_id() == id)) {
            return absl::FailedPreconditionError(
                absl::StrCat("dataset ", id, " is used by job ", j.job_id(), " (",
                             pb::JobState_Name(j.state()), "): cancel it or wait for it to end"));
          }
        }
        ASSIGN_OR_RETURN(DeleteBlobResult d, deps_.store->DeleteBlob(tenant, id));
        if (d.remaining_references == 0) {
          absl::Status s = deps_.blobs->Delete(d.content_id);
          if (!s.ok() && !absl::IsNotFound(s)) {
            // The record is gone; the file is an orphan the sweep removes.
            spdlog::warn("dataset {}: deleting its file failed (the sweep retries): {}", id,
                         s.message());
          }
        }
        spdlog::info("dataset deleted dataset_id={} file_removed={}", id,
                     d.remaining_references == 0);
        return pb::DeleteDatasetResponse();
      });
}

}  // namespace prunesvc::server

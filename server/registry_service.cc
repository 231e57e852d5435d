#include "server/registry_service.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/callback_util.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/stream_reactors.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;

constexpr int64_t kChunk = int64_t{1} << 20;

// A dataset id resolves through the index to its tar; any other stored blob is its own id.
absl::StatusOr<std::string> ResolveBlob(JobStore* store, BlobStore* blobs,
                                        const std::string& tenant, const std::string& id) {
  RETURN_IF_ERROR(ValidateBlobId(id));
  absl::StatusOr<BlobRecord> rec = store->GetBlob(tenant, id);
  if (rec.ok()) return rec->content_id.empty() ? id : rec->content_id;
  ASSIGN_OR_RETURN(bool has, blobs->Has(id));
  if (!has) return absl::NotFoundError(absl::StrCat("blob_id: no blob ", id));
  return id;
}

// total_size and the first chunk, then chunks; always at least one message.
class BlobProducer {
 public:
  BlobProducer(JobStore* store, BlobStore* blobs, SchedulerMetrics* metrics, std::string tenant,
               pb::FetchBlobRequest req)
      : store_(store),
        blobs_(blobs),
        metrics_(metrics),
        tenant_(std::move(tenant)),
        req_(std::move(req)) {}

  absl::StatusOr<std::optional<pb::FetchBlobResponse>> operator()() {
    pb::FetchBlobResponse r;
    if (reader_ == nullptr) {
      ASSIGN_OR_RETURN(std::string content_id,
                       ResolveBlob(store_, blobs_, tenant_, req_.blob_id()));
      ASSIGN_OR_RETURN(reader_, blobs_->Open(content_id));
      if (req_.offset() < 0 || req_.offset() > reader_->size()) {
        return absl::OutOfRangeError(
            absl::StrCat("offset: ", req_.offset(), " outside [0, ", reader_->size(), "]"));
      }
      offset_ = req_.offset();
      r.set_total_size(reader_->size());
    } else if (offset_ >= reader_->size()) {
      return std::nullopt;
    }
    ASSIGN_OR_RETURN(std::string data, reader_->Read(offset_, kChunk));
    offset_ += static_cast<int64_t>(data.size());
    if (data.empty()) offset_ = reader_->size();  // empty blob or offset at the end
    metrics_->blob_bytes_served->Increment(double(data.size()));
    r.set_data(std::move(data));
    return r;
  }

 private:
  JobStore* const store_;
  BlobStore* const blobs_;
  SchedulerMetrics* const metrics_;
  const std::string tenant_;  // whose dataset index resolves a dataset id
  const pb::FetchBlobRequest req_;
  std::unique_ptr<BlobReader> reader_;
  int64_t offset_ = 0;
};

// Streams chunks into a BlobWriter on the reactor thread (<= 1 MiB each); verifies, commits and
// indexes on the pool.
class PutBlobReactor final : public grpc::ServerReadReactor<pb::PutBlobRequest> {
 public:
  PutBlobReactor(JobStore* store, BlobStore* blobs, ThreadPool* pool, SchedulerMetrics* metrics,
                 pb::PutBlobResponse* resp)
      : store_(store), blobs_(blobs), pool_(pool), metrics_(metrics), resp_(resp) {
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      pool_->Schedule([this] { Finish(ToGrpcStatus(Complete())); });
      return;
    }
    absl::Status s = Accept();
    if (!s.ok()) return Finish(ToGrpcStatus(s));
    StartRead(&req_);
  }
  void OnDone() override { delete this; }

 private:
  absl::Status Accept() {
    if (writer_ == nullptr) {
      RETURN_IF_ERROR(ValidateBlobId(req_.blob_id()));
      if (req_.size_bytes() < 0) return absl::InvalidArgumentError("size_bytes: negative");
      blob_id_ = req_.blob_id();
      size_bytes_ = req_.size_bytes();
      ASSIGN_OR_RETURN(writer_, blobs_->NewWriter(size_bytes_ > 0 ? size_bytes_ : 1));
    }
    if (static_cast<int64_t>(req_.data().size()) > kChunk) {
      return absl::InvalidArgumentError("data: chunks may be at most 1 MiB");
    }
    if (head_.size() < 512) head_.append(req_.data().substr(0, 512 - head_.size()));
    return writer_->Append(req_.data());
  }

  absl::Status Complete() {
    if (writer_ == nullptr) return absl::InvalidArgumentError("blob_id: no message received");
    if (writer_->bytes_written() != size_bytes_) {
      writer_->Abort();
      return absl::InvalidArgumentError(absl::StrCat("size_bytes: ", size_bytes_, " announced, ",
                                                     writer_->bytes_written(), " received"));
    }
    ASSIGN_OR_RETURN(BlobCommitResult c, writer_->Commit(blob_id_));
    if (!c.already_present) metrics_->blob_bytes_stored->Increment(double(c.size_bytes));
    BlobRecord record;
    record.blob_id = c.blob_id;
    record.kind = IsTar() ? BlobKind::kArtifact : BlobKind::kProjector;
    record.size_bytes = c.size_bytes;
    record.tenant = "";
    RETURN_IF_ERROR(store_->PutBlob(record).status());
    spdlog::info("blob stored blob_id={} kind={} bytes={} already_present={}", c.blob_id,
                 BlobKindName(record.kind), c.size_bytes, c.already_present);
    resp_->set_blob_id(c.blob_id);
    resp_->set_already_present(c.already_present);
    return absl::OkStatus();
  }

  // POSIX ustar (and GNU tar) carry "ustar" at byte 257 of the first header.
  bool IsTar() const { return head_.size() >= 262 && head_.compare(257, 5, "ustar") == 0; }

  JobStore* const store_;
  BlobStore* const blobs_;
  ThreadPool* const pool_;
  SchedulerMetrics* const metrics_;
  pb::PutBlobResponse* const resp_;
  pb::PutBlobRequest req_;
  std::unique_ptr<BlobWriter> writer_;
  std::string blob_id_;
  int64_t size_bytes_ = 0;
  std::string head_;  // the first 512 bytes, to tell an artifact (tar) from a projector
};

constexpr char kSessionKey[] = "prunesvc-worker-session";

}  // namespace

absl::Status RegistryService::CheckWorkerToken(const grpc::ServerContextBase& ctx) const {
  if (!secured()) return absl::OkStatus();
  absl::Status s = auth_->AuthenticateWorker(ctx);
  if (!s.ok()) metrics_->auth_worker_unauthenticated->Increment();
  return s;
}

absl::StatusOr<std::string> RegistryService::SessionWorker(
    const grpc::ServerContextBase& ctx) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find(kSessionKey);
  const std::string session =
      it == md.end() ? "" : std::string(it->second.data(), it->second.size());
  return table_->WorkerOfSession(session);
}

absl::StatusOr<std::string> RegistryService::AuthorizeFetch(const grpc::ServerContextBase& ctx,
                                                            const std::string& blob_id) const {
  RETURN_IF_ERROR(CheckWorkerToken(ctx));
  if (!secured()) return std::string();
  absl::StatusOr<std::string> worker = SessionWorker(ctx);
  const BlobAccess* access = access_.load();
  absl::StatusOr<std::string> tenant =
      !worker.ok()        ? absl::PermissionDeniedError(worker.status().message())
      : access == nullptr ? absl::PermissionDeniedError("the scheduler runs no steps yet")
                          : access->FetchTenant(*worker, blob_id);
  if (!tenant.ok()) metrics_->auth_permission_denied->Increment();
  return tenant;
}

absl::Status RegistryService::AuthorizePut(const grpc::ServerContextBase& ctx) const {
  RETURN_IF_ERROR(CheckWorkerToken(ctx));
  if (!secured()) return absl::OkStatus();
  absl::StatusOr<std::string> worker = SessionWorker(ctx);
  const BlobAccess* access = access_.load();
  absl::Status s = !worker.ok()        ? absl::PermissionDeniedError(worker.status().message())
                   : access == nullptr ? absl::PermissionDeniedError("no step is leased")
                                       : access->MayPut(*worker);
  if (!s.ok()) metrics_->auth_permission_denied->Increment();
  return s;
}

grpc::ServerUnaryReactor* RegistryService::RegisterWorker(grpc::CallbackServerContext* ctx,
                                                          const pb::RegisterWorkerRequest* req,
                                                          pb::RegisterWorkerResponse* resp) {
  if (absl::Status s = CheckWorkerToken(*ctx); !s.ok()) return FinishUnary(ctx, ToGrpcStatus(s));
  absl::StatusOr<std::string> id = table_->Register(req->info());
  if (!id.ok()) return FinishUnary(ctx, ToGrpcStatus(id.status()));
  if (secured()) {
    absl::StatusOr<std::string> session = table_->OpenSession(*id);
    if (!session.ok()) return FinishUnary(ctx, ToGrpcStatus(session.status()));
    resp->set_session_token(*session);
  }
  metrics_->worker_registrations->Increment();
  spdlog::info("worker registered worker_id={} address={} device={} pid={} metrics_port={}", *id,
               req->info().address(), req->info().device(), req->info().pid(),
               req->info().metrics_port());
  if (WorkerConnector* c = connector_.load()) c->Dial(req->info().address());
  resp->set_worker_id(*id);
  resp->set_heartbeat_interval_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(table_->options().heartbeat_interval)));
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* RegistryService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                     const pb::HeartbeatRequest* req,
                                                     pb::HeartbeatResponse* resp) {
  if (absl::Status s = CheckWorkerToken(*ctx); !s.ok()) return FinishUnary(ctx, ToGrpcStatus(s));
  if (secured()) {
    absl::StatusOr<std::string> worker = SessionWorker(*ctx);
    if (!worker.ok() || *worker != req->worker_id()) {  // a stale or foreign session
      resp->set_reregister(true);
      return FinishUnary(ctx, grpc::Status::OK);
    }
  }
  std::vector<std::string> models(req->cached_models().begin(), req->cached_models().end());
  absl::Status s = table_->Heartbeat(req->worker_id(), req->state(), models);
  if (absl::IsNotFound(s)) {
    resp->set_reregister(true);
    return FinishUnary(ctx, grpc::Status::OK);
  }
  return FinishUnary(ctx, ToGrpcStatus(s));
}

grpc::ServerWriteReactor<pb::FetchBlobResponse>* RegistryService::FetchBlob(
    grpc::CallbackServerContext* ctx, const pb::FetchBlobRequest* req) {
  absl::StatusOr<std::string> tenant = AuthorizeFetch(*ctx, req->blob_id());
  if (!tenant.ok()) {
    return new FinishedWriteReactor<pb::FetchBlobResponse>(ToGrpcStatus(tenant.status()));
  }
  auto producer = std::make_shared<BlobProducer>(store_, blobs_, metrics_, *tenant, *req);
  return new ProducerWriteReactor<pb::FetchBlobResponse>(pool_,
                                                         [producer] { return (*producer)(); });
}

grpc::ServerReadReactor<pb::PutBlobRequest>* RegistryService::PutBlob(
    grpc::CallbackServerContext* ctx, pb::PutBlobResponse* resp) {
  if (absl::Status s = AuthorizePut(*ctx); !s.ok()) {
    return new FinishedReadReactor<pb::PutBlobRequest>(ToGrpcStatus(s));
  }
  return new PutBlobReactor(store_, blobs_, pool_, metrics_, resp);
}

}  // namespace prunesvc::server

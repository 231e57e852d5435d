#include "server/model_upload.h"

#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;

ModelManifest FromProto(const pb::ModelManifestInfo& info) {
  ModelManifest m;
  m.name = info.name();
  for (const pb::ModelFile& f : info.files())
    m.files.push_back({f.path(), f.size_bytes(), f.sha256()});
  return m;
}

class ModelUploadReactor final : public grpc::ServerReadReactor<pb::UploadModelRequest> {
 public:
  ModelUploadReactor(grpc::CallbackServerContext* ctx, const PruningServiceDeps& deps,
                     std::string tenant, int64_t max_stored_bytes, pb::UploadModelResponse* resp)
      : ctx_(ctx),
        deps_(deps),
        pool_(deps.upload_pool != nullptr ? deps.upload_pool : deps.pool),
        tenant_(std::move(tenant)),
        max_stored_bytes_(max_stored_bytes),
        resp_(resp) {
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok && ctx_->IsCancelled()) {
      return pool_->Schedule([this] {
        Abandon();
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled"));
      });
    }
    if (!ok) return pool_->Schedule([this] { Finish(ToGrpcStatus(Logged(Complete()))); });
    pool_->Schedule([this] {
      absl::Status s = Accept();
      if (!s.ok()) {
        Abandon();
        return Finish(ToGrpcStatus(Logged(s)));
      }
      StartRead(&req_);
    });
  }
  void OnDone() override { delete this; }

 private:
  struct Expected {
    std::string path;
    int64_t size = 0;
    bool missing = true;  // not stored for this tenant when the manifest arrived
    bool sent = false;    // its data arrived in this call
  };

  absl::Status Logged(absl::Status s) {
    if (!s.ok()) spdlog::info("model upload refused: tenant={} {}", tenant_, s.message());
    return s;
  }

  // An unfinished file's bytes are dropped; completed files stay indexed (the resume point).
  void Abandon() {
    if (writer_) writer_->Abort();
    writer_.reset();
  }

  absl::Status Accept() {
    if (req_.has_manifest()) return AcceptManifest();
    if (!req_.has_data()) return absl::InvalidArgumentError("a message carries neither part");
    if (!manifest_) {
      return absl::InvalidArgumentError("manifest: the first message must carry the manifest");
    }
    const pb::ModelFileData& data = req_.data();
    if (static_cast<int64_t>(data.data().size()) > kMaxChunkBytes) {
      return absl::InvalidArgumentError("data: chunks may be at most 1 MiB");
    }
    if (current_ != absl::StrCat(kBlobIdPrefix, data.sha256())) {
      RETURN_IF_ERROR(StartFile(data.sha256()));
    }
    Expected& file = expected_.at(current_);
    if (written_ + static_cast<int64_t>(data.data().size()) > file.size) {
      return absl::InvalidArgumentError(absl::StrCat("file ", file.path, ": more than its ",
                                                     file.size, " bytes (size_bytes) arrived"));
    }
    RETURN_IF_ERROR(writer_->Append(data.data()));
    written_ += static_cast<int64_t>(data.data().size());
    return absl::OkStatus();
  }

  absl::Status AcceptManifest() {
    if (manifest_) return absl::InvalidArgumentError("manifest: sent twice");
    ModelManifest m = FromProto(req_.manifest());
    if (absl::Status s = ValidateModelManifest(m); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("manifest: ", s.message()));
    }
    const std::string bytes = SerializeModelManifest(m);
    model_id_ = absl::StrCat(kBlobIdPrefix, Sha256Hex(bytes));
    int64_t missing_bytes = 0;
    for (const ModelFileEntry& f : m.files) {
      const std::string id = absl::StrCat(kBlobIdPrefix, f.sha256);
      Expected e{f.path, f.size, true, false};
      auto [it, inserted] = expected_.emplace(id, e);
      if (!inserted) continue;  // the same bytes under two paths: one blob
      ASSIGN_OR_RETURN(it->second.missing, IsMissing(id));
      if (it->second.missing) missing_bytes += f.size;
    }
    RETURN_IF_ERROR(CheckStoredBytes(missing_bytes));
    manifest_bytes_ = bytes;
    manifest_ = std::move(m);
    // Empty files carry no data messages: store them now (the commit checks their sha256).
    for (auto& [id, e] : expected_) {
      if (e.size == 0 && e.missing) RETURN_IF_ERROR(StartFile(id.substr(kBlobIdPrefix.size())));
    }
    return FinishFile();
  }

  // Whether the tenant lacks the file's bytes: no record naming them (a dataset's id is a
  // sample-set hash, not a byte hash), or the store lost them.
  absl::StatusOr<bool> IsMissing(const std::string& id) {
    absl::StatusOr<BlobRecord> rec = deps_.store->GetBlob(tenant_, id);
    if (absl::IsNotFound(rec.status())) return true;
    RETURN_IF_ERROR(rec.status());
    if (rec->kind == BlobKind::kDataset) return true;
    ASSIGN_OR_RETURN(bool has, deps_.blobs->Has(rec->content_id));
    return !has;
  }

  absl::Status CheckStoredBytes(int64_t adding) {
    if (max_stored_bytes_ <= 0 || adding == 0) return absl::OkStatus();
    ASSIGN_OR_RETURN(int64_t stored, deps_.store->TenantBlobBytes(tenant_));
    if (stored + adding <= max_stored_bytes_) return absl::OkStatus();
    deps_.metrics->quota_exceeded->Increment();
    return QuotaError(
        "max_stored_bytes", tenant_,
        absl::StrCat("stores ", stored, " bytes and this model's missing files add ", adding),
        max_stored_bytes_, "delete datasets or finished jobs first");
  }

  // Commits the file in progress, then opens one for `sha256`.
  absl::Status StartFile(const std::string& sha256) {
    RETURN_IF_ERROR(FinishFile());
    const std::string id = absl::StrCat(kBlobIdPrefix, sha256);
    auto it = expected_.find(id);
    if (it == expected_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("data.sha256: \"", sha256.substr(0, 80),
                                                     "\" names no file of the manifest"));
    }
    if (it->second.sent) {
      return absl::InvalidArgumentError(absl::StrCat(
          "file ", it->second.path, ": its data was already sent (send each file once, whole)"));
    }
    it->second.sent = true;
    ASSIGN_OR_RETURN(writer_, deps_.blobs->NewWriter(std::max<int64_t>(1, it->second.size)));
    current_ = id;
    written_ = 0;
    return absl::OkStatus();
  }

  // Commits and indexes the file in progress, if any.
  absl::Status FinishFile() {
    if (!writer_) return absl::OkStatus();
    const Expected& file = expected_.at(current_);
    if (written_ != file.size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "file ", file.path, ": ", written_, " bytes arrived, the manifest says ", file.size));
    }
    absl::StatusOr<BlobCommitResult> blob = writer_->Commit(current_);
    writer_.reset();
    if (absl::IsInvalidArgument(blob.status())) {
      return absl::InvalidArgumentError(absl::StrCat("file ", file.path,
                                                     ": the bytes do not hash to its sha256 (",
                                                     blob.status().message(), ")"));
    }
    RETURN_IF_ERROR(blob.status());
    if (!blob->already_present) deps_.metrics->blob_bytes_stored->Increment(double(file.size));
    BlobRecord record;
    record.blob_id = current_;
    record.kind = BlobKind::kModelFile;
    record.size_bytes = file.size;
    record.tenant = tenant_;
    record.name = file.path;
    RETURN_IF_ERROR(deps_.store->PutBlob(record).status());
    expected_.at(current_).missing = false;
    current_.clear();
    return absl::OkStatus();
  }

  // End of stream: the last file, then the model record once nothing is missing.
  absl::Status Complete() {
    if (!manifest_) {
      return absl::InvalidArgumentError("manifest: the first message must carry the manifest");
    }
    RETURN_IF_ERROR(FinishFile());
    int64_t stored = 0;
    std::set<std::string> listed;
    for (const ModelFileEntry& f : manifest_->files) {
      const Expected& e = expected_.at(absl::StrCat(kBlobIdPrefix, f.sha256));
      if (e.missing) {
        if (listed.insert(f.sha256).second) resp_->add_missing_sha256(f.sha256);
      } else {
        stored += f.size;
      }
    }
    resp_->set_model_id(model_id_);
    resp_->set_size_bytes(manifest_->total_bytes());
    resp_->set_stored_bytes(stored);
    if (resp_->missing_sha256_size() > 0) return absl::OkStatus();
    absl::StatusOr<BlobRecord> existing = deps_.store->GetBlob(tenant_, model_id_);
    if (existing.ok() && existing->kind == BlobKind::kModel) {
      resp_->set_already_present(true);
    } else {
      ASSIGN_OR_RETURN(std::unique_ptr<BlobWriter> w,
                       deps_.blobs->NewWriter(static_cast<int64_t>(manifest_bytes_.size()) + 1));
      RETURN_IF_ERROR(w->Append(manifest_bytes_));
      ASSIGN_OR_RETURN(BlobCommitResult blob, w->Commit(model_id_));
      BlobRecord record;
      record.blob_id = model_id_;
      record.kind = BlobKind::kModel;
      record.size_bytes = blob.size_bytes;
      record.tenant = tenant_;
      record.name = manifest_->name;
      ASSIGN_OR_RETURN(PutBlobResult put, deps_.store->PutBlob(record));
      resp_->set_already_present(put.already_present);
      spdlog::info("model stored model_id={} tenant={} files={} bytes={} name={}", model_id_,
                   tenant_, manifest_->files.size(), manifest_->total_bytes(), manifest_->name);
    }
    resp_->set_model_uri(BlobModelUri(model_id_));
    return absl::OkStatus();
  }

  grpc::CallbackServerContext* const ctx_;
  const PruningServiceDeps deps_;
  ThreadPool* const pool_;
  const std::string tenant_;
  const int64_t max_stored_bytes_;
  pb::UploadModelResponse* const resp_;

  // Touched by one step at a time (a pool task, then the next read): no lock.
  pb::UploadModelRequest req_;
  std::optional<ModelManifest> manifest_;
  std::string manifest_bytes_;
  std::string model_id_;
  std::map<std::string, Expected> expected_;  // by blob id
  std::string current_;                       // blob id of the file being written
  std::unique_ptr<BlobWriter> writer_;
  int64_t written_ = 0;
};

}  // namespace

grpc::ServerReadReactor<pb::UploadModelRequest>* NewModelUploadReactor(
    grpc::CallbackServerContext* ctx, const PruningServiceDeps& deps, std::string tenant,
    int64_t max_stored_bytes, pb::UploadModelResponse* resp) {
  return new ModelUploadReactor(ctx, deps, std::move(tenant), max_stored_bytes, resp);
}

absl::StatusOr<ModelManifest> LoadModelManifest(JobStore& store, BlobStore& blobs,
                                                const std::string& tenant,
                                                const std::string& model_id) {
  absl::StatusOr<BlobRecord> rec = store.GetBlob(tenant, model_id);
  if (!rec.ok() && !absl::IsNotFound(rec.status())) return rec.status();
  if (!rec.ok() || rec->kind != BlobKind::kModel) {
    return absl::NotFoundError(absl::StrCat("model_uri: unknown model ", model_id,
                                            " (upload it with prunectl upload-model first)"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<BlobReader> reader, blobs.Open(rec->content_id));
  ASSIGN_OR_RETURN(std::string bytes, reader->Read(0, std::max<int64_t>(1, reader->size())));
  absl::StatusOr<ModelManifest> m = ParseModelManifest(bytes, absl::StrCat("manifest ", model_id));
  if (!m.ok()) return absl::DataLossError(m.status().message());
  return m;
}

absl::StatusOr<pb::ListModelsResponse> ListModels(JobStore& store, BlobStore& blobs,
                                                  const std::string& tenant) {
  ASSIGN_OR_RETURN(std::vector<BlobRecord> records, store.ListBlobs(tenant, BlobKind::kModel));
  pb::ListModelsResponse r;
  for (const BlobRecord& b : records) {
    if (b.tenant != tenant) continue;  // ListBlobs("") is every tenant's
    absl::StatusOr<ModelManifest> m = LoadModelManifest(store, blobs, tenant, b.blob_id);
    if (!m.ok()) {
      spdlog::warn("model {}: {}", b.blob_id, m.status().message());
      continue;
    }
    pb::Model* model = r.add_models();
    model->set_model_id(b.blob_id);
    model->set_model_uri(BlobModelUri(b.blob_id));
    model->set_name(b.name);
    model->set_num_files(static_cast<int32_t>(m->files.size()));
    model->set_size_bytes(m->total_bytes());
    const int64_t us = absl::ToUnixMicros(b.create_time);
    model->mutable_create_time()->set_seconds(us / 1000000);
    model->mutable_create_time()->set_nanos(int32_t(us % 1000000) * 1000);
  }
  return r;
}

absl::StatusOr<pb::DeleteModelResponse> DeleteModel(JobStore& store, BlobStore& blobs,
                                                    const std::string& tenant,
                                                    const std::string& id_or_uri) {
  std::string id = id_or_uri;
  if (IsBlobModelUri(id_or_uri)) {
    ASSIGN_OR_RETURN(id, BlobModelId(id_or_uri, "model_id"));
  }
  RETURN_IF_ERROR(ValidateBlobId(id));
  ASSIGN_OR_RETURN(ModelManifest manifest, LoadModelManifest(store, blobs, tenant, id));
  // A job that may still read it keeps it.
  const std::string uri = BlobModelUri(id);
  ASSIGN_OR_RETURN(std::vector<pb::Job> live, store.ListNonTerminalJobs());
  for (const pb::Job& j : live) {
    if (j.tenant() == tenant && j.spec().model_uri() == uri) {
      return absl::FailedPreconditionError(
          absl::StrCat("model ", id, " is used by job ", j.job_id(), " (",
                       pb::JobState_Name(j.state()), "): cancel it or wait for it to end"));
    }
  }
  RETURN_IF_ERROR(store.DeleteBlob(tenant, id).status());
  // Files another of the tenant's models lists stay.
  std::set<std::string> kept;
  ASSIGN_OR_RETURN(std::vector<BlobRecord> others, store.ListBlobs(tenant, BlobKind::kModel));
  for (const BlobRecord& b : others) {
    if (b.tenant != tenant) continue;
    absl::StatusOr<ModelManifest> m = LoadModelManifest(store, blobs, tenant, b.blob_id);
    if (!m.ok()) return m.status();  // unsure what it lists: keep everything
    for (const ModelFileEntry& f : m->files) kept.insert(f.sha256);
  }
  pb::DeleteModelResponse resp;
  std::set<std::string> done;
  for (const ModelFileEntry& f : manifest.files) {
    if (kept.count(f.sha256) > 0 || !done.insert(f.sha256).second) continue;
    // Only a model file's record: the same bytes indexed as a projector or artifact stay.
    absl::StatusOr<BlobRecord> rec = store.GetBlob(tenant, absl::StrCat(kBlobIdPrefix, f.sha256));
    if (!rec.ok() || rec->kind != BlobKind::kModelFile) continue;
    absl::StatusOr<DeleteBlobResult> d =
        store.DeleteBlob(tenant, absl::StrCat(kBlobIdPrefix, f.sha256));
    if (!d.ok() && !absl::IsNotFound(d.status())) return d.status();
    if (d.ok()) resp.set_files_removed(resp.files_removed() + 1);
  }
  spdlog::info("model deleted model_id={} tenant={} file_records_removed={}", id, tenant,
               resp.files_removed());
  return resp;
}

std::set<std::string> ModelBlobIds(const std::string& model_id, const ModelManifest& manifest) {
  std::set<std::string> ids = {model_id};
  for (const ModelFileEntry& f : manifest.files) ids.insert(absl::StrCat(kBlobIdPrefix, f.sha256));
  return ids;
}

}  // namespace prunesvc::server

// Models in the blob store (issue 19): the UploadModel reactor, and what the rest of the
// scheduler needs to know about a stored model.
//
// A stored model is, per tenant, one index record of kind "model" (blob id = model id = sha256
// of the canonical manifest, common/model_manifest.h; the manifest's bytes are that blob) and one
// record of kind "model_file" per file (blob id = sha256 of the file's bytes). A model record is
// written only once every file record of the tenant exists, so a model id a tenant holds always
// names files it holds. Like datasets, models are the tenant's until deleted: the storage sweep
// keeps both kinds; DeleteModel removes them.
//
// UploadModel's reactor handles one message at a time: each is processed on the upload pool
// (writes and commits fsync), then the next read starts, so no reactor thread blocks on disk and
// no lock is needed. A file is committed and indexed when the next file's data starts or the
// stream ends; an interrupted upload keeps every file completed before the interruption.
//
// Thread-safety: the reactor is driven by gRPC and the pool one step at a time and deletes itself
// in OnDone; LoadModelManifest is thread-safe.
#ifndef PRUNESVC_SERVER_MODEL_UPLOAD_H_
#define PRUNESVC_SERVER_MODEL_UPLOAD_H_

#include <cstdint>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "common/model_manifest.h"
#include "grpcpp/support/server_callback.h"
#include "prune/v1/pruning_service.pb.h"
#include "server/blob_store.h"
#include "server/job_store.h"
#include "server/pruning_service.h"

namespace prunesvc::server {

// The reactor for one UploadModel call of `tenant` (max_stored_bytes 0 = no quota).
grpc::ServerReadReactor<::prune::v1::UploadModelRequest>* NewModelUploadReactor(
    grpc::CallbackServerContext* ctx, const PruningServiceDeps& deps, std::string tenant,
    int64_t max_stored_bytes, ::prune::v1::UploadModelResponse* resp);

// The manifest of model `model_id` ("sha256:<hex>") as `tenant` stored it: NOT_FOUND unless the
// tenant holds a complete model under that id; DATA_LOSS when the stored bytes do not parse.
absl::StatusOr<ModelManifest> LoadModelManifest(JobStore& store, BlobStore& blobs,
                                                const std::string& tenant,
                                                const std::string& model_id);

// ListModels: the tenant's complete models, oldest first.
absl::StatusOr<::prune::v1::ListModelsResponse> ListModels(JobStore& store, BlobStore& blobs,
                                                           const std::string& tenant);
// DeleteModel: drops the model's record and the records of its files that no other model of the
// tenant lists; the storage sweep frees the bytes nothing references any more. `id_or_uri` is
// "sha256:<hex>" or "blob://sha256:<hex>". FAILED_PRECONDITION while an unfinished job of the
// tenant runs on it.
absl::StatusOr<::prune::v1::DeleteModelResponse> DeleteModel(JobStore& store, BlobStore& blobs,
                                                             const std::string& tenant,
                                                             const std::string& id_or_uri);

// The blob ids a worker fetches to run a job on the model: the manifest and every file.
std::set<std::string> ModelBlobIds(const std::string& model_id, const ModelManifest& manifest);

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_MODEL_UPLOAD_H_

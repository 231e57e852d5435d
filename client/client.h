// C++ client library for prunesvc servers (scheduler and workers): channel setup and the calls
// prunectl makes. Every call has a deadline. Thread-compatible (one Client per thread, or share
// the channel).
#ifndef PRUNESVC_CLIENT_CLIENT_H_
#define PRUNESVC_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "grpcpp/channel.h"
#include "prune/v1/pruning_service.grpc.pb.h"

namespace prunesvc::client {

enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
std::string ServingStatusName(ServingStatus s);

struct ClientOptions {
  absl::Duration deadline = absl::Seconds(5);  // unary calls
  // Streaming calls: one upload, one fetch attempt, one WatchJob connection (watch reconnects
  // from the last sequence when it expires).
  absl::Duration stream_deadline = absl::Hours(1);
  // Bearer token sent on every call (`authorization: Bearer <token>`); "" = none.
  std::string token;
  // TLS: empty = plain text; tls.ca verifies the server (empty with tls_enabled = the system
  // roots); tls.cert/key present a client certificate.
  TlsFiles tls;
  bool tls_enabled = false;
};

// Where a FetchArtifact stream's messages go. Any callback's error cancels the call and is
// returned.
struct ArtifactSink {
  std::function<absl::Status(const ::prune::v1::ArtifactInfo&)> on_info;
  std::function<absl::Status(const std::string&)> on_data;
  std::function<absl::Status(const ::prune::v1::ArtifactTrailer&)> on_trailer;
};

// The next upload chunk (<= 1 MiB); an empty string ends the upload.
using ChunkSource = std::function<absl::StatusOr<std::string>()>;
// The next UploadModel data message; nullopt ends the upload.
using ModelDataSource = std::function<absl::StatusOr<std::optional<::prune::v1::ModelFileData>>()>;

class Client {
 public:
  explicit Client(const std::string& address, ClientOptions options = {});

  // grpc.health.v1.Health/Check for `service` ("" = the whole server). A server that does not
  // answer in time is UNAVAILABLE / DEADLINE_EXCEEDED.
  absl::StatusOr<ServingStatus> Health(const std::string& service = "");

  absl::StatusOr<std::vector<::prune::v1::WorkerInfo>> ListWorkers();

  // PruningService's calls, one RPC each (pruning_service.proto documents them); errors are the
  // server's status as absl::Status.
  absl::StatusOr<::prune::v1::SubmitJobResponse> SubmitJob(const ::prune::v1::JobSpec& spec);
  absl::StatusOr<::prune::v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<::prune::v1::ListJobsResponse> ListJobs(
      const ::prune::v1::ListJobsRequest& request);
  absl::StatusOr<::prune::v1::Job> CancelJob(const std::string& job_id, const std::string& reason);
  // Storage lifecycle: a finished job; the caller's datasets; one dataset.
  absl::Status DeleteJob(const std::string& job_id);
  absl::StatusOr<std::vector<::prune::v1::Dataset>> ListDatasets();
  absl::Status DeleteDataset(const std::string& dataset_id);
  // Uploaded models: the caller's; one (by "sha256:..." id or blob:// URI).
  absl::StatusOr<std::vector<::prune::v1::Model>> ListModels();
  absl::StatusOr<::prune::v1::DeleteModelResponse> DeleteModel(const std::string& model_id);
  // One WatchJob connection: events after `from_sequence` go to `on_event` until the server
  // ends the stream (OK) or it fails; an `on_event` error cancels the call and is returned.
  absl::Status WatchJob(const std::string& job_id, int64_t from_sequence,
                        const std::function<absl::Status(const ::prune::v1::JobEvent&)>& on_event);
  // Sends `info`, then the chunks `next` yields, then waits for the response.
  absl::StatusOr<::prune::v1::UploadDatasetResponse> UploadDataset(
      const ::prune::v1::DatasetInfo& info, const ChunkSource& next);
  // Sends the manifest, then the messages `next` yields (none: the call only asks which files
  // are missing), then waits for the response.
  absl::StatusOr<::prune::v1::UploadModelResponse> UploadModel(
      const ::prune::v1::ModelManifestInfo& manifest, const ModelDataSource& next);
  // One FetchArtifact call from `offset`.
  absl::Status FetchArtifact(const std::string& artifact_id, int64_t offset,
                             const ArtifactSink& sink);

  const std::string& address() const { return address_; }
  // Not OK when the TLS files could not be read (the channel then is not usable): check it
  // after construction.
  const absl::Status& setup_status() const { return setup_; }

 private:
  // The deadline and the credentials of one call.
  void Prepare(grpc::ClientContext& ctx, absl::Duration deadline) const;

  std::string address_;
  ClientOptions options_;
  absl::Status setup_;  // a TLS file that could not be read fails every call with it
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<::prune::v1::PruningService::Stub> stub_;
};

}  // namespace prunesvc::client

#endif  // PRUNESVC_CLIENT_CLIENT_H_

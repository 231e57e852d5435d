// prunectl's multi-call operations over a Client: uploading a dataset directory or tar, watching
// a job to its end across dropped connections, and fetching an artifact resumably into a
// directory. The main program only parses flags and prints; these functions are what the e2e
// tests against a real scheduler drive. The pure pieces (retry policy, resume offsets, exit codes)
// are exposed for unit tests.
//
// Thread-compatible (they use the Client they are given).
#ifndef PRUNESVC_CLIENT_OPERATIONS_H_
#define PRUNESVC_CLIENT_OPERATIONS_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "prune/v1/pruning_service.pb.h"

namespace prunesvc::client {

inline constexpr size_t kUploadChunkBytes = 1 << 20;  // the proto's per-message limit

// Reconnects: exponential backoff from `initial` to `max`; `max_attempts` consecutive failures
// without progress end the operation with the last error.
struct RetryPolicy {
  int max_attempts = 8;
  absl::Duration initial = absl::Milliseconds(200);
  absl::Duration max = absl::Seconds(10);
  std::function<void(absl::Duration)> sleep = [](absl::Duration d) { absl::SleepFor(d); };
};
// The delay before retry number `attempt` (1-based).
absl::Duration BackoffDelay(const RetryPolicy& policy, int attempt);
// Transport-level failures worth a reconnect (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, a reset
// stream's INTERNAL / UNKNOWN); everything else is the server's answer.
bool IsRetryable(const absl::Status& status);
// Told before each reconnect: the error and the delay.
using RetryNotice = std::function<void(const absl::Status&, absl::Duration)>;
// Bytes done and total (total <= 0 when unknown).
using ProgressFn = std::function<void(int64_t, int64_t)>;

// Uploads `path` (a directory: packed with PackDirectoryToTar; otherwise a tar file sent as is)
// as dataset `name` (empty: the path's base name). DatasetInfo.sha256 is the bare hex of the
// bytes sent.
absl::StatusOr<::prune::v1::UploadDatasetResponse> UploadDatasetPath(Client& client,
                                                                     const std::string& path,
                                                                     const std::string& name,
                                                                     const ProgressFn& progress);
// The dataset name for `path` when none is given: its base name without .tar/.tgz/... suffixes.
std::string DefaultDatasetName(const std::string& path);

// Uploads model directory `dir` (every file under it; see common/model_manifest.h) as model
// `name` (empty: the directory's base name): hashes it (`hashing` progress), asks the scheduler
// which files it lacks, and streams those (`progress`: bytes of the missing files). A dropped
// connection resumes with the files still missing (`policy`, `on_retry`). The response carries
// the blob:// model URI.
absl::StatusOr<::prune::v1::UploadModelResponse> UploadModelDir(
    Client& client, const std::string& dir, const std::string& name, const ProgressFn& hashing,
    const ProgressFn& progress, const RetryNotice& on_retry = nullptr,
    const RetryPolicy& policy = {});

// Watches `job_id` after `from_sequence` until its terminal StateChanged event, reconnecting from
// the last sequence seen. Each new event (in order, exactly once) goes to `on_event`. Returns
// the job as GetJob reports it at the end.
absl::StatusOr<::prune::v1::Job> WatchUntilTerminal(
    Client& client, const std::string& job_id, int64_t from_sequence,
    const std::function<void(const ::prune::v1::JobEvent&)>& on_event, const RetryNotice& on_retry,
    const RetryPolicy& policy = {});

// prunectl's exit code for a finished job: 0 SUCCEEDED, 130 CANCELLED, FAILED → the cli_exit
// code of its error_code (2 for input the user must fix, 1 otherwise; 1 when unset).
int ExitCodeForJob(const ::prune::v1::Job& job);

// Where a resumed download continues: the partial file's size (0 when missing).
int64_t ResumeOffset(const std::string& partial_path);
// A resumed call's info must describe an artifact at least `offset` bytes long.
absl::Status CheckResumeInfo(int64_t offset, const ::prune::v1::ArtifactInfo& info);
// Ties the partial download `tar` in directory `partial` to `artifact_id` (in
// `partial`/ARTIFACT_ID): the same artifact resumes from the bytes there, another one's are
// dropped (the offset restarts at 0).
absl::Status ClaimPartialDownload(const std::string& partial, const std::string& artifact_id,
                                  const std::string& tar);
// `out` must not exist or be an empty directory (ALREADY_EXISTS otherwise).
absl::Status CheckOutputDir(const std::string& out);

// What FetchArtifactToDir fetched.
struct FetchResult {
  std::string artifact_id;
  std::string sha256;  // bare hex of the whole tar
  int64_t size_bytes = 0;
};

// GetJob → artifact_id; FetchArtifact into `out`.partial/artifact.tar (resuming by offset),
// sha256 against the trailer (and the job's artifact_sha256), safe unpack into
// `out`.partial/tree (`out`.partial/ARTIFACT_ID ties a partial download to its artifact),
// MANIFEST.sha256 check, then the tree is renamed to `out` (it appears
// whole or not at all) and `out`.partial removed. The partial download is kept on a transport
// failure so a rerun resumes; a corrupt one is deleted.
absl::StatusOr<FetchResult> FetchArtifactToDir(Client& client, const std::string& job_id,
                                               const std::string& out, const ProgressFn& progress,
                                               const RetryNotice& on_retry,
                                               const RetryPolicy& policy = {});

}  // namespace prunesvc::client

#endif  // PRUNESVC_CLIENT_OPERATIONS_H_

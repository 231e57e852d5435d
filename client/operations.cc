#include "client/operations.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "client/archive_util.h"
#include "client/progress.h"
#include "common/cli_exit.h"
#include "common/model_manifest.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace prunesvc::client {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;

// Yields 1 MiB slices of an in-memory tar.
ChunkSource MemoryChunks(std::shared_ptr<const std::string> bytes, const ProgressFn& progress) {
  auto pos = std::make_shared<size_t>(0);
  return [bytes, pos, progress]() -> absl::StatusOr<std::string> {
    const size_t n = std::min(kUploadChunkBytes, bytes->size() - *pos);
    std::string chunk = bytes->substr(*pos, n);
    *pos += n;
    if (progress) progress(static_cast<int64_t>(*pos), static_cast<int64_t>(bytes->size()));
    return chunk;
  };
}

// Yields 1 MiB chunks of a file.
ChunkSource FileChunks(const std::string& path, int64_t size, const ProgressFn& progress) {
  auto in = std::make_shared<std::ifstream>(path, std::ios::binary);
  auto done = std::make_shared<int64_t>(0);
  return [in, done, size, path, progress]() -> absl::StatusOr<std::string> {
    std::string chunk(kUploadChunkBytes, '\0');
    in->read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    if (in->bad()) return absl::InternalError("read error on " + path);
    chunk.resize(static_cast<size_t>(in->gcount()));
    *done += static_cast<int64_t>(chunk.size());
    if (progress) progress(*done, size);
    return chunk;
  };
}

bool IsTerminal(pb::JobState s) {
  return s == pb::SUCCEEDED || s == pb::FAILED || s == pb::CANCELLED;
}

// One attempt's bookkeeping for FetchArtifactToDir.
struct FetchState {
  std::string tar;
  int64_t total = -1;
  std::optional<std::string> trailer_sha256;
};

// One FetchArtifact call appending to the partial tar.
absl::Status FetchOnce(Client& client, const std::string& artifact_id, FetchState& st,
                       const ProgressFn& progress) {
  const int64_t offset = ResumeOffset(st.tar);
  st.trailer_sha256.reset();
  std::ofstream f(st.tar, std::ios::binary | std::ios::app);
  if (!f) return absl::InternalError("cannot write " + st.tar);
  int64_t done = offset;
  ArtifactSink sink;
  sink.on_info = [&](const pb::ArtifactInfo& info) {
    st.total = info.size_bytes();
    return CheckResumeInfo(offset, info);
  };
  sink.on_data = [&](const std::string& data) {
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!f) return absl::InternalError("cannot write " + st.tar);
    done += static_cast<int64_t>(data.size());
    if (progress) progress(done, st.total);
    return absl::OkStatus();
  };
  sink.on_trailer = [&](const pb::ArtifactTrailer& t) {
    st.trailer_sha256 = t.sha256();
    return absl::OkStatus();
  };
  absl::Status s = client.FetchArtifact(artifact_id, offset, sink);
  f.close();
  if (s.ok() && !st.trailer_sha256) {
    return absl::UnavailableError("FetchArtifact ended without a trailer");
  }
  return s;
}

// Downloads with retries; a resume the server rejects as out of range starts over.
absl::Status DownloadWithRetries(Client& client, const std::string& artifact_id, FetchState& st,
                                 const ProgressFn& progress, const RetryNotice& on_retry,
                                 const RetryPolicy& policy) {
  for (int attempt = 1;; ++attempt) {
    const int64_t before = ResumeOffset(st.tar);
    absl::Status s = FetchOnce(client, artifact_id, st, progress);
    if (s.ok()) return s;
    if (absl::IsOutOfRange(s) && before > 0) {
      fs::remove(st.tar);  // the partial file is longer than the artifact: not ours
    } else if (!IsRetryable(s)) {
      return s;
    }
    if (ResumeOffset(st.tar) > before) attempt = 1;  // progress resets the budget
    if (attempt >= policy.max_attempts) return s;
    const absl::Duration delay = BackoffDelay(policy, attempt);
    if (on_retry) on_retry(s, delay);
    policy.sleep(delay);
  }
}

// Size and sha256 of the downloaded tar against the trailer and the job.
absl::Status VerifyDownload(const FetchState& st, const pb::Job& job) {
  if (st.total >= 0 && ResumeOffset(st.tar) != st.total) {
    return absl::DataLossError(absl::StrCat("artifact is ", ResumeOffset(st.tar),
                                            " bytes, the server announced ", st.total));
  }
  RETURN_IF_ERROR(VerifyFileSha256(st.tar, *st.trailer_sha256));
  if (!job.artifact_sha256().empty())
    RETURN_IF_ERROR(VerifyFileSha256(st.tar, job.artifact_sha256()));
  return absl::OkStatus();
}

// Unpacks and checks the tar under `partial`/tree, then renames the tree to `out`.
absl::Status UnpackAndPublish(const std::string& tar, const std::string& partial,
                              const std::string& out) {
  const std::string tree = partial + "/tree";
  std::error_code ec;
  fs::remove_all(tree, ec);
  fs::create_directories(tree, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", tree, ": ", ec.message()));
  RETURN_IF_ERROR(UnpackTarSafely(tar, tree));
  RETURN_IF_ERROR(VerifyManifest(tree));
  if (fs::exists(out)) fs::remove(out, ec);  // CheckOutputDir: empty
  fs::rename(tree, out, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("rename ", tree, " -> ", out, ": ", ec.message()));
  fs::remove_all(partial, ec);
  return absl::OkStatus();
}

}  // namespace

absl::Duration BackoffDelay(const RetryPolicy& policy, int attempt) {
  absl::Duration d = policy.initial;
  for (int i = 1; i < attempt && d < policy.max; ++i) d *= 2;
  return std::min(d, policy.max);
}

bool IsRetryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
      return true;
    default:
      return false;
  }
}

std::string DefaultDatasetName(const std::string& path) {
  std::string base = fs::path(path).lexically_normal().filename().string();
  if (base.empty()) base = fs::path(path).lexically_normal().parent_path().filename().string();
  for (const char* suffix : {".tar.gz", ".tar.xz", ".tar.zst", ".tgz", ".tar"}) {
    if (absl::EndsWith(base, suffix)) return base.substr(0, base.size() - strlen(suffix));
  }
  return base;
}

absl::StatusOr<pb::UploadDatasetResponse> UploadDatasetPath(Client& client, const std::string& path,
                                                            const std::string& name,
                                                            const ProgressFn& progress) {
  pb::DatasetInfo info;
  info.set_name(name.empty() ? DefaultDatasetName(path) : name);
  info.set_format("tar");
  ChunkSource chunks;
  if (fs::is_directory(path)) {
    ASSIGN_OR_RETURN(std::string tar, PackDirectoryToTar(path));
    info.set_size_bytes(static_cast<int64_t>(tar.size()));
    info.set_sha256(Sha256Hex(tar));
    chunks = MemoryChunks(std::make_shared<const std::string>(std::move(tar)), progress);
  } else {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) return absl::NotFoundError(absl::StrCat(path, ": ", ec.message()));
    ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
    info.set_size_bytes(static_cast<int64_t>(size));
    info.set_sha256(sha);
    chunks = FileChunks(path, static_cast<int64_t>(size), progress);
  }
  return client.UploadDataset(info, chunks);
}

namespace {

// The data messages for the missing files, one file after another, read lazily.
ModelDataSource MissingFileData(const std::string& dir, const ModelManifest& manifest,
                                const pb::UploadModelResponse& probe, const ProgressFn& progress) {
  struct State {
    std::vector<std::pair<std::string, std::string>> files;  // path, sha256
    size_t next = 0;
    std::unique_ptr<std::ifstream> in;
    std::string sha256;
    int64_t done = 0;
    int64_t total = 0;
  };
  auto st = std::make_shared<State>();
  for (const std::string& sha : probe.missing_sha256()) {
    for (const ModelFileEntry& f : manifest.files) {
      if (f.sha256 != sha) continue;
      st->files.push_back({absl::StrCat(dir, "/", f.path), sha});
      st->total += f.size;
      break;
    }
  }
  return [st, progress]() -> absl::StatusOr<std::optional<pb::ModelFileData>> {
    while (true) {
      if (st->in == nullptr) {
        if (st->next == st->files.size()) return std::nullopt;
        const auto& [path, sha] = st->files[st->next++];
        st->in = std::make_unique<std::ifstream>(path, std::ios::binary);
        if (!*st->in) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
        st->sha256 = sha;
        pb::ModelFileData first;  // an empty file: one empty message names it
        first.set_sha256(sha);
        std::string chunk(kUploadChunkBytes, '\0');
        st->in->read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
        if (st->in->bad()) return absl::InternalError("read error on " + path);
        chunk.resize(static_cast<size_t>(st->in->gcount()));
        st->done += static_cast<int64_t>(chunk.size());
        if (progress) progress(st->done, st->total);
        if (chunk.size() < kUploadChunkBytes) st->in.reset();
        first.set_data(std::move(chunk));
        return first;
      }
      std::string chunk(kUploadChunkBytes, '\0');
      st->in->read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      if (st->in->bad()) return absl::InternalError("read error while uploading the model");
      chunk.resize(static_cast<size_t>(st->in->gcount()));
      if (chunk.size() < kUploadChunkBytes) st->in.reset();
      if (chunk.empty()) continue;
      st->done += static_cast<int64_t>(chunk.size());
      if (progress) progress(st->done, st->total);
      pb::ModelFileData msg;
      msg.set_sha256(st->sha256);
      msg.set_data(std::move(chunk));
      return msg;
    }
  };
}

}  // namespace

absl::StatusOr<pb::UploadModelResponse> UploadModelDir(
    Client& client, const std::string& dir, const std::string& name, const ProgressFn& hashing,
    const ProgressFn& progress, const RetryNotice& on_retry, const RetryPolicy& policy) {
  fs::path normal = fs::path(dir).lexically_normal();
  if (!normal.has_filename()) normal = normal.parent_path();  // "models/llava/"
  const std::string base = normal.filename().string();
  ASSIGN_OR_RETURN(
      ModelManifest manifest,
      ManifestOfDirectory(dir, name.empty() ? (base.empty() ? std::string("model") : base) : name,
                          hashing));
  pb::ModelManifestInfo info;
  info.set_name(manifest.name);
  for (const ModelFileEntry& f : manifest.files) {
    pb::ModelFile* file = info.add_files();
    file->set_path(f.path);
    file->set_size_bytes(f.size);
    file->set_sha256(f.sha256);
  }
  int failures = 0;
  int64_t stored = -1;  // what the scheduler held at the last probe
  while (true) {
    // Ask what is missing, then send it; a dropped call asks again (resume by file).
    absl::StatusOr<pb::UploadModelResponse> probe = client.UploadModel(info, nullptr);
    if (probe.ok() && probe->missing_sha256_size() == 0) return probe;
    if (probe.ok() && probe->stored_bytes() > stored) {
      if (stored >= 0) failures = 0;  // the last attempt stored files: progress
      stored = probe->stored_bytes();
    }
    absl::StatusOr<pb::UploadModelResponse> sent =
        probe.ok() ? client.UploadModel(info, MissingFileData(dir, manifest, *probe, progress))
                   : probe;
    if (sent.ok() && sent->missing_sha256_size() == 0) return sent;
    if (sent.ok()) {
      return absl::DataLossError(absl::StrCat("the scheduler still lacks ",
                                              sent->missing_sha256_size(),
                                              " files of the model after they were sent"));
    }
    if (!IsRetryable(sent.status())) return sent.status();
    if (++failures >= policy.max_attempts) return sent.status();
    const absl::Duration delay = BackoffDelay(policy, failures);
    if (on_retry) on_retry(sent.status(), delay);
    policy.sleep(delay);
  }
}

absl::StatusOr<pb::Job> WatchUntilTerminal(Client& client, const std::string& job_id,
                                           int64_t from_sequence,
                                           const std::function<void(const pb::JobEvent&)>& on_event,
                                           const RetryNotice& on_retry, const RetryPolicy& policy) {
  int64_t last = from_sequence;
  std::optional<pb::JobState> terminal;
  auto consume = [&](const pb::JobEvent& e) {
    if (e.sequence() <= last) return absl::OkStatus();  // never twice
    last = e.sequence();
    on_event(e);
    if (e.has_state_changed() && IsTerminal(e.state_changed().to())) {
      terminal = e.state_changed().to();
    }
    return absl::OkStatus();
  };
  for (int attempt = 1;; ++attempt) {
    const int64_t before = last;
    absl::Status s = client.WatchJob(job_id, last, consume);
    if (terminal) {
      // The job's final record carries error and error_code; without it, the event's state.
      absl::StatusOr<pb::Job> job = client.GetJob(job_id);
      if (job.ok()) return job;
      pb::Job from_event;
      from_event.set_job_id(job_id);
      from_event.set_state(*terminal);
      from_event.set_last_event_sequence(last);
      return from_event;
    }
    if (s.ok()) {
      // The stream ended without a terminal event after `last`: a job that ended before it, or
      // a server going away.
      ASSIGN_OR_RETURN(pb::Job job, client.GetJob(job_id));
      if (IsTerminal(job.state()) && job.last_event_sequence() <= last) return job;
      s = absl::UnavailableError("WatchJob ended before the job did");
    } else if (!IsRetryable(s)) {
      return s;
    }
    if (last > before) attempt = 1;
    if (attempt >= policy.max_attempts) return s;
    const absl::Duration delay = BackoffDelay(policy, attempt);
    if (on_retry) on_retry(s, delay);
    policy.sleep(delay);
  }
}

int ExitCodeForJob(const pb::Job& job) {
  switch (job.state()) {
    case pb::SUCCEEDED:
      return 0;
    case pb::CANCELLED:
      return ExitCodeForStatus(absl::CancelledError());
    case pb::FAILED: {
      const auto code = static_cast<absl::StatusCode>(job.error_code());
      if (code == absl::StatusCode::kOk) return 1;
      return ExitCodeForStatus(absl::Status(code, job.error()));
    }
    default:
      return 1;
  }
}

int64_t ResumeOffset(const std::string& partial_path) {
  std::error_code ec;
  const auto size = fs::file_size(partial_path, ec);
  return ec ? 0 : static_cast<int64_t>(size);
}

absl::Status CheckResumeInfo(int64_t offset, const pb::ArtifactInfo& info) {
  if (info.size_bytes() < offset) {
    return absl::OutOfRangeError(absl::StrCat("partial download has ", offset,
                                              " bytes but the artifact has ", info.size_bytes()));
  }
  return absl::OkStatus();
}

absl::Status CheckOutputDir(const std::string& out) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return absl::OkStatus();
  if (!fs::is_directory(out, ec) || !fs::is_empty(out, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(out, " exists and is not an empty directory"));
  }
  return absl::OkStatus();
}

absl::Status ClaimPartialDownload(const std::string& partial, const std::string& artifact_id,
                                  const std::string& tar) {
  const std::string id_path = partial + "/ARTIFACT_ID";
  std::ifstream in(id_path);
  std::string previous;
  std::getline(in, previous);
  if (previous == artifact_id) return absl::OkStatus();
  std::error_code ec;
  fs::remove(tar, ec);
  std::ofstream out(id_path, std::ios::trunc);
  out << artifact_id << "\n";
  out.close();
  if (!out) return absl::InternalError("cannot write " + id_path);
  return absl::OkStatus();
}

absl::StatusOr<FetchResult> FetchArtifactToDir(Client& client, const std::string& job_id,
                                               const std::string& out, const ProgressFn& progress,
                                               const RetryNotice& on_retry,
                                               const RetryPolicy& policy) {
  RETURN_IF_ERROR(CheckOutputDir(out));
  ASSIGN_OR_RETURN(pb::Job job, client.GetJob(job_id));
  if (job.state() != pb::SUCCEEDED || job.artifact_id().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " is ", StateName(job.state()), "; only a SUCCEEDED job has an artifact"));
  }
  std::string base = out;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  const std::string partial = base + ".partial";
  std::error_code ec;
  fs::create_directories(partial, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", partial, ": ", ec.message()));
  FetchState st;
  st.tar = partial + "/artifact.tar";
  RETURN_IF_ERROR(ClaimPartialDownload(partial, job.artifact_id(), st.tar));
  RETURN_IF_ERROR(DownloadWithRetries(client, job.artifact_id(), st, progress, on_retry, policy));
  if (absl::Status s = VerifyDownload(st, job); !s.ok()) {
    fs::remove(st.tar, ec);  // corrupt: the next run starts over
    return s;
  }
  FetchResult result{job.artifact_id(), BareSha256(*st.trailer_sha256), ResumeOffset(st.tar)};
  RETURN_IF_ERROR(UnpackAndPublish(st.tar, partial, base));
  return result;
}

}  // namespace prunesvc::client

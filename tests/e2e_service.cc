#include "tests/e2e_service.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/job_spec_proto.h"
#include "common/sha256.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace prunesvc::testing {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;

namespace {
// A gRPC status as absl::Status with the same code (the numbering is shared).
absl::Status AsStatus(const grpc::Status& st) {
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
}
}  // namespace

void Deadline(grpc::ClientContext& ctx, int seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

const E2eData& TheData() {
  static const E2eData* d = [] {
    auto* d = new E2eData;
    d->work = MakeTempDir("e2e");
    d->search = d->work + "/search";
    d->eval = d->work + "/eval";
    const std::string gen = BinDir() + "/shapes-vqa";
    RunShell(absl::StrCat(gen, " --seed 1000 --split search --count 12 --out ", d->search, " >&2"));
    RunShell(absl::StrCat(gen, " --seed 2000 --split eval --count 6 --out ", d->eval, " >&2"));
    return d;
  }();
  return *d;
}

Service StartService(const std::string& name, int workers, int batch) {
  ServiceOptions o;
  o.workers = workers;
  o.batch = batch;
  return StartService(name, o);
}

Service StartService(const std::string& name, const ServiceOptions& options) {
  Service s;
  s.dir = TheData().work + "/" + name;
  fs::create_directories(s.dir);
  const std::string ready = s.dir + "/ready.json";
  fs::remove(ready);
  std::vector<std::string> argv = {
      BinDir() + "/prune-scheduler",
      "--host=127.0.0.1",
      "--port=0",
      "--metrics-port=0",
      "--state-dir=" + (options.state_dir.empty() ? s.dir + "/state" : options.state_dir),
      absl::StrCat("--local-workers=", options.workers),
      "--worker-threads=1",
      "--allowed-model-roots=" + SourceDir() + "/models",
      "--ready-file=" + ready,
      absl::StrCat("--worker-batch=", options.batch)};
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  auto p = TestProcess::Start(argv, s.dir + "/scheduler.log", options.env);
  if (!p.ok()) return s;
  s.process = std::make_unique<TestProcess>(std::move(*p));
  auto j = WaitForReadyFile(ready, absl::Seconds(60));
  if (!j.ok()) return s;
  s.port = (*j)["port"];
  s.metrics_port = (*j)["metrics_port"];
  s.worker_port = j->value("worker_port", s.port);
  s.stub = pb::PruningService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", s.port),
      options.credentials != nullptr ? options.credentials : grpc::InsecureChannelCredentials()));
  // Wait for the workers to register.
  WaitUntil(
      [&] {
        grpc::ClientContext ctx;
        Deadline(ctx, 5);
        pb::ListWorkersResponse r;
        return s.stub->ListWorkers(&ctx, {}, &r).ok() && r.workers_size() >= options.workers;
      },
      absl::Seconds(60));
  return s;
}

absl::StatusOr<std::string> Upload(Service& s, const std::string& dir) {
  const std::string tar = dir + ".tar";
  if (RunShell(absl::StrCat("tar -C ", dir, " -cf ", tar, " .")) != 0) {
    return absl::InternalError("tar failed");
  }
  const std::string bytes = ReadFile(tar);
  grpc::ClientContext ctx;
  Deadline(ctx, 120);
  pb::UploadDatasetResponse resp;
  auto writer = s.stub->UploadDataset(&ctx, &resp);
  pb::UploadDatasetRequest info;
  info.mutable_info()->set_name(fs::path(dir).filename().string());
  info.mutable_info()->set_format("tar");
  info.mutable_info()->set_size_bytes(int64_t(bytes.size()));
  info.mutable_info()->set_sha256(Sha256Hex(bytes));
  writer->Write(info);
  for (size_t off = 0; off < bytes.size(); off += 1 << 20) {
    pb::UploadDatasetRequest chunk;
    chunk.set_data(bytes.substr(off, 1 << 20));
    writer->Write(chunk);
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (!st.ok()) return AsStatus(st);
  return resp.dataset_id();
}

absl::StatusOr<pb::Job> Submit(Service& s, const JobSpec& spec) {
  grpc::ClientContext ctx;
  Deadline(ctx, 30);
  pb::SubmitJobRequest req;
  *req.mutable_spec() = JobSpecToProto(spec);
  pb::SubmitJobResponse resp;
  grpc::Status st = s.stub->SubmitJob(&ctx, req, &resp);
  if (!st.ok()) return AsStatus(st);
  return resp.job();
}

absl::StatusOr<pb::Job> GetJob(Service& s, const std::string& job_id) {
  grpc::ClientContext ctx;
  Deadline(ctx, 10);
  pb::GetJobRequest req;
  req.set_job_id(job_id);
  pb::Job j;
  grpc::Status st = s.stub->GetJob(&ctx, req, &j);
  if (!st.ok()) return AsStatus(st);
  return j;
}

bool IsTerminalEvent(const pb::JobEvent& e) {
  return e.has_state_changed() &&
         (e.state_changed().to() == pb::SUCCEEDED || e.state_changed().to() == pb::FAILED ||
          e.state_changed().to() == pb::CANCELLED);
}

std::vector<pb::JobEvent> Watch(Service& s, const std::string& job, int drop_after) {
  std::vector<pb::JobEvent> events;
  int64_t from = 0;
  for (int attempt = 0; attempt < 50; ++attempt) {
    grpc::ClientContext ctx;
    Deadline(ctx, 600);
    pb::WatchJobRequest req;
    req.set_job_id(job);
    req.set_from_sequence(from);
    auto reader = s.stub->WatchJob(&ctx, req);
    pb::JobEvent e;
    int got = 0;
    bool terminal = false;
    while (reader->Read(&e)) {
      events.push_back(e);
      from = e.sequence();
      terminal = IsTerminalEvent(e);
      if (drop_after > 0 && ++got == drop_after && !terminal) {
        ctx.TryCancel();
        break;
      }
    }
    reader->Finish();
    if (terminal) return events;
  }
  return events;
}

void WatchStopper::Stop() {
  absl::MutexLock lock(&mu_);
  stopped_ = true;
  if (ctx_ != nullptr) ctx_->TryCancel();
}

bool WatchStopper::stopped() {
  absl::MutexLock lock(&mu_);
  return stopped_;
}

void WatchStopper::Attach(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&mu_);
  ctx_ = ctx;
  if (ctx_ != nullptr && stopped_) ctx_->TryCancel();
}

std::vector<pb::JobEvent> WatchFollowing(
    const std::function<std::shared_ptr<pb::PruningService::Stub>()>& current,
    const std::string& job, WatchStopper* stopper, int timeout_s) {
  std::vector<pb::JobEvent> events;
  int64_t from = 0;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < give_up && !stopper->stopped()) {
    std::shared_ptr<pb::PruningService::Stub> stub = current();
    if (stub == nullptr) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    grpc::ClientContext ctx;
    Deadline(ctx, timeout_s);
    pb::WatchJobRequest req;
    req.set_job_id(job);
    req.set_from_sequence(from);
    stopper->Attach(&ctx);
    auto reader = stub->WatchJob(&ctx, req);
    pb::JobEvent e;
    bool terminal = false;
    while (!terminal && reader->Read(&e)) {
      events.push_back(e);
      from = e.sequence();
      terminal = IsTerminalEvent(e);
    }
    if (terminal) ctx.TryCancel();
    reader->Finish();  // the scheduler went away (or the stream ended): reconnect
    stopper->Attach(nullptr);
    if (terminal) return events;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return events;
}

absl::StatusOr<std::string> Fetch(Service& s, const std::string& artifact, std::string* trailer) {
  std::string bytes;
  // Two calls: the first stops after 1 chunk, the second resumes from its offset.
  for (int pass = 0; pass < 2; ++pass) {
    grpc::ClientContext ctx;
    Deadline(ctx, 120);
    pb::FetchArtifactRequest req;
    req.set_artifact_id(artifact);
    req.set_offset(int64_t(bytes.size()));
    auto reader = s.stub->FetchArtifact(&ctx, req);
    pb::FetchArtifactResponse r;
    while (reader->Read(&r)) {
      if (r.has_data()) {
        bytes += r.data();
        if (pass == 0) {
          ctx.TryCancel();
          break;
        }
      }
      if (r.has_trailer()) *trailer = r.trailer().sha256();
    }
    grpc::Status st = reader->Finish();
    if (pass == 1 && !st.ok()) return AsStatus(st);
  }
  return bytes;
}

bool Untar(const std::string& bytes, const std::string& dir) {
  std::ofstream(dir + ".tar", std::ios::binary) << bytes;
  fs::create_directories(dir);
  return RunShell(absl::StrCat("tar -C ", dir, " -xf ", dir, ".tar")) == 0;
}

absl::Status FetchInto(Service& s, const std::vector<pb::JobEvent>& events,
                       const std::string& dir) {
  std::string artifact, trailer;
  for (const pb::JobEvent& e : events) {
    if (e.has_artifact_ready()) artifact = e.artifact_ready().artifact_id();
  }
  if (artifact.empty()) return absl::NotFoundError("no ArtifactReady event");
  absl::StatusOr<std::string> bytes = Fetch(s, artifact, &trailer);
  if (!bytes.ok()) return bytes.status();
  const std::string hex = Sha256Hex(*bytes);
  if (trailer != hex && trailer != "sha256:" + hex) {
    return absl::DataLossError(absl::StrCat("trailer ", trailer, " is not the bytes' ", hex));
  }
  if (!Untar(*bytes, dir)) return absl::InternalError("tar -x failed");
  return absl::OkStatus();
}

double Metric(int port, const std::string& series) {
  const std::string text = HttpGet(port, "/metrics");
  double sum = 0;
  bool found = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, series)) continue;
    const size_t space = line.rfind(' ');
    double v = 0;
    if (absl::SimpleAtod(line.substr(space + 1), &v)) {
      sum += v;
      found = true;
    }
  }
  return found ? sum : -1;
}

}  // namespace prunesvc::testing

// The engine served as steps (issue 12): a real prune-worker process on loopback, driven by a
// small in-test client — a WorkerRegistry stand-in (registration, heartbeats, an in-memory blob
// store for datasets, projectors and artifacts) and the evolutionary search over a
// PolicyEvaluator that calls PruningWorker — reproduces prune-local exactly: Prepare → the
// generations' EvaluatePolicies → TrainProjector → Finalize under --threads=1 on both sides gives
// the same final policy and the same model/ bytes. Also: a second Prepare is a cache hit (worker
// metric), cancelling EvaluatePolicies stops the step at the next candidate (from the call and
// from the heartbeat's cancel_steps), an injected out-of-memory fault comes back retryable and an
// input error not, and model_uri outside --allowed-model-roots is refused by the worker.
#include <archive.h>
#include <archive_entry.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/evolution.h"
#include "common/grpc_status.h"
#include "common/job_spec.h"
#include "common/job_spec_proto.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "prune/v1/worker.grpc.pb.h"
#include "tests/process_harness.h"
#include "worker/model/samples.h"

namespace prunesvc {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;
using nlohmann::json;
using testing::BinDir;
using testing::ReadFile;
using testing::RunShell;
using testing::SourceDir;
using testing::TestProcess;

// The scheduler's registry, reduced to what a worker needs: it registers, heartbeats (and is told
// which steps to cancel), and moves blobs.
class FakeRegistry final : public pb::WorkerRegistry::Service {
 public:
  grpc::Status RegisterWorker(grpc::ServerContext*, const pb::RegisterWorkerRequest*,
                              pb::RegisterWorkerResponse* resp) override {
    resp->set_worker_id("w1");
    resp->set_heartbeat_interval_ms(100);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const pb::HeartbeatRequest* req,
                         pb::HeartbeatResponse* resp) override {
    absl::MutexLock lock(&mu_);
    last_active_.assign(req->active_steps().begin(), req->active_steps().end());
    if (req->state() == pb::WORKER_DRAINING) ++draining_heartbeats_;
    for (const std::string& s : cancel_) resp->add_cancel_steps(s);
    ++heartbeats_;
    return grpc::Status::OK;
  }
  grpc::Status FetchBlob(grpc::ServerContext*, const pb::FetchBlobRequest* req,
                         grpc::ServerWriter<pb::FetchBlobResponse>* writer) override {
    std::string data;
    {
      absl::MutexLock lock(&mu_);
      auto it = blobs_.find(req->blob_id());
      if (it == blobs_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such blob");
      data = it->second;
    }
    constexpr size_t kChunk = 256 << 10;
    for (size_t off = 0; off < data.size() || off == 0; off += kChunk) {
      pb::FetchBlobResponse r;
      if (off == 0) r.set_total_size(int64_t(data.size()));
      r.set_data(data.substr(off, kChunk));
      writer->Write(r);
      if (data.empty()) break;
    }
    return grpc::Status::OK;
  }
  grpc::Status PutBlob(grpc::ServerContext*, grpc::ServerReader<pb::PutBlobRequest>* reader,
                       pb::PutBlobResponse* resp) override {
    pb::PutBlobRequest req;
    std::string id, data;
    while (reader->Read(&req)) {
      if (!req.blob_id().empty()) id = req.blob_id();
      data += req.data();
    }
    const std::string actual = "sha256:" + Sha256Hex(data);
    if (actual != id) return grpc::Status(grpc::StatusCode::DATA_LOSS, "sha256 mismatch");
    absl::MutexLock lock(&mu_);
    resp->set_already_present(blobs_.count(id) > 0);
    blobs_[id] = data;
    resp->set_blob_id(id);
    return grpc::Status::OK;
  }

  void AddBlob(const std::string& id, std::string data) {
    absl::MutexLock lock(&mu_);
    blobs_[id] = std::move(data);
  }
  std::string Blob(const std::string& id) {
    absl::MutexLock lock(&mu_);
    auto it = blobs_.find(id);
    return it == blobs_.end() ? "" : it->second;
  }
  void CancelStep(const std::string& step) {
    absl::MutexLock lock(&mu_);
    cancel_.push_back(step);
  }
  std::vector<std::string> LastActive() {
    absl::MutexLock lock(&mu_);
    return last_active_;
  }
  // Heartbeats so far that reported WORKER_DRAINING.
  int draining_heartbeats() {
    absl::MutexLock lock(&mu_);
    return draining_heartbeats_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::string> blobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancel_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> last_active_ ABSL_GUARDED_BY(mu_);
  int heartbeats_ ABSL_GUARDED_BY(mu_) = 0;
  int draining_heartbeats_ ABSL_GUARDED_BY(mu_) = 0;
};

// samples.jsonl + images of `dir` as a tar (what UploadDataset stores).
std::string TarOf(const std::string& dir) {
  const std::string path = dir + ".tar";
  EXPECT_EQ(RunShell(absl::StrCat("tar -C ", dir, " -cf ", path, " .")), 0);
  return ReadFile(path);
}

struct Fixture {
  std::string work;
  std::string search, eval;        // sample directories
  std::string search_id, eval_id;  // dataset ids
  std::string model = SourceDir() + "/models/tiny-llava-shapes";
  std::unique_ptr<FakeRegistry> registry;
  std::unique_ptr<grpc::Server> server;
  int registry_port = 0;
};

Fixture& Env() {
  static Fixture* f = [] {
    auto* f = new Fixture;
    f->work = testing::MakeTempDir("worker_steps");
    f->search = f->work + "/search";
    f->eval = f->work + "/eval";
    const std::string gen = BinDir() + "/shapes-vqa";
    if (RunShell(absl::StrCat(gen, " --seed 1000 --split search --count 12 --out ", f->search,
                              " >&2")) != 0 ||
        RunShell(absl::StrCat(gen, " --seed 2000 --split eval --count 6 --out ", f->eval,
                              " >&2")) != 0) {
      return f;
    }
    f->registry = std::make_unique<FakeRegistry>();
    for (auto [dir, id] : {std::pair{f->search, &f->search_id}, std::pair{f->eval, &f->eval_id}}) {
      absl::StatusOr<model::SampleSet> set = model::LoadSampleSet(dir);
      if (!set.ok()) return f;
      *id = "sha256:" + set->sha256;
      f->registry->AddBlob(*id, TarOf(dir));
    }
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &f->registry_port);
    b.RegisterService(f->registry.get());
    f->server = b.BuildAndStart();
    return f;
  }();
  return *f;
}

struct Worker {
  std::unique_ptr<TestProcess> process;
  int port = 0, metrics_port = 0;
  std::unique_ptr<pb::PruningWorker::Stub> stub;
};

Worker StartWorker(const std::string& name, const std::vector<std::string>& extra = {}) {
  Fixture& f = Env();
  Worker w;
  const std::string ready = f.work + "/" + name + ".ready";
  std::vector<std::string> argv = {BinDir() + "/prune-worker",
                                   "--port=0",
                                   "--metrics-port=0",
                                   "--threads=1",
                                   absl::StrCat("--scheduler=127.0.0.1:", f.registry_port),
                                   "--allowed-model-roots=" + SourceDir() + "/models",
                                   "--cache-dir=" + f.work + "/" + name + "-cache",
                                   "--ready-file=" + ready};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto p = TestProcess::Start(argv, f.work + "/" + name + ".log");
  if (!p.ok()) return w;
  w.process = std::make_unique<TestProcess>(std::move(*p));
  auto j = testing::WaitForReadyFile(ready, absl::Seconds(60));
  if (!j.ok()) return w;
  w.port = (*j)["port"];
  w.metrics_port = (*j)["metrics_port"];
  w.stub = pb::PruningWorker::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", w.port), grpc::InsecureChannelCredentials()));
  return w;
}

// The small search both sides run (prune-local flags ⇄ JobSpec fields).
JobSpec SmallSpec() {
  JobSpec s;
  s.model_uri = "file://" + Env().model;
  s.dataset_id = Env().search_id;
  s.eval_dataset_id = Env().eval_id;
  s.flops_budget = 0.5;
  s.population = 4;
  s.parents = 2;
  s.generations = 2;
  s.projector_every = 2;
  s.projector_steps = 2;
  s.seed = 5;
  return s;
}
const char* const kSmallFlags =
    "--flops-budget=0.5 --population=4 --parents=2 --generations=2 --projector-every=2 "
    "--projector-steps=2 --seed=5 --threads=1";

void SetContext(grpc::ClientContext& ctx, int seconds = 600) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

pb::StepHeader Header(const std::string& step) {
  pb::StepHeader h;
  h.set_job_id("job-test");
  h.set_step_id(step);
  h.set_attempt(1);
  return h;
}

// Prepare of `spec` as job `job_id` on `w`; the call's status.
grpc::Status PrepareAs(Worker& w, const std::string& job_id, const JobSpec& spec,
                       pb::PrepareResponse* resp) {
  pb::PrepareRequest req;
  *req.mutable_header() = Header("prepare-" + job_id);
  req.mutable_header()->set_job_id(job_id);
  *req.mutable_spec() = JobSpecToProto(spec);
  grpc::ClientContext ctx;
  SetContext(ctx);
  return w.stub->Prepare(&ctx, req, resp);
}

pb::StepError ErrorOf(const grpc::Status& s) {
  pb::StepError e;
  e.ParseFromString(s.error_details());
  return e;
}

// search::PolicyEvaluator over PruningWorker RPCs (the scheduler's RemotePolicyEvaluator, in
// small): projector versions are numbered here and their blobs passed along.
class RemoteEvaluator : public search::PolicyEvaluator {
 public:
  RemoteEvaluator(pb::PruningWorker::Stub* stub, pb::JobSpec spec, const search::PolicySpace* space)
      : stub_(stub), spec_(std::move(spec)), space_(space) {}

  absl::StatusOr<std::vector<search::EvalResult>> Evaluate(
      const std::vector<search::Policy>& policies, int version) override {
    pb::EvaluatePoliciesRequest req;
    *req.mutable_header() = Header(absl::StrCat("eval-", ++steps_));
    *req.mutable_spec() = spec_;
    req.set_projector_version(version);
    req.set_projector_blob_id(blobs_[version]);
    for (const search::Policy& p : policies) {
      ASSIGN_OR_RETURN(std::vector<double> ratios, space_->UnitRatios(p));
      req.add_policies()->mutable_ratios()->Assign(ratios.begin(), ratios.end());
    }
    grpc::ClientContext ctx;
    SetContext(ctx);
    auto reader = stub_->EvaluatePolicies(&ctx, req);
    std::vector<search::EvalResult> out(policies.size());
    pb::EvaluatePoliciesResponse r;
    int got = 0;
    std::vector<bool> seen(policies.size(), false);
    while (reader->Read(&r)) {  // in any order, each with its index
      if (r.index() < 0 || size_t(r.index()) >= seen.size() || seen[r.index()]) {
        return absl::InternalError("a result twice or outside the request");
      }
      seen[r.index()] = true;
      const pb::PolicyEvaluation& e = r.evaluation();
      out[r.index()] = {
          .loss = e.loss(),
          .accuracy = e.accuracy(),
          .omega = e.omega(),
          .sample_losses = std::vector<double>(e.sample_losses().begin(), e.sample_losses().end())};
      ++got;
    }
    RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
    if (got != int(policies.size())) return absl::InternalError("missing results");
    evaluated_ += got;
    return out;
  }

  absl::StatusOr<search::ProjectorUpdate> TrainProjector(const std::vector<search::Policy>& top_k,
                                                         int from_version) override {
    pb::TrainProjectorRequest req;
    *req.mutable_header() = Header(absl::StrCat("train-", ++steps_));
    *req.mutable_spec() = spec_;
    req.set_projector_version(from_version);
    req.set_projector_blob_id(blobs_[from_version]);
    const int version = latest_ + 1;
    req.set_new_projector_version(version);
    for (const search::Policy& p : top_k) {
      ASSIGN_OR_RETURN(std::vector<double> ratios, space_->UnitRatios(p));
      req.add_top_policies()->mutable_ratios()->Assign(ratios.begin(), ratios.end());
    }
    grpc::ClientContext ctx;
    SetContext(ctx);
    pb::TrainProjectorResponse resp;
    RETURN_IF_ERROR(FromGrpcStatus(stub_->TrainProjector(&ctx, req, &resp)));
    if (resp.projector_version() != version) return absl::InternalError("version mismatch");
    blobs_[version] = resp.projector_blob_id();
    latest_ = version;
    return search::ProjectorUpdate{
        .version = version, .loss_before = resp.loss_before(), .loss_after = resp.loss_after()};
  }

  const std::string& blob(int version) { return blobs_[version]; }
  int latest() const { return latest_; }
  int64_t evaluated() const { return evaluated_; }

 private:
  pb::PruningWorker::Stub* const stub_;
  const pb::JobSpec spec_;
  const search::PolicySpace* const space_;
  std::map<int, std::string> blobs_;
  int latest_ = 0;
  int steps_ = 0;
  int64_t evaluated_ = 0;
};

// Unpacks a tar held in memory into `dir`.
bool Untar(const std::string& data, const std::string& dir) {
  const std::string path = dir + ".tar";
  std::ofstream(path, std::ios::binary) << data;
  fs::create_directories(dir);
  return RunShell(absl::StrCat("tar -C ", dir, " -xf ", path)) == 0;
}

std::string Metrics(const Worker& w) { return testing::HttpGet(w.metrics_port, "/metrics"); }

double MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return -1;
}

TEST(WorkerStepsTest, StepsOverGrpcReproducePruneLocal) {
  Fixture& f = Env();
  ASSERT_NE(f.server, nullptr);
  Worker w = StartWorker("main");
  ASSERT_NE(w.stub, nullptr) << (w.process ? w.process->Log() : "");
  const JobSpec spec = SmallSpec();
  const pb::JobSpec proto = JobSpecToProto(spec);

  pb::PrepareRequest prep;
  *prep.mutable_header() = Header("prepare-1");
  *prep.mutable_spec() = proto;
  pb::PrepareResponse prepared;
  {
    grpc::ClientContext ctx;
    SetContext(ctx);
    const grpc::Status s = w.stub->Prepare(&ctx, prep, &prepared);
    ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << w.process->Log();
  }
  EXPECT_FALSE(prepared.cache_hit());
  EXPECT_EQ(prepared.num_samples(), 12);
  EXPECT_EQ("sha256:" + prepared.dataset_sha256(), f.search_id);
  EXPECT_EQ(prepared.units_size(), 6);
  EXPECT_GT(prepared.units(0).params(), 0);
  EXPECT_GT(prepared.units(0).dense_flops(), 0);
  EXPECT_GT(prepared.dense().accuracy(), 0.5);
  EXPECT_EQ(prepared.model_sha256().size(), 64u);
  EXPECT_EQ(prepared.flops_dims().decoder_size(), 6);
  EXPECT_GT(prepared.flops_dims().decoder(0).num_kv_heads(), 0);
  EXPECT_GT(prepared.token_stats().mean_tokens_sq(), 0);
  EXPECT_EQ(prepared.owl_outlier_ratios_size(), 0);  // not an OWL job
  // The scheduler's space from the response: the same FLOPs model as the worker's.
  absl::StatusOr<search::PolicySpace> space = PolicySpaceFromPrepare(spec, prepared);
  ASSERT_TRUE(space.ok()) << space.status();
  EXPECT_DOUBLE_EQ(space->dense_flops(), prepared.dense_flops());
  EXPECT_DOUBLE_EQ(space->MinReachableRatio(), prepared.min_flops_ratio());

  // A second Prepare of the same job lands on the cached state.
  {
    pb::PrepareResponse again;
    grpc::ClientContext ctx;
    SetContext(ctx);
    ASSERT_TRUE(w.stub->Prepare(&ctx, prep, &again).ok());
    EXPECT_TRUE(again.cache_hit());
    EXPECT_EQ(again.dense().loss(), prepared.dense().loss());
    EXPECT_GE(MetricValue(Metrics(w), "prunesvc_worker_cache_total{result=\"hit\"}"), 1);
  }

  // The search, its steps on the worker.
  auto search = search::EvolutionarySearch::Create(&*space, spec.ToSearchConfig(12));
  ASSERT_TRUE(search.ok()) << search.status();
  RemoteEvaluator remote(w.stub.get(), proto, &*space);
  ASSERT_TRUE((*search)->Run(remote).ok());
  absl::StatusOr<search::ScoredPolicy> best = (*search)->Best();
  ASSERT_TRUE(best.ok());
  EXPECT_EQ(remote.latest(), 1);  // trained at generation 2
  absl::StatusOr<std::vector<double>> ratios = space->UnitRatios(best->policy);
  ASSERT_TRUE(ratios.ok());

  pb::FinalizeRequest fin;
  *fin.mutable_header() = Header("finalize-1");
  *fin.mutable_spec() = proto;
  fin.mutable_ratios()->Assign(ratios->begin(), ratios->end());
  fin.set_projector_version(remote.latest());
  fin.set_projector_blob_id(remote.blob(remote.latest()));
  json history = json::array();
  for (const auto& g : (*search)->history()) history.push_back(g.ToJson());
  fin.set_search_report_json(
      json{{"history", history}, {"evaluations", remote.evaluated()}}.dump());
  pb::FinalizeResponse finalized;
  {
    grpc::ClientContext ctx;
    SetContext(ctx);
    const grpc::Status s = w.stub->Finalize(&ctx, fin, &finalized);
    ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << w.process->Log();
  }
  EXPECT_LE(finalized.flops_ratio(), 0.5);
  EXPECT_EQ(finalized.accuracy_set(), "eval");
  const std::string tar = f.registry->Blob(finalized.artifact_blob_id());
  ASSERT_EQ(int64_t(tar.size()), finalized.artifact_size_bytes());
  EXPECT_EQ("sha256:" + Sha256Hex(tar), finalized.artifact_blob_id());
  const std::string remote_dir = f.work + "/remote-artifact";
  ASSERT_TRUE(Untar(tar, remote_dir));
  EXPECT_EQ(RunShell(absl::StrCat("cd ", remote_dir, " && sha256sum --quiet -c MANIFEST.sha256")),
            0);

  // prune-local, same inputs.
  const std::string local_dir = f.work + "/local-artifact";
  ASSERT_EQ(RunShell(absl::StrCat(BinDir(), "/prune-local --model=", f.model, " --samples=",
                                  f.search, " --eval-samples=", f.eval, " ", kSmallFlags,
                                  " --out=", local_dir, " > ", local_dir, ".log 2>&1")),
            0)
      << ReadFile(local_dir + ".log");
  EXPECT_EQ(ReadFile(remote_dir + "/policy.json"), ReadFile(local_dir + "/policy.json"));
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(local_dir + "/model")) {
    if (!e.is_regular_file()) continue;
    const std::string rel = fs::relative(e.path(), local_dir).string();
    EXPECT_EQ(ReadFile(remote_dir + "/" + rel), ReadFile(local_dir + "/" + rel)) << rel;
    ++files;
  }
  EXPECT_GE(files, 5);
  const json local_report = json::parse(ReadFile(local_dir + "/report.json"));
  const json remote_report = json::parse(finalized.report_json());
  EXPECT_EQ(remote_report["history"], local_report["history"]);
  EXPECT_EQ(remote_report["policy"], local_report["policy"]);
  EXPECT_EQ(remote_report["pruned"]["eval"], local_report["pruned"]["eval"]);
  EXPECT_EQ(remote_report["provenance"]["dataset_id"], f.search_id);
  std::printf("[worker steps] %lld evaluations over gRPC, final policy %s, artifact %lld bytes\n",
              (long long)remote.evaluated(), best->hash.c_str(),
              (long long)finalized.artifact_size_bytes());

  // Finalize spends the prepared state; the worker prepares again when asked.
  EXPECT_GE(
      MetricValue(Metrics(w), "prunesvc_worker_steps_total{outcome=\"ok\",step=\"finalize\"}"), 1);
}

// OWL's outlier ratios and STRUCTURED's head layout travel in PrepareResponse: the scheduler
// rebuilds the worker's STRUCTURED space (shrunk-shape FLOPs need the heads) and could solve OWL.
TEST(WorkerStepsTest, PrepareCarriesOwlOutliersAndTheHeadLayout) {
  ASSERT_NE(Env().server, nullptr);
  Worker w = StartWorker("layout");
  ASSERT_NE(w.stub, nullptr);
  JobSpec spec = SmallSpec();
  SetStrategy(spec, search::Strategy::kOwl);
  SetGranularity(spec, search::Granularity::kStructured);
  spec.flops_budget = 0.8;
  pb::PrepareRequest req;
  *req.mutable_header() = Header("prepare-owl");
  *req.mutable_spec() = JobSpecToProto(spec);
  pb::PrepareResponse resp;
  grpc::ClientContext ctx;
  SetContext(ctx);
  const grpc::Status s = w.stub->Prepare(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.owl_outlier_ratios_size(), 6);
  std::set<double> distinct;
  for (double d : resp.owl_outlier_ratios()) {
    EXPECT_GE(d, 0);
    EXPECT_LE(d, 1);
    distinct.insert(d);
  }
  EXPECT_GT(distinct.size(), 1u);
  for (const pb::DecoderLayerDims& l : resp.flops_dims().decoder()) {
    EXPECT_GT(l.num_heads(), 0);
    EXPECT_EQ(l.num_heads() % l.num_kv_heads(), 0);
    EXPECT_EQ(l.q_width(), l.num_heads() * l.head_dim());
  }
  absl::StatusOr<search::PolicySpace> space = PolicySpaceFromPrepare(spec, resp);
  ASSERT_TRUE(space.ok()) << space.status();
  EXPECT_EQ(space->granularity(), search::Granularity::kStructured);
  EXPECT_DOUBLE_EQ(space->MinReachableRatio(), resp.min_flops_ratio());
  EXPECT_DOUBLE_EQ(space->dense_flops(), resp.dense_flops());
}

// PrepareResponse.evaluation_key (the evaluation cache across jobs): what does not change a
// policy's scores leaves it alone (another job id, seed, budget, search options); what does
// changes it (granularity, mask method, unit).
TEST(WorkerStepsTest, EvaluationKeyNamesWhatDecidesAPolicysScores) {
  ASSERT_NE(Env().server, nullptr);
  Worker w = StartWorker("evalkey");
  ASSERT_NE(w.stub, nullptr);
  int step = 0;
  auto key_of = [&](const JobSpec& spec) -> std::string {
    pb::PrepareResponse resp;
    const grpc::Status s = PrepareAs(w, absl::StrCat("job-evalkey-", ++step), spec, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.evaluation_key();
  };
  const JobSpec base = SmallSpec();
  const std::string key = key_of(base);
  EXPECT_TRUE(absl::StartsWith(key, "sha256:")) << key;
  EXPECT_EQ(key.size(), 7u + 64u);
  JobSpec other = base;  // another job of the same inputs: seed, budget and search options
  other.seed = base.seed + 1;
  other.flops_budget = 0.6;
  other.population = base.population + 4;
  other.eta = 0.5;
  EXPECT_EQ(key_of(other), key);
  JobSpec structured = base;
  SetGranularity(structured, search::Granularity::kStructured);
  EXPECT_NE(key_of(structured), key);
  JobSpec magnitude = base;
  magnitude.mask_method = MaskMethod::kMagnitude;
  EXPECT_NE(key_of(magnitude), key);
}

pb::EvaluatePoliciesRequest ManyPolicies(const std::string& step, int count) {
  pb::EvaluatePoliciesRequest req;
  *req.mutable_header() = Header(step);
  *req.mutable_spec() = JobSpecToProto(SmallSpec());
  for (int i = 0; i < count; ++i) {
    auto* p = req.add_policies();
    for (int u = 0; u < 6; ++u) p->add_ratios(((i + u) % 9) / 10.0);
  }
  return req;
}

// Evaluations counted by the worker after a cancelled call of `count` policies.
double CancelledEvaluations(Worker& w, const std::function<void(grpc::ClientContext&)>& cancel,
                            const std::string& step, int count) {
  const double before = std::max(0.0, MetricValue(Metrics(w), "prunesvc_worker_evaluations_total"));
  grpc::ClientContext ctx;
  SetContext(ctx);
  auto reader = w.stub->EvaluatePolicies(&ctx, ManyPolicies(step, count));
  pb::EvaluatePoliciesResponse r;
  EXPECT_TRUE(reader->Read(&r));  // the first result arrived: the step is running
  cancel(ctx);
  while (reader->Read(&r)) {
  }
  const grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
  // The worker's step ends (its cancelled outcome is counted) well before `count` evaluations.
  EXPECT_TRUE(testing::WaitUntil(
      [&] {
        return MetricValue(
                   Metrics(w),
                   "prunesvc_worker_steps_total{outcome=\"cancelled\",step=\"evaluate\"}") >= 1;
      },
      absl::Seconds(120)));
  return MetricValue(Metrics(w), "prunesvc_worker_evaluations_total") - before;
}

// Scale-down (issue 19): a SIGTERMed worker drains. Its heartbeats say DRAINING at once, a new
// step is refused as retryable, the running step finishes with every result, then it exits 0.
TEST(WorkerStepsTest, SigtermDrainsTheRunningStepAndRefusesNewOnes) {
  ASSERT_NE(Env().server, nullptr);
  Fixture& f = Env();
  Worker w = StartWorker("drain", {"--drain-timeout=600"});
  ASSERT_NE(w.stub, nullptr);
  constexpr int kCount = 24;
  grpc::ClientContext ctx;
  SetContext(ctx);
  auto reader = w.stub->EvaluatePolicies(&ctx, ManyPolicies("drain-running", kCount));
  pb::EvaluatePoliciesResponse r;
  ASSERT_TRUE(reader->Read(&r));  // the step is running
  int got = 1;
  const int draining_before = f.registry->draining_heartbeats();
  ASSERT_EQ(kill(w.process->pid(), SIGTERM), 0);
  EXPECT_TRUE(testing::WaitUntil(
      [&] { return f.registry->draining_heartbeats() > draining_before; }, absl::Seconds(30)));
  grpc::ClientContext pctx;
  SetContext(pctx, 30);
  pb::PrepareRequest prepare;
  *prepare.mutable_header() = Header("drain-new");
  *prepare.mutable_spec() = JobSpecToProto(SmallSpec());
  pb::PrepareResponse prepared;
  const grpc::Status refused = w.stub->Prepare(&pctx, prepare, &prepared);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_TRUE(ErrorOf(refused).retryable());
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "draining")) << refused.error_message();
  while (reader->Read(&r)) ++got;
  const grpc::Status finished = reader->Finish();
  EXPECT_TRUE(finished.ok()) << finished.error_message();
  EXPECT_EQ(got, kCount);  // nothing of the running step was lost
  absl::StatusOr<int> exit = w.process->Wait(absl::Seconds(120));
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(WIFEXITED(*exit) && WEXITSTATUS(*exit) == 0) << w.process->Log();
  EXPECT_TRUE(absl::StrContains(w.process->Log(), "drained: no step is running"));
}

TEST(WorkerStepsTest, CancelStopsEvaluationAtTheNextCandidate) {
  ASSERT_NE(Env().server, nullptr);
  Worker w = StartWorker("cancel");
  ASSERT_NE(w.stub, nullptr);
  constexpr int kCount = 200;
  const double by_call = CancelledEvaluations(
      w, [](grpc::ClientContext& ctx) { ctx.TryCancel(); }, "cancel-by-call", kCount);
  EXPECT_GE(by_call, 1);
  EXPECT_LT(by_call, kCount);
  // From the heartbeat: the registry names the step in cancel_steps.
  Fixture& f = Env();
  const double by_heartbeat = CancelledEvaluations(
      w, [&](grpc::ClientContext&) { f.registry->CancelStep("cancel-by-heartbeat"); },
      "cancel-by-heartbeat", kCount);
  EXPECT_GE(by_heartbeat, 1);
  EXPECT_LT(by_heartbeat, kCount);
  std::printf("[cancel] %g / %d evaluations by the call, %g / %d by the heartbeat\n", by_call,
              kCount, by_heartbeat, kCount);
}

// Scores `req` and returns the responses (and the call's status).
std::vector<pb::EvaluatePoliciesResponse> EvaluateAll(Worker& w,
                                                      const pb::EvaluatePoliciesRequest& req,
                                                      grpc::Status* status) {
  grpc::ClientContext ctx;
  SetContext(ctx);
  auto reader = w.stub->EvaluatePolicies(&ctx, req);
  std::vector<pb::EvaluatePoliciesResponse> out;
  pb::EvaluatePoliciesResponse r;
  while (reader->Read(&r)) out.push_back(r);
  *status = reader->Finish();
  return out;
}

// A slice that starts on a batch boundary scores each of its samples in the same batch as the
// whole set does: its per-sample losses are the whole set's, bit for bit, and the counts add up.
TEST(WorkerStepsTest, SampleSlicesOnBatchBoundariesMatchTheWholeSet) {
  ASSERT_NE(Env().server, nullptr);
  Worker w = StartWorker("slices", {"--batch=4"});
  ASSERT_NE(w.stub, nullptr);
  grpc::Status st;
  const auto whole = EvaluateAll(w, ManyPolicies("slices-whole", 2), &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(whole.size(), 2u);
  for (int p = 0; p < 2; ++p) {
    const pb::PolicyEvaluation& e = whole[p].evaluation();
    ASSERT_EQ(e.sample_losses_size(), 12);
    ASSERT_EQ(whole[p].num_multiple_choice(), 12);
    EXPECT_DOUBLE_EQ(e.accuracy(), double(whole[p].num_correct()) / 12);
    std::vector<double> joined;
    int correct = 0, mc = 0;
    for (auto [b, e_] : {std::pair{0, 4}, std::pair{4, 12}}) {
      pb::EvaluatePoliciesRequest req = ManyPolicies(absl::StrCat("slices-", p, "-", b), 2);
      req.mutable_policies()->SwapElements(0, p);
      req.mutable_policies()->RemoveLast();
      req.set_sample_begin(b);
      req.set_sample_end(e_);
      const auto part = EvaluateAll(w, req, &st);
      ASSERT_TRUE(st.ok()) << st.error_message();
      ASSERT_EQ(part.size(), 1u);
      EXPECT_EQ(part[0].evaluation().omega(), e.omega());
      EXPECT_EQ(part[0].evaluation().policy_hash(), e.policy_hash());
      joined.insert(joined.end(), part[0].evaluation().sample_losses().begin(),
                    part[0].evaluation().sample_losses().end());
      correct += part[0].num_correct();
      mc += part[0].num_multiple_choice();
    }
    EXPECT_EQ(joined, std::vector<double>(e.sample_losses().begin(), e.sample_losses().end()));
    EXPECT_EQ(correct, whole[p].num_correct());
    EXPECT_EQ(mc, 12);
  }
  for (auto [b, e] : {std::pair{5, 3}, std::pair{0, 13}, std::pair{-1, 4}}) {
    pb::EvaluatePoliciesRequest req = ManyPolicies(absl::StrCat("slices-bad-", b, "-", e), 1);
    req.set_sample_begin(b);
    req.set_sample_end(e);
    EvaluateAll(w, req, &st);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b << " " << e;
    EXPECT_TRUE(absl::StrContains(st.error_message(), "sample_begin/sample_end"))
        << st.error_message();
  }
  // A PAIRED race needs a finite η ≥ 0 and one finite, non-negative reference loss per sample.
  const std::vector<std::pair<std::function<void(pb::EvaluatePoliciesRequest&)>, std::string>>
      bad_races = {
          {[](auto& r) { r.set_race_paired_eta(1); }, "race_paired_eta"},
          {[](auto& r) {
             r.set_race_paired_eta(-1);
             for (int i = 0; i < 12; ++i) r.add_race_reference_losses(0.5);
           },
           "race_paired_eta"},
          {[](auto& r) {
             r.set_race_paired_eta(1);
             for (int i = 0; i < 11; ++i) r.add_race_reference_losses(0.5);
           },
           "12 search samples"},
          {[](auto& r) {
             r.set_race_paired_eta(1);
             for (int i = 0; i < 12; ++i) r.add_race_reference_losses(i == 7 ? NAN : 0.5);
           },
           "race_reference_losses[7]"},
      };
  for (size_t c = 0; c < bad_races.size(); ++c) {
    pb::EvaluatePoliciesRequest req = ManyPolicies(absl::StrCat("race-bad-", c), 1);
    req.set_race_threshold(1.0);
    bad_races[c].first(req);
    EvaluateAll(w, req, &st);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c;
    EXPECT_TRUE(absl::StrContains(st.error_message(), bad_races[c].second))
        << c << ": " << st.error_message();
  }
  // A well-formed one races (or not) and answers.
  pb::EvaluatePoliciesRequest req = ManyPolicies("race-paired-ok", 2);
  req.set_race_threshold(1e9);
  req.set_race_paired_eta(1);
  for (int i = 0; i < 12; ++i) req.add_race_reference_losses(0.5);
  EXPECT_EQ(EvaluateAll(w, req, &st).size(), 2u);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

// The sample order (docs/PERFORMANCE.md §2): Prepare names the order the worker scores the
// samples in — a permutation, hardest first by the probe policy's losses — and a request's
// sample_order is the one scored: with batches of one sample, position j's loss is bitwise the
// loss of sample order[j] under the identity order. A malformed order is bad input.
TEST(WorkerStepsTest, TheRequestsSampleOrderIsTheOneScored) {
  ASSERT_NE(Env().server, nullptr);
  Worker w = StartWorker("order", {"--batch=1"});
  ASSERT_NE(w.stub, nullptr);
  pb::PrepareResponse prepared;
  const grpc::Status ps = PrepareAs(w, "job-order", SmallSpec(), &prepared);
  ASSERT_TRUE(ps.ok()) << ps.error_message();
  std::vector<int> order(prepared.sample_order().begin(), prepared.sample_order().end());
  ASSERT_EQ(order.size(), 12u);
  std::vector<int> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 12; ++i) EXPECT_EQ(sorted[size_t(i)], i);
  auto evaluate = [&](const std::string& step, const std::vector<int>& o, grpc::Status* st) {
    pb::EvaluatePoliciesRequest req = ManyPolicies(step, 1);
    req.mutable_header()->set_job_id("job-order");
    req.mutable_sample_order()->Assign(o.begin(), o.end());
    return EvaluateAll(w, req, st);
  };
  std::vector<int> identity(12);
  for (int i = 0; i < 12; ++i) identity[size_t(i)] = i;
  grpc::Status st;
  const auto by_index = evaluate("order-identity", identity, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const auto by_order = evaluate("order-prepared", order, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(by_index.size(), 1u);
  ASSERT_EQ(by_order.size(), 1u);
  const auto& a = by_index[0].evaluation().sample_losses();
  const auto& b = by_order[0].evaluation().sample_losses();
  ASSERT_EQ(a.size(), 12);
  ASSERT_EQ(b.size(), 12);
  for (int j = 0; j < 12; ++j) EXPECT_EQ(b[j], a[order[size_t(j)]]) << j;
  EXPECT_NE(order, identity);  // the probe's losses are not already in index order here
  // Hardest first: the probe policy — every unit at UNIFORM's ratio at the budget (a ratio choice
  // by default: the search's own reference), from the space the scheduler builds — scored in that
  // order has non-increasing per-sample losses (batches of one sample: the bits Prepare sorted).
  const absl::StatusOr<search::PolicySpace> space = PolicySpaceFromPrepare(SmallSpec(), prepared);
  ASSERT_TRUE(space.ok()) << space.status();
  const absl::StatusOr<double> uniform = space->UniformContinuousRatio(SmallSpec().flops_budget);
  ASSERT_TRUE(uniform.ok()) << uniform.status();
  const std::vector<double>& choices = space->ratio_choices();
  ASSERT_NE(std::find(choices.begin(), choices.end(), *uniform), choices.end());
  EXPECT_NE(*uniform, 0.5);  // not the probe before the budget chose it
  pb::EvaluatePoliciesRequest probe = ManyPolicies("order-probe", 1);
  probe.mutable_header()->set_job_id("job-order");
  for (int u = 0; u < 6; ++u) probe.mutable_policies(0)->set_ratios(u, *uniform);
  const auto probed = EvaluateAll(w, probe, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(probed.size(), 1u);
  const auto& pl = probed[0].evaluation().sample_losses();
  for (int j = 1; j < pl.size(); ++j) EXPECT_GE(pl[j - 1], pl[j]) << j;
  for (const auto& [bad, why] : std::vector<std::pair<std::vector<int>, std::string>>{
           {{0, 1, 2}, "3 positions for 12"},
           {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10}, "position 11 holds 10"},
           {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12}, "position 11 holds 12"}}) {
    evaluate("order-bad", bad, &st);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << why;
    EXPECT_TRUE(absl::StrContains(st.error_message(), "sample_order")) << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(), why)) << st.error_message();
  }
}

TEST(WorkerStepsTest, OutOfMemoryIsRetryableAndBadInputIsNot) {
  ASSERT_NE(Env().server, nullptr);
  Worker w = StartWorker("oom", {"--inject-fault=evaluate:oom"});
  ASSERT_NE(w.stub, nullptr);
  {
    grpc::ClientContext ctx;
    SetContext(ctx);
    auto reader = w.stub->EvaluatePolicies(&ctx, ManyPolicies("oom-1", 2));
    pb::EvaluatePoliciesResponse r;
    while (reader->Read(&r)) {
    }
    const grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_TRUE(ErrorOf(s).retryable());
    EXPECT_EQ(ErrorOf(s).kind(), "out_of_memory");
    EXPECT_EQ(ErrorOf(s).phase(), "evaluate");
  }
  {  // A ratio that is not one of the job's choices.
    pb::EvaluatePoliciesRequest req = ManyPolicies("bad-1", 1);
    req.mutable_policies(0)->set_ratios(0, 0.55);
    grpc::ClientContext ctx;
    SetContext(ctx);
    auto reader = w.stub->EvaluatePolicies(&ctx, req);
    pb::EvaluatePoliciesResponse r;
    while (reader->Read(&r)) {
    }
    const grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "policies[0].ratios[0]")) << s.error_message();
    EXPECT_FALSE(ErrorOf(s).retryable());
    EXPECT_EQ(ErrorOf(s).kind(), "bad_input");
  }
  {  // A model outside --allowed-model-roots, a bad spec field, an unknown dataset.
    const std::vector<std::pair<std::function<void(pb::JobSpec&)>, std::string>> cases = {
        {[](pb::JobSpec& s) { s.set_model_uri("file:///etc"); }, "--allowed-model-roots"},
        {[](pb::JobSpec& s) { s.set_population(2); }, "population"},
        {[](pb::JobSpec& s) { s.set_dataset_id("sha256:" + std::string(64, '0')); }, "dataset_id"},
    };
    for (const auto& [mutate, needle] : cases) {
      pb::PrepareRequest req;
      *req.mutable_header() = Header("bad-prepare");
      *req.mutable_spec() = JobSpecToProto(SmallSpec());
      mutate(*req.mutable_spec());
      pb::PrepareResponse resp;
      grpc::ClientContext ctx;
      SetContext(ctx);
      const grpc::Status s = w.stub->Prepare(&ctx, req, &resp);
      EXPECT_FALSE(s.ok()) << needle;
      EXPECT_TRUE(absl::StrContains(s.error_message(), needle)) << s.error_message();
      EXPECT_FALSE(ErrorOf(s).retryable()) << needle;
    }
  }
}

// Jobs with the same model, samples and pruning choices share their preparation on a worker
// (worker/prune/preparation_cache.h): the second job's Prepare says so, and a policy scores
// bitwise the same under both jobs; a job of another budget shares it too but orders the samples
// with its own probe (PreparedJob::ProbeRatio); another mask method prepares alone. With
// --kept-preparations=0 and one prepared job at a time, a job whose predecessor was evicted
// prepares alone again (nothing holds the shared state), and scores the same.
TEST(WorkerStepsTest, JobsWithTheSameInputsShareTheirPreparation) {
  ASSERT_NE(Env().server, nullptr);
  for (const bool keep : {true, false}) {
    SCOPED_TRACE(keep ? "kept" : "not kept");
    Worker w = StartWorker(
        absl::StrCat("shared-prep-", keep),
        keep ? std::vector<std::string>{}
             : std::vector<std::string>{"--kept-preparations=0", "--max-prepared-jobs=1"});
    ASSERT_NE(w.stub, nullptr);
    auto prepare = [&](const std::string& job, const JobSpec& spec) -> pb::PrepareResponse {
      pb::PrepareResponse resp;
      const grpc::Status s = PrepareAs(w, job, spec, &resp);
      EXPECT_TRUE(s.ok()) << s.error_message();
      return resp;
    };
    auto losses = [&](const std::string& job, const JobSpec& spec) {
      pb::EvaluatePoliciesRequest req = ManyPolicies("evaluate-" + job, 2);
      req.mutable_header()->set_job_id(job);
      *req.mutable_spec() = JobSpecToProto(spec);
      grpc::Status st;
      const auto got = EvaluateAll(w, req, &st);
      EXPECT_TRUE(st.ok()) << st.error_message();
      std::vector<double> out;
      for (const auto& r : got) {
        out.insert(out.end(), r.evaluation().sample_losses().begin(),
                   r.evaluation().sample_losses().end());
      }
      return out;
    };
    const JobSpec a = SmallSpec();
    JobSpec b = a;
    b.seed = a.seed + 1;
    const pb::PrepareResponse ra = prepare("job-share-a", a);
    EXPECT_FALSE(ra.shared_preparation());
    const std::vector<double> la = losses("job-share-a", a);
    const pb::PrepareResponse rb = prepare("job-share-b", b);
    EXPECT_EQ(rb.shared_preparation(), keep);
    EXPECT_EQ(rb.dense().loss(), ra.dense().loss());
    EXPECT_EQ(rb.evaluation_key(), ra.evaluation_key());
    EXPECT_EQ(std::vector<int>(rb.sample_order().begin(), rb.sample_order().end()),
              std::vector<int>(ra.sample_order().begin(), ra.sample_order().end()));
    EXPECT_EQ(losses("job-share-b", b), la);  // bitwise
    JobSpec other_budget = a;
    other_budget.flops_budget = 0.3;
    const pb::PrepareResponse rc = prepare("job-share-budget", other_budget);
    EXPECT_EQ(rc.shared_preparation(), keep);
    EXPECT_EQ(rc.dense().loss(), ra.dense().loss());
    std::vector<int> sorted(rc.sample_order().begin(), rc.sample_order().end());
    std::sort(sorted.begin(), sorted.end());
    ASSERT_EQ(sorted.size(), 12u);
    for (int i = 0; i < 12; ++i) EXPECT_EQ(sorted[size_t(i)], i);
    JobSpec magnitude = a;
    magnitude.mask_method = MaskMethod::kMagnitude;
    EXPECT_FALSE(prepare("job-share-c", magnitude).shared_preparation());
  }
}

}  // namespace
}  // namespace prunesvc

namespace prunesvc {
namespace {

// --allowed-model-roots is enforced on the realpath (issue 17): `..` and a symlink that leave the
// root are refused, and so is a file:// URI with a host; a directory inside the root passes the
// check (and fails later, on what is missing in it).
TEST(WorkerStepsTest, ModelPathsOutsideTheAllowedRootAreRefused) {
  ASSERT_NE(Env().server, nullptr);
  const std::string root = Env().work + "/roots/r";
  ASSERT_EQ(testing::RunShell(absl::StrCat("mkdir -p ", root, "/empty && ln -sfn ", SourceDir(),
                                           "/models/tiny-llava-shapes ", root, "/escape")),
            0);
  Worker w = StartWorker("roots", {"--allowed-model-roots=" + root});
  ASSERT_NE(w.stub, nullptr);
  const std::string model = SourceDir() + "/models/tiny-llava-shapes";
  const struct {
    std::string uri, needle;
  } cases[] = {
      {"file://" + root + "/../../../../../../../../" + model, "--allowed-model-roots"},
      {"file://" + root + "/escape", "--allowed-model-roots"},
      {"file://localhost" + model, "host"},
      {"file://example.com" + root + "/empty", "host"},
      {"file://" + root + "/empty", "config.json"},  // inside: past the root check
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.uri);
    pb::PrepareRequest req;
    *req.mutable_header() = Header("roots");
    *req.mutable_spec() = JobSpecToProto(SmallSpec());
    req.mutable_spec()->set_model_uri(c.uri);
    pb::PrepareResponse resp;
    grpc::ClientContext ctx;
    SetContext(ctx);
    const grpc::Status s = w.stub->Prepare(&ctx, req, &resp);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.error_message(), c.needle)) << s.error_message();
    if (c.needle != "config.json") {
      EXPECT_FALSE(absl::StrContains(s.error_message(), "config.json")) << s.error_message();
    }
  }
}

}  // namespace
}  // namespace prunesvc

// End-to-end: pruning as a service (issue 13). The real prune-scheduler with --local-workers=N
// real prune-worker processes on loopback, driven over gRPC as a client would: UploadDataset,
// SubmitJob, WatchJob, FetchArtifact, CancelJob. Results are compared with prune-local run on the
// same inputs under --threads=1 (--worker-threads=1 on the service side).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/job_spec.h"
#include "common/job_spec_proto.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "prune/v1/pruning_service.grpc.pb.h"
#include "tests/e2e_service.h"
#include "tests/process_harness.h"

namespace prunesvc {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;
using nlohmann::json;
using testing::BinDir;
using testing::Deadline;
using testing::Fetch;
using testing::Metric;
using testing::ReadFile;
using testing::RunShell;
using testing::Service;
using testing::SourceDir;
using testing::StartService;
using testing::Submit;
using testing::TestProcess;
using testing::TheData;
using testing::Untar;
using testing::Upload;
using testing::Watch;

// The search both sides run.
JobSpec SmallSpec(const std::string& dataset, const std::string& eval, int population = 4) {
  JobSpec s;
  s.model_uri = "file://" + SourceDir() + "/models/tiny-llava-shapes";
  s.dataset_id = dataset;
  s.eval_dataset_id = eval;
  s.flops_budget = 0.5;
  s.population = population;
  s.parents = 2;
  s.generations = 2;
  s.projector_every = 2;
  s.projector_steps = 2;
  s.seed = 5;
  return s;
}

// The issue-14 search options both sides run in SearchOptionsReproducePruneLocal.
void WithSearchOptions(JobSpec& s) {
  s.estimator = search::Estimator::kUcb;
  s.eta_rule = search::EtaRule::kCrossValidated;
  s.eta.reset();  // CV chooses η (prune-local: --eta-rule without --eta)
  s.seed_with_uniform = true;
  s.repair_uniform_seed = true;
  s.mutation_step = 0.5;
  s.slack_evaluations = 4;
}
constexpr char kSearchOptionFlags[] =
    " --estimator=UCB --eta-rule=CV --seed-with-uniform --repair-uniform-seed --mutation-step=0.5"
    " --slack-evaluations=4";

std::string LocalFlags(const JobSpec& s, int batch) {
  return absl::StrCat("--flops-budget=0.5 --population=", s.population,
                      " --parents=2 --generations=2 --projector-every=2 --projector-steps=2 "
                      "--seed=5 --threads=1",
                      batch > 0 ? absl::StrCat(" --batch=", batch) : "",
                      s.slack_evaluations > 0 ? kSearchOptionFlags : "");
}

void ExpectSameAsPruneLocal(const std::string& artifact_dir, const JobSpec& spec, int batch,
                            const std::string& name) {
  const testing::E2eData& d = TheData();
  const std::string local = d.work + "/local-" + name;
  if (!fs::exists(local + "/policy.json")) {
    ASSERT_EQ(RunShell(absl::StrCat(BinDir(), "/prune-local --model=", SourceDir(),
                                    "/models/tiny-llava-shapes --samples=", d.search,
                                    " --eval-samples=", d.eval, " ", LocalFlags(spec, batch),
                                    " --out=", local, " >", local, ".log 2>&1")),
              0)
        << ReadFile(local + ".log");
  }
  EXPECT_EQ(ReadFile(artifact_dir + "/policy.json"), ReadFile(local + "/policy.json")) << name;
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(local + "/model")) {
    if (!e.is_regular_file()) continue;
    const std::string rel = fs::relative(e.path(), local).string();
    EXPECT_EQ(ReadFile(artifact_dir + "/" + rel), ReadFile(local + "/" + rel))
        << name << " " << rel;
    ++files;
  }
  EXPECT_GE(files, 5);
  EXPECT_EQ(RunShell(absl::StrCat("cd ", artifact_dir, " && sha256sum --quiet -c MANIFEST.sha256")),
            0);
  // report.json: the same search (its options, η and how it was chosen, evaluation count, pick).
  const nlohmann::json ours = nlohmann::json::parse(ReadFile(artifact_dir + "/report.json"));
  const nlohmann::json theirs = nlohmann::json::parse(ReadFile(local + "/report.json"));
  for (const char* key : {"search", "eta", "policy"}) {
    EXPECT_EQ(ours[key], theirs[key]) << name << " report.json " << key;
  }
}

// A job through the whole service, compared with prune-local; `workers` local workers scoring in
// batches of `batch` (0: the default), prune-local likewise; `options`: with the issue-14 search
// options.
void RunAndCompare(int workers, int population, const std::string& name, int batch = 0,
                   bool options = false) {
  Service s = StartService(name, workers, batch);
  ASSERT_NE(s.stub, nullptr) << (s.process ? s.process->Log() : "");
  auto dataset = Upload(s, TheData().search);
  auto eval = Upload(s, TheData().eval);
  ASSERT_TRUE(dataset.ok() && eval.ok()) << dataset.status() << eval.status();
  JobSpec spec = SmallSpec(*dataset, *eval, population);
  if (options) WithSearchOptions(spec);
  auto job = Submit(s, spec);
  ASSERT_TRUE(job.ok()) << job.status();
  const std::vector<pb::JobEvent> events = Watch(s, job->job_id());
  ASSERT_FALSE(events.empty());
  ASSERT_EQ(events.back().state_changed().to(), pb::SUCCEEDED) << s.process->Log();
  std::string artifact, trailer;
  for (const pb::JobEvent& e : events) {
    if (e.has_artifact_ready()) artifact = e.artifact_ready().artifact_id();
  }
  ASSERT_FALSE(artifact.empty());
  auto bytes = Fetch(s, artifact, &trailer);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const std::string hex = Sha256Hex(*bytes);
  EXPECT_TRUE(trailer == hex || trailer == "sha256:" + hex) << trailer;
  const std::string dir = s.dir + "/artifact";
  ASSERT_TRUE(Untar(*bytes, dir));
  ExpectSameAsPruneLocal(dir, spec, batch,
                         absl::StrCat("pop", population, "-batch", batch, options ? "-opts" : ""));
  EXPECT_GT(Metric(s.metrics_port, "prunesvc_steps_total"), 0);
  // The events say how η was set: cross-validated with the options, the default (the SAMPLES
  // rule: η = 0 with these 12 search samples) without.
  for (const pb::JobEvent& e : events) {
    if (!e.has_generation_finished()) continue;
    EXPECT_EQ(e.generation_finished().eta_method(), options ? "cv" : "samples");
    if (!options) EXPECT_EQ(e.generation_finished().eta(), 0.0);
    EXPECT_EQ(e.generation_finished().estimator(), options ? "UCB" : "PAIRED");
  }
  if (workers > population / 2) {  // more workers than a generation's misses
    EXPECT_GT(Metric(s.metrics_port, "prunesvc_split_evaluations_total"), 0);
  }
  std::printf("[e2e %s] %zu events, artifact %zu bytes\n", name.c_str(), events.size(),
              bytes->size());
}

TEST(E2eJobsTest, TwoWorkersReproducePruneLocal) { RunAndCompare(2, 4, "two"); }
TEST(E2eJobsTest, OneWorkerReproducesPruneLocal) { RunAndCompare(1, 4, "one"); }
// Population 4 with 2 parents: 2 cache misses a generation over 3 workers, the 12 search samples
// scored in batches of 4: one policy's samples are split over two workers, and the combined
// result is exactly prune-local's.
TEST(E2eJobsTest, MoreWorkersThanPoliciesReproducePruneLocal) { RunAndCompare(3, 4, "three", 4); }
// UCB with cross-validated η, the UNIFORM seed, step mutations and the slack step: the scheduler
// computes the same fitness from the workers' per-sample losses as prune-local does.
TEST(E2eJobsTest, SearchOptionsReproducePruneLocal) { RunAndCompare(2, 4, "options", 0, true); }

// warm_start_job_id through the service: checked at submit against the finished job (unknown,
// not finished, other inputs: each refused naming the field), then a search that starts from it
// succeeds and says so in its report.
TEST(E2eJobsTest, ASearchStartsFromAFinishedOne) {
  Service s = StartService("warm", 2, 0);
  ASSERT_NE(s.stub, nullptr) << (s.process ? s.process->Log() : "");
  auto dataset = Upload(s, TheData().search);
  auto eval = Upload(s, TheData().eval);
  ASSERT_TRUE(dataset.ok() && eval.ok()) << dataset.status() << eval.status();
  const JobSpec spec = SmallSpec(*dataset, *eval, 4);
  auto first = Submit(s, spec);
  ASSERT_TRUE(first.ok()) << first.status();
  JobSpec warm = spec;
  warm.seed = 6;
  warm.flops_budget = 0.45;
  warm.warm_start_job_id = first->job_id();
  auto early = Submit(s, warm);  // the first job is not finished yet
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition) << early.status();
  EXPECT_THAT(std::string(early.status().message()), ::testing::HasSubstr("warm_start_job_id"));
  const std::vector<pb::JobEvent> events = Watch(s, first->job_id());
  ASSERT_FALSE(events.empty());
  ASSERT_EQ(events.back().state_changed().to(), pb::SUCCEEDED) << s.process->Log();

  JobSpec unknown = warm;
  unknown.warm_start_job_id = "job-0000000000000000";
  EXPECT_EQ(Submit(s, unknown).status().code(), absl::StatusCode::kNotFound);
  JobSpec other_samples = warm;
  other_samples.dataset_id = *eval;
  auto refused = Submit(s, other_samples);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("another dataset_id"));

  auto second = Submit(s, warm);
  ASSERT_TRUE(second.ok()) << second.status();
  const std::vector<pb::JobEvent> second_events = Watch(s, second->job_id());
  ASSERT_FALSE(second_events.empty());
  ASSERT_EQ(second_events.back().state_changed().to(), pb::SUCCEEDED) << s.process->Log();
  const std::string dir = s.dir + "/warm-artifact";
  const absl::Status fetched = testing::FetchInto(s, second_events, dir);
  ASSERT_TRUE(fetched.ok()) << fetched;
  const nlohmann::json report = nlohmann::json::parse(ReadFile(dir + "/report.json"));
  EXPECT_EQ(report["search"]["warm_start_job_id"], first->job_id()) << report.dump();
  EXPECT_NE(s.process->Log().find("starts from"), std::string::npos);
}

TEST(E2eJobsTest, WorkerKilledMidSearchJobStillSucceedsWithTheSamePolicy) {
  Service s = StartService("kill", 2);
  ASSERT_NE(s.stub, nullptr);
  auto dataset = Upload(s, TheData().search);
  auto eval = Upload(s, TheData().eval);
  ASSERT_TRUE(dataset.ok() && eval.ok());
  const JobSpec spec = SmallSpec(*dataset, *eval, 8);
  auto job = Submit(s, spec);
  ASSERT_TRUE(job.ok());
  // Kill a worker as soon as the search is evaluating.
  std::thread killer([&] {
    testing::WaitUntil(
        [&] {
          return Metric(s.metrics_port, "prunesvc_evaluations_total") > 0 ||
                 Metric(s.metrics_port, "prunesvc_step_queue_depth") >= 0;
        },
        absl::Seconds(120));
    testing::WaitUntil(
        [&] {
          grpc::ClientContext ctx;
          Deadline(ctx, 5);
          pb::GetJobRequest req;
          req.set_job_id(job->job_id());
          pb::Job j;
          return s.stub->GetJob(&ctx, req, &j).ok() && j.state() == pb::SEARCHING;
        },
        absl::Seconds(120));
    grpc::ClientContext ctx;
    Deadline(ctx, 5);
    pb::ListWorkersResponse r;
    if (s.stub->ListWorkers(&ctx, {}, &r).ok() && r.workers_size() > 0) {
      kill(pid_t(r.workers(0).pid()), SIGKILL);
    }
  });
  const std::vector<pb::JobEvent> events = Watch(s, job->job_id());
  killer.join();
  ASSERT_EQ(events.back().state_changed().to(), pb::SUCCEEDED) << s.process->Log();
  std::string artifact, trailer;
  for (const pb::JobEvent& e : events) {
    if (e.has_artifact_ready()) artifact = e.artifact_ready().artifact_id();
  }
  auto bytes = Fetch(s, artifact, &trailer);
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(Untar(*bytes, s.dir + "/artifact"));
  ExpectSameAsPruneLocal(s.dir + "/artifact", spec, 0, "pop8-batch0");
  // The kill cost a step (retried elsewhere) and the supervisor respawned the worker.
  const double retries = Metric(s.metrics_port, "prunesvc_step_retries_total");
  EXPECT_GE(retries, 1);
  EXPECT_TRUE(testing::WaitUntil(
      [&] { return Metric(s.metrics_port, "prunesvc_local_worker_restarts_total") >= 1; },
      absl::Seconds(60)));
  std::printf("[e2e kill] %g step retries after the SIGKILL\n", retries);
}

TEST(E2eJobsTest, WatchersSeeEveryEventOnceAcrossReconnects) {
  Service s = StartService("watch", 2);
  ASSERT_NE(s.stub, nullptr);
  auto dataset = Upload(s, TheData().search);
  ASSERT_TRUE(dataset.ok());
  JobSpec spec = SmallSpec(*dataset, *dataset);
  spec.eval_dataset_id.reset();
  auto job = Submit(s, spec);
  ASSERT_TRUE(job.ok());
  std::vector<std::vector<pb::JobEvent>> seen(20);
  std::vector<std::thread> watchers;
  for (int i = 0; i < 20; ++i) {
    watchers.emplace_back([&, i] { seen[i] = Watch(s, job->job_id(), i == 0 ? 3 : 0); });
  }
  for (std::thread& t : watchers) t.join();
  ASSERT_FALSE(seen[0].empty());
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(seen[i].size(), seen[0].size()) << i;
    for (size_t k = 0; k < seen[i].size(); ++k) {
      EXPECT_EQ(seen[i][k].sequence(), int64_t(k + 1)) << i;
      EXPECT_EQ(seen[i][k].SerializeAsString(), seen[0][k].SerializeAsString()) << i;
    }
  }
  EXPECT_EQ(seen[0].front().state_changed().to(), pb::QUEUED);
  // ArtifactReady comes right before the terminal StateChanged.
  ASSERT_GE(seen[0].size(), 2u);
  EXPECT_TRUE(seen[0][seen[0].size() - 2].has_artifact_ready());
  EXPECT_EQ(seen[0].back().state_changed().to(), pb::SUCCEEDED);
}

TEST(E2eJobsTest, TwoJobsShareTheWorkersAndCancelReachesIdle) {
  Service s = StartService("share", 2);
  ASSERT_NE(s.stub, nullptr);
  auto dataset = Upload(s, TheData().search);
  ASSERT_TRUE(dataset.ok());
  JobSpec spec = SmallSpec(*dataset, *dataset);
  spec.eval_dataset_id.reset();
  auto a = Submit(s, spec);
  spec.seed = 6;
  auto b = Submit(s, spec);
  JobSpec longer = spec;
  longer.generations = 200;
  longer.population = 16;
  longer.parents = 4;
  auto c = Submit(s, longer);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(Watch(s, a->job_id()).back().state_changed().to(), pb::SUCCEEDED);
  EXPECT_EQ(Watch(s, b->job_id()).back().state_changed().to(), pb::SUCCEEDED);
  // Cancel the long one while it searches.
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        grpc::ClientContext ctx;
        Deadline(ctx, 5);
        pb::GetJobRequest req;
        req.set_job_id(c->job_id());
        pb::Job j;
        return s.stub->GetJob(&ctx, req, &j).ok() && j.state() == pb::SEARCHING &&
               j.generation() >= 1;
      },
      absl::Seconds(300)));
  {
    grpc::ClientContext ctx;
    Deadline(ctx, 30);
    pb::CancelJobRequest req;
    req.set_job_id(c->job_id());
    req.set_reason("test");
    pb::Job j;
    ASSERT_TRUE(s.stub->CancelJob(&ctx, req, &j).ok());
  }
  EXPECT_EQ(Watch(s, c->job_id()).back().state_changed().to(), pb::CANCELLED);
  // The workers go back to idle (a generous hang guard, no timing assertion).
  EXPECT_TRUE(testing::WaitUntil(
      [&] {
        grpc::ClientContext ctx;
        Deadline(ctx, 5);
        pb::ListWorkersResponse r;
        if (!s.stub->ListWorkers(&ctx, {}, &r).ok() || r.workers_size() < 2) return false;
        for (const auto& w : r.workers()) {
          if (w.state() != pb::WORKER_IDLE) return false;
        }
        return true;
      },
      absl::Seconds(120)));
  // Both processes' metrics moved.
  EXPECT_GT(Metric(s.metrics_port, "prunesvc_steps_total"), 0);
  grpc::ClientContext ctx;
  Deadline(ctx, 5);
  pb::ListWorkersResponse r;
  ASSERT_TRUE(s.stub->ListWorkers(&ctx, {}, &r).ok());
  ASSERT_GT(r.workers_size(), 0);
  EXPECT_GT(Metric(r.workers(0).metrics_port(), "prunesvc_worker_steps_total"), 0);
}

}  // namespace
}  // namespace prunesvc

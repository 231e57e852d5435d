// Crash safety (issue 16), with real processes: the scheduler and its local workers are killed at
// exact places by the test-only fault hook (common/fault.h: PRUNESVC_FAULT names a point, the
// process SIGKILLs / SIGSTOPs / SIGTERMs itself there; PRUNESVC_FAULT_DIR makes each point fire
// once, so the restarted scheduler and the respawned workers run through). Every scenario runs the
// same small search and compares, with the undisturbed run of that search:
//   - the final policy.json and model weights (byte for byte),
//   - the job's whole event log, normalized (times, reasons and artifact ids aside): the same
//     events in the same order, sequences 1..N, so nothing was lost, emitted twice or renumbered,
//   - a WatchJob client that was watching when the scheduler died and resumed from its cursor
//     against the restarted one: it saw exactly the stored log,
// and that a job acknowledged before the crash (a UNIFORM one) is not lost.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/job_spec.h"
#include "common/job_spec_proto.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "prune/v1/pruning_service.grpc.pb.h"
#include "tests/e2e_service.h"
#include "tests/process_harness.h"

namespace prunesvc {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;
using testing::ReadFile;
using testing::Service;
using testing::ServiceOptions;
using testing::SourceDir;
using testing::StartService;
using testing::TheData;

// The search every scenario runs: 4 generations of 4 policies (2 new a generation, over 2
// workers), the projector re-trained every 2 generations.
JobSpec SearchSpec(const std::string& dataset, const std::string& eval) {
  JobSpec s;
  s.model_uri = "file://" + SourceDir() + "/models/tiny-llava-shapes";
  s.dataset_id = dataset;
  s.eval_dataset_id = eval;
  s.flops_budget = 0.5;
  s.population = 4;
  s.parents = 2;
  s.generations = 3;
  s.projector_every = 2;
  s.projector_steps = 2;
  s.seed = 7;
  return s;
}

// The acknowledged job that must survive: UNIFORM (Prepare + Finalize only).
JobSpec UniformSpec(const std::string& dataset) {
  JobSpec s;
  s.model_uri = "file://" + SourceDir() + "/models/tiny-llava-shapes";
  s.dataset_id = dataset;
  s.flops_budget = 0.5;
  SetStrategy(s, search::Strategy::kUniform);
  return s;
}

// An event as a run reproduces it: its time, the job id, free-text reasons and the artifact's
// identity (report.json records the run's own provenance) aside.
std::string Normalized(const pb::JobEvent& e) {
  pb::JobEvent c = e;
  c.clear_time();
  c.clear_job_id();
  if (c.has_state_changed()) c.mutable_state_changed()->clear_reason();
  if (c.has_artifact_ready()) {
    c.mutable_artifact_ready()->clear_artifact_id();
    c.mutable_artifact_ready()->clear_sha256();
    c.mutable_artifact_ready()->clear_size_bytes();
  }
  return c.ShortDebugString();
}

struct Outcome {
  std::vector<std::string> events;   // the stored log, read after the job ended, Normalized()
  std::string policy_json, weights;  // from the artifact
};

Outcome RunUndisturbed() {
  Outcome o;
  Service s = StartService("undisturbed", 2);
  if (s.stub == nullptr) return o;
  auto dataset = testing::Upload(s, TheData().search);
  auto eval = testing::Upload(s, TheData().eval);
  if (!dataset.ok() || !eval.ok()) return o;
  auto job = testing::Submit(s, SearchSpec(*dataset, *eval));
  if (!job.ok()) return o;
  const std::vector<pb::JobEvent> events = testing::Watch(s, job->job_id());
  for (const pb::JobEvent& e : events) o.events.push_back(Normalized(e));
  const std::string dir = s.dir + "/artifact";
  if (testing::FetchInto(s, events, dir).ok()) {
    o.policy_json = ReadFile(dir + "/policy.json");
    o.weights = ReadFile(dir + "/model/model.safetensors");
  }
  return o;
}

// ctest runs each scenario in a process of its own; the undisturbed run is made once, by the
// fixture test below (ctest's e2e_crash_reference), into build/tests/crash_reference or
// $PRUNESVC_CRASH_REFERENCE; a scenario run where none exists makes its own.
std::string ReferenceDir() {
  const char* dir = std::getenv("PRUNESVC_CRASH_REFERENCE");
  return dir != nullptr && *dir ? dir : PRUNESVC_CRASH_REFERENCE_DIR;
}

const Outcome& Undisturbed() {
  static const Outcome* o = [] {
    const std::string dir = ReferenceDir();
    if (!dir.empty() && fs::exists(dir + "/events.txt")) {
      auto* o = new Outcome;
      o->events = absl::StrSplit(ReadFile(dir + "/events.txt"), '\n', absl::SkipEmpty());
      o->policy_json = ReadFile(dir + "/policy.json");
      o->weights = ReadFile(dir + "/model.safetensors");
      return o;
    }
    return new Outcome(RunUndisturbed());
  }();
  return *o;
}

// The ctest fixture (FIXTURES_SETUP): writes the undisturbed run to $PRUNESVC_CRASH_REFERENCE.
TEST(E2eCrashReference, DISABLED_WriteUndisturbedRun) {
  const std::string dir = ReferenceDir();
  const Outcome o = RunUndisturbed();
  ASSERT_FALSE(o.events.empty());
  ASSERT_FALSE(o.policy_json.empty());
  const std::string tmp = dir + ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  std::ofstream(tmp + "/events.txt") << absl::StrJoin(o.events, "\n") << "\n";
  std::ofstream(tmp + "/policy.json") << o.policy_json;
  std::ofstream(tmp + "/model.safetensors", std::ios::binary) << o.weights;
  fs::remove_all(dir);
  fs::rename(tmp, dir);
}

// The stub clients use now; null while no scheduler serves.
class Endpoint {
 public:
  void Set(int port) {
    auto stub = port == 0
                    ? nullptr
                    : pb::PruningService::NewStub(grpc::CreateChannel(
                          absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
    absl::MutexLock lock(&mu_);
    stub_ = std::move(stub);
  }
  std::shared_ptr<pb::PruningService::Stub> Get() {
    absl::MutexLock lock(&mu_);
    return stub_;
  }

 private:
  absl::Mutex mu_;
  std::shared_ptr<pb::PruningService::Stub> stub_;
};

// Checks a finished job against the undisturbed run; `watched` is what a client watching across
// the disturbance saw.
void ExpectSameAsUndisturbed(Service& s, const std::string& job_id,
                             const std::vector<pb::JobEvent>& watched, const std::string& name) {
  const Outcome& ref = Undisturbed();
  ASSERT_FALSE(ref.events.empty());
  ASSERT_FALSE(ref.policy_json.empty());
  const std::vector<pb::JobEvent> stored = testing::Watch(s, job_id);
  ASSERT_FALSE(stored.empty());
  ASSERT_EQ(stored.back().state_changed().to(), pb::SUCCEEDED) << s.process->Log();
  std::vector<std::string> got;
  for (size_t i = 0; i < stored.size(); ++i) {
    EXPECT_EQ(stored[i].sequence(), int64_t(i + 1)) << name << ": a gap or a renumbering";
    got.push_back(Normalized(stored[i]));
  }
  EXPECT_EQ(absl::StrJoin(got, "\n"), absl::StrJoin(ref.events, "\n"))
      << name << ": the event log differs from the undisturbed run's";
  ASSERT_EQ(watched.size(), stored.size()) << name << ": the watcher lost or doubled events";
  for (size_t i = 0; i < stored.size(); ++i) {
    EXPECT_EQ(watched[i].SerializeAsString(), stored[i].SerializeAsString()) << name << " " << i;
  }
  const std::string dir = s.dir + "/artifact-" + job_id;
  ASSERT_TRUE(testing::FetchInto(s, stored, dir).ok());
  EXPECT_EQ(ReadFile(dir + "/policy.json"), ref.policy_json) << name;
  EXPECT_EQ(ReadFile(dir + "/model/model.safetensors"), ref.weights) << name;
}

std::vector<std::string> FaultEnv(const std::string& dir, const std::string& faults) {
  fs::create_directories(dir + "/faults");
  return {"PRUNESVC_FAULT=" + faults, "PRUNESVC_FAULT_DIR=" + dir + "/faults"};
}

bool Fired(const std::string& dir, const std::string& point) {
  return fs::exists(dir + "/faults/" + point);
}

// The scheduler dies at `fault` (kill: SIGKILL; term: SIGTERM, after which it must drain and exit
// 0) while a search and an acknowledged UNIFORM job are in it; a restart on the same state dir
// finishes both, the search exactly as if nothing had happened.
void SchedulerDiesAndRestarts(const std::string& name, const std::string& fault) {
  const std::string dir = TheData().work + "/" + name;
  ServiceOptions options;
  options.state_dir = dir + "/state";
  options.env = FaultEnv(dir, fault);
  // One job at a time: the UNIFORM job waits QUEUED behind the search (the fault is the search's,
  // and a queued submit is the one a crash could lose).
  options.extra_args = {"--max-running-jobs=1"};
  Service first = StartService(name, options);
  ASSERT_NE(first.stub, nullptr) << (first.process ? first.process->Log() : "");
  auto dataset = testing::Upload(first, TheData().search);
  auto eval = testing::Upload(first, TheData().eval);
  ASSERT_TRUE(dataset.ok() && eval.ok());
  auto search = testing::Submit(first, SearchSpec(*dataset, *eval));
  auto uniform = testing::Submit(first, UniformSpec(*dataset));
  ASSERT_TRUE(search.ok() && uniform.ok());  // both acknowledged

  Endpoint endpoint;
  endpoint.Set(first.port);
  std::vector<pb::JobEvent> watched;
  testing::WatchStopper stopper;
  std::thread watcher([&] {
    watched = testing::WatchFollowing([&] { return endpoint.Get(); }, search->job_id(), &stopper);
  });
  absl::Cleanup join = [&] {  // a failed assertion below returns early
    stopper.Stop();
    if (watcher.joinable()) watcher.join();
  };
  // The fault ends the first scheduler by itself.
  absl::StatusOr<int> status = first.process->Wait(absl::Seconds(300));
  endpoint.Set(0);
  ASSERT_TRUE(status.ok()) << name << ": the fault did not fire\n" << first.process->Log();
  const std::string point = fault.substr(0, fault.find_first_of("@:"));
  EXPECT_TRUE(Fired(dir, point)) << name;
  if (fault.find(":term") != std::string::npos) {
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
        << name << ": SIGTERM must drain and exit 0\n"
        << first.process->Log();
  } else {
    EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL) << name;
  }

  Service second = StartService(name, options);  // same state dir, same (now spent) fault
  ASSERT_NE(second.stub, nullptr) << (second.process ? second.process->Log() : "");
  endpoint.Set(second.port);
  watcher.join();  // it ends by itself at the terminal event
  // Every scenario's fault comes after generation 0's checkpoint: the search resumed from one.
  EXPECT_NE(second.process->Log().find("resumes its search at generation"), std::string::npos)
      << name;
  ExpectSameAsUndisturbed(second, search->job_id(), watched, name);
  const std::vector<pb::JobEvent> u = testing::Watch(second, uniform->job_id());
  ASSERT_FALSE(u.empty()) << name << ": the acknowledged UNIFORM job was lost";
  EXPECT_EQ(u.back().state_changed().to(), pb::SUCCEEDED) << name;
}

TEST(E2eCrashTest, SchedulerKilledDuringAnEvaluationBatch) {
  SchedulerDiesAndRestarts("sched-evaluate", "scheduler.evaluate@5");
}
TEST(E2eCrashTest, SchedulerKilledRightAfterACheckpoint) {
  SchedulerDiesAndRestarts("sched-checkpoint", "scheduler.checkpoint@2");
}
TEST(E2eCrashTest, SchedulerKilledDuringProjectorTraining) {
  SchedulerDiesAndRestarts("sched-projector", "scheduler.projector@1");
}
TEST(E2eCrashTest, SchedulerKilledDuringFinalize) {
  SchedulerDiesAndRestarts("sched-finalize", "scheduler.finalize@1");
}
TEST(E2eCrashTest, SchedulerSigtermDrainsExitsZeroAndResumes) {
  SchedulerDiesAndRestarts("sched-term", "scheduler.evaluate@5:term");
}

// Workers die (or hang, or are asked to stop) at `faults` under one scheduler; the job still ends
// as undisturbed. `retried`: whether steps had to move to another worker (a SIGTERMed worker
// drains instead: its step finishes where it runs).
void WorkersFail(const std::string& name, const std::string& faults,
                 const std::vector<std::string>& extra_args = {}, bool retried = true) {
  const std::string dir = TheData().work + "/" + name;
  ServiceOptions options;
  options.env = FaultEnv(dir, faults);
  options.extra_args = extra_args;
  Service s = StartService(name, options);
  ASSERT_NE(s.stub, nullptr) << (s.process ? s.process->Log() : "");
  auto dataset = testing::Upload(s, TheData().search);
  auto eval = testing::Upload(s, TheData().eval);
  ASSERT_TRUE(dataset.ok() && eval.ok());
  auto job = testing::Submit(s, SearchSpec(*dataset, *eval));
  ASSERT_TRUE(job.ok());
  const std::vector<pb::JobEvent> watched = testing::Watch(s, job->job_id());
  ExpectSameAsUndisturbed(s, job->job_id(), watched, name);
  for (const std::string& f : std::vector<std::string>{absl::StrSplit(faults, ',')}) {
    EXPECT_TRUE(Fired(dir, f.substr(0, f.find_first_of("@:")))) << name << " " << f;
  }
  if (retried) {
    EXPECT_GE(testing::Metric(s.metrics_port, "prunesvc_step_retries_total"), 1) << name;
  } else {
    EXPECT_EQ(testing::Metric(s.metrics_port, "prunesvc_step_retries_total"), 0) << name;
    EXPECT_NE(s.process->Log().find("drained: no step is running"), std::string::npos)
        << name << "\n"
        << s.process->Log();
  }
}

TEST(E2eCrashTest, WorkersKilledInEvaluationTrainingAndFinalize) {
  WorkersFail("workers-kill", "worker.evaluate@2,worker.train@1,worker.finalize@1");
}

// Scale-down (issue 19): SIGTERM mid-step drains the worker — heartbeats say DRAINING, the running
// step finishes and is kept, then the worker exits — so no step is retried.
TEST(E2eCrashTest, WorkerSigtermDrainsAndLosesNoStep) {
  WorkersFail("worker-term", "worker.evaluate@1:term", {}, /*retried=*/false);
}

// A worker that hangs mid-batch (SIGSTOP: its connection stays open, nothing answers): the batch
// times out after --evaluate-deadline and runs on the other worker.
TEST(E2eCrashTest, HungWorkerTimesOutAndItsBatchMovesOn) {
  const std::string name = "worker-stop";
  WorkersFail(name, "worker.evaluate@2:stop", {"--evaluate-deadline=20s"});
  // Release the stopped process (a stopped process ignores the SIGTERM its parent's death sends).
  const std::string log = ReadFile(TheData().work + "/" + name + "/scheduler.log");
  const size_t at = log.find("PRUNESVC_FAULT: SIGSTOP at point worker.evaluate (pid ");
  ASSERT_NE(at, std::string::npos) << log;
  int pid = 0;
  const size_t begin = log.find("(pid ", at) + 5;
  ASSERT_TRUE(absl::SimpleAtoi(log.substr(begin, log.find(')', begin) - begin), &pid));
  kill(pid_t(pid), SIGKILL);
}

// ---- the state directory full or read-only ----------------------------------------------------

// A scheduler (no workers) on a state dir that the test can fill or make read-only; the mounts
// are undone on destruction. Needs root (CI runs as root); skipped with the reason otherwise.
class StorageFailureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TheData().work + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    state_ = dir_ + "/state";
    fs::create_directories(state_);
  }
  void TearDown() override {
    service_.process.reset();  // SIGKILL before the mounts go
    for (auto it = mounts_.rbegin(); it != mounts_.rend(); ++it) {
      testing::RunShell("umount -l " + *it + " 2>/dev/null");
    }
  }
  bool Mount(const std::string& command, const std::string& target) {
    if (testing::RunShell(command + " 2>/dev/null") != 0) return false;
    mounts_.push_back(target);
    return true;
  }
  void Start() {
    ServiceOptions o;
    o.workers = 0;
    o.state_dir = state_;
    service_ = StartService(
        std::string("storage-") + ::testing::UnitTest::GetInstance()->current_test_info()->name(),
        o);
    ASSERT_NE(service_.stub, nullptr) << (service_.process ? service_.process->Log() : "");
  }
  // SubmitJob's status (code + message).
  grpc::Status SubmitStatus(const std::string& dataset, const std::string& request_id) {
    grpc::ClientContext ctx;
    testing::Deadline(ctx, 30);
    pb::SubmitJobRequest req;
    *req.mutable_spec() = JobSpecToProto(UniformSpec(dataset));
    req.mutable_spec()->set_request_id(request_id);
    pb::SubmitJobResponse resp;
    return service_.stub->SubmitJob(&ctx, req, &resp);
  }
  int CountJobs() {
    grpc::ClientContext ctx;
    testing::Deadline(ctx, 30);
    pb::ListJobsRequest req;
    req.set_page_size(100);
    pb::ListJobsResponse resp;
    if (!service_.stub->ListJobs(&ctx, req, &resp).ok()) return -1;
    return resp.jobs_size();
  }

  std::string dir_, state_;
  std::vector<std::string> mounts_;
  Service service_;
};

TEST_F(StorageFailureTest, FullStateDirRefusesWritesClearlyAndRecoversWhenSpaceReturns) {
  if (!Mount("mount -t tmpfs -o size=16m tmpfs " + state_, state_)) {
    GTEST_SKIP() << "cannot mount a tmpfs (needs root; CI runs as root)";
  }
  Start();
  auto dataset = testing::Upload(service_, TheData().search);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  ASSERT_TRUE(SubmitStatus(*dataset, "before").ok());
  // Fill the file system.
  testing::RunShell("dd if=/dev/zero of=" + state_ + "/filler bs=64k 2>/dev/null");
  // Writes fail with a clear error, however many are tried; reads keep working.
  int refused = 0;
  for (int i = 0; i < 20; ++i) {
    const grpc::Status st = SubmitStatus(*dataset, absl::StrCat("full-", i));
    if (st.ok()) continue;  // a write that still fit in pages SQLite had already
    ++refused;
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_NE(st.error_message().find("full"), std::string::npos) << st.error_message();
  }
  EXPECT_GT(refused, 0);
  std::printf("[storage full] %d of 20 submits refused while full\n", refused);
  const int listed = CountJobs();
  EXPECT_EQ(listed, 1 + 20 - refused) << "every acknowledged submit is listed, no other";
  auto upload = testing::Upload(service_, TheData().eval);
  EXPECT_FALSE(upload.ok());
  // Space returns: the same scheduler accepts writes again.
  fs::remove(state_ + "/filler");
  EXPECT_TRUE(SubmitStatus(*dataset, "after").ok());
  EXPECT_TRUE(testing::Upload(service_, TheData().eval).ok());
  EXPECT_EQ(CountJobs(), listed + 1);
  // And a restart opens the same, uncorrupted store.
  service_.process.reset();
  Start();
  EXPECT_EQ(CountJobs(), listed + 1);
  EXPECT_EQ(
      testing::RunShell("/usr/bin/python3 -c \"import sqlite3, sys; sys.exit(sqlite3.connect("
                        "sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0] != 'ok')\" " +
                        state_ + "/jobs.db"),
      0);
}

// Read-only, two ways. At start: the scheduler refuses, naming the directory. While running: a
// read-only bind mount over the state dir (chmod proves nothing as root; the kernel refuses to
// remount a mount read-only under open writers, so this is the way a running scheduler meets it)
// makes every new file fail — uploads are refused with a clear error and store nothing; the
// store's already-open database keeps working — and unmounting it brings uploads back.
TEST_F(StorageFailureTest, ReadOnlyStateDirIsAClearErrorAndRecoversWhenWritable) {
  const std::string ro = dir_ + "/ro";
  fs::create_directories(ro);
  if (!Mount("mount --bind " + ro + " " + ro + " && mount -o remount,bind,ro " + ro, ro)) {
    GTEST_SKIP() << "cannot bind-mount read-only (needs root; CI runs as root)";
  }
  {
    auto p = testing::TestProcess::Start({testing::BinDir() + "/prune-scheduler", "--port=0",
                                          "--metrics-port=-1", "--state-dir=" + ro},
                                         dir_ + "/ro.log");
    ASSERT_TRUE(p.ok());
    auto st = p->Wait(absl::Seconds(60));
    ASSERT_TRUE(st.ok());
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2);
    const std::string log = ReadFile(dir_ + "/ro.log");
    EXPECT_NE(log.find(ro), std::string::npos) << log;
    EXPECT_NE(log.find("Read-only file system"), std::string::npos) << log;
  }

  Start();
  auto dataset = testing::Upload(service_, TheData().search);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  ASSERT_TRUE(SubmitStatus(*dataset, "before").ok());
  ASSERT_TRUE(Mount(
      "mount --bind " + state_ + " " + state_ + " && mount -o remount,bind,ro " + state_, state_));
  auto upload = testing::Upload(service_, TheData().eval);
  ASSERT_FALSE(upload.ok());
  EXPECT_NE(std::string(upload.status().message()).find("read-only"), std::string::npos)
      << upload.status();
  EXPECT_TRUE(SubmitStatus(*dataset, "during").ok());  // the open database still writes
  ASSERT_EQ(testing::RunShell("umount " + state_), 0);
  mounts_.pop_back();
  EXPECT_TRUE(testing::Upload(service_, TheData().eval).ok());
  EXPECT_EQ(CountJobs(), 2);
}

}  // namespace
}  // namespace prunesvc

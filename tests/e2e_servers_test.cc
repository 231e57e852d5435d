// End-to-end: the real prune-scheduler and prune-worker binaries on loopback. Health, worker
// registration, /metrics on both, --local-workers respawn after SIGKILL, clean SIGTERM
// shutdown (no orphaned workers), state-dir locking, exclusive ports, prunectl's exit codes.
#include <signal.h>
#include <sys/wait.h>

#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/process_harness.h"

namespace prunesvc::testing {
namespace {

using client::Client;
using client::ServingStatus;

struct Scheduler {
  TestProcess process;
  int port;
  int metrics_port;
  std::string dir;
};

Scheduler StartScheduler(int local_workers, const std::string& dir) {
  std::string ready = dir + "/scheduler.ready";
  auto p = TestProcess::Start(
      {BinDir() + "/prune-scheduler", "--host=127.0.0.1", "--port=0", "--metrics-port=0",
       "--state-dir=" + dir + "/state", absl::StrCat("--local-workers=", local_workers),
       "--worker-threads=1", "--ready-file=" + ready},
      dir + "/scheduler.log");
  EXPECT_TRUE(p.ok()) << p.status();
  auto j = WaitForReadyFile(ready, absl::Seconds(30));
  EXPECT_TRUE(j.ok()) << j.status() << "\n" << p->Log();
  int port = j.ok() ? (*j)["port"].get<int>() : 0;
  int mport = j.ok() ? (*j)["metrics_port"].get<int>() : 0;
  return Scheduler{std::move(*p), port, mport, dir};
}

std::vector<prune::v1::WorkerInfo> IdleWorkers(Client& c) {
  std::vector<prune::v1::WorkerInfo> idle;
  auto workers = c.ListWorkers();
  if (!workers.ok()) return idle;
  for (const auto& w : *workers) {
    if (w.state() == prune::v1::WORKER_IDLE) idle.push_back(w);
  }
  return idle;
}

TEST(E2eServersTest, LocalWorkerRegistersServesHealthAndMetrics) {
  Scheduler s = StartScheduler(1, MakeTempDir("e2e-"));
  Client sched(absl::StrCat("127.0.0.1:", s.port));
  EXPECT_EQ(*sched.Health(), ServingStatus::kServing);
  EXPECT_EQ(*sched.Health("prune.v1.PruningService"), ServingStatus::kServing);

  ASSERT_TRUE(WaitUntil([&] { return IdleWorkers(sched).size() == 1; }, absl::Seconds(20)))
      << s.process.Log();
  prune::v1::WorkerInfo w = IdleWorkers(sched)[0];
  EXPECT_EQ(w.device(), "cpu");
  EXPECT_EQ(w.threads(), 1);
  EXPECT_GT(w.pid(), 0);
  EXPECT_GT(w.metrics_port(), 0);

  Client worker(w.address());
  EXPECT_EQ(*worker.Health(), ServingStatus::kServing);
  EXPECT_EQ(*worker.Health("prune.v1.PruningWorker"), ServingStatus::kServing);

  std::string sched_metrics = HttpGet(s.metrics_port, "/metrics");
  EXPECT_NE(sched_metrics.find("prunesvc_workers{state=\"idle\"} 1"), std::string::npos)
      << sched_metrics;
  EXPECT_NE(sched_metrics.find("process_resident_memory_bytes"), std::string::npos);
  std::string worker_metrics = HttpGet(w.metrics_port(), "/metrics");
  EXPECT_NE(worker_metrics.find("process_open_fds"), std::string::npos) << worker_metrics;

  // SIGTERM stops the scheduler and its children; nothing is left behind.
  auto status = s.process.StopWith(SIGTERM);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
  EXPECT_TRUE(WaitUntil([&] { return !ProcessAlive(w.pid()); }, absl::Seconds(10)));
}

TEST(E2eServersTest, KilledLocalWorkerIsRespawned) {
  Scheduler s = StartScheduler(1, MakeTempDir("e2e-"));
  Client sched(absl::StrCat("127.0.0.1:", s.port));
  ASSERT_TRUE(WaitUntil([&] { return IdleWorkers(sched).size() == 1; }, absl::Seconds(20)));
  pid_t first = IdleWorkers(sched)[0].pid();
  ASSERT_EQ(kill(first, SIGKILL), 0);

  ASSERT_TRUE(WaitUntil(
      [&] {
        auto idle = IdleWorkers(sched);
        return idle.size() == 1 && idle[0].pid() != first;
      },
      absl::Seconds(30)))
      << s.process.Log();
  Client worker(IdleWorkers(sched)[0].address());
  EXPECT_EQ(*worker.Health(), ServingStatus::kServing);
  EXPECT_NE(HttpGet(s.metrics_port, "/metrics").find("prunesvc_local_worker_restarts_total 1"),
            std::string::npos);
  EXPECT_NE(s.process.Log().find("killed by signal 9"), std::string::npos);
}

TEST(E2eServersTest, StandaloneWorkerJoinsAndStateDirIsExclusive) {
  std::string dir = MakeTempDir("e2e-");
  Scheduler s = StartScheduler(0, dir);
  Client sched(absl::StrCat("127.0.0.1:", s.port));
  EXPECT_TRUE(sched.ListWorkers()->empty());

  auto w = TestProcess::Start(
      {BinDir() + "/prune-worker", "--host=127.0.0.1", "--port=0", "--metrics-port=-1",
       "--threads=1", absl::StrCat("--scheduler=127.0.0.1:", s.port)},
      dir + "/worker.log");
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(WaitUntil([&] { return IdleWorkers(sched).size() == 1; }, absl::Seconds(20)))
      << w->Log();
  EXPECT_EQ(IdleWorkers(sched)[0].pid(), w->pid());

  // The worker goes away: the scheduler marks it LOST once heartbeats stop.
  ASSERT_TRUE(w->StopWith(SIGKILL).ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto all = sched.ListWorkers();
        return all.ok() && all->size() == 1 && (*all)[0].state() == prune::v1::WORKER_LOST;
      },
      absl::Seconds(20)));

  // A second scheduler on the same state dir refuses to start and says why.
  auto second = TestProcess::Start({BinDir() + "/prune-scheduler", "--port=0", "--metrics-port=-1",
                                    "--state-dir=" + dir + "/state"},
                                   dir + "/second.log");
  ASSERT_TRUE(second.ok());
  auto status = second->Wait(absl::Seconds(20));
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(WEXITSTATUS(*status), 2);
  EXPECT_NE(second->Log().find("in use by another prune-scheduler"), std::string::npos)
      << second->Log();
}

// Starts `argv` and expects it to exit 2 on its own with `needle` in its log.
void ExpectRefusedWith(const std::vector<std::string>& argv, const std::string& log,
                       const std::string& needle) {
  auto p = TestProcess::Start(argv, log);
  ASSERT_TRUE(p.ok()) << p.status();
  auto status = p->Wait(absl::Seconds(30));
  ASSERT_TRUE(status.ok()) << "did not exit: " << argv[0] << "\n" << p->Log();
  EXPECT_EQ(WEXITSTATUS(*status), 2) << p->Log();
  EXPECT_NE(p->Log().find(needle), std::string::npos) << p->Log();
}

// gRPC and cpp-httplib set SO_REUSEPORT by default, with which a second server on a taken port
// started silently and took part of the calls (issue 15). Every port we listen on is exclusive.
TEST(E2eServersTest, TakenPortsAreErrorsThatNameThem) {
  std::string dir = MakeTempDir("e2e-");
  Scheduler s = StartScheduler(0, dir);
  const std::string worker_ready = dir + "/worker.ready";
  auto w = TestProcess::Start({BinDir() + "/prune-worker", "--host=127.0.0.1", "--port=0",
                               "--metrics-port=0", "--threads=1", "--ready-file=" + worker_ready},
                              dir + "/worker.log");
  ASSERT_TRUE(w.ok());
  auto wj = WaitForReadyFile(worker_ready, absl::Seconds(30));
  ASSERT_TRUE(wj.ok()) << wj.status() << w->Log();
  const int wport = (*wj)["port"].get<int>(), wmetrics = (*wj)["metrics_port"].get<int>();

  const std::string sched = BinDir() + "/prune-scheduler", worker = BinDir() + "/prune-worker";
  ExpectRefusedWith({sched, "--host=127.0.0.1", absl::StrCat("--port=", s.port),
                     "--metrics-port=-1", "--state-dir=" + dir + "/state2"},
                    dir + "/s2.log", absl::StrCat("cannot listen on 127.0.0.1:", s.port));
  ExpectRefusedWith(
      {sched, "--host=127.0.0.1", "--port=0", absl::StrCat("--metrics-port=", s.metrics_port),
       "--state-dir=" + dir + "/state3"},
      dir + "/s3.log", absl::StrCat(s.metrics_port));
  ExpectRefusedWith({worker, "--host=127.0.0.1", absl::StrCat("--port=", wport),
                     "--metrics-port=-1", "--threads=1"},
                    dir + "/w2.log", absl::StrCat("cannot listen on 127.0.0.1:", wport));
  ExpectRefusedWith({worker, "--host=127.0.0.1", "--port=0",
                     absl::StrCat("--metrics-port=", wmetrics), "--threads=1"},
                    dir + "/w3.log", absl::StrCat("cannot serve /metrics on 127.0.0.1:", wmetrics));

  // The first ones still serve every call.
  Client c(absl::StrCat("127.0.0.1:", s.port));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(*c.Health(), ServingStatus::kServing);
  EXPECT_NE(HttpGet(wmetrics, "/metrics").find("prunesvc_"), std::string::npos);
}

TEST(E2eServersTest, EvaluationCacheBoundsOutOfRangeAreRefused) {
  std::string dir = MakeTempDir("e2e-");
  const std::string sched = BinDir() + "/prune-scheduler";
  ExpectRefusedWith({sched, "--host=127.0.0.1", "--port=0", "--metrics-port=-1",
                     "--state-dir=" + dir + "/a", "--evaluation-cache-entries=0"},
                    dir + "/a.log", "--evaluation-cache-entries must be ≥ 1");
  ExpectRefusedWith({sched, "--host=127.0.0.1", "--port=0", "--metrics-port=-1",
                     "--state-dir=" + dir + "/b", "--evaluation-cache-memory-mib=-1"},
                    dir + "/b.log", "--evaluation-cache-memory-mib ≥ 0");
}

TEST(E2eServersTest, PrunectlHealthExitCodes) {
  std::string dir = MakeTempDir("e2e-");
  Scheduler s = StartScheduler(0, dir);
  auto up = TestProcess::Start(
      {BinDir() + "/prunectl", "health", absl::StrCat("--addr=127.0.0.1:", s.port)},
      dir + "/up.out");
  ASSERT_TRUE(up.ok());
  auto rc = up->Wait(absl::Seconds(20));
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(WEXITSTATUS(*rc), 0);
  EXPECT_EQ(up->Log(), "SERVING\n");
  // --json prints one JSON object (issue 15: it printed plain text).
  auto up_json = TestProcess::Start(
      {BinDir() + "/prunectl", "health", "--json", absl::StrCat("--addr=127.0.0.1:", s.port)},
      dir + "/up-json.out");
  ASSERT_TRUE(up_json.ok());
  rc = up_json->Wait(absl::Seconds(20));
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(WEXITSTATUS(*rc), 0);
  const nlohmann::json health = nlohmann::json::parse(up_json->Log(), nullptr, false);
  ASSERT_TRUE(health.is_object()) << up_json->Log();
  EXPECT_EQ(health["status"], "SERVING");
  EXPECT_EQ(health["address"], absl::StrCat("127.0.0.1:", s.port));

  ASSERT_TRUE(s.process.StopWith(SIGTERM).ok());
  auto down = TestProcess::Start(
      {BinDir() + "/prunectl", "health", "--timeout=1", absl::StrCat("--addr=127.0.0.1:", s.port)},
      dir + "/down.out");
  ASSERT_TRUE(down.ok());
  rc = down->Wait(absl::Seconds(20));
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(WEXITSTATUS(*rc), 1);
  EXPECT_NE(down->Log().find("NOT_SERVING"), std::string::npos);

  auto bad = TestProcess::Start({BinDir() + "/prunectl", "frobnicate"}, dir + "/bad.out");
  rc = bad->Wait(absl::Seconds(20));
  EXPECT_EQ(WEXITSTATUS(*rc), 2);
  EXPECT_NE(bad->Log().find("unknown command"), std::string::npos);
}

// prunectl's storage commands (issue 16) against a real scheduler: datasets, delete,
// delete-dataset, with the refusals' exit code 2 and messages.
TEST(E2eServersTest, PrunectlDeletesFinishedJobsAndUnusedDatasets) {
  const std::string dir = MakeTempDir("e2e-");
  const std::string ready = dir + "/ready.json";
  auto p = TestProcess::Start(
      {BinDir() + "/prune-scheduler", "--host=127.0.0.1", "--port=0", "--metrics-port=-1",
       "--state-dir=" + dir + "/state", "--ready-file=" + ready,
       "--allowed-model-roots=" + SourceDir() + "/models"},
      dir + "/scheduler.log");
  ASSERT_TRUE(p.ok());
  auto j = WaitForReadyFile(ready, absl::Seconds(30));
  ASSERT_TRUE(j.ok()) << p->Log();
  const std::string addr = absl::StrCat("--addr=127.0.0.1:", (*j)["port"].get<int>());
  int n = 0;
  // Runs prunectl ARGS; its exit code and output.
  auto run = [&](std::vector<std::string> args) -> std::pair<int, std::string> {
    args.insert(args.begin(), BinDir() + "/prunectl");
    args.push_back(addr);
    const std::string log = absl::StrCat(dir, "/prunectl-", n++, ".out");
    auto proc = TestProcess::Start(args, log);
    if (!proc.ok()) return {-1, ""};
    auto rc = proc->Wait(absl::Seconds(60));
    return {rc.ok() ? WEXITSTATUS(*rc) : -1, proc->Log()};
  };
  ASSERT_EQ(RunShell(absl::StrCat(BinDir(), "/shapes-vqa --seed 9 --split search --count 2 --out ",
                                  dir, "/data >/dev/null 2>&1")),
            0);
  auto [rc, out] = run({"upload-dataset", dir + "/data", "--name=mine"});
  ASSERT_EQ(rc, 0) << out;
  const size_t at = out.find("sha256:");
  ASSERT_NE(at, std::string::npos) << out;
  const std::string dataset = out.substr(at, 71);
  std::tie(rc, out) = run({"datasets", "--json"});
  ASSERT_EQ(rc, 0) << out;
  nlohmann::json listed = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(listed.is_object()) << out;
  ASSERT_EQ(listed["datasets"].size(), 1u) << out;
  EXPECT_EQ(listed["datasets"][0]["datasetId"], dataset);
  EXPECT_EQ(listed["datasets"][0]["name"], "mine");
  std::tie(rc, out) = run({"datasets"});
  EXPECT_EQ(rc, 0);
  EXPECT_NE(out.find("mine"), std::string::npos) << out;

  std::tie(rc, out) = run({"submit", "--model=file://" + SourceDir() + "/models/tiny-llava-shapes",
                           "--dataset=" + dataset, "--flops-budget=0.5"});
  ASSERT_EQ(rc, 0) << out;
  const size_t jat = out.find("job-");
  ASSERT_NE(jat, std::string::npos) << out;
  const std::string job = out.substr(jat, 20);

  std::tie(rc, out) = run({"delete", job});
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("cancel it first"), std::string::npos) << out;
  std::tie(rc, out) = run({"delete-dataset", dataset});
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find(job), std::string::npos) << out;

  std::tie(rc, out) = run({"cancel", job});
  ASSERT_EQ(rc, 0) << out;
  std::tie(rc, out) = run({"delete", job});
  EXPECT_EQ(rc, 0) << out;
  std::tie(rc, out) = run({"get", job});
  EXPECT_EQ(rc, 2) << out;  // NOT_FOUND
  std::tie(rc, out) = run({"delete-dataset", dataset});
  EXPECT_EQ(rc, 0) << out;
  std::tie(rc, out) = run({"datasets", "--json"});
  EXPECT_EQ(rc, 0);
  listed = nlohmann::json::parse(out, nullptr, false);
  EXPECT_TRUE(listed.is_object() && listed.value("datasets", nlohmann::json::array()).empty())
      << out;
}

}  // namespace
}  // namespace prunesvc::testing

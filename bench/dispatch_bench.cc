// dispatch-bench (issue 20, figures 4 and 5): the scheduler with many workers that speak the real
// gRPC protocol but whose steps cost a simulated, fixed time, so the 2 cores are not the limit.
//
// A real prune-scheduler process (no local workers) and N in-process workers, each a real
// WorkerServer (its own gRPC server, Registrar and heartbeats) whose StepExecutor is simulated:
//  - Prepare runs once per job for real (a StepRunner on the bundled model: the scheduler builds
//    its policy space from it) and is remembered for the job;
//  - EvaluatePolicies sleeps cost × policies × (slice samples / n), then answers every policy with
//    deterministic losses (a function of its ratios; per-sample losses included, so slices
//    combine) — cost 0 = at once;
//  - Finalize is not simulated (the job ends FAILED after its search; only the search is timed).
// Per round: W workers, J jobs of population P and G generations submitted at once. Each W first
// runs the same jobs once on another sample set, unmeasured (--warmup=false skips it): the
// figures are a warm scheduler's — a service runs for days — not those of its first seconds
// (first touches of a growing heap, each channel's first call); the warm-up's other samples keep
// its evaluations out of the measured round's cache lookups.
//  dispatches/s  EvaluatePolicies RPCs answered / the span from the first request's arrival to
//                the last answer, over all workers;
//  policies/s    policies those RPCs answered / the same span (a dispatch carries a chunk of a
//                generation's policies: fewer idle workers, larger chunks, fewer dispatches);
//  latency/step  the scheduler's mean prunesvc_step_seconds{step="evaluate"} minus the simulated
//                cost of the mean step: what the scheduler and the RPC add to each step;
//  efficiency    (simulated work / W) / that span: 1.0 = every worker busy all the time.
//  sched µs/disp the scheduler's CPU time (its process_cpu_seconds_total) over the round — job
//                submissions, Prepare steps and commits included — per dispatch: on this machine
//                the scheduler shares 2 cores with the W fake workers, so this, not the rate, says
//                what one scheduler core could sustain with its workers elsewhere (1 / it).
//  workers µs/disp  this process's CPU time from the round's first arrival to its last answer —
//                the W workers' gRPC servers and simulated executors (and the bench's polling of
//                the jobs) — per dispatch: the other side of each call, on the same 2 cores.
//
// Under each row: how many policies the evaluation cache across jobs answered
// (prunesvc_evaluation_cache_total; jobs differ in their seeds, so they meet some of the same
// policies). --evaluation-cache=false turns it off. --budgets=0.7,0.5,0.35 gives job j the budget
// budgets[j mod 3] (a budget grid); --resubmit=true then submits the same jobs again on the same
// scheduler and says how many policies were dispatched in the first round and in the second.
// --direct=true (the default with --cost-ms=0) then calls the same workers straight from this
// process with the scheduler's own gRPC client, one caller per worker and no scheduler between
// (DirectCalls below): the rate and round-trip latency gRPC and the workers' servers alone reach
// on this machine, and the scheduler's rate as a fraction of it.
// --trace=true also prints each wave of dispatches (cut wherever none is in flight): its first and
// last arrival at the workers and first and last answer, in ms from the round's first arrival.
//
// Usage: dispatch-bench [--workers=1,8,64] [--jobs=8] [--population=32] [--generations=4]
//                       [--cost-ms=0] [--samples=64] [--trace=false] [--budgets=0.5]
//                       [--resubmit=false] [--evaluation-cache=true|false] [--warmup=true]
//                       [--direct=true|false]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/job_spec.h"
#include "common/malloc_tuning.h"
#include "common/status_macros.h"
#include "common/thread_cache.h"
#include "server/worker_client.h"
#include "spdlog/spdlog.h"
#include "tests/e2e_service.h"
#include "tests/process_harness.h"
#include "worker/step_runner.h"
#include "worker/worker_server.h"

namespace prunesvc {
namespace {

namespace pb = ::prune::v1;
using Clock = std::chrono::steady_clock;

struct TraceSpan {
  Clock::time_point in, out;
  double work_seconds = 0;
  double emit_seconds = 0;  // streaming the answers back, after the simulated work
  bool operator<(const TraceSpan& o) const { return in < o.in; }
};

// User + system CPU seconds of this process so far.
double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// What every simulated worker of the process shares: the jobs' sample counts and the timings.
struct Shared {
  absl::Mutex mu;
  std::map<std::string, pb::PrepareResponse> prepared ABSL_GUARDED_BY(mu);  // by job id
  std::map<std::string, pb::PrepareResponse> prepared_by_spec ABSL_GUARDED_BY(mu);
  int64_t dispatches ABSL_GUARDED_BY(mu) = 0;
  int64_t policies ABSL_GUARDED_BY(mu) = 0;     // answered, over all dispatches
  double work_seconds ABSL_GUARDED_BY(mu) = 0;  // simulated
  Clock::time_point first, last;
  bool any ABSL_GUARDED_BY(mu) = false;
  // This process's CPU time (the W workers' servers and executors, and the bench's polling) at
  // the round's first arrival and at its last answer; -1 before.
  double first_cpu ABSL_GUARDED_BY(mu) = -1;
  double last_cpu ABSL_GUARDED_BY(mu) = -1;
  double cost_ms = 0;
  std::string cache_root;
  // --trace: every dispatch's arrival and answer times and simulated work, printed after the round.
  bool trace = false;
  std::vector<TraceSpan> spans ABSL_GUARDED_BY(mu);
  // The round's requests, in arrival order (the first 4,096), for the direct calls (--direct).
  std::vector<pb::EvaluatePoliciesRequest> requests ABSL_GUARDED_BY(mu);
  absl::Mutex real_mu;  // one real Prepare at a time
  // The real worker's StepRunner (blob cache and registry of the worker that created it; they
  // outlive the round's Prepares).
  std::unique_ptr<worker::StepRunner> real ABSL_GUARDED_BY(real_mu);

  void Reset() {
    absl::MutexLock l(&mu);
    dispatches = 0;
    policies = 0;
    spans.clear();
    requests.clear();
    first_cpu = last_cpu = -1;
    work_seconds = 0;
    any = false;
  }
};

class SimulatedExecutor : public worker::StepExecutor {
 public:
  SimulatedExecutor(Shared* shared, worker::BlobCache* blobs, prometheus::Registry* registry,
                    int id)
      : shared_(shared), blobs_(blobs), registry_(registry), id_(id) {}

  absl::StatusOr<pb::PrepareResponse> Prepare(const pb::PrepareRequest& req,
                                              const StopFn& stop) override {
    // Jobs that differ only in their seed prepare the same (the response depends on the model,
    // the samples and the spec's pruning choices): one real Prepare serves them all.
    pb::JobSpec key_spec = req.spec();
    key_spec.clear_seed();
    const std::string key = key_spec.SerializeAsString();
    // One real StepRunner for the process, one Prepare at a time: the first job of a spec pays,
    // the jobs that wait behind it find it cached.
    absl::MutexLock device(&shared_->real_mu);
    {
      absl::MutexLock l(&shared_->mu);
      auto it = shared_->prepared_by_spec.find(key);
      if (it != shared_->prepared_by_spec.end()) {
        shared_->prepared[req.header().job_id()] = it->second;
        return it->second;
      }
    }
    if (shared_->real == nullptr) {
      worker::StepRunnerOptions o;
      o.cache_dir = absl::StrCat(shared_->cache_root, "/w", id_);
      o.allowed_model_roots = {testing::SourceDir() + "/models"};
      o.max_prepared_jobs = 16;
      o.threads = 1;
      ASSIGN_OR_RETURN(shared_->real, worker::StepRunner::Create(o, blobs_, registry_));
    }
    ASSIGN_OR_RETURN(pb::PrepareResponse r, shared_->real->Prepare(req, stop));
    absl::MutexLock l(&shared_->mu);
    shared_->prepared[req.header().job_id()] = r;
    shared_->prepared_by_spec[key] = r;
    return r;
  }

  absl::Status EvaluatePolicies(const pb::EvaluatePoliciesRequest& req, const StopFn& stop,
                                const EmitFn& emit) override {
    const Clock::time_point arrived = Clock::now();
    {
      absl::MutexLock l(&shared_->mu);
      if (shared_->first_cpu < 0) shared_->first_cpu = ProcessCpuSeconds();
    }
    int n = 0;
    {
      absl::MutexLock l(&shared_->mu);
      auto it = shared_->prepared.find(req.header().job_id());
      if (it == shared_->prepared.end()) {
        return absl::FailedPreconditionError("dispatch-bench: evaluate before prepare");
      }
      n = it->second.num_samples();
    }
    const int begin = req.sample_end() == 0 ? 0 : req.sample_begin();
    const int end = req.sample_end() == 0 ? n : req.sample_end();
    const double seconds =
        shared_->cost_ms / 1e3 * req.policies_size() * double(end - begin) / double(n);
    if (seconds > 0) std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    if (stop()) return absl::CancelledError("stopped");
    const Clock::time_point worked = Clock::now();
    for (int i = 0; i < req.policies_size(); ++i) {
      const auto& ratios = req.policies(i).ratios();
      double loss = 0.3, mean_r = 0;
      for (int u = 0; u < ratios.size(); ++u) {
        loss += (1 + u % 3) * ratios[u] * ratios[u];
        mean_r += ratios[u] / ratios.size();
      }
      pb::EvaluatePoliciesResponse resp;
      resp.set_index(i);
      pb::PolicyEvaluation* e = resp.mutable_evaluation();
      double sum = 0;
      for (int s = begin; s < end; ++s) {
        const double l = loss * (0.5 + (s % 4) / 3.0);
        e->add_sample_losses(l);
        sum += l;
      }
      e->set_loss(sum / (end - begin));
      e->set_accuracy(std::exp(-loss));
      e->set_omega(1 - mean_r / 2);
      e->mutable_ratios()->CopyFrom(ratios);
      emit(resp);
    }
    const Clock::time_point done = Clock::now();
    absl::MutexLock l(&shared_->mu);
    if (!shared_->any || arrived < shared_->first) shared_->first = arrived;
    if (!shared_->any || done > shared_->last) {
      shared_->last = done;
      shared_->last_cpu = ProcessCpuSeconds();
    }
    shared_->any = true;
    ++shared_->dispatches;
    shared_->policies += req.policies_size();
    shared_->work_seconds += seconds;
    if (shared_->requests.size() < 4096) shared_->requests.push_back(req);
    if (shared_->trace) {
      shared_->spans.push_back(
          {arrived, done, seconds, std::chrono::duration<double>(done - worked).count()});
    }
    return absl::OkStatus();
  }

  absl::StatusOr<pb::TrainProjectorResponse> TrainProjector(const pb::TrainProjectorRequest&,
                                                            const StopFn&) override {
    return absl::UnimplementedError("dispatch-bench: projector training is not simulated");
  }
  absl::StatusOr<pb::FinalizeResponse> Finalize(const pb::FinalizeRequest&,
                                                const StopFn&) override {
    return absl::FailedPreconditionError("dispatch-bench: finalize is not simulated");
  }
  std::vector<std::string> ActiveSteps() override { return {}; }
  std::vector<std::string> CachedJobs() override { return {}; }
  void CancelSteps(const std::vector<std::string>&) override {}

 private:
  Shared* const shared_;
  worker::BlobCache* const blobs_;
  prometheus::Registry* const registry_;
  const int id_;
};

// --direct: the same workers called straight from this process, with the scheduler's own gRPC
// client (server::NewGrpcWorkerConnector, StartEvaluatePolicies), no scheduler in between: one
// caller per worker, each starting its next call as soon as the last one answered, `calls` calls in
// all, replaying the round's requests in turn (so the same mix of sizes as the scheduler sent).
// What gRPC and the workers' servers alone
// sustain on this machine at this many workers — the ceiling the scheduler's row is measured
// against — and the round-trip latency of a call with nothing else in the way.
struct DirectResult {
  int64_t calls = 0;
  double seconds = 0;
  double mean_latency = 0;
  int64_t failed = 0;
};
DirectResult DirectCalls(const std::vector<int>& ports,
                         const std::vector<pb::EvaluatePoliciesRequest>& requests, int calls) {
  std::unique_ptr<server::WorkerConnector> connector = server::NewGrpcWorkerConnector();
  std::vector<std::shared_ptr<server::WorkerClient>> clients;
  for (int port : ports) clients.push_back(connector->Connect(absl::StrCat("127.0.0.1:", port)));
  ThreadCache unused;  // the gRPC client never falls back to a blocking thread
  std::atomic<int64_t> next{0}, failed{0};
  std::atomic<double> latency_sum{0};
  std::vector<std::thread> callers;
  const Clock::time_point t0 = Clock::now();
  for (size_t k = 0; k < clients.size(); ++k) {
    callers.emplace_back([&, k] {
      for (int64_t i = next++; i < calls; i = next++) {
        pb::EvaluatePoliciesRequest req = requests[size_t(i) % requests.size()];
        req.mutable_header()->set_step_id(absl::StrCat("direct-", k, "-", i));
        absl::Notification done;
        absl::Status status;
        const Clock::time_point start = Clock::now();
        clients[k]->StartEvaluatePolicies(
            req, absl::Seconds(30), nullptr, [](const pb::EvaluatePoliciesResponse&) {},
            [&](absl::Status s) {
              status = std::move(s);
              done.Notify();
            },
            unused);
        done.WaitForNotification();
        const double l = std::chrono::duration<double>(Clock::now() - start).count();
        for (double v = latency_sum.load(); !latency_sum.compare_exchange_weak(v, v + l);) {
        }
        if (!status.ok()) ++failed;
      }
    });
  }
  for (std::thread& t : callers) t.join();
  DirectResult r;
  r.calls = calls;
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.mean_latency = latency_sum.load() / double(calls);
  r.failed = failed.load();
  return r;
}

// --trace: the dispatches in arrival order, cut into waves wherever no dispatch is in flight;
// per wave its first and last arrival and answer (ms from the round's first arrival), its
// simulated work per worker (the wave's share of the ideal), the most one dispatch carried, the
// most a dispatch ran over its work (a late wake-up or a slow answer) and the longest answer.
std::string TraceText(std::vector<TraceSpan> spans, Clock::time_point t0, int workers) {
  std::sort(spans.begin(), spans.end());
  auto ms = [&](Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(t - t0).count();
  };
  std::string out =
      "  wave  dispatches  first-in  last-in  first-out  last-out  work/worker  max work  "
      "max over  max answer (ms)";
  size_t i = 0;
  int wave = 0;
  while (i < spans.size()) {
    size_t j = i;
    Clock::time_point last_in = spans[i].in, first_out = spans[i].out, last_out = spans[i].out;
    double work = spans[i].work_seconds, max_work = spans[i].work_seconds;
    auto over = [&](const TraceSpan& s) {
      return std::chrono::duration<double>(s.out - s.in).count() - s.work_seconds;
    };
    double max_over = over(spans[i]), max_emit = spans[i].emit_seconds;
    while (j + 1 < spans.size() && spans[j + 1].in < last_out) {
      ++j;
      last_in = spans[j].in;
      first_out = std::min(first_out, spans[j].out);
      last_out = std::max(last_out, spans[j].out);
      work += spans[j].work_seconds;
      max_work = std::max(max_work, spans[j].work_seconds);
      max_over = std::max(max_over, over(spans[j]));
      max_emit = std::max(max_emit, spans[j].emit_seconds);
    }
    absl::StrAppendFormat(
        &out, "\n  %-5d %-11zu %-9.1f %-8.1f %-10.1f %-9.1f %-12.1f %-9.1f %-9.1f %.1f", wave++,
        j - i + 1, ms(spans[i].in), ms(last_in), ms(first_out), ms(last_out), work / workers * 1e3,
        max_work * 1e3, max_over * 1e3, max_emit * 1e3);
    i = j + 1;
  }
  return out;
}

std::string Flag(int argc, char** argv, const char* name, const char* def) {
  const std::string p = std::string("--") + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], p.c_str(), p.size()) == 0) return argv[i] + p.size();
  }
  return def;
}

int Main(int argc, char** argv) {
  int jobs = 0, population = 0, generations = 0, samples = 0;
  double cost_ms = 0;
  std::vector<int> worker_counts;
  for (absl::string_view w : absl::StrSplit(Flag(argc, argv, "workers", "1,8,64"), ',')) {
    int v = 0;
    if (!absl::SimpleAtoi(w, &v) || v < 1) {
      std::fprintf(stderr, "dispatch-bench: --workers takes counts ≥ 1, e.g. 1,8,64\n");
      return 2;
    }
    worker_counts.push_back(v);
  }
  if (!absl::SimpleAtoi(Flag(argc, argv, "jobs", "8"), &jobs) ||
      !absl::SimpleAtoi(Flag(argc, argv, "population", "32"), &population) ||
      !absl::SimpleAtoi(Flag(argc, argv, "generations", "4"), &generations) ||
      !absl::SimpleAtoi(Flag(argc, argv, "samples", "64"), &samples) ||
      !absl::SimpleAtod(Flag(argc, argv, "cost-ms", "0"), &cost_ms) || jobs < 1 || population < 2 ||
      samples < 1) {
    std::fprintf(stderr,
                 "usage: dispatch-bench [--workers=1,8,64] [--jobs=8] [--population=32] "
                 "[--generations=4] [--cost-ms=0] [--samples=64] [--trace=false] "
                 "[--budgets=0.5] [--resubmit=false] [--evaluation-cache=true|false] "
                 "[--warmup=true] [--direct=true when --cost-ms=0]\n");
    return 2;
  }
  Shared shared;
  shared.cost_ms = cost_ms;
  shared.trace = Flag(argc, argv, "trace", "false") == "true";
  const bool resubmit = Flag(argc, argv, "resubmit", "false") == "true";
  const bool warmup = Flag(argc, argv, "warmup", "true") == "true";
  // Direct calls beside the scheduler's round: by default only with workers answering at once.
  const bool direct = Flag(argc, argv, "direct", cost_ms == 0 ? "true" : "false") == "true";
  // The scheduler's --evaluation-cache when given (its default: on).
  const std::string evaluation_cache = Flag(argc, argv, "evaluation-cache", "");
  std::vector<double> budgets;
  for (absl::string_view b : absl::StrSplit(Flag(argc, argv, "budgets", "0.5"), ',')) {
    double v = 0;
    if (!absl::SimpleAtod(b, &v) || !(v > 0 && v <= 1)) {
      std::fprintf(stderr,
                   "dispatch-bench: --budgets takes FLOPs budgets in (0, 1], e.g. 0.7,0.5\n");
      return 2;
    }
    budgets.push_back(v);
  }
  const std::string work = testing::TheData().work + "/dispatch";
  shared.cache_root = work + "/cache";
  const std::string search = work + "/search";
  // The warm-up round's samples: another set, so that the measured round finds nothing of it in
  // the evaluation cache.
  const std::string warm_search = work + "/warm-search";
  for (const auto& [seed, dir] : {std::pair{1000, search}, std::pair{1001, warm_search}}) {
    if (testing::RunShell(absl::StrCat(testing::BinDir(), "/shapes-vqa --seed=", seed,
                                       " --split=search --count=", samples, " --out=", dir,
                                       " >/dev/null 2>&1")) != 0) {
      std::fprintf(stderr, "dispatch-bench: shapes-vqa failed\n");
      return 1;
    }
  }
  std::printf(
      "jobs %d x population %d x %d generations, %d samples, step cost %.1f ms per policy\n", jobs,
      population, generations, samples, cost_ms);
  std::printf("%-8s %-11s %-13s %-11s %-15s %-11s %-7s %-15s %s\n", "workers", "dispatches",
              "dispatches/s", "policies/s", "latency/step ms", "efficiency", "span s",
              "sched µs/disp", "workers µs/disp");
  for (int w : worker_counts) {
    testing::ServiceOptions so;
    so.workers = 0;
    so.extra_args = {"--max-running-jobs=64"};
    if (!evaluation_cache.empty())
      so.extra_args.push_back("--evaluation-cache=" + evaluation_cache);
    testing::Service svc = testing::StartService(absl::StrCat("dispatch-", w), so);
    if (svc.stub == nullptr) {
      std::fprintf(stderr, "dispatch-bench: the scheduler did not start\n");
      return 1;
    }
    std::vector<std::unique_ptr<worker::WorkerServer>> servers;
    for (int k = 0; k < w; ++k) {
      worker::WorkerOptions o;
      o.host = "127.0.0.1";
      o.port = 0;
      o.metrics_port = -1;
      o.scheduler = absl::StrCat("127.0.0.1:", svc.worker_port);
      o.cache_dir = absl::StrCat(work, "/w", w, "-", k);
      o.threads = 1;
      o.executor_factory = [&shared, k](worker::BlobCache* blobs, prometheus::Registry* registry)
          -> absl::StatusOr<std::unique_ptr<worker::StepExecutor>> {
        return std::make_unique<SimulatedExecutor>(&shared, blobs, registry, k);
      };
      auto server = worker::WorkerServer::Create(o);
      if (!server.ok()) {
        std::fprintf(stderr, "dispatch-bench: %s\n", server.status().ToString().c_str());
        return 1;
      }
      servers.push_back(std::move(*server));
    }
    const bool registered = testing::WaitUntil(
        [&] {
          grpc::ClientContext ctx;
          testing::Deadline(ctx, 5);
          pb::ListWorkersResponse r;
          return svc.stub->ListWorkers(&ctx, {}, &r).ok() && r.workers_size() >= w;
        },
        absl::Seconds(120));
    absl::StatusOr<std::string> dataset = testing::Upload(svc, search);
    absl::StatusOr<std::string> warm_dataset = testing::Upload(svc, warm_search);
    if (!registered || !dataset.ok() || !warm_dataset.ok()) {
      std::fprintf(stderr, "dispatch-bench: workers did not register or the upload failed\n");
      return 1;
    }
    // Submits every job (job j: seed j, budget budgets[j mod |budgets|]) and waits for them.
    auto run_jobs = [&](const std::string& dataset_id) -> absl::StatusOr<bool> {
      std::vector<std::string> ids;
      for (int j = 0; j < jobs; ++j) {
        JobSpec s;
        s.model_uri = "file://" + testing::SourceDir() + "/models/tiny-llava-shapes";
        s.dataset_id = dataset_id;
        s.flops_budget = budgets[size_t(j) % budgets.size()];
        s.population = population;
        s.parents = std::max(1, population / 4);
        s.generations = generations;
        s.seed = uint64_t(j);
        ASSIGN_OR_RETURN(pb::Job job, testing::Submit(svc, s));
        ids.push_back(job.job_id());
      }
      return testing::WaitUntil(
          [&] {
            for (const std::string& id : ids) {
              absl::StatusOr<pb::Job> j = testing::GetJob(svc, id);
              if (!j.ok()) return false;
              const pb::JobState st = j->state();
              if (st != pb::FAILED && st != pb::SUCCEEDED && st != pb::CANCELLED) return false;
            }
            return true;
          },
          absl::Seconds(1800));
    };
    auto cache_metric = [&](const char* result) {
      return std::max(0.0, testing::Metric(svc.metrics_port,
                                           absl::StrCat("prunesvc_evaluation_cache_total{result=\"",
                                                        result, "\"}")));
    };
    // The scheduler's process_cpu_seconds_total (common/process_metrics.h), -1 when absent.
    auto scheduler_cpu = [&] {
      return testing::Metric(svc.metrics_port, "process_cpu_seconds_total");
    };
    // A warm-up round first, the same jobs on other samples, not measured: a scheduler serves
    // jobs for days, so the figures are those of a warm process (its heap grown, its channels'
    // first calls made), not of its first seconds.
    if (warmup) {
      absl::StatusOr<bool> warm = run_jobs(*warm_dataset);
      if (!warm.ok() || !*warm) {
        std::fprintf(stderr, "dispatch-bench: the warm-up round failed: %s\n",
                     warm.ok() ? "its jobs did not finish" : warm.status().ToString().c_str());
        return 1;
      }
    }
    double sum_before =
               testing::Metric(svc.metrics_port, "prunesvc_step_seconds_sum{step=\"evaluate\"}"),
           count_before =
               testing::Metric(svc.metrics_port, "prunesvc_step_seconds_count{step=\"evaluate\"}");
    sum_before = std::max(0.0, sum_before);
    count_before = std::max(0.0, count_before);
    const double hits_before = cache_metric("hit"), misses_before = cache_metric("miss");
    double cpu_before = scheduler_cpu();
    shared.Reset();
    absl::StatusOr<bool> ran = run_jobs(*dataset);
    if (!ran.ok()) {
      std::fprintf(stderr, "dispatch-bench: %s\n", ran.status().ToString().c_str());
      return 1;
    }
    const bool done = *ran;
    const double hits = cache_metric("hit") - hits_before,
                 misses = cache_metric("miss") - misses_before;
    // The round's row, from the counters as the round left them (the scheduler's step histogram
    // less what earlier rounds put in it).
    auto round_row = [&](bool done) {
      const double sum =
          testing::Metric(svc.metrics_port, "prunesvc_step_seconds_sum{step=\"evaluate\"}") -
          sum_before;
      const double count =
          testing::Metric(svc.metrics_port, "prunesvc_step_seconds_count{step=\"evaluate\"}") -
          count_before;
      sum_before += sum;
      count_before += count;
      const double cpu_now = scheduler_cpu();
      const double cpu = cpu_before >= 0 && cpu_now >= 0 ? cpu_now - cpu_before : -1;
      cpu_before = cpu_now;
      absl::MutexLock l(&shared.mu);
      const double span = std::chrono::duration<double>(shared.last - shared.first).count();
      const double mean_step = count > 0 ? sum / count : 0;
      const double mean_cost = shared.dispatches > 0 ? shared.work_seconds / shared.dispatches : 0;
      const std::string cpu_per_dispatch =
          cpu >= 0 && shared.dispatches > 0 ? absl::StrFormat("%.0f", cpu / shared.dispatches * 1e6)
                                            : "?";
      const std::string workers_per_dispatch =
          shared.first_cpu >= 0 && shared.last_cpu >= 0 && shared.dispatches > 0
              ? absl::StrFormat("%.0f",
                                (shared.last_cpu - shared.first_cpu) / shared.dispatches * 1e6)
              : "?";
      std::string row =
          absl::StrFormat("%-8d %-11lld %-13.0f %-11.0f %-15.2f %-11.3f %-7.2f %-14s %s%s", w,
                          (long long)shared.dispatches, double(shared.dispatches) / span,
                          double(shared.policies) / span, (mean_step - mean_cost) * 1e3,
                          shared.work_seconds / w / span, span, cpu_per_dispatch,
                          workers_per_dispatch, done ? "" : "  (jobs did not finish)");
      if (shared.trace) row += "\n" + TraceText(shared.spans, shared.first, w);
      return row;
    };
    std::printf("%s\n", round_row(done).c_str());
    if (direct) {
      std::vector<pb::EvaluatePoliciesRequest> requests;
      double rate = 0;  // the scheduler's round
      {
        absl::MutexLock l(&shared.mu);
        requests = shared.requests;
        rate = double(shared.dispatches) /
               std::chrono::duration<double>(shared.last - shared.first).count();
      }
      if (!requests.empty()) {
        std::vector<int> ports;
        for (const auto& server : servers) ports.push_back(server->port());
        const DirectResult d = DirectCalls(ports, requests, std::max(1000, 20 * w));
        std::printf(
            "  direct calls, no scheduler (the round's %zu requests again): %.0f/s, %.2f ms per "
            "call%s; the scheduler's rate is %.2f of it\n",
            requests.size(), double(d.calls) / d.seconds, d.mean_latency * 1e3,
            d.failed > 0 ? absl::StrFormat(" (%lld failed)", (long long)d.failed).c_str() : "",
            rate / (double(d.calls) / d.seconds));
      }
    }
    int64_t first_policies = 0;
    {
      absl::MutexLock l(&shared.mu);
      first_policies = shared.policies;
    }
    if (hits + misses > 0) {
      std::printf("  evaluation cache across jobs%s: %.0f hits of %.0f lookups\n",
                  resubmit ? ", first round" : "", hits, hits + misses);
    }
    if (resubmit) {  // the same jobs again: what the evaluation cache across jobs saves
      shared.Reset();
      absl::StatusOr<bool> again = run_jobs(*dataset);
      if (shared.policies > 0) {  // the same round on warm channels (the cache off: a real one)
        std::printf("%s  (resubmitted)\n", round_row(again.ok() && *again).c_str());
      }
      absl::MutexLock l(&shared.mu);
      std::printf(
          "  resubmitted: %lld policies dispatched (first round %lld), cache hits %.0f of %.0f "
          "lookups%s\n",
          (long long)shared.policies, (long long)first_policies,
          cache_metric("hit") - hits_before - hits,
          cache_metric("hit") + cache_metric("miss") - hits_before - misses_before - hits - misses,
          again.ok() && *again ? "" : " (jobs did not finish)");
    }
    std::fflush(stdout);
    for (auto& s : servers) s->Shutdown(absl::Seconds(1));
    {
      absl::MutexLock l(&shared.real_mu);
      shared.real.reset();  // before the worker whose blob cache it uses
    }
    servers.clear();
  }
  // Its scratch (state dirs, worker caches, logs) goes with a successful run; a failed one keeps
  // it for the logs.
  std::error_code ec;
  std::filesystem::remove_all(testing::TheData().work, ec);
  return 0;
}

}  // namespace
}  // namespace prunesvc

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  spdlog::set_level(
      spdlog::level::warn);  // the in-process workers' step logs would drown the table
  return prunesvc::Main(argc, argv);
}

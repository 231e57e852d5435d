// service_load_bench (issue 16): the scheduler under a bounded load, on loopback, with a real
// prune-scheduler process (no workers, so jobs stay QUEUED and watch streams stay open):
//   20 concurrent UploadDataset calls (20 distinct sample sets), 50 queued jobs (SubmitJob),
//   200 concurrent WatchJob streams over them (each must see QUEUED, then CANCELLED when the jobs
//   are cancelled, and end OK), 2,000 GetJob calls in a burst from 16 threads.
// Prints errors (must be 0), p50/p99 latency per call kind and the scheduler's resident memory
// before, at the peak (streams open) and after. Exit 1 on any error or when the memory after is
// above --max-rss-mib. No timing is asserted: the latencies are for reading.
//
// Usage: service_load_bench [--max-rss-mib=512]   (ctest runs it as service_load_bench)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/job_spec.h"
#include "tests/e2e_service.h"
#include "tests/process_harness.h"

namespace prunesvc {
namespace {

namespace pb = ::prune::v1;
using Clock = std::chrono::steady_clock;

// Resident set of `pid` in MiB (VmRSS), -1 when unreadable.
double RssMib(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view v(line);
    if (!absl::ConsumePrefix(&v, "VmRSS:")) continue;
    v = absl::StripAsciiWhitespace(v);
    absl::ConsumeSuffix(&v, " kB");
    double kb = 0;
    if (absl::SimpleAtod(v, &kb)) return kb / 1024;
  }
  return -1;
}

class Latencies {
 public:
  void Add(const std::string& kind, double ms) {
    std::lock_guard<std::mutex> lock(mu_);
    samples_[kind].push_back(ms);
  }
  void Print() {
    std::lock_guard<std::mutex> lock(mu_);
    std::printf("%-14s %7s %9s %9s %9s\n", "call", "count", "p50 ms", "p99 ms", "max ms");
    for (auto& [kind, v] : samples_) {
      std::sort(v.begin(), v.end());
      auto q = [&](double p) { return v[std::min(v.size() - 1, size_t(p * double(v.size())))]; };
      std::printf("%-14s %7zu %9.2f %9.2f %9.2f\n", kind.c_str(), v.size(), q(0.5), q(0.99),
                  v.back());
    }
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::vector<double>> samples_;
};

double Ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

int Run(double max_rss_mib) {
  std::atomic<int> errors{0};
  auto fail = [&](const std::string& what) {
    ++errors;
    std::fprintf(stderr, "error: %s\n", what.c_str());
  };
  testing::ServiceOptions o;
  o.workers = 0;
  o.extra_args = {"--max-upload-bytes=16000000"};
  testing::Service s = testing::StartService("load", o);
  if (s.stub == nullptr) {
    std::fprintf(stderr, "the scheduler did not start\n%s\n",
                 s.process ? s.process->Log().c_str() : "");
    return 1;
  }
  const pid_t pid = s.process->pid();
  Latencies lat;
  const double rss_before = RssMib(pid);

  // 20 concurrent uploads of distinct sets.
  const std::string work = testing::TheData().work;
  std::vector<std::string> dirs;
  for (int i = 0; i < 20; ++i) {
    dirs.push_back(absl::StrCat(work, "/load-set-", i));
    testing::RunShell(absl::StrCat(testing::BinDir(), "/shapes-vqa --seed ", 5000 + i,
                                   " --split search --count 4 --out ", dirs.back(), " >/dev/null"));
  }
  std::vector<std::string> datasets(20);
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < 20; ++i) {
      threads.emplace_back([&, i] {
        const auto t0 = Clock::now();
        absl::StatusOr<std::string> id = testing::Upload(s, dirs[i]);
        lat.Add("UploadDataset", Ms(t0));
        if (!id.ok()) return fail(absl::StrCat("upload ", i, ": ", id.status().message()));
        datasets[i] = *id;
      });
    }
    for (std::thread& t : threads) t.join();
  }
  if (errors > 0) return 1;

  // 50 queued jobs.
  std::vector<std::string> jobs;
  for (int i = 0; i < 50; ++i) {
    JobSpec spec;
    spec.model_uri = "file://" + testing::SourceDir() + "/models/tiny-llava-shapes";
    spec.dataset_id = datasets[i % 20];
    spec.flops_budget = 0.5;
    const auto t0 = Clock::now();
    absl::StatusOr<pb::Job> job = testing::Submit(s, spec);
    lat.Add("SubmitJob", Ms(t0));
    if (!job.ok()) return fail(absl::StrCat("submit ", i, ": ", job.status().message())), 1;
    jobs.push_back(job->job_id());
  }

  // 200 watch streams, 4 per job, open until the jobs are cancelled.
  std::atomic<int> streams_live{0};
  std::vector<std::thread> watchers;
  for (int i = 0; i < 200; ++i) {
    watchers.emplace_back([&, i] {
      const std::string& job = jobs[i % 50];
      grpc::ClientContext ctx;
      testing::Deadline(ctx, 300);
      pb::WatchJobRequest req;
      req.set_job_id(job);
      const auto t0 = Clock::now();
      auto reader = s.stub->WatchJob(&ctx, req);
      pb::JobEvent e;
      if (!reader->Read(&e) || e.state_changed().to() != pb::QUEUED) {
        return fail(absl::StrCat("watch ", i, ": no QUEUED event"));
      }
      lat.Add("WatchJob first", Ms(t0));
      ++streams_live;
      bool cancelled = false;
      while (reader->Read(&e)) cancelled |= e.state_changed().to() == pb::CANCELLED;
      grpc::Status st = reader->Finish();
      if (!st.ok() || !cancelled) {
        fail(absl::StrCat("watch ", i, ": ended ", st.error_message(),
                          cancelled ? "" : " before CANCELLED"));
      }
    });
  }
  testing::WaitUntil([&] { return streams_live.load() + errors.load() >= 200; },
                     absl::Seconds(120));

  // 2,000 GetJob calls in a burst from 16 threads, with the streams open.
  {
    std::atomic<int> next{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 16; ++t) {
      threads.emplace_back([&] {
        for (int i; (i = next++) < 2000;) {
          const auto t0 = Clock::now();
          absl::StatusOr<pb::Job> j = testing::GetJob(s, jobs[i % 50]);
          lat.Add("GetJob", Ms(t0));
          if (!j.ok() || j->state() != pb::QUEUED) fail(absl::StrCat("get ", i));
        }
      });
    }
    for (std::thread& t : threads) t.join();
  }
  const double rss_peak = RssMib(pid);

  // Cancel every job: each stream sees CANCELLED and ends.
  for (const std::string& job : jobs) {
    grpc::ClientContext ctx;
    testing::Deadline(ctx, 30);
    pb::CancelJobRequest req;
    req.set_job_id(job);
    pb::Job out;
    const auto t0 = Clock::now();
    grpc::Status st = s.stub->CancelJob(&ctx, req, &out);
    lat.Add("CancelJob", Ms(t0));
    if (!st.ok()) fail(absl::StrCat("cancel ", job, ": ", st.error_message()));
  }
  for (std::thread& t : watchers) t.join();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let the server free them
  const double rss_after = RssMib(pid);

  lat.Print();
  std::printf("scheduler RSS: before %.1f MiB, peak (200 streams open) %.1f MiB, after %.1f MiB\n",
              rss_before, rss_peak, rss_after);
  std::printf("errors: %d\n", errors.load());
  if (rss_after > max_rss_mib) {
    std::printf("memory after the load (%.1f MiB) is above --max-rss-mib=%.0f\n", rss_after,
                max_rss_mib);
    return 1;
  }
  return errors.load() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace prunesvc

int main(int argc, char** argv) {
  double max_rss = 512;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a(argv[i]);
    if (absl::ConsumePrefix(&a, "--max-rss-mib=") && absl::SimpleAtod(a, &max_rss)) continue;
    std::fprintf(stderr, "usage: %s [--max-rss-mib=512]\n", argv[0]);
    return 2;
  }
  return prunesvc::Run(max_rss);
}

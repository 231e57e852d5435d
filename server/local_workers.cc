#include "server/local_workers.h"

#include <signal.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace prunesvc::server {

LocalWorkers::LocalWorkers(LocalWorkersOptions options, ProcessLauncher* launcher,
                           const Clock* clock)
    : options_(std::move(options)), launcher_(launcher), clock_(clock) {}

LocalWorkers::~LocalWorkers() { Stop(); }

void LocalWorkers::SpawnLocked(int slot) {
  Slot& s = slots_[slot];
  std::vector<std::string> argv = options_.argv_for_slot(slot);
  absl::StatusOr<pid_t> pid = launcher_->Spawn(argv);
  s.started = clock_->Now();
  if (!pid.ok()) {
    s.pid = -1;
    s.next_start = s.started + s.backoff;
    spdlog::error("local worker spawn failed slot={} error=\"{}\" retry_in={}", slot,
                  pid.status().message(), absl::FormatDuration(s.backoff));
    s.backoff = std::min(s.backoff * 2, options_.max_backoff);
    return;
  }
  s.pid = *pid;
  spdlog::info("local worker started slot={} pid={} argv=\"{}\"", slot, s.pid,
               absl::StrJoin(argv, " "));
}

absl::Status LocalWorkers::Start() {
  {
    absl::MutexLock lock(&mu_);
    slots_.assign(options_.count, Slot{});
    for (int i = 0; i < options_.count; ++i) {
      slots_[i].backoff = options_.min_backoff;
      absl::StatusOr<pid_t> pid = launcher_->Spawn(options_.argv_for_slot(i));
      if (!pid.ok()) {
        for (int j = 0; j < i; ++j) launcher_->Signal(slots_[j].pid, SIGKILL);
        return pid.status();
      }
      slots_[i].pid = *pid;
      slots_[i].started = clock_->Now();
      spdlog::info("local worker started slot={} pid={}", i, *pid);
    }
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void LocalWorkers::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.poll_interval)) return;
      const absl::Time now = clock_->Now();
      for (int i = 0; i < static_cast<int>(slots_.size()); ++i) {
        Slot& s = slots_[i];
        if (s.pid > 0) {
          std::optional<ExitInfo> exit = launcher_->TryWait(s.pid);
          if (!exit) {
            if (now - s.started > options_.stable_after) s.backoff = options_.min_backoff;
            continue;
          }
          spdlog::warn("local worker exited slot={} pid={} status=\"{}\" restart_in={}", i, s.pid,
                       exit->ToString(), absl::FormatDuration(s.backoff));
          s.pid = -1;
          s.next_start = now + s.backoff;
          s.backoff = std::min(s.backoff * 2, options_.max_backoff);
        }
        if (s.pid < 0 && now >= s.next_start) {
          ++s.restarts;
          SpawnLocked(i);
          if (options_.on_restart) options_.on_restart(i);
        }
      }
    }
  }
}

void LocalWorkers::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mu_);
  for (Slot& s : slots_) {
    if (s.pid > 0) launcher_->Signal(s.pid, SIGTERM);
  }
  // Real time on purpose: the grace period must pass even under a fake clock.
  const absl::Time deadline = absl::Now() + options_.stop_grace;
  for (Slot& s : slots_) {
    while (s.pid > 0) {
      if (launcher_->TryWait(s.pid)) {
        s.pid = -1;
        break;
      }
      if (absl::Now() > deadline) {
        spdlog::warn("local worker pid={} ignored SIGTERM; killing", s.pid);
        launcher_->Signal(s.pid, SIGKILL);
        while (!launcher_->TryWait(s.pid)) absl::SleepFor(absl::Milliseconds(10));
        s.pid = -1;
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
}

std::vector<pid_t> LocalWorkers::Pids() const {
  absl::MutexLock lock(&mu_);
  std::vector<pid_t> pids;
  for (const Slot& s : slots_) pids.push_back(s.pid);
  return pids;
}

int LocalWorkers::Restarts(int slot) const {
  absl::MutexLock lock(&mu_);
  return slots_.at(slot).restarts;
}

}  // namespace prunesvc::server

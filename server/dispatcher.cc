#include "server/dispatcher.h"

#include <algorithm>
#include <utility>

#include "common/logging.h"
#include "server/search_driver.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;

}  // namespace

DispatcherMetrics::DispatcherMetrics(prometheus::Registry& registry) {
  steps = &prometheus::BuildCounter()
               .Name("prunesvc_steps_total")
               .Help("Worker steps dispatched by the scheduler, by step and outcome")
               .Register(registry);
  step_seconds = &prometheus::BuildHistogram()
                      .Name("prunesvc_step_seconds")
                      .Help("Wall time of a worker step as the scheduler saw it")
                      .Register(registry);
  retries = &prometheus::BuildCounter()
                 .Name("prunesvc_step_retries_total")
                 .Help("Steps re-run on another worker after a retryable failure")
                 .Register(registry)
                 .Add({});
  commit_retries = &prometheus::BuildCounter()
                        .Name("prunesvc_commit_retries_total")
                        .Help("Job-state commits retried because the state dir was full")
                        .Register(registry)
                        .Add({});
  evaluations = &prometheus::BuildCounter()
                     .Name("prunesvc_evaluations_total")
                     .Help("Candidate policies evaluated for jobs")
                     .Register(registry)
                     .Add({});
  split_evaluations = &prometheus::BuildCounter()
                           .Name("prunesvc_split_evaluations_total")
                           .Help(
                               "Policies whose samples were split across workers (more idle "
                               "workers than policies)")
                           .Register(registry)
                           .Add({});
  auto& cache = prometheus::BuildCounter()
                    .Name("prunesvc_evaluation_cache_total")
                    .Help("Policies looked up in the evaluation cache across jobs, by result")
                    .Register(registry);
  evaluation_cache_hits = &cache.Add({{"result", "hit"}});
  evaluation_cache_misses = &cache.Add({{"result", "miss"}});
  queue_depth = &prometheus::BuildGauge()
                     .Name("prunesvc_step_queue_depth")
                     .Help("Steps waiting for a free worker")
                     .Register(registry)
                     .Add({});
  running_jobs = &prometheus::BuildGauge()
                      .Name("prunesvc_running_jobs")
                      .Help("Jobs with a search driver running")
                      .Register(registry)
                      .Add({});
  search_best_accuracy = &prometheus::BuildGauge()
                              .Name("prunesvc_search_best_accuracy")
                              .Help(
                                  "Running search: accuracy (0-1, search samples) of the best "
                                  "policy so far, by job")
                              .Register(registry);
  search_best_flops_ratio = &prometheus::BuildGauge()
                                 .Name("prunesvc_search_best_flops_ratio")
                                 .Help(
                                     "Running search: FLOPs ratio (pruned / dense) of the best "
                                     "policy so far, by job")
                                 .Register(registry);
}

Dispatcher::Dispatcher(DispatcherOptions options, JobStore* store, EventHub* hub,
                       WorkerTable* table, WorkerConnector* connector,
                       prometheus::Registry* registry, BlobStore* blobs)
    : options_(std::move(options)),
      store_(store),
      blobs_(blobs),
      hub_(hub),
      table_(table),
      connector_(connector),
      metrics_(*registry) {}

Dispatcher::~Dispatcher() { Shutdown(); }

void Dispatcher::Enqueue(const std::string& job_id) {
  // The tenant decides the quota; a job the store cannot read runs as tenant "" (its driver
  // then fails it with the store's error).
  std::string tenant;
  if (options_.tenant_max_running) {
    absl::StatusOr<pb::Job> job = store_->GetJob(job_id);
    if (job.ok()) tenant = job->tenant();
  }
  absl::MutexLock lock(&mu_);
  if (shutting_down_ || drivers_.count(job_id) > 0) return;
  if (std::find(queued_jobs_.begin(), queued_jobs_.end(), job_id) != queued_jobs_.end()) return;
  queued_jobs_.push_back(job_id);
  tenant_of_[job_id] = tenant;
  StartRunnableLocked();
}

bool Dispatcher::TenantHasRoomLocked(const std::string& tenant) const {
  if (!options_.tenant_max_running) return true;
  const int64_t quota = options_.tenant_max_running(tenant);
  if (quota <= 0) return true;
  auto it = running_by_tenant_.find(tenant);
  return it == running_by_tenant_.end() || it->second < quota;
}

void Dispatcher::StartRunnableLocked() {
  for (auto it = queued_jobs_.begin();
       it != queued_jobs_.end() && int(drivers_.size()) < options_.max_running_jobs;) {
    const std::string& tenant = tenant_of_[*it];
    if (!TenantHasRoomLocked(tenant)) {
      ++it;
      continue;
    }
    ++running_by_tenant_[tenant];
    const std::string job_id = *it;
    it = queued_jobs_.erase(it);
    StartDriver(job_id);
  }
}

void Dispatcher::StartDriver(const std::string& job_id) {
  // Threads of finished drivers: they hold no lock and only return, so joining is immediate.
  for (std::thread& t : finished_threads_) {
    if (t.joinable()) t.join();
  }
  finished_threads_.clear();
  auto driver = std::make_unique<SearchDriver>(this, job_id);
  SearchDriver* raw = driver.get();
  drivers_[job_id] = std::move(driver);
  metrics_.running_jobs->Set(double(drivers_.size()));
  threads_[job_id] = std::thread([this, raw, job_id] {
    raw->Run();
    DriverFinished(job_id);
  });
}

void Dispatcher::ReportSearchBest(const std::string& job_id, double accuracy, double flops_ratio) {
  absl::MutexLock lock(&mu_);
  if (drivers_.count(job_id) == 0) return;  // finished meanwhile: no series left behind
  auto [it, added] = search_gauges_.try_emplace(job_id);
  if (added) {
    it->second = {&metrics_.search_best_accuracy->Add({{"job_id", job_id}}),
                  &metrics_.search_best_flops_ratio->Add({{"job_id", job_id}})};
  }
  it->second.first->Set(accuracy);
  it->second.second->Set(flops_ratio);
}

void Dispatcher::DriverFinished(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  drivers_.erase(job_id);
  if (auto g = search_gauges_.find(job_id); g != search_gauges_.end()) {
    metrics_.search_best_accuracy->Remove(g->second.first);
    metrics_.search_best_flops_ratio->Remove(g->second.second);
    search_gauges_.erase(g);
  }
  affinity_.erase(job_id);
  priority_of_.erase(job_id);
  job_blobs_.erase(job_id);
  if (auto t = tenant_of_.find(job_id); t != tenant_of_.end()) {
    if (--running_by_tenant_[t->second] <= 0) running_by_tenant_.erase(t->second);
    tenant_of_.erase(t);
  }
  metrics_.running_jobs->Set(double(drivers_.size()));
  if (!shutting_down_) StartRunnableLocked();
  // The thread cannot join itself: park it for the next StartDriver (or Shutdown) to join. Done
  // after StartDriver, which joins the parked ones.
  auto t = threads_.find(job_id);
  if (t != threads_.end()) {
    finished_threads_.push_back(std::move(t->second));
    threads_.erase(t);
  }
}

void Dispatcher::Cancel(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto queued = std::find(queued_jobs_.begin(), queued_jobs_.end(), job_id);
  if (queued != queued_jobs_.end()) {
    queued_jobs_.erase(queued);
    tenant_of_.erase(job_id);
  }
  auto it = drivers_.find(job_id);
  if (it != drivers_.end()) it->second->Cancel();
}

absl::Status Dispatcher::ResumeAll() {
  absl::StatusOr<std::vector<pb::Job>> jobs = store_->ListNonTerminalJobs();
  if (!jobs.ok()) return jobs.status();
  for (const pb::Job& j : *jobs) {
    spdlog::info("job={} state={} resumes", j.job_id(), pb::JobState_Name(j.state()));
    Enqueue(j.job_id());
  }
  return absl::OkStatus();
}

void Dispatcher::Shutdown() {
  std::map<std::string, std::thread> running;
  std::vector<std::thread> finished;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_ && threads_.empty() && finished_threads_.empty()) return;
    shutting_down_ = true;
    queued_jobs_.clear();
    for (auto& [id, d] : drivers_) d->Cancel();
  }
  // Drivers finish (and move their threads to finished_threads_) without the lock held.
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (threads_.empty()) {
        finished = std::move(finished_threads_);
        break;
      }
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  for (std::thread& t : finished) {
    if (t.joinable()) t.join();
  }
}

int Dispatcher::waiting() const {
  absl::MutexLock lock(&mu_);
  return int(waiters_.size());
}

void Dispatcher::NoteAffinity(const std::string& job_id, const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  affinity_[job_id].insert(worker_id);
}

std::vector<pb::WorkerInfo> Dispatcher::IdleWorkersLocked(const std::string& job_id) {
  const absl::Time now = absl::Now();
  std::vector<pb::WorkerInfo> idle;
  for (const pb::WorkerInfo& w : table_->List()) {
    if (w.state() == pb::WORKER_LOST || w.state() == pb::WORKER_DRAINING) continue;
    if (leased_.count(w.worker_id()) > 0) continue;
    auto q = quarantined_.find(w.worker_id());
    if (q != quarantined_.end() && q->second > now) continue;
    idle.push_back(w);
  }
  const std::set<std::string>& warm = affinity_[job_id];
  std::stable_partition(idle.begin(), idle.end(),
                        [&](const pb::WorkerInfo& w) { return warm.count(w.worker_id()) > 0; });
  return idle;
}

int Dispatcher::FairShareLocked(const std::string& job_id, int priority) const {
  int live = 0;
  for (const auto& [state, n] : table_->CountByState()) {
    if (state != pb::WORKER_LOST && state != pb::WORKER_DRAINING) live += n;
  }
  int competing = 1;  // the job itself
  for (const auto& [job, p] : priority_of_) competing += job != job_id && p >= priority;
  return std::max(1, (live + competing - 1) / competing);
}

int Dispatcher::LeasesOfLocked(const std::string& job_id) const {
  int n = 0;
  for (const auto& [worker, job] : leased_) n += job == job_id;
  return n;
}

bool Dispatcher::IsHeadLocked(int64_t ticket) const {
  const Waiter* head = nullptr;
  for (const Waiter& w : waiters_) {
    if (head == nullptr || w.priority > head->priority ||
        (w.priority == head->priority && w.ticket < head->ticket)) {
      head = &w;
    }
  }
  return head != nullptr && head->ticket == ticket;
}

WorkerLease Dispatcher::LeaseLocked(const pb::WorkerInfo& w, const std::string& job_id) {
  leased_[w.worker_id()] = job_id;
  return {w.worker_id(), w.address(), connector_->Connect(w.address())};
}

absl::StatusOr<WorkerLease> Dispatcher::Acquire(const std::string& job_id, int priority,
                                                const std::function<bool()>& stop) {
  absl::MutexLock lock(&mu_);
  if (drivers_.count(job_id) > 0) priority_of_[job_id] = priority;
  const int64_t ticket = next_ticket_++;
  waiters_.push_back({priority, ticket, job_id});
  metrics_.queue_depth->Set(double(waiters_.size()));
  auto leave = [&] {
    waiters_.erase(std::remove_if(waiters_.begin(), waiters_.end(),
                                  [&](const Waiter& w) { return w.ticket == ticket; }),
                   waiters_.end());
    metrics_.queue_depth->Set(double(waiters_.size()));
    ++wake_seq_;  // the next waiter may now be the head
  };
  while (true) {
    if (shutting_down_ || (stop && stop())) {
      leave();
      return absl::CancelledError("stopped while waiting for a worker");
    }
    if (IsHeadLocked(ticket)) {
      std::vector<pb::WorkerInfo> idle = IdleWorkersLocked(job_id);
      if (!idle.empty()) {
        leave();
        return LeaseLocked(idle.front(), job_id);
      }
    }
    // Woken by every Release and every waiter leaving (each waiter sees each change: a
    // sequence number, not a flag one waiter could clear before the head saw it); the timeout
    // picks up newly registered workers and stop().
    struct Changed {
      const int64_t* seq;
      int64_t seen;
    } changed{&wake_seq_, wake_seq_};
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](Changed* c) { return *c->seq != c->seen; }, &changed),
                         absl::Milliseconds(50));
  }
}

std::vector<WorkerLease> Dispatcher::TryAcquireMore(const std::string& job_id, int priority,
                                                    int max) {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerLease> out;
  for (const Waiter& w : waiters_) {
    if (w.priority >= priority) return out;  // someone else needs a worker
  }
  max = std::min(max, FairShareLocked(job_id, priority) - LeasesOfLocked(job_id));
  if (max <= 0) return out;
  for (const pb::WorkerInfo& w : IdleWorkersLocked(job_id)) {
    if (int(out.size()) >= max) break;
    out.push_back(LeaseLocked(w, job_id));
  }
  return out;
}

void Dispatcher::SetJobBlobs(const std::string& job_id, const std::string& tenant,
                             std::set<std::string> blob_ids) {
  absl::MutexLock lock(&mu_);
  job_blobs_[job_id] = {tenant, std::move(blob_ids)};
}

absl::StatusOr<std::string> Dispatcher::FetchTenant(const std::string& worker_id,
                                                    const std::string& blob_id) const {
  absl::MutexLock lock(&mu_);
  auto lease = leased_.find(worker_id);
  if (lease != leased_.end()) {
    auto blobs = job_blobs_.find(lease->second);
    if (blobs != job_blobs_.end() && blobs->second.second.count(blob_id) > 0) {
      return blobs->second.first;
    }
  }
  return absl::PermissionDeniedError(
      absl::StrCat("worker ", worker_id, " runs no step that references blob ", blob_id));
}

absl::Status Dispatcher::MayPut(const std::string& worker_id) const {
  absl::MutexLock lock(&mu_);
  if (leased_.count(worker_id) > 0) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("worker ", worker_id, " runs no step: it has nothing to store"));
}

void Dispatcher::Release(const WorkerLease& lease, bool failed) {
  absl::MutexLock lock(&mu_);
  leased_.erase(lease.worker_id);
  if (failed) quarantined_[lease.worker_id] = absl::Now() + options_.quarantine;
  ++wake_seq_;
}

}  // namespace prunesvc::server

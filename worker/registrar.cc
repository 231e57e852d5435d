#include "worker/registrar.h"

#include <algorithm>
#include <string>

#include "common/logging.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace prunesvc::worker {
namespace {
constexpr absl::Duration kCallDeadline = absl::Seconds(3);
}  // namespace

void SchedulerSession::Decorate(grpc::ClientContext& ctx) const {
  if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
  absl::MutexLock lock(&mu_);
  if (!session_.empty()) ctx.AddMetadata("prunesvc-worker-session", session_);
}

void SchedulerSession::SetSession(std::string session) {
  absl::MutexLock lock(&mu_);
  session_ = std::move(session);
}

Registrar::Registrar(std::string scheduler_address, std::shared_ptr<grpc::Channel> channel,
                     ::prune::v1::WorkerInfo info, SchedulerSession* session, HeartbeatHooks* hooks)
    : scheduler_address_(std::move(scheduler_address)),
      info_(std::move(info)),
      session_(session),
      hooks_(hooks),
      stub_(::prune::v1::WorkerRegistry::NewStub(std::move(channel))) {}

Registrar::~Registrar() { Stop(); }

void Registrar::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void Registrar::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Registrar::SetDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  kick_ = true;
}

std::string Registrar::worker_id() const {
  absl::MutexLock lock(&mu_);
  return worker_id_;
}

bool Registrar::RegisterOnce() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(kCallDeadline));
  session_->Decorate(ctx);
  ::prune::v1::RegisterWorkerRequest req;
  *req.mutable_info() = info_;
  ::prune::v1::RegisterWorkerResponse resp;
  grpc::Status s = stub_->RegisterWorker(&ctx, req, &resp);
  if (!s.ok()) {
    spdlog::warn("register with scheduler={} failed code={} error=\"{}\"", scheduler_address_,
                 static_cast<int>(s.error_code()), s.error_message());
    return false;
  }
  session_->SetSession(resp.session_token());
  absl::MutexLock lock(&mu_);
  worker_id_ = resp.worker_id();
  interval_ = absl::Milliseconds(std::max(100, resp.heartbeat_interval_ms()));
  spdlog::info("registered worker_id={} scheduler={} heartbeat_ms={}", worker_id_,
               scheduler_address_, resp.heartbeat_interval_ms());
  return true;
}

void Registrar::Loop() {
  absl::Duration backoff = absl::Milliseconds(200);
  bool registered = false;
  while (true) {
    absl::Duration wait;
    if (!registered) {
      registered = RegisterOnce();
      wait = registered ? absl::ZeroDuration() : backoff;
      if (!registered) backoff = std::min(backoff * 2, absl::Seconds(5));
    } else {
      std::string id;
      bool draining = false;
      {
        absl::MutexLock lock(&mu_);
        id = worker_id_;
        wait = interval_;
        draining = draining_;
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(kCallDeadline));
      session_->Decorate(ctx);
      ::prune::v1::HeartbeatRequest req;
      req.set_worker_id(id);
      req.set_state(::prune::v1::WORKER_IDLE);
      if (hooks_ != nullptr) {
        for (const std::string& step : hooks_->ActiveSteps()) req.add_active_steps(step);
        for (const std::string& job : hooks_->CachedJobs()) req.add_cached_models(job);
        if (req.active_steps_size() > 0) req.set_state(::prune::v1::WORKER_BUSY);
      }
      if (draining) req.set_state(::prune::v1::WORKER_DRAINING);
      ::prune::v1::HeartbeatResponse resp;
      grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
      if (s.ok() && resp.reregister()) {
        spdlog::warn("scheduler does not know worker_id={}; re-registering", id);
        registered = false;
        backoff = absl::Milliseconds(200);
        continue;
      }
      if (s.ok() && hooks_ != nullptr && resp.cancel_steps_size() > 0) {
        hooks_->CancelSteps({resp.cancel_steps().begin(), resp.cancel_steps().end()});
      }
      if (!s.ok()) {
        spdlog::warn("heartbeat failed worker_id={} code={} error=\"{}\"", id,
                     static_cast<int>(s.error_code()), s.error_message());
      }
    }
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &Registrar::WakeLocked), wait);
    if (stopping_) return;
    kick_ = false;
  }
}

}  // namespace prunesvc::worker

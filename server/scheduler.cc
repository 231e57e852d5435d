#include "server/scheduler.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/sqlite_job_store.h"

namespace prunesvc::server {
namespace {

absl::StatusOr<int> LockStateDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--state-dir ", dir, ": cannot create: ", ec.message()));
  }
  std::string lock_path = dir + "/LOCK";
  int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--state-dir ", dir, ": cannot open LOCK: ", strerror(errno)));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "--state-dir ", dir, " is in use by another prune-scheduler (", lock_path, " is locked)"));
  }
  return fd;
}

// Realpaths of the roots; a root that does not resolve is an error naming it.
absl::StatusOr<std::vector<std::string>> ResolveRoots(const std::vector<std::string>& roots) {
  std::vector<std::string> out;
  for (const std::string& root : roots) {
    if (root.empty()) continue;
    char resolved[PATH_MAX];
    if (realpath(root.c_str(), resolved) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--allowed-model-roots: cannot resolve ", root, ": ", strerror(errno)));
    }
    out.emplace_back(resolved);
  }
  return out;
}

// STATE_DIR/uploads holds uploads being validated; leftovers of a crash are removed.
absl::StatusOr<std::string> PrepareUploadDir(const std::string& state_dir) {
  const std::string dir = state_dir + "/uploads";
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  return dir;
}

// The combinations of the security flags that make sense (docs/operations.md).
absl::Status CheckSecurityOptions(const SchedulerOptions& o) {
  if (!o.auth_tokens_file.empty() && o.worker_token_file.empty()) {
    return absl::InvalidArgumentError(
        "--auth-tokens needs --worker-token-file: without it anyone who reaches the scheduler "
        "could register a worker and read every tenant's datasets");
  }
  if (!o.tls.ca.empty() && (o.tls.cert.empty() || o.tls.key.empty())) {
    return absl::InvalidArgumentError("--tls-ca needs --tls-cert and --tls-key");
  }
  if (!o.worker_identity.empty() && o.tls.ca.empty()) {
    return absl::InvalidArgumentError(
        "--worker-identity needs --tls-ca: it names the workers' TLS certificates");
  }
  if (!o.tls.ca.empty() && o.worker_port < 0) {
    return absl::InvalidArgumentError(
        "--tls-ca needs --worker-port: client certificates are required on the worker port "
        "only, so that prunectl needs none");
  }
  if (o.worker_port >= 0 && o.worker_port == o.port && o.port != 0) {
    return absl::InvalidArgumentError("--worker-port must differ from --port");
  }
  return absl::OkStatus();
}

// The argv of local worker `slot`: it registers on the worker port with the scheduler's own
// credentials (its certificate as client and server certificate, the CA, the worker token).
std::vector<std::string> LocalWorkerArgv(const SchedulerOptions& o, const std::string& binary,
                                         int registry_port, int threads,
                                         const std::string& scheduler_identity, int slot) {
  std::vector<std::string> argv = {
      binary,
      "--allowed-model-roots=" + absl::StrJoin(o.allowed_model_roots, ","),
      absl::StrCat("--cache-dir=", o.state_dir, "/local-workers/", slot),
      "--host=127.0.0.1",
      "--port=0",
      absl::StrCat("--scheduler=127.0.0.1:", registry_port),
      "--device=cpu",
      absl::StrCat("--threads=", threads),
      "--metrics-port=0",
      absl::StrCat("--log-level=", o.log_level),
      absl::StrCat("--worker-name=local-", slot)};
  if (o.worker_batch > 0) argv.push_back(absl::StrCat("--batch=", o.worker_batch));
  if (!o.tls.ca.empty()) {
    argv.push_back("--tls-cert=" + o.tls.cert);
    argv.push_back("--tls-key=" + o.tls.key);
    argv.push_back("--tls-ca=" + o.tls.ca);
    argv.push_back("--scheduler-identity=" + scheduler_identity);
  }
  if (!o.worker_token_file.empty()) argv.push_back("--worker-token-file=" + o.worker_token_file);
  return argv;
}

}  // namespace

absl::Status Scheduler::ReloadCredentials() {
  absl::Status s = auth_->Reload();
  if (s.ok()) {
    spdlog::info("credentials reloaded");
  } else {
    spdlog::error("credentials not reloaded (the previous ones stay): {}", s.message());
  }
  return s;
}

absl::Status Scheduler::SetJobRunner(JobRunner* runner) {
  pruning_service_->SetJobRunner(runner);
  ASSIGN_OR_RETURN(std::vector<prune::v1::Job> jobs, store_->ListNonTerminalJobs());
  for (const prune::v1::Job& job : jobs) pruning_service_->runner()->Enqueue(job.job_id());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerOptions& options) {
  if (options.state_dir.empty()) {
    return absl::InvalidArgumentError("--state-dir is required (jobs and blobs live there)");
  }
  if (options.local_workers < 0 || options.local_workers > 64) {
    return absl::InvalidArgumentError("--local-workers must be in [0, 64]");
  }
  RETURN_IF_ERROR(CheckSecurityOptions(options));
  std::unique_ptr<Scheduler> s(new Scheduler);
  s->options_ = options;
  ASSIGN_OR_RETURN(s->lock_fd_, LockStateDir(options.state_dir));
  AuthOptions auth;
  auth.tokens_file = options.auth_tokens_file;
  auth.worker_token_file = options.worker_token_file;
  auth.defaults = {options.max_queued_jobs, options.tenant_max_running_jobs,
                   options.tenant_max_stored_bytes};
  ASSIGN_OR_RETURN(s->auth_, Authenticator::Create(auth));
  if (!s->auth_->enabled()) {
    spdlog::warn("no --auth-tokens: every client is the admin of the anonymous tenant");
  } else if (options.tls.cert.empty()) {
    spdlog::warn("--auth-tokens without --tls-cert: tokens cross the network in plain text");
  }

  if (options.max_upload_bytes <= 0) {
    return absl::InvalidArgumentError("--max-upload-bytes must be positive");
  }
  for (const auto& [flag, d] :
       {std::pair{"--prepare-deadline", options.dispatcher.prepare_deadline},
        {"--evaluate-deadline", options.dispatcher.evaluate_deadline},
        {"--train-deadline", options.dispatcher.train_deadline},
        {"--finalize-deadline", options.dispatcher.finalize_deadline}}) {
    if (d < absl::Seconds(1)) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " must be at least 1s, got ", absl::FormatDuration(d)));
    }
  }
  if (options.dispatcher.max_attempts < 1) {
    return absl::InvalidArgumentError("--max-step-attempts must be at least 1");
  }
  if (options.sweep.retain < absl::ZeroDuration() || options.sweep_interval < absl::Seconds(1)) {
    return absl::InvalidArgumentError("--retain-days must be ≥ 0 and --sweep-interval at least 1s");
  }
  if (options.dispatcher.max_running_jobs < 1) {
    return absl::InvalidArgumentError("--max-running-jobs must be at least 1");
  }
  PruningServiceOptions service_options;
  ASSIGN_OR_RETURN(service_options.allowed_model_roots, ResolveRoots(options.allowed_model_roots));
  if (service_options.allowed_model_roots.empty()) {
    spdlog::warn("no --allowed-model-roots: every SubmitJob will be refused");
  }
  service_options.max_upload_bytes = options.max_upload_bytes;
  service_options.max_watchers_per_job = options.max_watchers_per_job;
  if (options.max_watchers_per_job < 1 || options.max_queued_jobs < 1) {
    return absl::InvalidArgumentError("--max-watchers-per-job and --max-queued-jobs must be ≥ 1");
  }
  if (options.tenant_max_running_jobs < 0 || options.tenant_max_stored_bytes < 0) {
    return absl::InvalidArgumentError(
        "--tenant-max-running-jobs and --tenant-max-stored-bytes must be ≥ 0 (0 = no limit)");
  }
  if (options.evaluation_cache_entries < 1 || options.evaluation_cache_memory_bytes < 0) {
    return absl::InvalidArgumentError(
        "--evaluation-cache-entries must be ≥ 1 and --evaluation-cache-memory-mib ≥ 0 (turn the "
        "cache off with --evaluation-cache=false)");
  }
  if (options.max_message_bytes < (2 << 20)) {
    return absl::InvalidArgumentError(
        "--max-message-bytes must be at least 2 MiB (upload and blob chunks are up to 1 MiB)");
  }
  ASSIGN_OR_RETURN(service_options.upload_dir, PrepareUploadDir(options.state_dir));

  SqliteJobStoreOptions store_options;
  store_options.state_dir = options.state_dir;
  store_options.max_cached_evaluations = options.evaluation_cache_entries;
  store_options.cached_evaluation_memory_bytes = options.evaluation_cache_memory_bytes;
  ASSIGN_OR_RETURN(s->store_, SqliteJobStore::Create(store_options));
  FileBlobStoreOptions blob_options;
  blob_options.root = options.state_dir + "/blobs";
  ASSIGN_OR_RETURN(s->blobs_, FileBlobStore::Create(blob_options));
  s->sweeper_ = std::make_unique<PeriodicSweeper>(s->store_.get(), s->blobs_.get(), options.sweep,
                                                  options.sweep_interval);
  s->hub_ = std::make_unique<EventHub>();
  s->pool_ = std::make_unique<ThreadPool>(std::max(1, options.service_threads));
  s->upload_pool_ = std::make_unique<ThreadPool>(2);

  s->metrics_ = std::make_unique<SchedulerMetrics>();
  s->table_ = std::make_unique<WorkerTable>(options.workers, RealClock::Get());
  s->registry_service_ =
      std::make_unique<RegistryService>(s->table_.get(), s->metrics_.get(), s->store_.get(),
                                        s->blobs_.get(), s->pool_.get(), s->auth_.get());
  PruningServiceDeps deps;
  deps.store = s->store_.get();
  deps.blobs = s->blobs_.get();
  deps.hub = s->hub_.get();
  deps.pool = s->pool_.get();
  deps.upload_pool = s->upload_pool_.get();
  deps.workers = s->table_.get();
  deps.metrics = s->metrics_.get();
  deps.sweeper = s->sweeper_.get();
  deps.auth = s->auth_.get();
  s->pruning_service_ = std::make_unique<PruningServiceImpl>(deps, std::move(service_options));

  RETURN_IF_ERROR(s->StartServers());

  if (options.metrics_port >= 0) {
    // The exposer holds weak pointers: the scheduler owns the collectables.
    s->collectables_ = {s->metrics_->registry, std::make_shared<WorkersCollector>(s->table_.get()),
                        std::make_shared<JobsCollector>(s->store_.get()),
                        std::make_shared<ProcessCollector>()};
    ASSIGN_OR_RETURN(
        s->exposer_,
        StartExposer(absl::StrCat(options.host, ":", options.metrics_port), s->collectables_));
    std::vector<int> ports = s->exposer_->GetListeningPorts();
    s->metrics_port_ = ports.empty() ? options.metrics_port : ports.front();
    spdlog::info("metrics on http://{}:{}/metrics", options.host, s->metrics_port_);
  }

  if (options.local_workers > 0) {
    std::string binary = options.worker_binary.empty() ? SelfExecutableDir() + "/prune-worker"
                                                       : options.worker_binary;
    int threads = options.worker_threads;
    if (threads <= 0) {
      threads = std::max(
          1u, std::thread::hardware_concurrency() / static_cast<unsigned>(options.local_workers));
    }
    std::string identity;
    if (!options.tls.ca.empty()) {
      ASSIGN_OR_RETURN(std::string pem, ReadPemFile(options.tls.cert, "--tls-cert"));
      absl::StatusOr<std::string> cn = CertificateCommonName(pem);
      if (!cn.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls-cert ", options.tls.cert, ": ", cn.status().message()));
      }
      identity = *cn;
    }
    LocalWorkersOptions lw;
    lw.count = options.local_workers;
    lw.argv_for_slot = [options, binary, port = s->worker_port_, threads, identity](int slot) {
      return LocalWorkerArgv(options, binary, port, threads, identity, slot);
    };
    SchedulerMetrics* metrics = s->metrics_.get();
    lw.on_restart = [metrics](int) { metrics->local_worker_restarts->Increment(); };
    s->local_workers_ = std::make_unique<LocalWorkers>(lw, &s->launcher_, RealClock::Get());
    RETURN_IF_ERROR(s->local_workers_->Start());
  }
  // The dispatcher runs the jobs: every non-terminal job in the store resumes now.
  std::shared_ptr<grpc::ChannelCredentials> to_workers;
  if (!options.tls.ca.empty()) {
    ASSIGN_OR_RETURN(to_workers, MakeChannelCredentials(options.tls));
  }
  s->connector_ = NewGrpcWorkerConnector(to_workers, options.worker_identity);
  s->registry_service_->SetConnector(s->connector_.get());
  DispatcherOptions dispatcher_options = options.dispatcher;
  Authenticator* auth_ptr = s->auth_.get();
  dispatcher_options.tenant_max_running = [auth_ptr](const std::string& tenant) {
    return auth_ptr->QuotaOf(tenant).max_running_jobs.value_or(0);
  };
  s->dispatcher_ = std::make_unique<Dispatcher>(dispatcher_options, s->store_.get(), s->hub_.get(),
                                                s->table_.get(), s->connector_.get(),
                                                s->metrics_->registry.get(), s->blobs_.get());
  s->registry_service_->SetBlobAccess(s->dispatcher_.get());
  RETURN_IF_ERROR(s->SetJobRunner(s->dispatcher_.get()));
  // Per-service statuses must be set explicitly; SetServingStatus(bool) then flips them all.
  auto* health = s->server_->GetHealthCheckService();
  health->SetServingStatus(prune::v1::PruningService::service_full_name(), true);
  health->SetServingStatus(prune::v1::WorkerRegistry::service_full_name(),
                           s->worker_server_ == nullptr);
  health->SetServingStatus(true);
  if (s->worker_server_ != nullptr) {
    auto* worker_health = s->worker_server_->GetHealthCheckService();
    worker_health->SetServingStatus(prune::v1::WorkerRegistry::service_full_name(), true);
    worker_health->SetServingStatus(true);
  }
  return s;
}

absl::Status Scheduler::StartServers() {
  const SchedulerOptions& o = options_;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // Clients: TLS with the server certificate only (prunectl needs no client certificate).
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> client_creds,
                   MakeServerCredentials(TlsFiles{o.tls.cert, o.tls.key, ""}, false));
  const bool separate = o.worker_port >= 0;
  auto build = [&](int port, const std::shared_ptr<grpc::ServerCredentials>& creds,
                   std::vector<grpc::Service*> services, int* bound,
                   const char* flag) -> absl::StatusOr<std::unique_ptr<grpc::Server>> {
    grpc::ServerBuilder builder;
    // gRPC sets SO_REUSEPORT by default: a second server on a taken port would start silently
    // and take half of the calls. Off, a taken port is an error.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    // gRPC answers a larger message RESOURCE_EXHAUSTED with both sizes in the message.
    builder.SetMaxReceiveMessageSize(o.max_message_bytes);
    builder.AddListeningPort(absl::StrCat(o.host, ":", port), creds, bound);
    for (grpc::Service* service : services) builder.RegisterService(service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (server == nullptr || *bound == 0) {
      return absl::FailedPreconditionError(absl::StrCat("cannot listen on ", o.host, ":", port,
                                                        " (port in use? pick another ", flag,
                                                        ", or ", flag, "=0 for any free one)"));
    }
    return server;
  };
  std::vector<grpc::Service*> client_services = {pruning_service_.get()};
  if (!separate) client_services.push_back(registry_service_.get());
  ASSIGN_OR_RETURN(server_, build(o.port, client_creds, client_services, &port_, "--port"));
  worker_port_ = port_;
  if (separate) {
    // Workers: mutual TLS when --tls-ca is set (a worker needs a certificate the CA signed).
    ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> worker_creds,
                     MakeServerCredentials(o.tls, !o.tls.ca.empty()));
    ASSIGN_OR_RETURN(worker_server_, build(o.worker_port, worker_creds, {registry_service_.get()},
                                           &worker_port_, "--worker-port"));
  }
  spdlog::info("scheduler listening address={}:{} worker_port={} tls={} mtls_workers={} auth={}",
               o.host, port_, worker_port_, !o.tls.cert.empty(), !o.tls.ca.empty(),
               auth_->enabled());
  return absl::OkStatus();
}

void Scheduler::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  spdlog::info("scheduler shutting down");
  if (server_) server_->GetHealthCheckService()->SetServingStatus(false);
  if (worker_server_) worker_server_->GetHealthCheckService()->SetServingStatus(false);
  // Drivers stop where they are; their jobs stay non-terminal and resume at the next start.
  if (dispatcher_) dispatcher_->Shutdown();
  if (local_workers_) local_workers_->Stop();
  const auto deadline = std::chrono::system_clock::now() + absl::ToChronoSeconds(grace);
  if (worker_server_) worker_server_->Shutdown(deadline);
  if (server_) server_->Shutdown(deadline);
  sweeper_.reset();  // no call can wake it any more
  exposer_.reset();
}

Scheduler::~Scheduler() {
  Shutdown();
  if (lock_fd_ >= 0) close(lock_fd_);
}

}  // namespace prunesvc::server

#include "worker/worker_server.h"

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/process_metrics.h"
#include "common/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace prunesvc::worker {

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Create(const WorkerOptions& options) {
  std::unique_ptr<WorkerServer> w(new WorkerServer);
  w->options_ = options;
  ASSIGN_OR_RETURN(w->device_, model::OpenDevice(options.device, options.threads));

  w->registry_ = std::make_shared<prometheus::Registry>();
  std::shared_ptr<grpc::Channel> to_scheduler;
  if (!options.scheduler.empty()) {
    std::string token;
    if (!options.worker_token_file.empty()) {
      ASSIGN_OR_RETURN(token, ReadTokenFile(options.worker_token_file, "--worker-token-file"));
    }
    w->session_ = std::make_unique<SchedulerSession>(std::move(token));
    ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> creds,
                     MakeChannelCredentials(options.tls));
    to_scheduler = grpc::CreateChannel(options.scheduler, creds);
    SchedulerSession* session = w->session_.get();
    w->blob_client_ = NewGrpcBlobClient(
        to_scheduler, [session](grpc::ClientContext& ctx) { session->Decorate(ctx); });
  }
  StepRunnerOptions ro;
  ro.cache_dir = options.cache_dir;
  if (ro.cache_dir.empty()) {
    ro.cache_dir = absl::StrCat(std::filesystem::temp_directory_path().string(),
                                "/prunesvc-worker-", getpid());
  }
  ASSIGN_OR_RETURN(w->blob_cache_,
                   BlobCache::Create(ro.cache_dir + "/blobs", w->blob_client_.get()));
  ro.allowed_model_roots = options.allowed_model_roots;
  ro.max_prepared_jobs = options.max_prepared_jobs;
  ro.kept_preparations = options.kept_preparations;
  ro.device = options.device;
  ro.device_name = w->device_.name;
  ro.threads = options.threads;
  ro.batch_size = options.batch_size;
  ro.activation_cache_bytes = options.activation_cache_bytes;
  ro.inject_fault = options.inject_fault;
  if (options.executor_factory) {
    ASSIGN_OR_RETURN(w->runner_,
                     options.executor_factory(w->blob_cache_.get(), w->registry_.get()));
  } else {
    ASSIGN_OR_RETURN(w->runner_, StepRunner::Create(ro, w->blob_cache_.get(), w->registry_.get()));
  }
  w->service_ = std::make_unique<PruningWorkerService>(w->runner_.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second server on a taken port would start silently and
  // take half of the calls. Off, a taken port is an error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // With a CA, only the scheduler's certificate may call (mutual TLS + its common name).
  const bool mutual = !options.tls.ca.empty();
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> server_creds,
                   MakeServerCredentials(options.tls, mutual));
  if (mutual)
    server_creds->SetAuthMetadataProcessor(RequirePeerCommonName(options.scheduler_identity));
  builder.AddListeningPort(absl::StrCat(options.host, ":", options.port), server_creds, &w->port_);
  builder.RegisterService(w->service_.get());
  w->server_ = builder.BuildAndStart();
  if (w->server_ == nullptr || w->port_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on ", options.host, ":", options.port,
                     " (port in use? pick another --port, or --port=0 for any free one)"));
  }

  if (options.metrics_port >= 0) {
    ASSIGN_OR_RETURN(w->metrics_, MetricsHttpServer::Start(
                                      options.host, options.metrics_port,
                                      {w->registry_, std::make_shared<ProcessCollector>()}));
  }
  spdlog::info("worker listening address={}:{} device={} threads={} metrics_port={}", options.host,
               w->port_, w->device_.spec.ToString(), w->device_.threads, w->metrics_port());

  if (!options.scheduler.empty()) {
    std::string host = options.advertise_host;
    if (host.empty()) host = options.host == "0.0.0.0" ? "127.0.0.1" : options.host;
    ::prune::v1::WorkerInfo info;
    info.set_address(absl::StrCat(host, ":", w->port_));
    info.set_device(w->device_.spec.ToString());
    info.set_device_name(w->device_.name);
    info.set_device_memory_bytes(w->device_.memory_bytes);
    info.set_threads(w->device_.threads);
    info.set_metrics_port(w->metrics_port());
    info.set_version(PRUNESVC_VERSION);
    info.set_pid(getpid());
    char hostname[256] = {0};
    gethostname(hostname, sizeof(hostname) - 1);
    info.set_hostname(hostname);
    w->registrar_ = std::make_unique<Registrar>(options.scheduler, to_scheduler, info,
                                                w->session_.get(), w->runner_.get());
    w->registrar_->Start();
  }
  // Per-service statuses must be set explicitly; SetServingStatus(bool) then flips them all.
  w->server_->GetHealthCheckService()->SetServingStatus(
      ::prune::v1::PruningWorker::service_full_name(), true);
  w->server_->GetHealthCheckService()->SetServingStatus(true);
  return w;
}

bool WorkerServer::Drain(absl::Duration timeout) {
  if (shut_down_ || !service_) return true;
  if (server_) server_->GetHealthCheckService()->SetServingStatus(false);
  service_->StopAccepting();
  if (registrar_) registrar_->SetDraining();
  const std::vector<std::string> active =
      runner_ ? runner_->ActiveSteps() : std::vector<std::string>{};
  spdlog::info("draining: {} step(s) running, waiting up to {}", active.size(),
               absl::FormatDuration(timeout));
  const bool idle = service_->WaitIdle(timeout);
  if (idle) {
    spdlog::info("drained: no step is running");
  } else {
    spdlog::warn("drain timeout: stopping the steps still running (the scheduler retries them)");
  }
  return idle;
}

void WorkerServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) server_->GetHealthCheckService()->SetServingStatus(false);
  if (registrar_) registrar_->Stop();
  if (service_) service_->Drain();  // the steps stopped below move to other workers
  if (runner_) runner_->CancelSteps(runner_->ActiveSteps());
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoSeconds(grace));
  service_.reset();  // waits for the step threads
  metrics_.reset();
}

WorkerServer::~WorkerServer() { Shutdown(); }

}  // namespace prunesvc::worker

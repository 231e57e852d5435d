// The prune-worker process: PruningWorker gRPC server (+ health, reflection), /metrics over
// cpp-httplib, and registration/heartbeats with the scheduler. main() parses flags, then
// Create → wait for a signal → Shutdown.
#ifndef PRUNESVC_WORKER_WORKER_SERVER_H_
#define PRUNESVC_WORKER_WORKER_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tls.h"
#include "grpcpp/server.h"
#include "prometheus/registry.h"
#include "worker/blob_client.h"
#include "worker/metrics_http.h"
#include "worker/model/device.h"
#include "worker/registrar.h"
#include "worker/step_runner.h"
#include "worker/worker_service.h"

namespace prunesvc::worker {

struct WorkerOptions {
  std::string host = "0.0.0.0";
  int port = 50061;            // 0 = a free port
  std::string advertise_host;  // address given to the scheduler; default: host, or 127.0.0.1
  std::string scheduler;       // host:port; empty = standalone (no registration)
  std::string device = "cpu";
  int threads = 0;
  int metrics_port = 0;  // 0 = a free port; -1 = off
  std::string name;      // free-form, shown in logs
  // Steps (step_runner.h).
  std::string cache_dir;                         // default: $TMPDIR/prunesvc-worker-<port>
  std::vector<std::string> allowed_model_roots;  // none = every model refused
  size_t max_prepared_jobs = 2;
  int kept_preparations = 1;  // StepRunnerOptions::kept_preparations
  int batch_size = 16;
  int64_t activation_cache_bytes = int64_t(256) << 20;  // StepRunnerOptions'
  std::string inject_fault;  // testing only (StepRunnerOptions::inject_fault)
  // Security (docs/operations.md "TLS and tokens"): with tls.cert/key the PruningWorker server
  // speaks TLS; with tls.ca it requires a client certificate the CA signed whose common name is
  // scheduler_identity, and the calls to the scheduler verify it with the CA and present
  // tls.cert. worker_token_file holds the scheduler's worker token.
  TlsFiles tls;
  std::string scheduler_identity = "prune-scheduler";
  std::string worker_token_file;
  // Test and benchmark seam: builds the step executor instead of a StepRunner (bench/
  // dispatch_bench.cc's simulated workers). Gets the worker's blob cache and metrics registry.
  std::function<absl::StatusOr<std::unique_ptr<StepExecutor>>(BlobCache*, prometheus::Registry*)>
      executor_factory;
};

class WorkerServer {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Create(const WorkerOptions& options);
  ~WorkerServer();

  int port() const { return port_; }
  int metrics_port() const { return metrics_ ? metrics_->port() : -1; }
  const model::DeviceInfo& device() const { return device_; }
  // Scale-down without losing work: health turns NOT_SERVING, heartbeats say DRAINING (no new
  // step is leased here), new step calls are refused as retryable, and the running steps get up
  // to `timeout` to finish. Returns whether they all did; call Shutdown next (it stops what is
  // left, and the scheduler retries that on another worker).
  bool Drain(absl::Duration timeout);
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  WorkerServer() = default;

  WorkerOptions options_;
  model::DeviceInfo device_;
  int port_ = 0;
  std::unique_ptr<SchedulerSession> session_;
  std::unique_ptr<BlobClient> blob_client_;
  std::unique_ptr<BlobCache> blob_cache_;
  std::unique_ptr<StepExecutor> runner_;
  std::unique_ptr<PruningWorkerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<MetricsHttpServer> metrics_;
  std::unique_ptr<Registrar> registrar_;
  bool shut_down_ = false;
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_WORKER_SERVER_H_

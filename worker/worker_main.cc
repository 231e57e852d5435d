// prune-worker: the data plane, one process per accelerator. See `prune-worker --help`.
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/marshalling.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "common/server_util.h"
#include "worker/worker_server.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on (gRPC and metrics).");
ABSL_FLAG(int, port, 50061, "gRPC port for PruningWorker; 0 = a free port.");
ABSL_FLAG(std::string, advertise_host, "",
          "Host the scheduler should dial (default: --host, or 127.0.0.1 for 0.0.0.0).");
ABSL_FLAG(std::string, scheduler, "",
          "Scheduler host:port to register and heartbeat with; empty = standalone.");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda or cuda:N.");
ABSL_FLAG(int, threads, 0, "libtorch intra-op threads; 0 = number of cores.");
ABSL_FLAG(int, metrics_port, 0,
          "Prometheus /metrics port; 0 = a free port (reported at registration); -1 = off.");
ABSL_FLAG(std::string, worker_name, "", "Name shown in logs.");
ABSL_FLAG(std::string, ready_file, "",
          "When set, write {\"port\":..,\"metrics_port\":..,\"pid\":..} here once serving.");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");
ABSL_FLAG(std::string, cache_dir, "",
          "Where fetched datasets/projectors and scratch artifacts live (default: a directory "
          "under $TMPDIR named after the pid).");
ABSL_FLAG(std::vector<std::string>, allowed_model_roots, {},
          "Comma-separated directories model_uri paths must lie under (realpath); none = every "
          "model is refused.");
ABSL_FLAG(int, max_prepared_jobs, 2,
          "Prepared jobs (model + calibration + mask bank) kept in memory, least recently used "
          "evicted.");
ABSL_FLAG(int, kept_preparations, 1,
          "Preparations shared across jobs (dense scores, vision features, calibration, mask "
          "bank under the model's own projector) kept after the last job using one is evicted, "
          "for a re-submission; shared while any prepared job holds one regardless (0 = only "
          "then).");
ABSL_FLAG(int, batch, 16, "Samples per forward pass.");
ABSL_FLAG(int, activation_cache_mb, 256,
          "MiB of decoder activations each prepared job keeps across generations, so a candidate "
          "that agrees on its leading layers with one this worker evaluated before starts after "
          "them (0 = none; results are the same either way).");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate of this worker's PruningWorker server (with --tls-key: TLS), also its "
          "client certificate towards the scheduler's --worker-port.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA that verifies the scheduler (its worker port, and its client certificate: "
          "with it, only --scheduler-identity may call this worker).");
ABSL_FLAG(std::string, scheduler_identity, "prune-scheduler",
          "Common name of the scheduler's certificate; with --tls-ca no other client may call.");
ABSL_FLAG(std::string, worker_token_file, "",
          "File holding the scheduler's worker token (its --worker-token-file).");
ABSL_FLAG(int, drain_timeout, 25,
          "Seconds a SIGTERMed worker gives its running step to finish (it takes no new step and "
          "reports DRAINING meanwhile) before stopping it for another worker to redo; keep it "
          "under Kubernetes' terminationGracePeriodSeconds. 0 = stop at once.");
ABSL_FLAG(std::string, inject_fault, "",
          "Testing only: STEP:oom makes step STEP (prepare|evaluate|train|finalize) fail as an "
          "out-of-memory fault would.");

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  prunesvc::BlockShutdownSignals();
  prunesvc::ParseFlags(argc, argv,
                       "prune-worker: runs prunesvc's expensive steps on one device.\n"
                       "Usage: prune-worker --scheduler=HOST:PORT [--device=cpu|cuda:N] "
                       "[--port=50061]");
  std::string name = absl::GetFlag(FLAGS_worker_name);
  prunesvc::InitLogging(name.empty() ? "worker" : "worker/" + name, absl::GetFlag(FLAGS_log_level));

  prunesvc::worker::WorkerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.advertise_host = absl::GetFlag(FLAGS_advertise_host);
  options.scheduler = absl::GetFlag(FLAGS_scheduler);
  options.device = absl::GetFlag(FLAGS_device);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.name = name;
  options.cache_dir = absl::GetFlag(FLAGS_cache_dir);
  options.allowed_model_roots = absl::GetFlag(FLAGS_allowed_model_roots);
  options.max_prepared_jobs = size_t(std::max(1, absl::GetFlag(FLAGS_max_prepared_jobs)));
  options.kept_preparations = std::max(0, absl::GetFlag(FLAGS_kept_preparations));
  options.batch_size = absl::GetFlag(FLAGS_batch);
  if (absl::GetFlag(FLAGS_activation_cache_mb) < 0) {
    spdlog::critical("--activation-cache-mb must be ≥ 0 (0 = keep none), got {}",
                     absl::GetFlag(FLAGS_activation_cache_mb));
    return 2;
  }
  options.activation_cache_bytes = int64_t(absl::GetFlag(FLAGS_activation_cache_mb)) << 20;
  options.inject_fault = absl::GetFlag(FLAGS_inject_fault);
  options.tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                 absl::GetFlag(FLAGS_tls_ca)};
  options.scheduler_identity = absl::GetFlag(FLAGS_scheduler_identity);
  options.worker_token_file = absl::GetFlag(FLAGS_worker_token_file);

  auto worker = prunesvc::worker::WorkerServer::Create(options);
  if (!worker.ok()) {
    spdlog::critical("cannot start: {}", worker.status().message());
    return 2;
  }
  const std::string ready = absl::GetFlag(FLAGS_ready_file);
  if (!ready.empty()) {
    if (auto s = prunesvc::WriteReadyFile(ready, (*worker)->port(), (*worker)->metrics_port());
        !s.ok()) {
      spdlog::critical("{}", s.message());
      return 2;
    }
  }
  int sig = prunesvc::WaitForShutdownSignal();
  spdlog::info("received signal {}", sig);
  (*worker)->Drain(absl::Seconds(absl::GetFlag(FLAGS_drain_timeout)));
  (*worker)->Shutdown();
  return 0;
}

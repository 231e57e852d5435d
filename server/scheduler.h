// The prune-scheduler process: owns the gRPC servers (PruningService for clients; WorkerRegistry
// for workers, on the same port or on --worker-port with mutual TLS; health, reflection), the
// authenticator (tokens, worker token, quotas; Reload on SIGHUP), the job store
// (STATE_DIR/jobs.db), the blob store (STATE_DIR/blobs), the event hub, the worker table, metrics
// and the --local-workers supervisor. main() only parses flags and calls Create → Wait. Jobs stay
// QUEUED until a JobRunner (the dispatcher) is set. Thread-safe.
#ifndef PRUNESVC_SERVER_SCHEDULER_H_
#define PRUNESVC_SERVER_SCHEDULER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/subprocess.h"
#include "common/tls.h"
#include "grpcpp/server.h"
#include "prometheus/exposer.h"
#include "server/auth.h"
#include "server/blob_store.h"
#include "server/dispatcher.h"
#include "server/event_hub.h"
#include "server/job_runner.h"
#include "server/job_store.h"
#include "server/local_workers.h"
#include "server/metrics.h"
#include "server/pruning_service.h"
#include "server/registry_service.h"
#include "server/storage_sweeper.h"
#include "server/thread_pool.h"
#include "server/worker_table.h"

namespace prunesvc::server {

struct SchedulerOptions {
  std::string host = "0.0.0.0";
  int port = 50051;         // 0 = pick a free port
  int metrics_port = 9464;  // 0 = pick a free port; -1 = no metrics
  std::string state_dir;    // required; created if missing; locked against a second scheduler
  int local_workers = 0;
  std::string worker_binary;  // default: prune-worker next to this executable
  int worker_threads = 0;     // per local worker; 0 = cores / local_workers
  int worker_batch = 0;       // local workers' samples per scoring forward; 0 = their default
  std::string log_level = "info";
  WorkerTableOptions workers;
  DispatcherOptions dispatcher;  // step deadlines, retries, running-job limit
  SweepOptions sweep;            // retention and blob garbage collection
  absl::Duration sweep_interval = absl::Hours(1);
  // Directories a job's model may lie in (realpath'ed at start; each must exist). Empty = every
  // model is refused.
  std::vector<std::string> allowed_model_roots;
  int64_t max_upload_bytes = kDefaultMaxUploadBytes;
  int max_watchers_per_job = 256;
  int max_queued_jobs = 1000;                 // per tenant (the tokens file may override it)
  int64_t tenant_max_running_jobs = 0;        // per tenant; 0 = only --max-running-jobs
  int64_t tenant_max_stored_bytes = 0;        // per tenant; 0 = unlimited
  int64_t evaluation_cache_entries = 200000;  // the evaluation cache's bound (the store's)
  int64_t evaluation_cache_memory_bytes = int64_t{64} << 20;  // its values kept in memory
  // Security (docs/operations.md "TLS and tokens"). tls.cert/key serve TLS on both ports;
  // tls.ca requires client certificates on the worker port, verifies the workers' servers and
  // (with tls.cert/key as the client certificate) is handed to local workers.
  TlsFiles tls;
  // With tls.ca: the name every worker's certificate must carry (checked instead of the host the
  // worker advertises, so workers may advertise pod IPs); empty = the advertised host.
  std::string worker_identity;
  int worker_port = -1;             // -1 = WorkerRegistry shares `port`; 0 = a free port
  std::string auth_tokens_file;     // empty = open: every caller is the admin of tenant ""
  std::string worker_token_file;    // empty = workers register without a token
  int max_message_bytes = 8 << 20;  // gRPC messages received (chunks are ≤ 1 MiB)
  int service_threads = 4;          // the pool for blocking service work (SQLite, validation)
};

class Scheduler {
 public:
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerOptions& options);
  ~Scheduler();

  int port() const { return port_; }
  // Where workers register: worker_port, or `port` when they share it.
  int worker_port() const { return worker_port_; }
  // Re-reads the tokens and worker token files (SIGHUP); on error the old ones stay.
  absl::Status ReloadCredentials();
  int metrics_port() const { return metrics_port_; }
  JobStore* store() const { return store_.get(); }
  BlobStore* blobs() const { return blobs_.get(); }
  EventHub* hub() const { return hub_.get(); }
  // Hands jobs to `runner` (nullptr = the no-op runner) and enqueues every non-terminal job.
  // `runner` must outlive the scheduler's server (call Shutdown before destroying it).
  absl::Status SetJobRunner(JobRunner* runner);
  // Marks NOT_SERVING, stops local workers, drains RPCs (up to `grace`), stops the server.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  Scheduler() = default;
  // The client server (and, with worker_port, the worker server), with their credentials.
  absl::Status StartServers();

  SchedulerOptions options_;
  int lock_fd_ = -1;
  int port_ = 0;
  int worker_port_ = 0;
  int metrics_port_ = -1;
  std::unique_ptr<SchedulerMetrics> metrics_;
  std::unique_ptr<WorkerTable> table_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<EventHub> hub_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<ThreadPool> upload_pool_;
  std::unique_ptr<PeriodicSweeper> sweeper_;  // before the services that wake it
  std::unique_ptr<RegistryService> registry_service_;
  std::unique_ptr<PruningServiceImpl> pruning_service_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> worker_server_;  // when --worker-port is set
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<WorkerConnector> connector_;
  std::unique_ptr<Dispatcher> dispatcher_;  // runs the jobs (search drivers)
  PosixProcessLauncher launcher_;
  std::unique_ptr<LocalWorkers> local_workers_;
  bool shut_down_ = false;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_SCHEDULER_H_

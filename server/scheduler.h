// The prune-scheduler process: owns the gRPC server (PruningService, WorkerRegistry, health,
// reflection), the worker table, metrics and the --local-workers supervisor. main() only parses
// flags and calls Create → Wait. Thread-safe.
#ifndef PRUNESVC_SERVER_SCHEDULER_H_
#define PRUNESVC_SERVER_SCHEDULER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/subprocess.h"
#include "grpcpp/server.h"
#include "prometheus/exposer.h"
#include "server/local_workers.h"
#include "server/metrics.h"
#include "server/services.h"
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
  std::string log_level = "info";
  WorkerTableOptions workers;
};

class Scheduler {
 public:
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerOptions& options);
  ~Scheduler();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  // Marks NOT_SERVING, stops local workers, drains RPCs (up to `grace`), stops the server.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  Scheduler() = default;

  SchedulerOptions options_;
  int lock_fd_ = -1;
  int port_ = 0;
  int metrics_port_ = -1;
  std::unique_ptr<SchedulerMetrics> metrics_;
  std::unique_ptr<WorkerTable> table_;
  std::unique_ptr<RegistryService> registry_service_;
  std::unique_ptr<PruningServiceImpl> pruning_service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  PosixProcessLauncher launcher_;
  std::unique_ptr<LocalWorkers> local_workers_;
  bool shut_down_ = false;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_SCHEDULER_H_

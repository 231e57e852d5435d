// The worker's /metrics endpoint: cpp-httplib rendering prometheus-cpp collectables with
// TextSerializer. prometheus-cpp's civetweb Exposer cannot start its threads in a process that
// also loads libtorch + OpenBLAS (docs/architecture.md §3), so the worker does not use it.
// Thread-safe.
#ifndef PRUNESVC_WORKER_METRICS_HTTP_H_
#define PRUNESVC_WORKER_METRICS_HTTP_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"

namespace httplib {
class Server;
}

namespace prunesvc::worker {

class MetricsHttpServer {
 public:
  // Binds host:port (port 0 = a free port) and serves GET /metrics on a background thread.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port,
      std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;

  std::unique_ptr<httplib::Server> server_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_METRICS_HTTP_H_

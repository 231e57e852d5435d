#include "worker/metrics_http.h"

#include <sys/socket.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/process_metrics.h"
#include "httplib.h"

namespace prunesvc::worker {

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port,
    std::vector<std::shared_ptr<prometheus::Collectable>> collectables) {
  std::unique_ptr<MetricsHttpServer> m(new MetricsHttpServer);
  m->collectables_ = std::move(collectables);
  m->server_ = std::make_unique<httplib::Server>();
  MetricsHttpServer* self = m.get();
  m->server_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    std::vector<const prometheus::Collectable*> raw;
    for (const auto& c : self->collectables_) raw.push_back(c.get());
    res.set_content(RenderMetrics(raw), "text/plain; version=0.0.4; charset=utf-8");
  });
  m->server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("prune-worker: see /metrics\n", "text/plain");
  });
  // httplib's default socket options add SO_REUSEPORT, with which a second server on a taken
  // port starts silently; keep SO_REUSEADDR only (restarts through TIME_WAIT).
  m->server_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  if (port == 0) {
    m->port_ = m->server_->bind_to_any_port(host);
  } else {
    m->port_ = m->server_->bind_to_port(host, port) ? port : -1;
  }
  if (m->port_ <= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot serve /metrics on ", host, ":", port,
                     " (port in use? pick another with --metrics-port)"));
  }
  m->thread_ = std::thread([self] { self->server_->listen_after_bind(); });
  return m;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace prunesvc::worker

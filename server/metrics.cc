#include "server/metrics.h"

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/family.h"

namespace prunesvc::server {

SchedulerMetrics::SchedulerMetrics() : registry(std::make_shared<prometheus::Registry>()) {
  worker_registrations = &prometheus::BuildCounter()
                              .Name("prunesvc_worker_registrations_total")
                              .Help("Worker registrations accepted (including re-registrations).")
                              .Register(*registry)
                              .Add({});
  local_worker_restarts = &prometheus::BuildCounter()
                               .Name("prunesvc_local_worker_restarts_total")
                               .Help("Local worker processes restarted after they exited.")
                               .Register(*registry)
                               .Add({});
}

std::vector<prometheus::MetricFamily> WorkersCollector::Collect() const {
  prometheus::MetricFamily family;
  family.name = "prunesvc_workers";
  family.help = "Registered workers by state.";
  family.type = prometheus::MetricType::Gauge;
  auto counts = table_->CountByState();
  const std::pair<prune::v1::WorkerState, const char*> states[] = {
      {prune::v1::WORKER_IDLE, "idle"},
      {prune::v1::WORKER_BUSY, "busy"},
      {prune::v1::WORKER_LOST, "lost"},
      {prune::v1::WORKER_DRAINING, "draining"}};
  for (const auto& [state, name] : states) {
    prometheus::ClientMetric m;
    m.label.push_back({"state", name});
    m.gauge.value = counts[state];
    family.metric.push_back(std::move(m));
  }
  return {family};
}

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartExposer(
    const std::string& bind_address,
    const std::vector<std::shared_ptr<prometheus::Collectable>>& collectables) {
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(bind_address, /*num_threads=*/2);
    for (const auto& c : collectables) exposer->RegisterCollectable(c);
    return exposer;
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve /metrics on ", bind_address, ": ", e.what(),
                     " (is the port in use? pick another with --metrics-port)"));
  }
}

}  // namespace prunesvc::server

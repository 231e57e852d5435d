// A prometheus-cpp Collectable exposing this process's own metrics from /proc/self, in the
// names the Prometheus client libraries use (process_cpu_seconds_total,
// process_resident_memory_bytes, process_open_fds, process_start_time_seconds, ...).
// prometheus-cpp 1.0 ships no process collector. Thread-safe: Collect() reads /proc each time.
#ifndef PRUNESVC_COMMON_PROCESS_METRICS_H_
#define PRUNESVC_COMMON_PROCESS_METRICS_H_

#include <string>
#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace prunesvc {

class ProcessCollector : public prometheus::Collectable {
 public:
  // `proc_dir` is "/proc/self" in production; tests may point it at a fixture.
  explicit ProcessCollector(std::string proc_dir = "/proc/self");
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::string proc_dir_;
};

// Renders a set of collectables in the Prometheus text format (what /metrics returns).
std::string RenderMetrics(const std::vector<const prometheus::Collectable*>& collectables);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_PROCESS_METRICS_H_

#include "common/process_metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "prometheus/text_serializer.h"

namespace prunesvc {
namespace {

prometheus::MetricFamily Gauge(std::string name, std::string help, double value,
                               prometheus::MetricType type = prometheus::MetricType::Gauge) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("btime ", 0) == 0) {
      double v = 0;
      if (absl::SimpleAtod(line.substr(6), &v)) return v;
    }
  }
  return 0;
}

}  // namespace

ProcessCollector::ProcessCollector(std::string proc_dir) : proc_dir_(std::move(proc_dir)) {}

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  std::vector<prometheus::MetricFamily> out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));

  // /proc/self/stat: the comm field may contain spaces, so split after the last ')'.
  std::ifstream stat_in(proc_dir_ + "/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_in)), std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  if (close != std::string::npos) {
    std::vector<std::string> f = absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
    // Fields after comm start at index 0 = state (field 3 in proc(5)).
    auto field = [&](int proc5_index) -> double {
      size_t i = static_cast<size_t>(proc5_index - 3);
      double v = 0;
      if (i < f.size() && absl::SimpleAtod(f[i], &v)) return v;
      return 0;
    };
    double cpu = (field(14) + field(15)) / ticks;
    out.push_back(Gauge("process_cpu_seconds_total",
                        "Total user and system CPU time spent in seconds.", cpu,
                        prometheus::MetricType::Counter));
    out.push_back(
        Gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", field(23)));
    out.push_back(
        Gauge("process_resident_memory_bytes", "Resident memory size in bytes.", field(24) * page));
    out.push_back(Gauge("process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds.",
                        BootTimeSeconds() + field(22) / ticks));
    out.push_back(Gauge("process_threads", "Number of OS threads in the process.", field(20)));
  }

  int fds = 0;
  if (DIR* d = opendir((proc_dir_ + "/fd").c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++fds;
    }
    closedir(d);
    --fds;  // the descriptor opendir itself holds
  }
  out.push_back(Gauge("process_open_fds", "Number of open file descriptors.", fds < 0 ? 0 : fds));

  std::ifstream limits(proc_dir_ + "/limits");
  std::string line;
  while (std::getline(limits, line)) {
    if (line.rfind("Max open files", 0) == 0) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
      double v = 0;
      if (parts.size() > 3 && absl::SimpleAtod(parts[3], &v)) {
        out.push_back(Gauge("process_max_fds", "Maximum number of open file descriptors.", v));
      }
    }
  }
  return out;
}

std::string RenderMetrics(const std::vector<const prometheus::Collectable*>& collectables) {
  std::vector<prometheus::MetricFamily> families;
  for (const auto* c : collectables) {
    auto f = c->Collect();
    families.insert(families.end(), std::make_move_iterator(f.begin()),
                    std::make_move_iterator(f.end()));
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace prunesvc

#include "common/process_metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace prunesvc {
namespace {

double ValueOf(const std::string& text, const std::string& name) {
  size_t pos = text.find("\n" + name + " ");
  if (pos == std::string::npos) return -1;
  return std::stod(text.substr(pos + name.size() + 2));
}

TEST(ProcessCollectorTest, ReportsOwnProcess) {
  ProcessCollector collector;
  std::string text = RenderMetrics({&collector});
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter"), std::string::npos) << text;
  EXPECT_GT(ValueOf(text, "process_resident_memory_bytes"), 1e5);
  double start = ValueOf(text, "process_start_time_seconds");
  EXPECT_GT(start, 1.6e9);
  EXPECT_LT(start, static_cast<double>(time(nullptr)) + 5);

  double fds_before = ValueOf(text, "process_open_fds");
  int fd = open("/dev/null", O_RDONLY);
  ASSERT_GE(fd, 0);
  double fds_after = ValueOf(RenderMetrics({&collector}), "process_open_fds");
  close(fd);
  EXPECT_EQ(fds_after, fds_before + 1);
}

TEST(ProcessCollectorTest, CpuSecondsGrowWithWork) {
  ProcessCollector collector;
  double before = ValueOf(RenderMetrics({&collector}), "process_cpu_seconds_total");
  volatile double x = 0;
  const clock_t start = clock();
  while (clock() - start < CLOCKS_PER_SEC / 5) x = x + 1;  // ~0.2 s of CPU
  double after = ValueOf(RenderMetrics({&collector}), "process_cpu_seconds_total");
  EXPECT_GE(after - before, 0.1);
}

TEST(ProcessCollectorTest, MissingProcDirYieldsNoCrash) {
  ProcessCollector collector("/nonexistent/proc");
  std::string text = RenderMetrics({&collector});
  EXPECT_EQ(text.find("process_cpu_seconds_total"), std::string::npos);
}

}  // namespace
}  // namespace prunesvc

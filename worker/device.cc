#include "worker/device.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace prunesvc::worker {

std::string DeviceSpec::ToString() const { return cuda ? absl::StrCat("cuda:", index) : "cpu"; }

absl::StatusOr<DeviceSpec> ParseDeviceSpec(const std::string& text) {
  DeviceSpec spec;
  if (text == "cpu") return spec;
  absl::string_view rest = text;
  if (absl::ConsumePrefix(&rest, "cuda")) {
    spec.cuda = true;
    if (rest.empty()) return spec;
    if (absl::ConsumePrefix(&rest, ":") && absl::SimpleAtoi(rest, &spec.index) && spec.index >= 0 &&
        spec.index < 1024) {
      return spec;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device '", text, "': expected cpu, cuda or cuda:N"));
}

namespace {

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      size_t colon = line.find(':');
      if (colon != std::string::npos)
        return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "cpu";
}

}  // namespace

absl::StatusOr<DeviceInfo> OpenDevice(const std::string& text, int threads) {
  auto spec = ParseDeviceSpec(text);
  if (!spec.ok()) return spec.status();
  DeviceInfo info;
  info.spec = *spec;
  if (spec->cuda) {
    if (!at::globalContext().hasCUDA()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--device ", text,
          ": this prune-worker was built against a CPU-only libtorch (Debian's libtorch-dev); "
          "use --device=cpu here, or the CUDA image from docker/ on a GPU machine"));
    }
    // A CUDA-enabled build would check the index against the device count here; the Debian
    // build never gets this far.
    return absl::UnimplementedError("CUDA device support needs a CUDA build of libtorch");
  }
  info.name = CpuModelName();
  info.memory_bytes = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  info.threads = at::get_num_threads();
  return info;
}

}  // namespace prunesvc::worker

#include "worker/model/device.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifdef PRUNESVC_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace prunesvc::model {

std::string DeviceSpec::ToString() const { return cuda ? absl::StrCat("cuda:", index) : "cpu"; }

at::Device DeviceSpec::torch_device() const {
  return cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)) : at::Device(at::kCPU);
}

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

absl::StatusOr<int> SetTorchThreads(int requested) {
  int threads = requested;
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  try {
    at::set_num_threads(threads);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("--threads ", threads, ": ", e.what()));
  }
  return at::get_num_threads();
}

absl::StatusOr<DeviceInfo> OpenDevice(const std::string& text, int threads) {
  auto spec = ParseDeviceSpec(text);
  if (!spec.ok()) return spec.status();
  DeviceInfo info;
  info.spec = *spec;
  if (spec->cuda) {
    if (!torch::cuda::is_available()) {
      if (!at::globalContext().hasCUDA()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "--device ", text,
            ": this binary was built against a CPU-only libtorch (Debian's libtorch-dev); use "
            "--device=cpu here, or build with a CUDA libtorch (docs/gpu.md)"));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("--device ", text,
                       ": libtorch has CUDA but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"));
    }
    const size_t count = torch::cuda::device_count();
    if (static_cast<size_t>(spec->index) >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("--device ", text, ": this machine has ", count,
                       " CUDA device(s), cuda:0 to cuda:", count - 1));
    }
#ifdef PRUNESVC_CUDA
    try {
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(spec->index));
      const cudaDeviceProp* prop = at::cuda::getDeviceProperties(spec->index);
      info.name = prop->name;
      info.memory_bytes = static_cast<int64_t>(prop->totalGlobalMem);
    } catch (const std::exception& e) {
      return absl::FailedPreconditionError(absl::StrCat("--device ", text, ": ", e.what()));
    }
#else
    info.name = absl::StrCat("CUDA device ", spec->index);
#endif
    // IEEE float32 everywhere (see the header): the pruning scores must not depend on the device.
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  } else {
    info.name = CpuModelName();
    info.memory_bytes = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  }
  auto n = SetTorchThreads(threads);
  if (!n.ok()) return n.status();
  info.threads = *n;
  return info;
}

void SynchronizeDevice(at::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

}  // namespace prunesvc::model

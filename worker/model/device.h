// Resolves a --device flag ("cpu", "cuda", "cuda:N") against what this build and machine offer,
// and applies --threads to libtorch (Debian's libtorch starts with 1 intra-op thread;
// docs/architecture.md §3). Used by prune-worker, prune-local, llava-eval and the benches, so they
// all accept the same spellings and give the same errors (e.g. a CUDA device on a CPU-only build
// names the fix).
//
// CUDA: the build is CUDA-capable when it links a CUDA libtorch (CMake option PRUNESVC_CUDA,
// docs/gpu.md); Debian's libtorch is CPU-only. On a CUDA device the runtime computes in IEEE
// float32: OpenDevice turns TF32 off for cuBLAS and cuDNN, so pruning scores and accuracies agree
// with the CPU to float32 rounding (worker/prune/cuda_parity_test.cc states the tolerances).
#ifndef PRUNESVC_WORKER_MODEL_DEVICE_H_
#define PRUNESVC_WORKER_MODEL_DEVICE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prunesvc::model {

struct DeviceSpec {
  bool cuda = false;
  int index = 0;
  std::string ToString() const;
  at::Device torch_device() const;
};

// Pure parsing: "cpu" | "cuda" (= cuda:0) | "cuda:N".
absl::StatusOr<DeviceSpec> ParseDeviceSpec(const std::string& text);

struct DeviceInfo {
  DeviceSpec spec;
  std::string name;          // CPU model or GPU name
  int64_t memory_bytes = 0;  // host RAM for cpu, device memory for cuda
  int threads = 0;           // intra-op threads in effect (host threads also drive a GPU)
  at::Device device() const { return spec.torch_device(); }
};

// Checks availability (CUDA compiled in and the index present), makes a CUDA device the current
// one, and sets torch's thread count (threads <= 0 = number of cores). Errors:
// InvalidArgument (bad spelling, bad thread count), FailedPrecondition (CUDA asked of a CPU-only
// build, or an index past the devices present).
absl::StatusOr<DeviceInfo> OpenDevice(const std::string& text, int threads);

// Sets torch's intra-op threads (<= 0 = number of cores) and returns the number in effect.
absl::StatusOr<int> SetTorchThreads(int requested);

// Waits until all work queued on `device` has finished (no-op on the CPU), so that wall-clock
// timings of GPU work measure the work, not its launch.
void SynchronizeDevice(at::Device device);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_DEVICE_H_

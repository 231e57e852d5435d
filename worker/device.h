// Resolves the worker's --device flag ("cpu", "cuda", "cuda:N") against what this build and
// machine offer, and applies --threads to libtorch (Debian's libtorch starts with 1 intra-op
// thread; DESIGN.md §3). Errors say what to fix (e.g. a CUDA device on a CPU-only build).
#ifndef PRUNESVC_WORKER_DEVICE_H_
#define PRUNESVC_WORKER_DEVICE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace prunesvc::worker {

struct DeviceSpec {
  bool cuda = false;
  int index = 0;
  std::string ToString() const;
};

// Pure parsing: "cpu" | "cuda" (= cuda:0) | "cuda:N".
absl::StatusOr<DeviceSpec> ParseDeviceSpec(const std::string& text);

struct DeviceInfo {
  DeviceSpec spec;
  std::string name;          // CPU model or GPU name
  int64_t memory_bytes = 0;  // host RAM for cpu
  int threads = 0;           // intra-op threads in effect
};

// Checks availability (CUDA compiled in and the index present) and sets torch's thread count
// (threads <= 0 = number of cores).
absl::StatusOr<DeviceInfo> OpenDevice(const std::string& text, int threads);

}  // namespace prunesvc::worker

#endif  // PRUNESVC_WORKER_DEVICE_H_

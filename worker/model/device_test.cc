#include "worker/model/device.h"

#include <ATen/Context.h>

#include "gtest/gtest.h"

namespace prunesvc::model {
namespace {

TEST(DeviceTest, ParsesSpecs) {
  EXPECT_FALSE(ParseDeviceSpec("cpu")->cuda);
  EXPECT_TRUE(ParseDeviceSpec("cuda")->cuda);
  EXPECT_EQ(ParseDeviceSpec("cuda:3")->index, 3);
  EXPECT_EQ(ParseDeviceSpec("cuda:3")->ToString(), "cuda:3");
  for (const char* bad : {"", "gpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "CUDA:0"}) {
    auto r = ParseDeviceSpec(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(r.status().message().find("expected cpu, cuda or cuda:N"), std::string::npos);
  }
}

TEST(DeviceTest, CpuOpensWithRequestedThreads) {
  auto info = OpenDevice("cpu", 2);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->threads, 2);
  EXPECT_GT(info->memory_bytes, 0);
  EXPECT_FALSE(info->name.empty());
}

TEST(DeviceTest, CudaOnCpuOnlyBuildIsAClearError) {
  if (at::globalContext().hasCUDA()) GTEST_SKIP() << "this libtorch has CUDA";
  auto info = OpenDevice("cuda:0", 1);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(info.status().message().find("CPU-only libtorch"), std::string::npos) << info.status();
}

TEST(DeviceTest, TorchDeviceMatchesSpec) {
  EXPECT_EQ(ParseDeviceSpec("cpu")->torch_device(), at::Device(at::kCPU));
  EXPECT_EQ(ParseDeviceSpec("cuda:2")->torch_device(), at::Device(at::kCUDA, 2));
}

// On a CUDA build with a GPU (scripts/gpu_check.sh): the name and memory come from the device, an
// index past the last device is refused by name.
TEST(DeviceTest, CudaDeviceOpensAndBadIndexIsRefused) {
  if (!at::globalContext().hasCUDA()) GTEST_SKIP() << "CPU-only libtorch";
  auto info = OpenDevice("cuda:0", 1);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->device(), at::Device(at::kCUDA, 0));
  EXPECT_GT(info->memory_bytes, 0);
  auto bad = OpenDevice("cuda:1000", 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(bad.status().message().find("CUDA device(s)"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace prunesvc::model

#include "client/operations.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace prunesvc::client {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;

std::string FreshDir(const std::string& name) {
  const fs::path p = fs::path(::testing::TempDir()) / absl::StrCat("operations_", name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

TEST(RetryTest, BackoffDoublesUpToTheCap) {
  RetryPolicy p;
  p.initial = absl::Milliseconds(100);
  p.max = absl::Milliseconds(700);
  EXPECT_EQ(BackoffDelay(p, 1), absl::Milliseconds(100));
  EXPECT_EQ(BackoffDelay(p, 2), absl::Milliseconds(200));
  EXPECT_EQ(BackoffDelay(p, 3), absl::Milliseconds(400));
  EXPECT_EQ(BackoffDelay(p, 4), absl::Milliseconds(700));
  EXPECT_EQ(BackoffDelay(p, 60), absl::Milliseconds(700));
}

TEST(RetryTest, OnlyTransportErrorsRetry) {
  EXPECT_TRUE(IsRetryable(absl::UnavailableError("")));
  EXPECT_TRUE(IsRetryable(absl::DeadlineExceededError("")));
  EXPECT_FALSE(IsRetryable(absl::NotFoundError("")));
  EXPECT_FALSE(IsRetryable(absl::InvalidArgumentError("")));
  EXPECT_FALSE(IsRetryable(absl::CancelledError("")));
}

TEST(ExitCodeTest, FromTheJobsEnd) {
  pb::Job job;
  job.set_state(pb::SUCCEEDED);
  EXPECT_EQ(ExitCodeForJob(job), 0);
  job.set_state(pb::CANCELLED);
  EXPECT_EQ(ExitCodeForJob(job), 130);
  job.set_state(pb::FAILED);
  EXPECT_EQ(ExitCodeForJob(job), 1);
  job.set_error_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(ExitCodeForJob(job), 2);
  job.set_error_code(static_cast<int>(absl::StatusCode::kInternal));
  EXPECT_EQ(ExitCodeForJob(job), 1);
}

TEST(ResumeTest, OffsetIsThePartialFilesSize) {
  const std::string dir = FreshDir("resume");
  const std::string f = dir + "/artifact.tar";
  EXPECT_EQ(ResumeOffset(f), 0);
  std::ofstream(f, std::ios::binary) << std::string(1234, 'x');
  EXPECT_EQ(ResumeOffset(f), 1234);
  std::ofstream(f, std::ios::binary | std::ios::app) << std::string(66, 'y');
  EXPECT_EQ(ResumeOffset(f), 1300);

  pb::ArtifactInfo info;
  info.set_size_bytes(1300);
  EXPECT_TRUE(CheckResumeInfo(1300, info).ok());
  EXPECT_TRUE(CheckResumeInfo(0, info).ok());
  EXPECT_EQ(CheckResumeInfo(1301, info).code(), absl::StatusCode::kOutOfRange);
}

TEST(ResumeTest, PartialDownloadBelongsToOneArtifact) {
  const std::string dir = FreshDir("claim");
  const std::string tar = dir + "/artifact.tar";
  ASSERT_TRUE(ClaimPartialDownload(dir, "sha256:aa", tar).ok());
  std::ofstream(tar, std::ios::binary) << std::string(500, 'x');
  ASSERT_TRUE(ClaimPartialDownload(dir, "sha256:aa", tar).ok());
  EXPECT_EQ(ResumeOffset(tar), 500);  // same artifact: resume
  ASSERT_TRUE(ClaimPartialDownload(dir, "sha256:bb", tar).ok());
  EXPECT_EQ(ResumeOffset(tar), 0);  // another artifact: start over
}

TEST(OutputDirTest, RefusesNonEmpty) {
  const std::string dir = FreshDir("out");
  EXPECT_TRUE(CheckOutputDir(dir + "/new").ok());
  EXPECT_TRUE(CheckOutputDir(dir).ok());
  std::ofstream(dir + "/file") << "x";
  EXPECT_EQ(CheckOutputDir(dir).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(CheckOutputDir(dir + "/file").code(), absl::StatusCode::kAlreadyExists);
}

TEST(UploadTest, DefaultDatasetName) {
  EXPECT_EQ(DefaultDatasetName("/data/shapes.tar.gz"), "shapes");
  EXPECT_EQ(DefaultDatasetName("/data/shapes.tar"), "shapes");
  EXPECT_EQ(DefaultDatasetName("/data/shapes-vqa/"), "shapes-vqa");
  EXPECT_EQ(DefaultDatasetName("rel"), "rel");
}

}  // namespace
}  // namespace prunesvc::client

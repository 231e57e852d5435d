#include "client/operations.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/batch.h"
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

// ---- prunectl batch: parsing and expansion (client/batch.h) -----------------------------------

namespace prunesvc::client {
namespace {

TEST(BatchFileTest, ExpandsTheGridInFileOrderWithSharedFieldsAndStableRequestIds) {
  auto file = ParseBatchFile(
      "name: sweep\n"
      "dataset: /data/search\n"
      "spec: {population: 16, labels: {team: vision}, ratio_choices: [0, 0.5, 0.9]}\n"
      "grid:\n"
      "  model_uri: [file:///m/a, file:///m/b]\n"
      "  flops_budget: [0.5, 0.7]\n"
      "  strategy: UNIFORM\n",
      "sweep.yaml");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->out, "batch-sweep");
  auto jobs = ExpandBatch(*file, "sha256:" + std::string(64, 'a'), "");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 4u);
  EXPECT_EQ((*jobs)[0].name, "a.0.5.UNIFORM");
  EXPECT_EQ((*jobs)[1].name, "a.0.7.UNIFORM");
  EXPECT_EQ((*jobs)[3].name, "b.0.7.UNIFORM");
  for (const BatchJob& j : *jobs) {
    EXPECT_EQ(j.request.spec.population(), 16);
    EXPECT_EQ(j.request.spec.labels().at("team"), "vision");
    EXPECT_EQ(j.request.spec.ratio_choices_size(), 3);
    EXPECT_EQ(j.request.spec.dataset_id(), "sha256:" + std::string(64, 'a'));
  }
  EXPECT_EQ((*jobs)[3].request.spec.model_uri(), "file:///m/b");
  EXPECT_DOUBLE_EQ((*jobs)[3].request.spec.flops_budget(), 0.7);
  // Request ids: a function of the batch name and the whole spec.
  const std::string id = BatchRequestId("sweep", (*jobs)[0].request.spec);
  EXPECT_EQ(id, BatchRequestId("sweep", (*jobs)[0].request.spec));
  EXPECT_NE(id, BatchRequestId("sweep", (*jobs)[1].request.spec));
  EXPECT_NE(id, BatchRequestId("other", (*jobs)[0].request.spec));
  EXPECT_EQ(id.size(), 6u + 32u);
}

TEST(BatchFileTest, MalformedFilesNameTheLine) {
  const struct {
    std::string text, needle;
  } cases[] = {
      {"grid: {flops_budget: [0.5]}\n", "dataset: required"},
      {"dataset: d\n", "grid: required"},
      {"dataset: d\ncolour: red\ngrid: {seed: [1]}\n", "b.yaml:2: unknown key \"colour\""},
      {"dataset: d\ngrid:\n  flops_budget: []\n", "b.yaml:3: grid.flops_budget: expected"},
      {"dataset: d\ngrid:\n  flops_budgett: [0.5]\n", "flops_budgett"},
      {"dataset: d\nspec: [1, 2]\ngrid: {seed: [1]}\n", "b.yaml:2: spec: expected a mapping"},
      {"dataset: d\ngrid: {seed: [1}\n", "b.yaml:2"},
      {"name: a/b\ndataset: d\ngrid: {seed: [1]}\n", "name \"a/b\""},
      // Found by batch_file_fuzz: an empty model path made std::filesystem throw.
      {"dataset: d\ngrid:\n  model_uri: ['']\n", "model_uri"},
      {std::string("dataset: d\xff\ngrid: {seed: [1]}\n"), "not UTF-8 text (byte 10)"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<std::vector<BatchJob>> jobs = absl::InvalidArgumentError("unparsed");
    auto file = ParseBatchFile(c.text, "b.yaml");
    if (file.ok()) jobs = ExpandBatch(*file, "sha256:" + std::string(64, 'a'), "");
    const absl::Status s = file.ok() ? jobs.status() : file.status();
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_TRUE(absl::StrContains(s.message(), c.needle)) << c.needle << " / " << s;
  }
  // A value out of range is caught for every job before anything is sent, naming its line.
  auto file = ParseBatchFile(
      "dataset: d\ngrid:\n  model_uri: [file:///m]\n  flops_budget: [0.5, 2]\n", "b.yaml");
  ASSERT_TRUE(file.ok());
  auto jobs = ExpandBatch(*file, "sha256:" + std::string(64, 'a'), "");
  ASSERT_FALSE(jobs.ok());
  EXPECT_TRUE(absl::StrContains(jobs.status().message(), "b.yaml:4")) << jobs.status();
  // Two jobs may not share a name (the same value twice in an axis).
  file = ParseBatchFile("dataset: d\ngrid:\n  model_uri: [file:///m]\n  seed: [1, 1]\n", "b.yaml");
  ASSERT_TRUE(file.ok());
  EXPECT_FALSE(ExpandBatch(*file, "sha256:" + std::string(64, 'a'), "").ok());
}

}  // namespace
}  // namespace prunesvc::client

// `prunectl batch` against a real scheduler with local workers (issue 18): a 2 x 2 grid on the
// tiny model runs to completion, every artifact is fetched and the summary written; the re-run
// submits and fetches nothing.
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "prune/v1/pruning_service.grpc.pb.h"
#include "tests/e2e_service.h"
#include "tests/process_harness.h"

namespace prunesvc {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;
using testing::ReadFile;
using testing::RunShell;
using testing::SourceDir;
using testing::TheData;

int CountJobs(testing::Service& s) {
  grpc::ClientContext ctx;
  testing::Deadline(ctx, 30);
  pb::ListJobsRequest req;
  req.set_page_size(100);
  pb::ListJobsResponse resp;
  EXPECT_TRUE(s.stub->ListJobs(&ctx, req, &resp).ok());
  return resp.jobs_size();
}

TEST(BatchTest, AGridRunsToTheEndAndARerunRedoesNothing) {
  testing::Service s = testing::StartService("batch", /*workers=*/2);
  ASSERT_NE(s.stub, nullptr) << ReadFile(s.dir + "/scheduler.log");
  const std::string out = s.dir + "/out";
  const std::string file = s.dir + "/grid.yaml";
  std::ofstream(file) << "name: tiny-grid\n"
                      << "dataset: " << TheData().search << "\n"
                      << "eval_dataset: " << TheData().eval << "\n"
                      << "out: " << out << "\n"
                      << "spec: {population: 4, parents: 2, generations: 1, seed: 5}\n"
                      << "grid:\n"
                      << "  model_uri: [" << SourceDir() << "/models/tiny-llava-shapes]\n"
                      << "  flops_budget: [0.5, 0.7]\n"
                      << "  strategy: [EFFICIENTLLAVA, uniform]\n";
  const std::string run =
      absl::StrCat(testing::BinDir(), "/prunectl batch ", file, " --addr=127.0.0.1:", s.port, " >",
                   s.dir, "/stdout 2>", s.dir, "/stderr");
  ASSERT_EQ(RunShell(run), 0) << ReadFile(s.dir + "/stderr");
  EXPECT_TRUE(absl::StrContains(ReadFile(s.dir + "/stderr"), "4 jobs: 4 submitted, 0 already"))
      << ReadFile(s.dir + "/stderr");
  const std::string md = ReadFile(out + "/summary.md");
  EXPECT_EQ(md, ReadFile(s.dir + "/stdout"));
  const std::vector<std::string> names = {
      "tiny-llava-shapes.0.5.EFFICIENTLLAVA", "tiny-llava-shapes.0.5.uniform",
      "tiny-llava-shapes.0.7.EFFICIENTLLAVA", "tiny-llava-shapes.0.7.uniform"};
  for (const std::string& n : names) {
    EXPECT_TRUE(fs::exists(out + "/" + n + "/MANIFEST.sha256")) << n;
    EXPECT_TRUE(absl::StrContains(md, "| " + n + " | SUCCEEDED | ")) << md;
  }
  const std::vector<std::string> csv =
      absl::StrSplit(ReadFile(out + "/summary.csv"), '\n', absl::SkipEmpty());
  ASSERT_EQ(csv.size(), 5u);
  EXPECT_EQ(csv[0],
            "job,state,dense_accuracy,pruned_accuracy,flops_ratio,dense_latency_ms,"
            "pruned_latency_ms,artifact");
  for (size_t i = 1; i < csv.size(); ++i) {
    const std::vector<std::string> f = absl::StrSplit(csv[i], ',');
    ASSERT_EQ(f.size(), 8u) << csv[i];
    EXPECT_EQ(f[1], "SUCCEEDED");
    double flops = 0;
    ASSERT_TRUE(absl::SimpleAtod(f[4], &flops)) << csv[i];
    EXPECT_LE(flops, absl::StrContains(f[0], ".0.5.") ? 0.5 + 1e-9 : 0.7 + 1e-9) << csv[i];
    EXPECT_FALSE(f[2].empty());
    EXPECT_FALSE(f[3].empty());
  }
  EXPECT_EQ(CountJobs(s), 4);
  const auto manifest_time = fs::last_write_time(out + "/" + names[0] + "/MANIFEST.sha256");

  // The re-run: every SubmitJob is deduplicated, nothing is fetched again.
  ASSERT_EQ(RunShell(run), 0) << ReadFile(s.dir + "/stderr");
  EXPECT_TRUE(absl::StrContains(ReadFile(s.dir + "/stderr"), "4 jobs: 0 submitted, 4 already"))
      << ReadFile(s.dir + "/stderr");
  EXPECT_EQ(CountJobs(s), 4);
  EXPECT_EQ(fs::last_write_time(out + "/" + names[0] + "/MANIFEST.sha256"), manifest_time);
  EXPECT_EQ(ReadFile(out + "/summary.md"), md);

  // A bad file is exit 2 naming the line, before anything is sent.
  std::ofstream(file) << "dataset: " << s.dir << "/no-such-samples\ngrid:\n  model_uri: ["
                      << SourceDir() << "/models/tiny-llava-shapes]\n  flops_budget: [0.5, 2]\n";
  EXPECT_EQ(RunShell(run), 2);
  EXPECT_TRUE(absl::StrContains(ReadFile(s.dir + "/stderr"), "grid.yaml:4"))
      << ReadFile(s.dir + "/stderr");
  EXPECT_EQ(CountJobs(s), 4);
}

}  // namespace
}  // namespace prunesvc

#include "client/job_file.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace prunesvc::client {
namespace {

// gmock's string matchers on absl::string_view (Status::message()) as well as std::string.
::testing::Matcher<absl::string_view> HasSubstr(const std::string& s) {
  return ::testing::ResultOf([](absl::string_view v) { return std::string(v); },
                             ::testing::HasSubstr(s));
}
::testing::Matcher<absl::string_view> StartsWith(const std::string& s) {
  return ::testing::ResultOf([](absl::string_view v) { return std::string(v); },
                             ::testing::StartsWith(s));
}

const std::string kDataset = "sha256:" + std::string(64, 'a');

JobRequest ParseOk(const std::string& text, JobFileFormat format, const std::string& src) {
  JobRequest r;
  absl::Status s = ParseJobFile(text, format, src, r);
  EXPECT_TRUE(s.ok()) << s;
  return r;
}

absl::Status ParseErr(const std::string& text, JobFileFormat format, const std::string& src) {
  JobRequest r;
  absl::Status s = ParseJobFile(text, format, src, r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  return s;
}

constexpr char kYaml[] = R"(# a job
model_uri: file:///models/tiny
dataset_id: sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
flops_budget: 0.5
granularity: n_m
nm_pattern: "4:8"
population: 16
ratio_choices: [0, 0.25, 0.5]
eta: auto
seed: 7
labels:
  team: vision
  run: "3"
)";

constexpr char kJson[] = R"({
  "model_uri": "file:///models/tiny",
  "datasetId": "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  "flops_budget": 0.5,
  "granularity": "N_M",
  "nm_pattern": "NM_4_8",
  "population": 16,
  "ratio_choices": [0, 0.25, 0.5],
  "eta_auto": true,
  "seed": 7,
  "labels": {"team": "vision", "run": "3"}
})";

TEST(JobFileTest, YamlSetsOnlyTheGivenFields) {
  JobRequest r = ParseOk(kYaml, JobFileFormat::kYaml, "job.yaml");
  const auto& s = r.spec;
  EXPECT_EQ(s.model_uri(), "file:///models/tiny");
  EXPECT_EQ(s.dataset_id(), kDataset);
  EXPECT_EQ(s.flops_budget(), 0.5);
  EXPECT_EQ(s.granularity(), ::prune::v1::N_M);
  EXPECT_EQ(s.nm_pattern(), ::prune::v1::NM_4_8);
  EXPECT_TRUE(s.has_population());
  EXPECT_EQ(s.population(), 16);
  EXPECT_THAT(s.ratio_choices(), ::testing::ElementsAre(0, 0.25, 0.5));
  EXPECT_TRUE(s.eta_auto());
  EXPECT_FALSE(s.has_eta());
  EXPECT_EQ(s.seed(), 7u);
  EXPECT_EQ(s.labels().at("team"), "vision");
  EXPECT_EQ(s.labels().at("run"), "3");
  // Presence: nothing else is sent, so the server's defaults apply.
  EXPECT_FALSE(s.has_generations());
  EXPECT_FALSE(s.has_mutation());
  EXPECT_FALSE(s.has_strategy());
  EXPECT_FALSE(s.has_eval_dataset_id());
  EXPECT_EQ(r.origins.at("population"), "job.yaml:7 (population)");
}

TEST(JobFileTest, JsonAndYamlAgree) {
  JobRequest y = ParseOk(kYaml, JobFileFormat::kYaml, "job.yaml");
  JobRequest j = ParseOk(kJson, JobFileFormat::kJson, "job.json");
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(y.spec, j.spec))
      << y.spec.DebugString() << "\nvs\n"
      << j.spec.DebugString();
}

TEST(JobFileTest, DetectsFormat) {
  EXPECT_EQ(DetectJobFileFormat("a/job.JSON", ""), JobFileFormat::kJson);
  EXPECT_EQ(DetectJobFileFormat("job.yml", "{"), JobFileFormat::kYaml);
  EXPECT_EQ(DetectJobFileFormat("job", "  {\"a\": 1}"), JobFileFormat::kJson);
  EXPECT_EQ(DetectJobFileFormat("job", "a: 1"), JobFileFormat::kYaml);
}

TEST(JobFileTest, UnknownKeyNamesKeyAndLine) {
  absl::Status y =
      ParseErr("model_uri: file:///m\npopulaton: 8\n", JobFileFormat::kYaml, "job.yaml");
  EXPECT_THAT(y.message(), StartsWith("job.yaml:2: unknown key \"populaton\""));
  absl::Status j =
      ParseErr("{\n  \"dataset_id\": \"x\",\n  \"bogus\": 1\n}", JobFileFormat::kJson, "job.json");
  EXPECT_THAT(j.message(), StartsWith("job.json:3: unknown key \"bogus\""));
}

TEST(JobFileTest, MalformedInputsNameTheLine) {
  EXPECT_THAT(ParseErr("a: 1\npopulation: [1, 2\n", JobFileFormat::kYaml, "j.yaml").message(),
              HasSubstr("j.yaml:"));
  absl::Status bad_json = ParseErr("{\"population\": 4,}", JobFileFormat::kJson, "j.json");
  EXPECT_THAT(bad_json.message(), HasSubstr("invalid JSON"));
  EXPECT_THAT(bad_json.message(), HasSubstr("line 1"));
  // Found by job_file_fuzz: nlohmann throws out_of_range, not parse_error, on number overflow.
  EXPECT_THAT(
      ParseErr("{\"mutation\": 555555555555555555e555}", JobFileFormat::kJson, "j.json").message(),
      HasSubstr("invalid JSON"));
  EXPECT_THAT(ParseErr("seed: 1\npopulation: eight\n", JobFileFormat::kYaml, "j.yaml").message(),
              StartsWith("j.yaml:2: key \"population\": expected an integer"));
  EXPECT_THAT(ParseErr("seed: -1\n", JobFileFormat::kYaml, "j.yaml").message(),
              HasSubstr("unsigned"));
  EXPECT_THAT(ParseErr("seed: 1\nseed: 2\n", JobFileFormat::kYaml, "j.yaml").message(),
              StartsWith("j.yaml:2: duplicate key"));
  EXPECT_THAT(ParseErr("- a\n- b\n", JobFileFormat::kYaml, "j.yaml").message(),
              HasSubstr("mapping"));
  EXPECT_THAT(ParseErr("population:\n", JobFileFormat::kYaml, "j.yaml").message(),
              HasSubstr("has no value"));
  EXPECT_THAT(ParseErr("strategy: GREEDY\n", JobFileFormat::kYaml, "j.yaml").message(),
              HasSubstr("one of EFFICIENTLLAVA, UNIFORM, OWL, RANDOM_SEARCH"));
  EXPECT_THAT(ParseErr("ratio_choices: 0.5\n", JobFileFormat::kYaml, "j.yaml").message(),
              HasSubstr("list of numbers"));
  EXPECT_THAT(ParseErr("labels: [a]\n", JobFileFormat::kYaml, "j.yaml").message(),
              HasSubstr("mapping of string to string"));
  EXPECT_THAT(ParseErr("population: {a: 1}\n", JobFileFormat::kYaml, "j.yaml").message(),
              HasSubstr("single value"));
}

TEST(JobFileTest, FlagsSetPresenceAndOverrideTheFile) {
  JobRequest r = ParseOk("population: 8\nratio_choices: [0, 0.5]\neta: 0.5\nlabels: {a: x}\n",
                         JobFileFormat::kYaml, "j.yaml");
  ASSERT_TRUE(ApplySubmitFlags({{"population", "16"},
                                {"ratio-choices", "0, 0.1,0.2"},
                                {"eta", "auto"},
                                {"label", "a=y"},
                                {"label", "b=c=d"},
                                {"model", "rel/../models/tiny/"},
                                {"nm", "2:4"},
                                {"warm-start", "job-0123456789abcdef"}},
                               r)
                  .ok());
  EXPECT_EQ(r.spec.population(), 16);
  EXPECT_EQ(r.spec.warm_start_job_id(), "job-0123456789abcdef");
  EXPECT_THAT(r.spec.ratio_choices(), ::testing::ElementsAre(0, 0.1, 0.2));
  EXPECT_TRUE(r.spec.eta_auto());
  EXPECT_FALSE(r.spec.has_eta());
  EXPECT_EQ(r.spec.labels().at("a"), "y");
  EXPECT_EQ(r.spec.labels().at("b"), "c=d");
  EXPECT_THAT(r.spec.model_uri(), StartsWith("file:///"));
  EXPECT_THAT(r.spec.model_uri(), ::testing::EndsWith("/models/tiny"));
  EXPECT_THAT(r.spec.model_uri(), ::testing::Not(::testing::HasSubstr("..")));
  EXPECT_EQ(r.spec.nm_pattern(), ::prune::v1::NM_2_4);
  EXPECT_FALSE(r.spec.has_generations());
  EXPECT_EQ(r.origins.at("population"), "--population");
}

TEST(JobFileTest, FlagErrorsNameTheFlag) {
  JobRequest r;
  EXPECT_THAT(ApplySubmitFlags({{"generations", "x"}}, r).message(),
              StartsWith("--generations: expected an integer"));
  EXPECT_THAT(ApplySubmitFlags({{"label", "novalue"}}, r).message(), StartsWith("--label"));
  EXPECT_THAT(ApplySubmitFlags({{"frobnicate", "1"}}, r).message(), HasSubstr("--frobnicate"));
  EXPECT_EQ(ModelUriFromArg("file:///abs"), "file:///abs");
  EXPECT_EQ(ModelUriFromArg("/abs/dir/"), "file:///abs/dir");
}

TEST(JobFileTest, ParseLabel) {
  auto kv = ParseLabel("team=vision", "--label");
  ASSERT_TRUE(kv.ok());
  EXPECT_EQ(kv->first, "team");
  EXPECT_EQ(kv->second, "vision");
  ASSERT_TRUE(ParseLabel("k=", "--label").ok());
  EXPECT_EQ(ParseLabel("=v", "--label").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseLabel("kv", "--label").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(JobFileTest, ValidationNamesWhereTheFieldCameFrom) {
  JobRequest r;
  ASSERT_TRUE(ApplySubmitFlags(
                  {{"model", "/models/tiny"}, {"dataset", kDataset}, {"flops-budget", "0.5"}}, r)
                  .ok());
  EXPECT_TRUE(ValidateJobRequest(r).ok()) << ValidateJobRequest(r);

  JobRequest bad_flag = r;
  ASSERT_TRUE(ApplySubmitFlags({{"population", "2"}}, bad_flag).ok());
  EXPECT_THAT(ValidateJobRequest(bad_flag).message(), StartsWith("--population: population"));

  JobRequest bad_file = r;
  ASSERT_TRUE(
      ParseJobFile("seed: 1\nparents: 40\n", JobFileFormat::kYaml, "j.yaml", bad_file).ok());
  EXPECT_THAT(ValidateJobRequest(bad_file).message(), StartsWith("j.yaml:2 (parents): parents"));

  JobRequest missing;
  ASSERT_TRUE(ApplySubmitFlags({{"dataset", kDataset}, {"flops-budget", "0.5"}}, missing).ok());
  EXPECT_THAT(ValidateJobRequest(missing).message(), HasSubstr("--model"));

  JobRequest budget = r;
  ASSERT_TRUE(ApplySubmitFlags({{"flops-budget", "1.5"}}, budget).ok());
  EXPECT_THAT(ValidateJobRequest(budget).message(), StartsWith("--flops-budget: flops_budget"));
}

}  // namespace
}  // namespace prunesvc::client

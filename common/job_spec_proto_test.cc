#include "common/job_spec_proto.h"

#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc {
namespace {

namespace pb = ::prune::v1;
using ::testing::HasSubstr;

const char kId[] = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pb::JobSpec Minimal() {
  pb::JobSpec p;
  p.set_model_uri("file:///models/tiny");
  p.set_dataset_id(kId);
  p.set_flops_budget(0.5);
  return p;
}

TEST(JobSpecProtoTest, AbsentFieldsGetTheDocumentedDefaults) {
  auto s = JobSpecFromProto(Minimal());
  ASSERT_TRUE(s.ok()) << s.status();
  JobSpec expected;
  expected.model_uri = "file:///models/tiny";
  expected.dataset_id = kId;
  expected.flops_budget = 0.5;
  EXPECT_EQ(*s, expected);
}

TEST(JobSpecProtoTest, StructuredHasNoFinalMaskDefault) {
  pb::JobSpec p = Minimal();
  p.set_granularity(pb::STRUCTURED);
  auto s = JobSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->final_mask_method.has_value());
  EXPECT_FALSE(JobSpecToProto(*s).has_final_mask_method());
}

TEST(JobSpecProtoTest, ToProtoFillsEveryFieldAndRoundTrips) {
  pb::JobSpec p = Minimal();
  p.set_granularity(pb::N_M);
  p.set_nm_pattern(pb::NM_4_8);
  p.set_eval_dataset_id(kId);
  p.set_eta(3);
  p.set_seed(9);
  p.set_population(16);
  p.set_parents(4);
  p.set_priority(-5);
  (*p.mutable_labels())["team"] = "vision";
  p.set_request_id("r1");
  auto s = JobSpecFromProto(p);
  ASSERT_TRUE(s.ok()) << s.status();
  const pb::JobSpec full = JobSpecToProto(*s);
  EXPECT_TRUE(full.has_population() && full.has_generations() && full.has_parents() &&
              full.has_mutation() && full.has_projector_every() && full.has_projector_steps() &&
              full.has_projector_lr() && full.has_projector_decay() && full.has_seed() &&
              full.has_unit() && full.has_mask_method() && full.has_final_mask_method() &&
              full.has_strategy() && full.has_estimator() && full.has_prune_vision() &&
              full.has_priority() && full.has_rerank_top_k());
  EXPECT_EQ(full.ratio_choices_size(), 9);
  auto again = JobSpecFromProto(full);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *s);
  EXPECT_EQ(again->nm.n, 4);
  EXPECT_EQ(again->nm.m, 8);
  EXPECT_EQ(again->labels.at("team"), "vision");
  // eta auto round-trips as eta_auto = true.
  pb::JobSpec autop = Minimal();
  auto a = JobSpecFromProto(autop);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(JobSpecToProto(*a).eta_auto());
  EXPECT_FALSE(JobSpecToProto(*a).has_eta());
}

struct BadCase {
  std::string name;
  std::function<void(pb::JobSpec&)> mutate;
  std::string field;
};

TEST(JobSpecProtoTest, EveryInvalidFieldIsNamed) {
  const std::vector<BadCase> cases = {
      {"no model", [](pb::JobSpec& p) { p.clear_model_uri(); }, "model_uri"},
      {"http model", [](pb::JobSpec& p) { p.set_model_uri("http://x/m"); }, "model_uri"},
      {"relative model", [](pb::JobSpec& p) { p.set_model_uri("file://models/m"); }, "model_uri"},
      {"plain path", [](pb::JobSpec& p) { p.set_model_uri("/models/m"); }, "model_uri"},
      {"no dataset", [](pb::JobSpec& p) { p.clear_dataset_id(); }, "dataset_id"},
      {"bad dataset", [](pb::JobSpec& p) { p.set_dataset_id("sha256:ABC"); }, "dataset_id"},
      {"uppercase dataset",
       [](pb::JobSpec& p) {
         std::string id = kId;
         id[10] = 'A';
         p.set_dataset_id(id);
       },
       "dataset_id"},
      {"bad eval", [](pb::JobSpec& p) { p.set_eval_dataset_id("../x"); }, "eval_dataset_id"},
      {"budget 0", [](pb::JobSpec& p) { p.set_flops_budget(0); }, "flops_budget"},
      {"budget -1", [](pb::JobSpec& p) { p.set_flops_budget(-1); }, "flops_budget"},
      {"budget 1.5", [](pb::JobSpec& p) { p.set_flops_budget(1.5); }, "flops_budget"},
      {"granularity 9", [](pb::JobSpec& p) { p.set_granularity(pb::Granularity(9)); },
       "granularity"},
      {"nm without N_M", [](pb::JobSpec& p) { p.set_nm_pattern(pb::NM_2_4); }, "nm_pattern"},
      {"unit 7", [](pb::JobSpec& p) { p.set_unit(pb::PruningUnit(7)); }, "unit"},
      {"mask 8", [](pb::JobSpec& p) { p.set_mask_method(pb::MaskMethod(8)); }, "mask_method"},
      {"structured final",
       [](pb::JobSpec& p) {
         p.set_granularity(pb::STRUCTURED);
         p.set_final_mask_method(pb::WANDA);
       },
       "final_mask_method"},
      {"strategy 12", [](pb::JobSpec& p) { p.set_strategy(pb::Strategy(12)); }, "strategy"},
      {"population 0", [](pb::JobSpec& p) { p.set_population(0); }, "population"},
      {"generations 0", [](pb::JobSpec& p) { p.set_generations(0); }, "generations"},
      {"parents >= population",
       [](pb::JobSpec& p) {
         p.set_population(8);
         p.set_parents(8);
       },
       "parents"},
      {"mutation", [](pb::JobSpec& p) { p.set_mutation(-0.1); }, "mutation"},
      {"ratio choice 1", [](pb::JobSpec& p) { p.add_ratio_choices(1.0); }, "ratio_choices"},
      {"eta with eta_auto",
       [](pb::JobSpec& p) {
         p.set_eta(1);
         p.set_eta_auto(true);
       },
       "eta"},
      {"eta_auto false alone", [](pb::JobSpec& p) { p.set_eta_auto(false); }, "eta_auto"},
      {"eta negative", [](pb::JobSpec& p) { p.set_eta(-2); }, "eta"},
      {"estimator SPLIT", [](pb::JobSpec& p) { p.set_estimator(pb::SPLIT); }, "estimator"},
      {"prune_vision", [](pb::JobSpec& p) { p.set_prune_vision(true); }, "prune_vision"},
      {"rerank", [](pb::JobSpec& p) { p.set_rerank_top_k(3); }, "rerank_top_k"},
      {"sparsegpt search", [](pb::JobSpec& p) { p.set_mask_method(pb::SPARSEGPT); }, "mask_method"},
      {"projector_every", [](pb::JobSpec& p) { p.set_projector_every(-1); }, "projector_every"},
      {"projector_steps", [](pb::JobSpec& p) { p.set_projector_steps(-1); }, "projector_steps"},
      {"projector_lr", [](pb::JobSpec& p) { p.set_projector_lr(-1); }, "projector_lr"},
      {"projector_decay", [](pb::JobSpec& p) { p.set_projector_decay(-1); }, "projector_decay"},
      {"priority", [](pb::JobSpec& p) { p.set_priority(1000); }, "priority"},
      {"request_id", [](pb::JobSpec& p) { p.set_request_id(std::string(200, 'r')); }, "request_id"},
  };
  for (const BadCase& c : cases) {
    pb::JobSpec p = Minimal();
    c.mutate(p);
    const absl::StatusOr<JobSpec> s = JobSpecFromProto(p);
    ASSERT_FALSE(s.ok()) << c.name;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(c.field))
        << c.name << ": " << s.status();
  }
}

TEST(JobSpecProtoTest, ContentIdsAndFileUris) {
  EXPECT_TRUE(IsContentId(kId));
  EXPECT_FALSE(IsContentId("sha256:"));
  EXPECT_FALSE(IsContentId(std::string(kId) + "0"));
  EXPECT_FALSE(IsContentId(std::string("sha512") + (kId + 6)));
  EXPECT_EQ(*FileUriPath("file:///a/b", "model_uri"), "/a/b");
  EXPECT_FALSE(FileUriPath("file://", "model_uri").ok());
  EXPECT_FALSE(FileUriPath("s3://bucket/m", "model_uri").ok());
}

}  // namespace
}  // namespace prunesvc

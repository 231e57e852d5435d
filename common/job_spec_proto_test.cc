#include "common/job_spec_proto.h"

#include <functional>
#include <string>
#include <utility>
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

// The search options' defaults follow the strategy; explicit fields override them.
TEST(JobSpecProtoTest, SearchOptionDefaultsFollowTheStrategy) {
  const JobSpec d;
  pb::JobSpec p = Minimal();
  p.set_strategy(pb::RANDOM_SEARCH);
  auto random = JobSpecFromProto(p);
  ASSERT_TRUE(random.ok()) << random.status();
  EXPECT_EQ(random->slack_evaluations, d.slack_evaluations);
  EXPECT_FALSE(random->eta.has_value());
  EXPECT_FALSE(random->seed_with_uniform);
  p.set_slack_evaluations(0);
  EXPECT_EQ(JobSpecFromProto(p)->slack_evaluations, 0);
  p = Minimal();
  p.set_strategy(pb::UNIFORM);
  auto uniform = JobSpecFromProto(p);
  ASSERT_TRUE(uniform.ok()) << uniform.status();
  EXPECT_EQ(uniform->slack_evaluations, 0);
  EXPECT_FALSE(uniform->uniform_guard || uniform->seed_with_uniform);
  p = Minimal();
  p.set_eta_auto(true);  // auto over whatever η EFFICIENTLLAVA defaults to
  auto autoeta = JobSpecFromProto(p);
  ASSERT_TRUE(autoeta.ok()) << autoeta.status();
  EXPECT_FALSE(autoeta->eta.has_value());
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
  EXPECT_TRUE(
      full.has_population() && full.has_generations() && full.has_parents() &&
      full.has_mutation() && full.has_projector_every() && full.has_projector_steps() &&
      full.has_projector_lr() && full.has_projector_decay() && full.has_seed() && full.has_unit() &&
      full.has_mask_method() && full.has_final_mask_method() && full.has_strategy() &&
      full.has_estimator() && full.has_prune_vision() && full.has_priority() &&
      full.has_rerank_top_k() && full.has_eta_rule() && full.has_seed_with_uniform() &&
      full.has_seed_with_owl() && full.has_repair_uniform_seed() && full.has_mutation_step() &&
      full.has_slack_evaluations() && full.has_uniform_guard() && full.has_uniform_ratio_choice());
  EXPECT_EQ(full.ratio_choices_size(), 9);
  auto again = JobSpecFromProto(full);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *s);
  EXPECT_EQ(again->nm.n, 4);
  EXPECT_EQ(again->nm.m, 8);
  EXPECT_EQ(again->labels.at("team"), "vision");
  // eta auto round-trips as eta_auto = true.
  pb::JobSpec autop = Minimal();
  autop.set_eta_auto(true);
  auto a = JobSpecFromProto(autop);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(JobSpecToProto(*a).eta_auto());
  EXPECT_FALSE(JobSpecToProto(*a).has_eta());
}

// Every issue-14 option, set to a non-default value, survives proto → JobSpec → proto → JobSpec;
// absent, each is the default (covered by AbsentFieldsGetTheDocumentedDefaults).
TEST(JobSpecProtoTest, SearchOptionsRoundTrip) {
  for (pb::Estimator e : {pb::NORM, pb::UCB, pb::SPLIT, pb::CAPACITY, pb::PAIRED}) {
    pb::JobSpec p = Minimal();
    p.set_estimator(e);
    p.set_eta_rule(pb::CV);
    p.set_seed_with_uniform(true);
    p.set_seed_with_owl(true);
    p.set_repair_uniform_seed(true);
    p.set_mutation_step(0.25);
    p.set_slack_evaluations(7);
    p.set_uniform_guard(true);
    p.set_uniform_ratio_choice(true);
    p.set_warm_start_job_id("job-0123456789abcdef");
    auto s = JobSpecFromProto(p);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->warm_start_job_id, "job-0123456789abcdef");
    EXPECT_EQ(s->eta_rule, search::EtaRule::kCrossValidated);
    EXPECT_TRUE(s->seed_with_uniform);
    EXPECT_TRUE(s->seed_with_owl);
    EXPECT_TRUE(s->repair_uniform_seed);
    EXPECT_EQ(s->mutation_step, 0.25);
    EXPECT_EQ(s->slack_evaluations, 7);
    EXPECT_TRUE(s->uniform_guard);
    EXPECT_TRUE(s->uniform_ratio_choice);
    const pb::JobSpec full = JobSpecToProto(*s);
    EXPECT_EQ(full.estimator(), e);
    EXPECT_EQ(full.eta_rule(), pb::CV);
    EXPECT_TRUE(full.seed_with_uniform() && full.seed_with_owl() && full.repair_uniform_seed() &&
                full.uniform_guard());
    EXPECT_EQ(full.mutation_step(), 0.25);
    EXPECT_EQ(full.slack_evaluations(), 7);
    auto again = JobSpecFromProto(full);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(*again, *s);
  }
  // The estimator's names map one to one.
  const std::pair<pb::Estimator, Estimator> names[] = {{pb::NORM, Estimator::kNorm},
                                                       {pb::UCB, Estimator::kUcb},
                                                       {pb::SPLIT, Estimator::kSplit},
                                                       {pb::CAPACITY, Estimator::kCapacity},
                                                       {pb::PAIRED, Estimator::kPaired}};
  for (const auto& [proto, native] : names) {
    pb::JobSpec p = Minimal();
    p.set_estimator(proto);
    ASSERT_EQ(JobSpecFromProto(p)->estimator, native);
  }
  // Defaults are written explicitly, as false / 0 (the uniform options: true), PAIRED and η
  // chosen by the SAMPLES rule (eta_auto with eta_rule SAMPLES), which reads back the same.
  const pb::JobSpec d = JobSpecToProto(*JobSpecFromProto(Minimal()));
  EXPECT_EQ(d.eta_rule(), pb::SAMPLES);
  EXPECT_EQ(d.estimator(), pb::PAIRED);
  EXPECT_TRUE(!d.has_eta() && d.eta_auto());
  EXPECT_EQ(*JobSpecFromProto(d), *JobSpecFromProto(Minimal()));
  // An eta_rule or estimator without an eta: η is chosen by the rule, AUTO's unless one is named
  // (the SAMPLES default is for a spec that says nothing of η); eta_auto alone is AUTO too.
  pb::JobSpec ucb = Minimal();
  ucb.set_estimator(pb::UCB);
  EXPECT_FALSE(JobSpecFromProto(ucb)->eta.has_value());
  EXPECT_EQ(JobSpecFromProto(ucb)->eta_rule, search::EtaRule::kAuto);
  ucb.set_eta_rule(pb::SAMPLES);
  EXPECT_EQ(JobSpecFromProto(ucb)->eta_rule, search::EtaRule::kSamples);
  ucb.clear_eta_rule();
  ucb.set_eta(1.5);
  EXPECT_EQ(JobSpecFromProto(ucb)->eta, 1.5);
  pb::JobSpec autoeta = Minimal();
  autoeta.set_eta_auto(true);
  EXPECT_FALSE(JobSpecFromProto(autoeta)->eta.has_value());
  EXPECT_EQ(JobSpecFromProto(autoeta)->eta_rule, search::EtaRule::kAuto);
  autoeta.set_eta_rule(pb::ETA_RULE_UNSPECIFIED);  // unspecified = not named
  EXPECT_EQ(JobSpecFromProto(autoeta)->eta_rule, search::EtaRule::kAuto);
  autoeta.set_eta_rule(pb::CV);
  EXPECT_EQ(JobSpecFromProto(autoeta)->eta_rule, search::EtaRule::kCrossValidated);
  // UNIFORM inside the search by default (issue 14), written explicitly like every default.
  EXPECT_TRUE(d.has_seed_with_uniform() && d.seed_with_uniform() && d.repair_uniform_seed() &&
              d.uniform_ratio_choice());
  EXPECT_FALSE(d.seed_with_owl() || d.uniform_guard());
  EXPECT_EQ(d.mutation_step(), 0);
  EXPECT_EQ(d.slack_evaluations(), 0);
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
      {"estimator 9", [](pb::JobSpec& p) { p.set_estimator(pb::Estimator(9)); }, "estimator"},
      {"estimator with UNIFORM",
       [](pb::JobSpec& p) {
         p.set_strategy(pb::UNIFORM);
         p.set_estimator(pb::UCB);
       },
       "estimator"},
      {"eta_rule 5", [](pb::JobSpec& p) { p.set_eta_rule(pb::EtaRule(5)); }, "eta_rule"},
      {"eta_rule CV with eta",
       [](pb::JobSpec& p) {
         p.set_eta_rule(pb::CV);
         p.set_eta(1);
       },
       "eta_rule"},
      {"mutation_step 2", [](pb::JobSpec& p) { p.set_mutation_step(2); }, "mutation_step"},
      {"mutation_step -0.5", [](pb::JobSpec& p) { p.set_mutation_step(-0.5); }, "mutation_step"},
      {"slack_evaluations -1", [](pb::JobSpec& p) { p.set_slack_evaluations(-1); },
       "slack_evaluations"},
      {"slack_evaluations huge", [](pb::JobSpec& p) { p.set_slack_evaluations(1 << 30); },
       "slack_evaluations"},
      {"seed_with_uniform RANDOM_SEARCH",
       [](pb::JobSpec& p) {
         p.set_strategy(pb::RANDOM_SEARCH);
         p.set_seed_with_uniform(true);
       },
       "seed_with_uniform"},
      {"uniform_ratio_choice UNIFORM",
       [](pb::JobSpec& p) {
         p.set_strategy(pb::UNIFORM);
         p.set_uniform_ratio_choice(true);
       },
       "uniform_ratio_choice"},
      {"seed_with_owl LINEAR",
       [](pb::JobSpec& p) {
         p.set_unit(pb::LINEAR);
         p.set_seed_with_owl(true);
       },
       "seed_with_owl"},
      {"repair_uniform_seed OWL",
       [](pb::JobSpec& p) {
         p.set_strategy(pb::OWL);
         p.set_repair_uniform_seed(true);
       },
       "repair_uniform_seed"},
      {"warm_start_job_id RANDOM_SEARCH",
       [](pb::JobSpec& p) {
         p.set_strategy(pb::RANDOM_SEARCH);
         p.set_warm_start_job_id("job-0123456789abcdef");
       },
       "warm_start_job_id"},
      {"warm_start_job_id huge",
       [](pb::JobSpec& p) { p.set_warm_start_job_id(std::string(200, 'j')); }, "warm_start_job_id"},
      {"uniform_guard UNIFORM",
       [](pb::JobSpec& p) {
         p.set_strategy(pb::UNIFORM);
         p.set_uniform_guard(true);
       },
       "uniform_guard"},
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
  // A host is refused by name (issue 17): models are read from local paths only.
  for (const char* uri : {"file://localhost/etc", "file://example.com/models/m", "file://h"}) {
    absl::StatusOr<std::string> p = FileUriPath(uri, "model_uri");
    ASSERT_FALSE(p.ok()) << uri;
    EXPECT_NE(p.status().message().find("names a host"), std::string::npos) << p.status();
  }
}

}  // namespace
}  // namespace prunesvc

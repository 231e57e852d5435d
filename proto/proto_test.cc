// Round-trips the v1 messages through the wire format and JSON, and checks that proto3
// `optional` presence survives (absent = default, present = validated).
#include <string>

#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "prune/v1/job.pb.h"
#include "prune/v1/pruning_service.pb.h"
#include "prune/v1/worker.pb.h"

namespace prunesvc {
namespace {

prune::v1::JobSpec FullSpec() {
  prune::v1::JobSpec spec;
  spec.set_model_uri("file:///models/llava-1.5-7b-hf");
  spec.set_dataset_id("sha256:abc");
  spec.set_eval_dataset_id("sha256:def");
  spec.set_flops_budget(0.5);
  spec.set_granularity(prune::v1::N_M);
  spec.set_nm_pattern(prune::v1::NM_4_8);
  spec.set_unit(prune::v1::LINEAR);
  spec.set_prune_vision(false);
  spec.set_mask_method(prune::v1::WANDA);
  spec.set_final_mask_method(prune::v1::SPARSEGPT);
  spec.set_strategy(prune::v1::EFFICIENTLLAVA);
  spec.set_population(32);
  spec.set_generations(12);
  spec.set_parents(8);
  spec.set_mutation(0.2);
  for (double r : {0.0, 0.1, 0.2}) spec.add_ratio_choices(r);
  spec.set_eta(0.0);
  spec.set_projector_every(4);
  spec.set_seed(42);
  spec.set_priority(-3);
  (*spec.mutable_labels())["team"] = "vision";
  spec.set_request_id("req-1");
  return spec;
}

TEST(ProtoTest, JobSpecRoundTripsThroughWireFormat) {
  prune::v1::JobSpec spec = FullSpec();
  std::string bytes;
  ASSERT_TRUE(spec.SerializeToString(&bytes));
  prune::v1::JobSpec back;
  ASSERT_TRUE(back.ParseFromString(bytes));
  EXPECT_EQ(back.SerializeAsString(), bytes);
  EXPECT_EQ(back.labels().at("team"), "vision");
  // eta = 0 is present (the "without generalization" ablation), not "absent = auto".
  EXPECT_TRUE(back.has_eta());
  EXPECT_EQ(back.eta(), 0.0);
  EXPECT_TRUE(back.has_prune_vision());
  EXPECT_FALSE(back.has_projector_lr());
  EXPECT_FALSE(back.has_eta_auto());
}

TEST(ProtoTest, JobEventOneofAndJsonRoundTrip) {
  prune::v1::JobEvent ev;
  ev.set_job_id("j1");
  ev.set_sequence(7);
  auto* g = ev.mutable_generation_finished();
  g->set_generation(3);
  g->mutable_best()->set_accuracy(0.75);
  g->mutable_best()->add_ratios(0.5);
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(ev, &json).ok());
  prune::v1::JobEvent back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok());
  EXPECT_EQ(back.kind_case(), prune::v1::JobEvent::kGenerationFinished);
  EXPECT_EQ(back.generation_finished().best().accuracy(), 0.75);
  EXPECT_EQ(back.SerializeAsString(), ev.SerializeAsString());
}

TEST(ProtoTest, GarbageDoesNotParse) {
  prune::v1::JobSpec spec;
  EXPECT_FALSE(spec.ParseFromString(std::string("\xff\xff\xff\xff\x0f", 5)));
}

TEST(ProtoTest, WorkerMessagesRoundTrip) {
  prune::v1::EvaluatePoliciesRequest req;
  *req.mutable_spec() = FullSpec();
  req.mutable_header()->set_job_id("j");
  req.add_policies()->add_ratios(0.3);
  std::string bytes = req.SerializeAsString();
  prune::v1::EvaluatePoliciesRequest back;
  ASSERT_TRUE(back.ParseFromString(bytes));
  EXPECT_EQ(back.policies(0).ratios(0), 0.3);
  EXPECT_EQ(back.spec().request_id(), "req-1");
}

}  // namespace
}  // namespace prunesvc

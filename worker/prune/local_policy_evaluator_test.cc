#include "worker/prune/local_policy_evaluator.h"

#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/prune/random_llava.h"

namespace prunesvc::prune {
namespace {

using ::prunesvc::prune::testing::RandomEvalSamples;
using ::prunesvc::prune::testing::RandomLlavaConfig;
using ::prunesvc::prune::testing::RandomLlavaTensors;
using ::testing::HasSubstr;

// A random model, its policy space and the two evaluators, wired as prune-local wires them.
struct Stack {
  std::unique_ptr<model::LlavaModel> model;
  std::unique_ptr<search::PolicySpace> space;
  std::unique_ptr<CandidateEvaluator> ev;
  std::unique_ptr<LocalPolicyEvaluator> local;
};

Stack MakeStack(search::UnitKind kind, int num_samples = 8,
                const ProjectorTrainingOptions& training = {}) {
  Stack s;
  const model::LlavaConfig c = RandomLlavaConfig();
  s.model = *model::LlavaModel::CreateFromTensors(c, RandomLlavaTensors(c, 21));
  std::vector<EvalSample> samples = RandomEvalSamples(c, num_samples, 22);
  std::vector<model::ScoringSample> scoring;
  for (const auto& e : samples) scoring.push_back(e.scoring);
  auto dense = ComputeDenseFlops(s.model->FlopsDims(), ComputeTokenStats(*s.model, scoring));
  EXPECT_TRUE(dense.ok()) << dense.status();
  auto units = search::PruningUnits::Build(s.model->FlopsDims(), *dense, kind);
  EXPECT_TRUE(units.ok()) << units.status();
  auto space = search::PolicySpace::Create(*dense, *units, search::DefaultRatioChoices());
  EXPECT_TRUE(space.ok()) << space.status();
  s.space = std::make_unique<search::PolicySpace>(*std::move(space));
  auto unit_of = UnitOfLinear(s.space->units(), c.text.num_hidden_layers);
  EXPECT_TRUE(unit_of.ok()) << unit_of.status();
  auto ev = CandidateEvaluator::Create(s.model.get(), std::move(samples),
                                       {.method = MaskMethod::kWanda, .unit_of_linear = *unit_of});
  EXPECT_TRUE(ev.ok()) << ev.status();
  s.ev = std::move(*ev);
  auto local = LocalPolicyEvaluator::Create(s.ev.get(), s.space.get(), training);
  EXPECT_TRUE(local.ok()) << local.status();
  s.local = std::move(*local);
  return s;
}

TEST(UnitOfLinearTest, LayerAndLinearUnits) {
  Stack layer = MakeStack(search::UnitKind::kLayer, 3);
  const std::vector<int>& u = layer.ev->unit_of_linear();
  ASSERT_EQ(u.size(), 21u);
  for (int i = 0; i < 21; ++i) EXPECT_EQ(u[i], i / 7);
  Stack linear = MakeStack(search::UnitKind::kLinear, 3);
  for (int i = 0; i < 21; ++i) EXPECT_EQ(linear.ev->unit_of_linear()[i], i);
  EXPECT_FALSE(UnitOfLinear(layer.space->units(), 4).ok());  // layer 3 in no unit
  // An evaluator whose Ω units differ from the space's is refused.
  EXPECT_THAT(LocalPolicyEvaluator::Create(linear.ev.get(), layer.space.get()).status().message(),
              HasSubstr("units"));
}

// A policy's evaluation is the CandidateEvaluator's on the mapped per-linear ratios.
TEST(LocalPolicyEvaluatorTest, MapsPoliciesToLinearRatios) {
  for (auto kind : {search::UnitKind::kLayer, search::UnitKind::kLinear}) {
    Stack s = MakeStack(kind);
    const int units = s.space->num_units();
    search::Policy p(units), q(units);
    for (int u = 0; u < units; ++u) p[u] = (3 * u + 1) % 9, q[u] = (5 * u + 2) % 9;
    auto got = s.local->Evaluate({p, q}, 0);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), 2u);
    for (int k = 0; k < 2; ++k) {
      const search::Policy& pol = k == 0 ? p : q;
      std::vector<double> ratios(21);
      for (int i = 0; i < 21; ++i) {
        const int unit = kind == search::UnitKind::kLayer ? i / 7 : i;
        ratios[i] = s.space->ratio_choices()[pol[unit]];
      }
      auto want = s.ev->Evaluate(ratios);
      ASSERT_TRUE(want.ok());
      EXPECT_EQ((*got)[k].loss, want->loss);
      EXPECT_EQ((*got)[k].accuracy, want->accuracy);
      EXPECT_EQ((*got)[k].omega, want->omega);
      EXPECT_EQ((*got)[k].sample_losses, want->sample_losses);
      EXPECT_EQ((*got)[k].sample_losses.size(), 8u);
    }
    EXPECT_EQ(s.local->evaluations(), 2);
    search::Policy bad = p;
    bad[0] = 9;
    EXPECT_FALSE(s.local->Evaluate({bad}, 0).ok());
  }
}

// Training registers version 1 and installs it; evaluating under version 0 switches back and
// reproduces version 0's results exactly.
TEST(LocalPolicyEvaluatorTest, ProjectorVersions) {
  Stack s = MakeStack(search::UnitKind::kLayer, 8, {.learning_rate = 3e-3, .steps = 6});
  const search::Policy p = {2, 5, 7}, q = {6, 3, 4};
  auto v0 = s.local->Evaluate({p}, 0);
  ASSERT_TRUE(v0.ok());
  auto update = s.local->TrainProjector({p, q}, 0);
  ASSERT_TRUE(update.ok()) << update.status();
  EXPECT_EQ(update->version, 1);
  EXPECT_LT(update->loss_after, update->loss_before);
  EXPECT_EQ(s.ev->projector_version(), 1);
  EXPECT_EQ(s.local->latest_version(), 1);
  ASSERT_NE(s.local->projector(1), nullptr);
  auto v1 = s.local->Evaluate({p}, 1);
  ASSERT_TRUE(v1.ok());
  EXPECT_NE((*v1)[0].loss, (*v0)[0].loss);
  auto again = s.local->Evaluate({p}, 0);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[0].loss, (*v0)[0].loss);
  EXPECT_EQ((*again)[0].omega, (*v0)[0].omega);
  EXPECT_EQ(s.local->Evaluate({p}, 7).status().code(), absl::StatusCode::kNotFound);
  // Training from version 0 again makes version 2 (versions only grow).
  auto update2 = s.local->TrainProjector({q}, 0);
  ASSERT_TRUE(update2.ok());
  EXPECT_EQ(update2->version, 2);
  // Continuous unit ratios (UNIFORM).
  auto uni = s.local->EvaluateUnitRatios(std::vector<double>{0.35, 0.35, 0.35});
  ASSERT_TRUE(uni.ok());
  EXPECT_FALSE(s.local->EvaluateUnitRatios(std::vector<double>{0.3}).ok());
}

// The whole EfficientLLaVA search on a random model, twice with one seed: the same sequence of
// generations (policies, losses, projector versions) and the same final policy.
TEST(LocalPolicyEvaluatorTest, SearchIsDeterministic) {
  search::SearchConfig config;
  config.budget = 0.75;
  config.population = 6;
  config.generations = 3;
  config.parents = 2;
  config.projector_every = 2;
  config.num_samples = 8;
  config.seed = 5;
  std::vector<nlohmann::json> histories;
  std::vector<std::string> best;
  for (int run = 0; run < 2; ++run) {
    Stack s = MakeStack(search::UnitKind::kLayer, 8, {.learning_rate = 1e-3, .steps = 4});
    auto search = search::EvolutionarySearch::Create(s.space.get(), config);
    ASSERT_TRUE(search.ok()) << search.status();
    ASSERT_TRUE((*search)->Run(*s.local).ok());
    nlohmann::json h = nlohmann::json::array();
    for (const auto& g : (*search)->history()) h.push_back(g.ToJson());
    histories.push_back(h);
    auto b = (*search)->Best();
    ASSERT_TRUE(b.ok());
    best.push_back(b->hash);
    EXPECT_LE(b->flops_ratio, config.budget);
    EXPECT_EQ(s.local->latest_version(), 1);  // trained at generation 2
  }
  EXPECT_EQ(histories[0], histories[1]);
  EXPECT_EQ(best[0], best[1]);
  std::printf("[search] best %s, history %s\n", best[0].c_str(), histories[0].dump().c_str());
}

}  // namespace
}  // namespace prunesvc::prune

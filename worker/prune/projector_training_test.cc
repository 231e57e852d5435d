#include "worker/prune/projector_training.h"

#include <cmath>
#include <random>
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

struct Harness {
  std::unique_ptr<model::LlavaModel> model;
  std::unique_ptr<CandidateEvaluator> ev;
  std::vector<std::vector<double>> top_k;
};

Harness MakeSetup(int num_samples = 8) {
  Harness s;
  const model::LlavaConfig c = RandomLlavaConfig();
  s.model = *model::LlavaModel::CreateFromTensors(c, RandomLlavaTensors(c, 3));
  auto ev = CandidateEvaluator::Create(s.model.get(), RandomEvalSamples(c, num_samples, 4),
                                       {.method = MaskMethod::kWanda, .batch_size = 4});
  EXPECT_TRUE(ev.ok()) << ev.status();
  s.ev = std::move(*ev);
  std::mt19937_64 rng(5);
  for (int p = 0; p < 3; ++p) {
    std::vector<double> r(s.ev->num_linears());
    for (double& x : r) x = 0.1 * double(3 + rng() % 6);  // 0.3 … 0.8
    s.top_k.push_back(r);
  }
  return s;
}

double Distance(const ProjectorWeights& a, const ProjectorWeights& b) {
  double d = 0;
  for (auto [x, y] : {std::pair{a.linear_1_weight, b.linear_1_weight},
                      std::pair{a.linear_1_bias, b.linear_1_bias},
                      std::pair{a.linear_2_weight, b.linear_2_weight},
                      std::pair{a.linear_2_bias, b.linear_2_bias}}) {
    d += (x.to(at::kDouble) - y.to(at::kDouble)).square().sum().item<double>();
  }
  return std::sqrt(d);
}

bool Identical(const ProjectorWeights& a, const ProjectorWeights& b) {
  return at::equal(a.linear_1_weight, b.linear_1_weight) &&
         at::equal(a.linear_1_bias, b.linear_1_bias) &&
         at::equal(a.linear_2_weight, b.linear_2_weight) &&
         at::equal(a.linear_2_bias, b.linear_2_bias);
}

// The training loss is the evaluator's L̂ (same definition, different code path).
TEST(ProjectorTrainingTest, AnswerLossEqualsEvaluate) {
  Harness s = MakeSetup();
  for (const auto& r : s.top_k) {
    auto e = s.ev->Evaluate(r);
    ASSERT_TRUE(e.ok());
    auto l = AnswerLoss(*s.ev, s.ev->projector(), 3);
    ASSERT_TRUE(l.ok()) << l.status();
    std::printf("[answer loss] Evaluate %.9f AnswerLoss %.9f\n", e->loss, *l);
    EXPECT_NEAR(*l, e->loss, 1e-6);
  }
}

TEST(ProjectorTrainingTest, LowersTheTopKLossAndIsDeterministic) {
  Harness s = MakeSetup();
  const ProjectorWeights theta0 = s.ev->projector();
  double before_eval = 0;
  for (const auto& r : s.top_k) before_eval += (*s.ev->Evaluate(r)).loss / 3;
  const ProjectorTrainingOptions opt{.learning_rate = 3e-3, .steps = 30, .seed = 11};
  auto a = TrainProjector(*s.ev, s.top_k, theta0, opt);
  ASSERT_TRUE(a.ok()) << a.status();
  std::printf("[projector] round robin: loss %.5f -> %.5f (first step %.5f, last %.5f)\n",
              a->loss_before, a->loss_after, a->step_losses.front(), a->step_losses.back());
  EXPECT_NEAR(a->loss_before, before_eval, 1e-6);
  EXPECT_LT(a->loss_after, a->loss_before - 0.05);
  EXPECT_EQ(a->step_losses.size(), 30u);
  EXPECT_EQ(a->step_penalties.front(), 0.0);  // starts at θ₀
  EXPECT_GT(a->step_penalties.back(), 0.0);
  // The model is back at the evaluator's version; the trained projector is returned.
  ASSERT_TRUE(Identical(*CopyProjector(s.ev->model()), theta0));
  EXPECT_FALSE(Identical(a->projector, theta0));
  EXPECT_FALSE(s.ev->model().projector_linear_1().weight.requires_grad());
  // Same seed → bitwise the same projector; another seed visits the policies in another order.
  auto b = TrainProjector(*s.ev, s.top_k, theta0, opt);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(Identical(a->projector, b->projector));
  EXPECT_EQ(a->step_losses, b->step_losses);
  ProjectorTrainingOptions other = opt;
  other.seed = 12;
  auto c = TrainProjector(*s.ev, s.top_k, theta0, other);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(Identical(a->projector, c->projector));
  // The exact-gradient schedule lowers it too.
  ProjectorTrainingOptions all = opt;
  all.schedule = ProjectorSchedule::kAllPolicies;
  all.steps = 10;
  auto d = TrainProjector(*s.ev, s.top_k, theta0, all);
  ASSERT_TRUE(d.ok());
  std::printf("[projector] all policies: loss %.5f -> %.5f\n", d->loss_before, d->loss_after);
  EXPECT_LT(d->loss_after, d->loss_before);
  EXPECT_NEAR(d->step_losses.front(), d->loss_before, 1e-5);
  // Installing it as version 1 reproduces the reported loss with the version-0 masks.
  auto after = AnswerLoss(*s.ev, a->projector, 8);
  ASSERT_TRUE(after.ok());
  ASSERT_TRUE(s.ev->SetProjector(1, a->projector).ok());
  EXPECT_EQ(s.ev->projector_version(), 1);
}

// μ‖θ − θ₀‖² pulls toward θ₀ — the original projector, not the version training starts from.
TEST(ProjectorTrainingTest, PenaltyPullsTowardThetaZero) {
  Harness s = MakeSetup(6);
  const ProjectorWeights theta0 = s.ev->projector();
  ProjectorTrainingOptions opt{.learning_rate = 3e-3, .steps = 20, .mu = 0, .seed = 1};
  auto free = TrainProjector(*s.ev, s.top_k, theta0, opt);
  ASSERT_TRUE(free.ok());
  opt.mu = 1e5;
  auto held = TrainProjector(*s.ev, s.top_k, theta0, opt);
  ASSERT_TRUE(held.ok());
  const double moved_free = Distance(free->projector, theta0);
  const double moved_held = Distance(held->projector, theta0);
  std::printf("[projector] ‖θ − θ₀‖ after 20 steps: μ = 0 %.4f, μ = 1e5 %.4f\n", moved_free,
              moved_held);
  EXPECT_LT(moved_held, 0.25 * moved_free);
  // Start from a perturbed version 1: with a huge μ training walks back toward θ₀.
  ProjectorWeights theta1 = theta0;
  theta1.linear_2_weight = theta0.linear_2_weight + 0.02;
  ASSERT_TRUE(s.ev->SetProjector(1, theta1).ok());
  const double start = Distance(theta1, theta0);
  auto back = TrainProjector(*s.ev, s.top_k, theta0, opt);
  ASSERT_TRUE(back.ok());
  const double end = Distance(back->projector, theta0);
  std::printf("[projector] from v1: ‖θ − θ₀‖ %.4f -> %.4f\n", start, end);
  EXPECT_LT(end, 0.5 * start);
}

TEST(ProjectorTrainingTest, BadInputs) {
  Harness s = MakeSetup(3);
  const ProjectorWeights theta0 = s.ev->projector();
  EXPECT_THAT(TrainProjector(*s.ev, {}, theta0).status().message(), HasSubstr("no policies"));
  EXPECT_FALSE(TrainProjector(*s.ev, s.top_k, theta0, {.steps = -1}).ok());
  EXPECT_FALSE(TrainProjector(*s.ev, s.top_k, theta0, {.learning_rate = NAN}).ok());
  EXPECT_FALSE(TrainProjector(*s.ev, s.top_k, theta0, {.mu = -1}).ok());
  EXPECT_FALSE(TrainProjector(*s.ev, s.top_k, theta0, {.batch_size = 0}).ok());
  EXPECT_THAT(TrainProjector(*s.ev, {{0.5}}, theta0).status().message(), HasSubstr("expected 21"));
  ProjectorWeights bad = theta0;
  bad.linear_2_bias = at::Tensor();
  EXPECT_THAT(TrainProjector(*s.ev, s.top_k, bad).status().message(), HasSubstr("linear_2.bias"));
  // Nothing was left half-changed.
  EXPECT_TRUE(Identical(*CopyProjector(s.ev->model()), theta0));
}

}  // namespace
}  // namespace prunesvc::prune

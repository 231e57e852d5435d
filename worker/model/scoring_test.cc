#include "worker/model/scoring.h"

#include <cmath>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model/llava_test_util.h"

namespace prunesvc::model {
namespace {

using ::prunesvc::model::testing::LoadCase;
using ::prunesvc::model::testing::ReferenceCase;
using ::testing::HasSubstr;

// Twelve samples of varied lengths on the GQA case: multiple-choice ones (the answer is the
// correct letter's token) and open ones with multi-token answers.
std::vector<ScoringSample> MakeSamples(const ReferenceCase& c) {
  std::mt19937 rng(7);
  const int image_id = c.config.image_token_index;
  auto rand_tok = [&] { return 3 + int(rng() % (image_id - 10)); };
  const std::vector<int> letters = {10, 11, 12, 13};
  std::vector<ScoringSample> out;
  for (int i = 0; i < 12; ++i) {
    const auto& ref = c.samples[i % c.samples.size()];
    ScoringSample s;
    s.image_features = *c.model->ComputeImageFeatures(ref.pixels);
    s.token_ids = {1};
    const int before = 1 + rng() % 5, after = 1 + rng() % 9;
    for (int k = 0; k < before; ++k) s.token_ids.push_back(rand_tok());
    s.token_ids.push_back(image_id);
    for (int k = 0; k < after; ++k) s.token_ids.push_back(rand_tok());
    s.answer_begin = s.token_ids.size();
    if (i % 3 != 2) {
      s.option_token_ids = letters;
      s.correct_option = rng() % 4;
      s.token_ids.push_back(letters[s.correct_option]);
    } else {
      const int len = 1 + rng() % 4;
      for (int k = 0; k < len; ++k) s.token_ids.push_back(rand_tok());
    }
    s.answer_end = s.token_ids.size();
    out.push_back(std::move(s));
  }
  return out;
}

TEST(ScoringTest, BatchSizeInvariance) {
  ReferenceCase c;
  ASSERT_NO_FATAL_FAILURE(LoadCase("new_fp16_gqa", &c));
  const auto samples = MakeSamples(c);
  auto one = ScoreSamples(*c.model, samples, {.batch_size = 1});
  ASSERT_TRUE(one.ok()) << one.status();
  for (int bs : {3, 8, 12}) {
    auto many = ScoreSamples(*c.model, samples, {.batch_size = bs});
    ASSERT_TRUE(many.ok()) << many.status();
    double max_delta = 0;
    for (size_t i = 0; i < samples.size(); ++i) {
      max_delta = std::max(max_delta, std::abs((*one)[i].loss - (*many)[i].loss));
      ASSERT_EQ((*one)[i].option_log_probs.size(), (*many)[i].option_log_probs.size());
      for (size_t k = 0; k < (*one)[i].option_log_probs.size(); ++k) {
        max_delta = std::max(
            max_delta, std::abs((*one)[i].option_log_probs[k] - (*many)[i].option_log_probs[k]));
      }
      EXPECT_EQ((*one)[i].predicted_option, (*many)[i].predicted_option);
    }
    std::printf("[batch invariance] batch %d vs 1: max |Δ| = %.3g\n", bs, max_delta);
    EXPECT_LE(max_delta, 1e-5);
  }
}

// The scores are what the definitions say, computed here from the model's raw logits.
TEST(ScoringTest, LossAndLetterScoresFollowTheDefinitions) {
  ReferenceCase c;
  ASSERT_NO_FATAL_FAILURE(LoadCase("new_fp16_gqa", &c));
  const auto samples = MakeSamples(c);
  auto scores = ScoreSamples(*c.model, samples, {.batch_size = 5, .keep_logits = true});
  ASSERT_TRUE(scores.ok()) << scores.status();
  for (size_t i = 0; i < samples.size(); ++i) {
    const ScoringSample& s = samples[i];
    const SampleScore& r = (*scores)[i];
    // Full-sequence logits of the sample alone at every answer-predicting position.
    SequenceInput in{s.token_ids, s.image_features, {}};
    for (int p = s.answer_begin - 1; p < s.answer_end - 1; ++p) in.logit_positions.push_back(p);
    auto logits = c.model->Forward({&in, 1});
    ASSERT_TRUE(logits.ok());
    double ce = 0;
    for (int k = 0; k < s.answer_end - s.answer_begin; ++k) {
      at::Tensor row = (*logits)[0][k].to(at::kDouble);
      const double lse = row.exp().sum().log().item<double>();
      ce += lse - row[s.token_ids[s.answer_begin + k]].item<double>();
    }
    ce /= s.answer_end - s.answer_begin;
    EXPECT_NEAR(r.loss, ce, 1e-5) << i;
    EXPECT_EQ(r.multiple_choice, !s.option_token_ids.empty());
    ASSERT_TRUE(r.answer_logits.defined());
    EXPECT_LE((r.answer_logits - (*logits)[0][0]).abs().max().item<double>(), 1e-5);
    if (r.multiple_choice) {
      // MC loss = −log p(correct letter); the prediction is the best letter.
      EXPECT_NEAR(r.loss, -r.option_log_probs[s.correct_option], 1e-6);
      const auto best = std::max_element(r.option_log_probs.begin(), r.option_log_probs.end());
      EXPECT_EQ(r.predicted_option, best - r.option_log_probs.begin());
      EXPECT_EQ(r.correct, r.predicted_option == s.correct_option);
    }
  }
  // Token statistics for the FLOPs model: by hand from the lengths (9 image slots per image).
  double t1 = 0, t2 = 0, ans = 0;
  for (const auto& s : samples) {
    const double t = s.token_ids.size() - 1 + c.config.image_seq_length;
    t1 += t / 12, t2 += t * t / 12, ans += double(s.answer_end - s.answer_begin) / 12;
  }
  const TokenStats st = ComputeTokenStats(*c.model, samples);
  EXPECT_DOUBLE_EQ(st.mean_tokens, t1);
  EXPECT_DOUBLE_EQ(st.mean_tokens_sq, t2);
  EXPECT_DOUBLE_EQ(st.mean_answer_tokens, ans);
  const ScoreSummary sum = Summarize(*scores);
  EXPECT_EQ(sum.num_samples, 12);
  EXPECT_EQ(sum.num_multiple_choice, 8);
  double mean = 0;
  for (const auto& r : *scores) mean += r.loss / 12;
  EXPECT_NEAR(sum.mean_loss, mean, 1e-12);
}

TEST(ScoringTest, BadSamplesAreErrors) {
  ReferenceCase c;
  ASSERT_NO_FATAL_FAILURE(LoadCase("new_fp16_gqa", &c));
  auto samples = MakeSamples(c);
  samples[4].answer_begin = 0;
  EXPECT_THAT(ScoreSamples(*c.model, samples).status().message(), HasSubstr("sample 4"));
  samples = MakeSamples(c);
  samples[0].correct_option = 9;
  EXPECT_THAT(ScoreSamples(*c.model, samples).status().message(), HasSubstr("correct option"));
  EXPECT_FALSE(ScoreSamples(*c.model, MakeSamples(c), {.batch_size = 0}).ok());
}

TEST(GenerationTest, KvCacheEqualsFullRecompute) {
  for (const char* name : {"old_fp32_mha", "new_fp16_gqa"}) {
    ReferenceCase c;
    ASSERT_NO_FATAL_FAILURE(LoadCase(name, &c));
    for (const auto& s : c.samples) {
      auto feats = c.model->ComputeImageFeatures(s.pixels);
      ASSERT_TRUE(feats.ok());
      auto cached = GreedyGenerate(*c.model, s.ids, *feats, {.max_new_tokens = 10});
      auto full =
          GreedyGenerate(*c.model, s.ids, *feats, {.max_new_tokens = 10, .use_kv_cache = false});
      ASSERT_TRUE(cached.ok()) << cached.status();
      ASSERT_TRUE(full.ok()) << full.status();
      EXPECT_EQ(cached->size(), 10u);
      EXPECT_EQ(*cached, *full) << name;
      // Stopping at EOS: pretend the third generated token is EOS.
      auto stopped = GreedyGenerate(*c.model, s.ids, *feats,
                                    {.max_new_tokens = 10, .eos_token_id = (*full)[2]});
      ASSERT_TRUE(stopped.ok());
      const auto first = std::find(full->begin(), full->end(), (*full)[2]) - full->begin();
      EXPECT_EQ(stopped->size(), size_t(first + 1));
    }
  }
}

// The cached step's logits equal a full forward's last-position logits (not just the argmax).
TEST(GenerationTest, CachedLogitsMatchFullForward) {
  ReferenceCase c;
  ASSERT_NO_FATAL_FAILURE(LoadCase("new_fp16_gqa", &c));
  const auto& s = c.samples[0];
  auto feats = c.model->ComputeImageFeatures(s.pixels);
  ASSERT_TRUE(feats.ok());
  KvCache cache;
  const int split = s.ids.size() - 3;
  std::vector<int> head(s.ids.begin(), s.ids.begin() + split);
  std::vector<int> tail(s.ids.begin() + split, s.ids.end());
  ASSERT_TRUE(c.model->ForwardWithCache({head, *feats, {}}, &cache).ok());
  auto step = c.model->ForwardWithCache({tail, at::Tensor(), {}}, &cache);
  ASSERT_TRUE(step.ok()) << step.status();
  SequenceInput all{s.ids, *feats, {int(s.ids.size()) - 1}};
  auto full = c.model->Forward({&all, 1});
  ASSERT_TRUE(full.ok());
  EXPECT_LE((*step - (*full)[0][0]).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(cache.length, c.model->ExpandedLength(s.ids));
}

}  // namespace
}  // namespace prunesvc::model

namespace prunesvc::model {
namespace {

// Projector training needs gradients from the answer loss back to the projector weights.
TEST(ForwardGradTest, GradientsReachTheProjector) {
  testing::ReferenceCase c;
  ASSERT_NO_FATAL_FAILURE(testing::LoadCase("old_fp32_mha", &c));
  const auto& s = c.samples[1];
  auto vision = c.model->VisionFeatures(s.pixels);
  ASSERT_TRUE(vision.ok());
  Linear& l2 = c.model->projector_linear_2();
  l2.weight.set_requires_grad(true);
  auto feats = c.model->Project(*vision);
  ASSERT_TRUE(feats.ok());
  ASSERT_TRUE(feats->requires_grad());
  const int n = s.ids.size();
  SequenceInput in{s.ids, *feats, {n - 2}};
  ForwardOptions opts;
  opts.enable_grad = true;
  auto logits = c.model->Forward({&in, 1}, opts);
  ASSERT_TRUE(logits.ok()) << logits.status();
  at::Tensor loss = -at::log_softmax((*logits)[0], -1)[0][s.ids[n - 1]];
  loss.backward();
  ASSERT_TRUE(l2.weight.grad().defined());
  EXPECT_GT(l2.weight.grad().abs().sum().item<double>(), 0);
  // Finite-difference check on one weight entry.
  const double eps = 1e-2;
  const double g = l2.weight.grad()[3][5].item<double>();
  l2.weight.set_requires_grad(false);
  auto loss_at = [&](double delta) {
    at::Tensor saved = l2.weight.clone();
    l2.weight[3][5].add_(delta);
    auto f = c.model->Project(*vision);
    SequenceInput i2{s.ids, *f, {n - 2}};
    auto lg = c.model->Forward({&i2, 1});
    l2.weight.copy_(saved);
    return -at::log_softmax((*lg)[0].to(at::kDouble), -1)[0][s.ids[n - 1]].item<double>();
  };
  EXPECT_NEAR((loss_at(eps) - loss_at(-eps)) / (2 * eps), g, 1e-3 + 1e-2 * std::abs(g));
}

}  // namespace
}  // namespace prunesvc::model

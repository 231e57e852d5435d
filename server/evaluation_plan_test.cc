// PlanChunks against a brute-force coverage check over a grid of shapes, and CombineSlices
// against a whole-set reference (std::accumulate's left fold, the order model::Summarize sums in).
#include "server/evaluation_plan.h"

#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace prunesvc::server {
namespace {

TEST(EvaluationPlanTest, EveryPolicySampleIsCoveredOnceOnBatchBoundaries) {
  for (int policies = 1; policies <= 7; ++policies) {
    for (int workers = 1; workers <= 20; ++workers) {
      for (int samples : {1, 5, 12, 16, 17, 64}) {
        for (int batch : {0, 1, 4, 16}) {
          SCOPED_TRACE(testing::Message() << policies << " policies, " << workers << " workers, "
                                          << samples << " samples, batch " << batch);
          const std::vector<EvalChunk> chunks = PlanChunks(policies, workers, samples, batch);
          const int useful = MaxUsefulChunks(policies, samples, batch);
          ASSERT_EQ(int(chunks.size()), std::min(workers, useful));
          std::vector<std::vector<int>> hits(policies, std::vector<int>(samples, 0));
          for (const EvalChunk& c : chunks) {
            ASSERT_LT(c.policy_begin, c.policy_end);
            for (int p = c.policy_begin; p < c.policy_end; ++p) {
              const int b = c.whole() ? 0 : c.sample_begin, e = c.whole() ? samples : c.sample_end;
              ASSERT_LT(b, e);
              if (!c.whole()) {
                EXPECT_EQ(c.policy_end, c.policy_begin + 1);  // slices hold one policy
                EXPECT_EQ(b % batch, 0);                      // start on a batch boundary
              }
              for (int s = b; s < e; ++s) ++hits[p][s];
            }
          }
          for (int p = 0; p < policies; ++p) {
            for (int s = 0; s < samples; ++s) ASSERT_EQ(hits[p][s], 1) << p << "/" << s;
          }
          // (policy, sample) order, as CombineSlices needs.
          for (size_t i = 1; i < chunks.size(); ++i) {
            const EvalChunk &a = chunks[i - 1], &b = chunks[i];
            EXPECT_TRUE(a.policy_end <= b.policy_begin ||
                        (a.policy_begin == b.policy_begin && a.sample_end == b.sample_begin));
          }
        }
      }
    }
  }
}

TEST(EvaluationPlanTest, SlicesSpreadEvenly) {
  // 3 workers, 2 policies, 12 samples in batches of 4: policy 0 in two slices, policy 1 whole.
  EXPECT_EQ(PlanChunks(2, 3, 12, 4),
            (std::vector<EvalChunk>{{0, 1, 0, 4}, {0, 1, 4, 12}, {1, 2, 0, 0}}));
  // Fewer workers than policies: contiguous runs.
  EXPECT_EQ(PlanChunks(5, 2, 12, 4), (std::vector<EvalChunk>{{0, 2, 0, 0}, {2, 5, 0, 0}}));
  // One batch: nothing to split, one request per policy.
  EXPECT_EQ(PlanChunks(2, 8, 12, 16), (std::vector<EvalChunk>{{0, 1, 0, 0}, {1, 2, 0, 0}}));
}

TEST(EvaluationPlanTest, CombinedSlicesEqualTheWholeSetBitwise) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> loss(0.0, 5.0);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + int(rng() % 70);
    std::vector<double> losses(n);
    std::vector<int> correct(n), mc(n);
    for (int i = 0; i < n; ++i) {
      losses[i] = loss(rng);
      mc[i] = rng() % 4 != 0;
      correct[i] = mc[i] && rng() % 2;
    }
    const double want_loss = std::accumulate(losses.begin(), losses.end(), 0.0) / n;
    const int total_mc = std::accumulate(mc.begin(), mc.end(), 0);
    const double want_acc =
        total_mc ? double(std::accumulate(correct.begin(), correct.end(), 0)) / total_mc : 0.0;
    const int workers = 2 + int(rng() % 6), batch = 1 + int(rng() % 8);
    std::vector<SliceResult> slices;
    for (const EvalChunk& c : PlanChunks(1, workers, n, batch)) {
      const int b = c.whole() ? 0 : c.sample_begin, e = c.whole() ? n : c.sample_end;
      SliceResult s;
      s.result.omega = 0.25;
      s.result.sample_losses.assign(losses.begin() + b, losses.begin() + e);
      double sum = 0;
      for (double l : s.result.sample_losses) sum += l;
      s.result.loss = sum / (e - b);
      for (int i = b; i < e; ++i) {
        s.num_correct += correct[i];
        s.num_multiple_choice += mc[i];
      }
      s.result.accuracy = s.num_multiple_choice ? double(s.num_correct) / s.num_multiple_choice : 0;
      if (slices.size() == 0 && c.whole()) {  // a whole-set evaluation is passed through
        s.result.loss = want_loss;
        s.result.accuracy = want_acc;
      }
      slices.push_back(s);
    }
    absl::StatusOr<search::EvalResult> r = CombineSlices(slices, n);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->loss, want_loss) << "trial " << trial;  // bitwise, not approximately
    EXPECT_EQ(r->accuracy, want_acc);
    EXPECT_EQ(r->omega, 0.25);
    EXPECT_EQ(r->sample_losses, losses);
  }
}

TEST(EvaluationPlanTest, MissingSamplesAreAnError) {
  SliceResult a, b;
  a.result.sample_losses = {1, 2};
  b.result.sample_losses = {3};
  EXPECT_FALSE(CombineSlices(std::vector<SliceResult>{a, b}, 4).ok());
  EXPECT_FALSE(CombineSlices({}, 4).ok());
  EXPECT_TRUE(CombineSlices(std::vector<SliceResult>{a, b}, 3).ok());
}

// The evaluation cache's values: what a worker would return under the asking job's race, from a
// stored whole-set result or a stored raced-out prefix, against the worker's own cut
// (ReplayRace over the whole set, RacedOutResult) as the reference; malformed values answer
// nothing.
TEST(EvaluationPlanTest, CachedEvaluationsAnswerAsARacingWorkerWouldOrNotAtAll) {
  constexpr int kSamples = 16, kBatch = 4;
  search::EvalResult whole{.loss = 0, .accuracy = 0.75, .omega = 0.6};
  for (int s = 0; s < kSamples; ++s) whole.sample_losses.push_back(0.1 * (s % 5) + 0.3);
  for (double l : whole.sample_losses) whole.loss += l;
  whole.loss /= kSamples;
  auto race_at = [&](double threshold) {
    return search::RaceLimit{.threshold = threshold, .norm_eta = 0, .num_samples = kSamples};
  };
  const search::RaceLimit none;
  // A whole-set value: as stored without a race; under a race, cut as the worker would cut it.
  const std::string value = CachedEvaluationValue(whole);
  ASSERT_TRUE(CachedEvaluationStorable(whole, kSamples));
  std::optional<search::EvalResult> got = CachedEvaluationResult(value, kSamples, kBatch, none, 0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->sample_losses, whole.sample_losses);
  EXPECT_EQ(got->loss, whole.loss);
  EXPECT_EQ(got->accuracy, whole.accuracy);
  EXPECT_FALSE(got->raced_out);
  for (double threshold : {0.05, 0.1, 0.2, 0.3, 0.45, 10.0}) {
    SCOPED_TRACE(threshold);
    const search::RaceLimit race = race_at(threshold);
    const std::optional<int> k = search::ReplayRace(whole.sample_losses, kBatch, race, 0, 0.0);
    const search::EvalResult worker = k ? RacedOutResult(whole, *k, kSamples) : whole;
    got = CachedEvaluationResult(value, kSamples, kBatch, race, 0);
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->raced_out, worker.raced_out);
    EXPECT_EQ(got->samples_scored, worker.samples_scored);
    EXPECT_EQ(got->sample_losses, worker.sample_losses);
    EXPECT_EQ(got->loss, worker.loss);  // bitwise: the same in-order sum
    EXPECT_EQ(got->accuracy, worker.accuracy);
    // The worker's raced-out answer stored in turn answers any race that cuts inside it, and
    // nothing else.
    if (!worker.raced_out) continue;
    ASSERT_TRUE(CachedEvaluationStorable(worker, kSamples));
    const std::string prefix = CachedEvaluationValue(worker);
    EXPECT_FALSE(CachedEvaluationResult(prefix, kSamples, kBatch, none, 0).has_value());
    for (double other : {threshold / 2, threshold, threshold * 1.5, 10.0}) {
      const std::optional<int> cut =
          search::ReplayRace(whole.sample_losses, kBatch, race_at(other), 0, 0.0);
      const std::optional<search::EvalResult> again =
          CachedEvaluationResult(prefix, kSamples, kBatch, race_at(other), 0);
      if (cut.has_value() && *cut <= worker.samples_scored) {
        ASSERT_TRUE(again.has_value()) << other;
        EXPECT_EQ(again->samples_scored, *cut);
        EXPECT_EQ(again->loss, RacedOutResult(whole, *cut, kSamples).loss);
      } else {
        EXPECT_FALSE(again.has_value()) << other;
      }
    }
  }
  // Malformed values are misses, not crashes.
  search::EvalResult short_one = whole;
  short_one.sample_losses.pop_back();
  search::EvalResult bad_prefix = RacedOutResult(whole, 8, kSamples);
  bad_prefix.samples_scored = 12;  // says 12, holds 8
  for (const std::string& bad :
       {std::string("\xff\xff\xff garbage"), CachedEvaluationValue(short_one),
        CachedEvaluationValue(bad_prefix), std::string()}) {
    EXPECT_FALSE(CachedEvaluationResult(bad, kSamples, kBatch, none, 0).has_value());
    EXPECT_FALSE(CachedEvaluationResult(bad, kSamples, kBatch, race_at(0.1), 0).has_value());
  }
  EXPECT_FALSE(CachedEvaluationStorable(short_one, kSamples));
  EXPECT_FALSE(CachedEvaluationStorable(bad_prefix, kSamples));
}

}  // namespace
}  // namespace prunesvc::server

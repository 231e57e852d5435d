#include "client/progress.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::client {
namespace {

namespace pb = ::prune::v1;
using ::testing::HasSubstr;

pb::JobEvent StateEvent(int64_t seq, int64_t t, pb::JobState from, pb::JobState to) {
  pb::JobEvent e;
  e.set_sequence(seq);
  e.mutable_time()->set_seconds(t);
  e.mutable_state_changed()->set_from(from);
  e.mutable_state_changed()->set_to(to);
  return e;
}

pb::JobEvent GenEvent(int64_t seq, int64_t t, int g, int total, int evals, double acc) {
  pb::JobEvent e;
  e.set_sequence(seq);
  e.mutable_time()->set_seconds(t);
  auto* gf = e.mutable_generation_finished();
  gf->set_generation(g);
  gf->set_generations_total(total);
  gf->set_evaluations(evals);
  gf->mutable_best()->set_accuracy(acc);
  gf->mutable_best()->set_flops_ratio(0.4987);
  return e;
}

TEST(FormatTest, DurationsBytesAndBars) {
  EXPECT_EQ(FormatShortDuration(absl::Seconds(9)), "9s");
  EXPECT_EQ(FormatShortDuration(absl::Seconds(252)), "4m12s");
  EXPECT_EQ(FormatShortDuration(absl::Seconds(3720)), "1h02m");
  EXPECT_EQ(FormatShortDuration(absl::Seconds(-3)), "0s");
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(12 << 20), "12.0 MiB");
  EXPECT_EQ(FormatTransferBar(5 << 20, 10 << 20, 10), "[#####.....]  50%  5.0 MiB / 10.0 MiB");
  EXPECT_EQ(FormatTransferBar(20, 10, 4), "[####] 100%  20 B / 10 B");
  EXPECT_EQ(FormatTransferBar(2048, 0), "2.0 KiB");
}

TEST(WatchProgressTest, LineAndEtaFromEventTimes) {
  WatchProgress p;
  p.Apply(StateEvent(1, 100, pb::JOB_STATE_UNSPECIFIED, pb::QUEUED));
  EXPECT_EQ(p.Line(), "QUEUED");
  p.Apply(StateEvent(2, 105, pb::QUEUED, pb::PREPARING));
  p.Apply(StateEvent(3, 110, pb::PREPARING, pb::SEARCHING));
  EXPECT_EQ(p.Eta(), std::nullopt);
  p.Apply(GenEvent(4, 120, 1, 4, 32, 0.5));
  p.Apply(GenEvent(5, 130, 2, 4, 20, 0.625));
  EXPECT_EQ(p.Line(), "SEARCHING  gen 2/4  evals 52  best acc 62.5% flops 0.499  ETA 20s");
  // A replayed (duplicate) event changes nothing.
  p.Apply(GenEvent(5, 130, 2, 4, 20, 0.625));
  EXPECT_EQ(p.evaluations(), 52);
  EXPECT_FALSE(p.terminal());
  p.Apply(StateEvent(6, 140, pb::SEARCHING, pb::FINALIZING));
  EXPECT_EQ(p.Eta(), std::nullopt);
  p.Apply(StateEvent(7, 150, pb::FINALIZING, pb::SUCCEEDED));
  EXPECT_TRUE(p.terminal());
  EXPECT_EQ(p.last_sequence(), 7);
}

TEST(WatchProgressTest, EtaWhenWatchStartsMidSearch) {
  WatchProgress p;
  p.Apply(GenEvent(20, 1000, 5, 10, 30, 0.5));
  EXPECT_EQ(p.state(), pb::SEARCHING);
  EXPECT_EQ(p.Eta(), std::nullopt);
  p.Apply(GenEvent(21, 1010, 6, 10, 30, 0.5));
  EXPECT_EQ(p.Eta(), absl::Seconds(40));
}

TEST(FormatEventLineTest, EachKind) {
  EXPECT_THAT(FormatEventLine(StateEvent(3, 0, pb::QUEUED, pb::PREPARING)),
              ::testing::StartsWith("#3 00:00:00 state QUEUED -> PREPARING"));
  EXPECT_THAT(FormatEventLine(GenEvent(4, 0, 2, 12, 32, 0.75)),
              HasSubstr("generation 2/12 evals 32 hits 0 best acc 75.0% flops 0.499"));
  pb::JobEvent cv = GenEvent(5, 0, 0, 12, 32, 0.75);
  cv.mutable_generation_finished()->set_eta(0.3);
  cv.mutable_generation_finished()->set_eta_method("cv");
  cv.mutable_generation_finished()->set_eta_cv_rho(0.8125);
  EXPECT_THAT(FormatEventLine(cv), HasSubstr("eta 0.3 (cv rho 0.81)"));
  pb::JobEvent a;
  a.mutable_artifact_ready()->set_artifact_id("sha256:ab");
  a.mutable_artifact_ready()->set_size_bytes(2048);
  EXPECT_THAT(FormatEventLine(a), HasSubstr("artifact sha256:ab 2.0 KiB"));
  pb::JobEvent l;
  l.mutable_log()->set_level(pb::JobEvent::LogLine::WARNING);
  l.mutable_log()->set_message("slow worker");
  EXPECT_THAT(FormatEventLine(l), HasSubstr("WARNING slow worker"));
}

}  // namespace
}  // namespace prunesvc::client

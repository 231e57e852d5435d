#include "client/progress.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace prunesvc::client {
namespace {

namespace pb = ::prune::v1;

std::string BestText(const pb::PolicyEvaluation& best) {
  return absl::StrFormat("best acc %.1f%% flops %.3f", 100.0 * best.accuracy(), best.flops_ratio());
}

}  // namespace

absl::Time TimeFromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

std::string StateName(pb::JobState state) { return pb::JobState_Name(state); }

bool WatchProgress::terminal() const {
  return state_ == pb::SUCCEEDED || state_ == pb::FAILED || state_ == pb::CANCELLED;
}

void WatchProgress::Apply(const pb::JobEvent& event) {
  if (event.sequence() != 0 && event.sequence() <= last_sequence_) return;
  last_sequence_ = std::max(last_sequence_, event.sequence());
  const absl::Time t = TimeFromProto(event.time());
  if (event.has_state_changed()) {
    state_ = event.state_changed().to();
    if (state_ == pb::SEARCHING && !anchor_) anchor_ = {t, generation_};
  } else if (event.has_generation_finished()) {
    const auto& g = event.generation_finished();
    generation_ = g.generation();
    generations_total_ = g.generations_total();
    evaluations_ += g.evaluations();
    if (g.has_best()) best_ = g.best();
    if (state_ == pb::JOB_STATE_UNSPECIFIED) state_ = pb::SEARCHING;
    if (!anchor_) anchor_ = {t, generation_};
    last_generation_time_ = t;
  }
}

std::optional<absl::Duration> WatchProgress::Eta() const {
  if (!anchor_ || generation_ <= anchor_->second || generations_total_ <= 0) return std::nullopt;
  if (state_ != pb::SEARCHING) return std::nullopt;
  const absl::Duration per_gen =
      (last_generation_time_ - anchor_->first) / (generation_ - anchor_->second);
  return per_gen * std::max(0, generations_total_ - generation_);
}

std::string WatchProgress::Line() const {
  std::string line = StateName(state_);
  if (generations_total_ > 0) {
    absl::StrAppend(&line, absl::StrFormat("  gen %d/%d", generation_, generations_total_));
  }
  if (evaluations_ > 0) absl::StrAppend(&line, "  evals ", evaluations_);
  if (best_) absl::StrAppend(&line, "  ", BestText(*best_));
  if (auto eta = Eta()) absl::StrAppend(&line, "  ETA ", FormatShortDuration(*eta));
  return line;
}

std::string FormatEventLine(const pb::JobEvent& e) {
  std::string line =
      absl::StrCat("#", e.sequence(), " ",
                   absl::FormatTime("%H:%M:%S", TimeFromProto(e.time()), absl::UTCTimeZone()), " ");
  if (e.has_state_changed()) {
    const auto& s = e.state_changed();
    absl::StrAppend(&line, "state ", StateName(s.from()), " -> ", StateName(s.to()));
    if (!s.reason().empty()) absl::StrAppend(&line, " (", s.reason(), ")");
  } else if (e.has_generation_finished()) {
    const auto& g = e.generation_finished();
    absl::StrAppend(&line, absl::StrFormat("generation %d/%d evals %d hits %d", g.generation(),
                                           g.generations_total(), g.evaluations(), g.cache_hits()));
    if (g.has_best()) {
      absl::StrAppend(&line, " ", BestText(g.best()),
                      absl::StrFormat(" fitness %.4f", g.best().fitness()));
    }
    if (!g.eta_method().empty()) {
      absl::StrAppend(&line, absl::StrFormat(" eta %g (%s", g.eta(), g.eta_method()));
      if (g.has_eta_cv_rho()) absl::StrAppend(&line, absl::StrFormat(" rho %.2f", g.eta_cv_rho()));
      absl::StrAppend(&line, ")");
    }
  } else if (e.has_projector_updated()) {
    const auto& p = e.projector_updated();
    absl::StrAppend(&line, absl::StrFormat("projector v%d loss %.4f -> %.4f", p.version(),
                                           p.loss_before(), p.loss_after()));
  } else if (e.has_artifact_ready()) {
    const auto& a = e.artifact_ready();
    absl::StrAppend(&line, "artifact ", a.artifact_id(), " ", FormatBytes(a.size_bytes()),
                    absl::StrFormat(" flops %.3f acc %.1f%% (%s)", a.flops_ratio(),
                                    100.0 * a.accuracy(), a.accuracy_set()));
  } else if (e.has_log()) {
    absl::StrAppend(&line, pb::JobEvent::LogLine::Level_Name(e.log().level()), " ",
                    e.log().message());
  } else {
    absl::StrAppend(&line, "(unknown event)");
  }
  return line;
}

std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, units[u]);
}

std::string FormatTransferBar(int64_t done, int64_t total, int width) {
  if (total <= 0) return FormatBytes(done);
  const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0);
  const int filled = static_cast<int>(frac * width);
  return absl::StrFormat("[%s%s] %3d%%  %s / %s", std::string(filled, '#'),
                         std::string(width - filled, '.'), static_cast<int>(frac * 100),
                         FormatBytes(done), FormatBytes(total));
}

std::string FormatShortDuration(absl::Duration d) {
  const int64_t s = std::max<int64_t>(0, absl::ToInt64Seconds(d));
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

}  // namespace prunesvc::client

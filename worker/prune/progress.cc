#include "worker/prune/progress.h"

#include "spdlog/spdlog.h"

namespace prunesvc::prune {

std::string_view JobPhaseName(JobPhase phase) {
  switch (phase) {
    case JobPhase::kLoad:
      return "load";
    case JobPhase::kBaseline:
      return "baseline";
    case JobPhase::kCalibration:
      return "calibration";
    case JobPhase::kSearch:
      return "search";
    case JobPhase::kFinalize:
      return "finalize";
    case JobPhase::kWrite:
      return "write";
    case JobPhase::kVerify:
      return "verify";
    case JobPhase::kDone:
      return "done";
  }
  return "unknown";
}

absl::Status StepContext::CheckStop() {
  if (Stop()) return absl::CancelledError("stopped on request");
  return absl::OkStatus();
}

double StepContext::ElapsedSeconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void StepContext::Phase(JobPhase phase) {
  progress_.phase = phase;
  progress_.elapsed_seconds = ElapsedSeconds();
  spdlog::info("phase: {}", JobPhaseName(phase));
  if (sink_ != nullptr) sink_->OnProgress(progress_);
}

void StepContext::Warn(const std::string& message) {
  warnings_.push_back(message);
  if (sink_ != nullptr) {
    sink_->OnWarning(message);
  } else {
    spdlog::warn("{}", message);
  }
}

void StepContext::Evaluated() {
  ++progress_.evaluations;
  progress_.elapsed_seconds = ElapsedSeconds();
  if (sink_ != nullptr) sink_->OnProgress(progress_);
}

void StepContext::Generation() {
  if (sink_ != nullptr) sink_->OnGeneration(progress_);
}

}  // namespace prunesvc::prune

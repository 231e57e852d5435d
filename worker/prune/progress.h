// Progress, warnings and cancellation of a pruning job or of one worker step: the ProgressSink a
// caller implements (prune-local draws a progress line; the worker checks its call's context and
// the heartbeat's cancel list), and StepContext, what the engine's steps carry to report to it.
//
// Cancellation is cooperative: StopRequested() is polled at safe points (between phases and
// between candidate evaluations); the step then returns CancelledError. A running forward pass is
// not interrupted.
//
// Thread-compatible: one StepContext per step, used from the step's thread.
#ifndef PRUNESVC_WORKER_PRUNE_PROGRESS_H_
#define PRUNESVC_WORKER_PRUNE_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "common/evolution.h"

namespace prunesvc::prune {

enum class JobPhase {
  kLoad,
  kBaseline,
  kCalibration,
  kSearch,
  kFinalize,
  kWrite,
  kVerify,
  kDone,
};
std::string_view JobPhaseName(JobPhase phase);

struct JobProgress {
  JobPhase phase = JobPhase::kLoad;
  int generation = -1;      // last finished generation; -1 before the first
  int generations = 0;      // generations scored in all (spec.generations + 1); 0 without a search
  int64_t evaluations = 0;  // candidate evaluations so far
  int64_t planned_evaluations = 0;  // the search's nominal count (re-scoring excluded)
  std::optional<search::GenerationStats> latest;  // stats of the last finished generation
  double elapsed_seconds = 0;
  double eta_seconds = -1;  // estimated remaining seconds of the search; -1 = unknown
};

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  // A phase started, or a candidate evaluation finished.
  virtual void OnProgress(const JobProgress& progress) {}
  // A generation finished (progress.latest is set).
  virtual void OnGeneration(const JobProgress& progress) {}
  // Something the user should read (also recorded in report.json's `warnings`).
  virtual void OnWarning(const std::string& message) {}
  // Polled at safe points; true → the step stops with CancelledError.
  virtual bool StopRequested() { return false; }
};

// What a step reports through; `sink` may be null (then warnings go to the log).
class StepContext {
 public:
  explicit StepContext(ProgressSink* sink = nullptr)
      : sink_(sink), start_(std::chrono::steady_clock::now()) {}

  bool Stop() { return sink_ != nullptr && sink_->StopRequested(); }
  absl::Status CheckStop();
  // A phase starts (logged, and OnProgress).
  void Phase(JobPhase phase);
  void Warn(const std::string& message);
  // One candidate evaluation finished.
  void Evaluated();
  void Generation();

  JobProgress& progress() { return progress_; }
  const std::vector<std::string>& warnings() const { return warnings_; }
  double ElapsedSeconds() const;
  ProgressSink* sink() { return sink_; }

 private:
  ProgressSink* const sink_;
  const std::chrono::steady_clock::time_point start_;
  JobProgress progress_;
  std::vector<std::string> warnings_;
};

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_PROGRESS_H_

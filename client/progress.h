// What prunectl shows while it waits: the state of a watched job folded from its JobEvents (the
// live progress line on a TTY, one line per event otherwise) and byte progress bars for uploads
// and fetches. The ETA comes from the events' own timestamps (server time), so a replay after a
// reconnect gives the same estimate as watching live.
//
// Value types and pure functions; thread-compatible.
#ifndef PRUNESVC_CLIENT_PROGRESS_H_
#define PRUNESVC_CLIENT_PROGRESS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "prune/v1/job.pb.h"

namespace prunesvc::client {

// A job's progress as far as its events tell.
class WatchProgress {
 public:
  // Folds one event in (events must come in sequence order; older sequences are ignored).
  void Apply(const ::prune::v1::JobEvent& event);

  ::prune::v1::JobState state() const { return state_; }
  bool terminal() const;
  int64_t last_sequence() const { return last_sequence_; }
  int generation() const { return generation_; }
  int generations_total() const { return generations_total_; }
  int64_t evaluations() const { return evaluations_; }
  // Remaining search time: the mean generation time so far times the generations left; nullopt
  // before two timed points.
  std::optional<absl::Duration> Eta() const;
  // "SEARCHING  gen 3/12  evals 96  best acc 81.2% flops 0.498  ETA 4m12s".
  std::string Line() const;

 private:
  ::prune::v1::JobState state_ = ::prune::v1::JOB_STATE_UNSPECIFIED;
  int64_t last_sequence_ = 0;
  int generation_ = 0;
  int generations_total_ = 0;
  int64_t evaluations_ = 0;
  std::optional<::prune::v1::PolicyEvaluation> best_;
  // The first timed point of the search (SEARCHING's start = generation 0, or the first
  // generation seen when the watch starts mid-search) and the latest generation's time.
  std::optional<std::pair<absl::Time, int>> anchor_;
  absl::Time last_generation_time_;
};

// One human-readable line for an event: "#12 2026-… generation 3/12 best acc …".
std::string FormatEventLine(const ::prune::v1::JobEvent& event);

// "[#######.......]  42%  12.0 MiB / 28.5 MiB"; total <= 0 prints only the bytes.
std::string FormatTransferBar(int64_t done, int64_t total, int width = 30);

// "1h02m", "4m12s", "9s".
std::string FormatShortDuration(absl::Duration d);

// Bytes as "12.0 MiB" / "512 B".
std::string FormatBytes(int64_t bytes);

// State name without the enum prefix ("SEARCHING").
std::string StateName(::prune::v1::JobState state);

absl::Time TimeFromProto(const google::protobuf::Timestamp& t);

}  // namespace prunesvc::client

#endif  // PRUNESVC_CLIENT_PROGRESS_H_

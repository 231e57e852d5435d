// A search job's checkpoint as the scheduler stores it (JobStore::Checkpoint, committed with each
// generation; docs/architecture.md §7): the SearchState (common/evolution.h), the projector blobs
// by version, the record of evaluated policies and the evaluation count.
//
// Stored incrementally: a search's cache entries (each with its per-sample losses) and its
// evaluated records only grow, so each is written once, as one record of the job's checkpoint
// log, and every commit replaces only the head — the rest of the state, a few KiB. A generation's
// commit then costs what the generation added, not everything the search has seen (a full
// rewrite made the commits, serialized in the job store, the scheduler's bottleneck: issue 20,
// docs/PERFORMANCE.md). CheckpointLog tracks what is logged; ParseSearchCheckpoint(head, log)
// puts the records back. A head alone with its cache inside (the format before the log) still
// parses.
//
// ParseSearchCheckpoint never throws and never trusts the text: anything malformed is DATA_LOSS
// naming the field ("corrupt checkpoint: projector_blobs key \"x\" …", "log record 3: …"). The
// fuzz target checkpoint_fuzz drives it. Pure functions; CheckpointLog is thread-compatible.
#ifndef PRUNESVC_SERVER_SEARCH_CHECKPOINT_H_
#define PRUNESVC_SERVER_SEARCH_CHECKPOINT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/evolution.h"
#include "nlohmann/json.hpp"

namespace prunesvc::server {

struct SearchCheckpoint {
  search::SearchState state;
  std::map<int, std::string> projector_blobs;          // version (≥ 1) → blob id
  nlohmann::json evaluated = nlohmann::json::array();  // [{hash, projector_version}, …]
  int64_t evaluations = 0;
  // The order the job's workers score the samples in (PrepareResponse.sample_order; the cached
  // per-sample losses count its positions); empty = each worker's own. Unset in checkpoints
  // written before samples were ordered: those were scored in index order.
  std::optional<std::vector<int>> sample_order;
};

// The whole checkpoint as one text (cache and evaluated records inside the head).
std::string SearchCheckpointToJson(const SearchCheckpoint& c);
absl::StatusOr<SearchCheckpoint> ParseSearchCheckpoint(const std::string& text);
// A head and its log records, in log order.
absl::StatusOr<SearchCheckpoint> ParseSearchCheckpoint(const std::string& head,
                                                       const std::vector<std::string>& log);

// What one commit stores: the new head and the records to append to the log.
struct CheckpointDelta {
  std::string head;
  std::vector<std::string> records;
  // Bookkeeping for CheckpointLog::Committed.
  std::vector<std::pair<std::string, int>> cache_keys;
  size_t evaluated_size = 0;
};

// A delta before serialization: copies of what the commit stores (the state's head as JSON
// values, the new cache entries, the new evaluated records). Taking one is cheap; Serialize —
// the JSON text of every new entry's per-sample losses, milliseconds at population 512 — may
// run on another thread, while the search goes on (SearchDriver writes each generation beside
// the next one's evaluation).
struct CheckpointSnapshot {
  nlohmann::json head;
  std::vector<std::pair<std::pair<std::string, int>, search::EvalResult>> cache;
  std::vector<nlohmann::json> evaluated;
  size_t evaluated_size = 0;

  CheckpointDelta Serialize() const;
};

// Which cache entries and evaluated records are in the stored log already.
class CheckpointLog {
 public:
  CheckpointLog() = default;
  // After a resume from `c`, parsed from a head and `log`: everything `c` holds is in the log when
  // the log has records. A checkpoint written before the log (its head carries everything, the log
  // is empty) has nothing logged: the next commit's head leaves the cache out, so every entry must
  // go into the log then.
  static CheckpointLog Resumed(const SearchCheckpoint& c, const std::vector<std::string>& log);

  // The head of the state and the records not logged yet. `evaluated` only grows between calls.
  CheckpointDelta Delta(const search::SearchState& state,
                        const std::map<int, std::string>& projector_blobs,
                        const nlohmann::json& evaluated, int64_t evaluations,
                        const std::optional<std::vector<int>>& sample_order = std::nullopt) const {
    return Snapshot(state, projector_blobs, evaluated, evaluations, sample_order).Serialize();
  }
  // The same, not serialized yet. Only evaluated's first `evaluated_end` records count (all of
  // them by default): a snapshot taken after more were appended still describes the state.
  CheckpointSnapshot Snapshot(const search::SearchState& state,
                              const std::map<int, std::string>& projector_blobs,
                              const nlohmann::json& evaluated, int64_t evaluations,
                              const std::optional<std::vector<int>>& sample_order = std::nullopt,
                              size_t evaluated_end = SIZE_MAX) const;
  // The delta's commit succeeded: its records are logged.
  void Committed(const CheckpointDelta& delta);

 private:
  std::set<std::pair<std::string, int>> cache_;
  size_t evaluated_ = 0;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_SEARCH_CHECKPOINT_H_

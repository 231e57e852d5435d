// A search job's checkpoint as the scheduler stores it (JobStore::Checkpoint's text, committed
// with each generation; docs/architecture.md §7): the SearchState (common/evolution.h), the
// projector blobs by version, the record of evaluated policies and the evaluation count.
//
// ParseSearchCheckpoint never throws and never trusts the text: anything malformed is DATA_LOSS
// naming the field ("corrupt checkpoint: projector_blobs key \"x\" …"). The fuzz target
// checkpoint_fuzz drives it. Pure functions; thread-safe.
#ifndef PRUNESVC_SERVER_SEARCH_CHECKPOINT_H_
#define PRUNESVC_SERVER_SEARCH_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "common/evolution.h"
#include "nlohmann/json.hpp"

namespace prunesvc::server {

struct SearchCheckpoint {
  search::SearchState state;
  std::map<int, std::string> projector_blobs;          // version (≥ 1) → blob id
  nlohmann::json evaluated = nlohmann::json::array();  // [{hash, projector_version}, …]
  int64_t evaluations = 0;
};

std::string SearchCheckpointToJson(const SearchCheckpoint& c);
absl::StatusOr<SearchCheckpoint> ParseSearchCheckpoint(const std::string& text);

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_SEARCH_CHECKPOINT_H_

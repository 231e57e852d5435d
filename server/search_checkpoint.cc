#include "server/search_checkpoint.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace prunesvc::server {
namespace {

using nlohmann::json;

absl::Status Corrupt(const std::string& what) {
  return absl::DataLossError(absl::StrCat("corrupt checkpoint: ", what));
}

json HeadJson(json state, const std::map<int, std::string>& projector_blobs, json evaluated,
              int64_t evaluations, const std::optional<std::vector<int>>& sample_order) {
  json blobs = json::object();
  for (const auto& [v, id] : projector_blobs) blobs[std::to_string(v)] = id;
  json head{{"search_state", std::move(state)},
            {"projector_blobs", blobs},
            {"evaluated", std::move(evaluated)},
            {"evaluations", evaluations}};
  if (sample_order.has_value()) head["sample_order"] = *sample_order;
  return head;
}

absl::StatusOr<SearchCheckpoint> FromJson(const json& j) {
  if (!j.is_object()) return Corrupt("not a JSON object");
  SearchCheckpoint c;
  auto state = j.find("search_state");
  if (state == j.end()) return Corrupt("no search_state");
  absl::StatusOr<search::SearchState> s = search::SearchState::FromJson(*state);
  if (!s.ok()) return Corrupt(absl::StrCat("search_state: ", s.status().message()));
  c.state = *std::move(s);
  if (auto blobs = j.find("projector_blobs"); blobs != j.end()) {
    if (!blobs->is_object()) return Corrupt("projector_blobs is not an object");
    for (const auto& [key, id] : blobs->items()) {
      int v = 0;
      if (!absl::SimpleAtoi(key, &v) || v < 1) {
        return Corrupt(absl::StrCat("projector_blobs key \"", key, "\" is not a version ≥ 1"));
      }
      if (!id.is_string() || id.get_ref<const std::string&>().empty()) {
        return Corrupt(absl::StrCat("projector_blobs[", key, "] is not a blob id"));
      }
      c.projector_blobs[v] = id.get<std::string>();
    }
  }
  if (auto evaluated = j.find("evaluated"); evaluated != j.end()) {
    if (!evaluated->is_array()) return Corrupt("evaluated is not an array");
    for (const json& e : *evaluated) {
      if (!e.is_object()) return Corrupt("evaluated holds a non-object");
    }
    c.evaluated = *evaluated;
  }
  if (auto n = j.find("evaluations"); n != j.end()) {
    if (!n->is_number_integer() || n->get<int64_t>() < 0) {
      return Corrupt("evaluations is not a non-negative integer");
    }
    c.evaluations = n->get<int64_t>();
  }
  if (auto order = j.find("sample_order"); order != j.end()) {
    if (!order->is_array()) return Corrupt("sample_order is not an array");
    std::vector<int>& o = c.sample_order.emplace();
    // A permutation: each position once (a repeated one would score a sample twice and skip
    // another, and the cached losses would no longer be the search samples').
    std::vector<bool> seen(order->size(), false);
    for (const json& i : *order) {
      if (!i.is_number_integer() || i.get<int64_t>() < 0 ||
          i.get<int64_t>() >= int64_t(order->size())) {
        return Corrupt(absl::StrCat("sample_order holds ", i.dump(), ", not a position in [0, ",
                                    order->size(), ")"));
      }
      const size_t at = i.get<size_t>();
      if (seen[at]) {
        return Corrupt(absl::StrCat("sample_order holds ", at, " twice (entry ", o.size(),
                                    "): it must be a permutation of [0, ", order->size(), ")"));
      }
      seen[at] = true;
      o.push_back(int(at));
    }
  }
  return c;
}

}  // namespace

std::string SearchCheckpointToJson(const SearchCheckpoint& c) {
  return HeadJson(c.state.ToJson(), c.projector_blobs, c.evaluated, c.evaluations, c.sample_order)
      .dump();
}

absl::StatusOr<SearchCheckpoint> ParseSearchCheckpoint(const std::string& text) {
  return ParseSearchCheckpoint(text, {});
}

// Log records are {"cache": <SearchState cache entry>} or {"evaluated": <evaluated record>}; each
// goes back where SearchCheckpointToJson would have written it, in log order.
absl::StatusOr<SearchCheckpoint> ParseSearchCheckpoint(const std::string& head,
                                                       const std::vector<std::string>& log) {
  json j = json::parse(head, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Corrupt("not a JSON object");
  for (size_t i = 0; i < log.size(); ++i) {
    json r = json::parse(log[i], nullptr, /*allow_exceptions=*/false);
    if (r.is_discarded() || !r.is_object() || r.size() != 1) {
      return Corrupt(absl::StrCat("log record ", i, " is not a one-key JSON object"));
    }
    if (auto e = r.find("cache"); e != r.end()) {
      json* state = nullptr;
      if (auto s = j.find("search_state"); s != j.end() && s->is_object()) state = &*s;
      if (state == nullptr) return Corrupt(absl::StrCat("log record ", i, ": no search_state"));
      json& cache = (*state)["cache"];
      if (cache.is_null()) cache = json::array();
      if (!cache.is_array()) return Corrupt("search_state.cache is not an array");
      cache.push_back(std::move(*e));
    } else if (auto e = r.find("evaluated"); e != r.end()) {
      json& evaluated = j["evaluated"];
      if (evaluated.is_null()) evaluated = json::array();
      if (!evaluated.is_array()) return Corrupt("evaluated is not an array");
      evaluated.push_back(std::move(*e));
    } else {
      return Corrupt(absl::StrCat("log record ", i, " is neither \"cache\" nor \"evaluated\""));
    }
  }
  return FromJson(j);
}

CheckpointLog CheckpointLog::Resumed(const SearchCheckpoint& c,
                                     const std::vector<std::string>& log) {
  CheckpointLog l;
  if (log.empty()) return l;
  l.evaluated_ = c.evaluated.size();
  for (const auto& [key, result] : c.state.cache) l.cache_.insert(key);
  return l;
}

CheckpointSnapshot CheckpointLog::Snapshot(const search::SearchState& state,
                                           const std::map<int, std::string>& projector_blobs,
                                           const json& evaluated, int64_t evaluations,
                                           const std::optional<std::vector<int>>& sample_order,
                                           size_t evaluated_end) const {
  CheckpointSnapshot s;
  s.head = HeadJson(state.ToJsonWithoutCache(), projector_blobs, json::array(), evaluations,
                    sample_order);
  for (const auto& entry : state.cache) {
    if (cache_.count(entry.first) == 0) s.cache.push_back(entry);
  }
  s.evaluated_size = std::min(evaluated.size(), evaluated_end);
  for (size_t i = evaluated_; i < s.evaluated_size; ++i) s.evaluated.push_back(evaluated[i]);
  return s;
}

CheckpointDelta CheckpointSnapshot::Serialize() const {
  CheckpointDelta d;
  d.head = head.dump();
  for (const auto& [key, result] : cache) {
    d.records.push_back(json{{"cache", search::SearchState::CacheEntryJson(key, result)}}.dump());
    d.cache_keys.push_back(key);
  }
  d.evaluated_size = evaluated_size;
  for (const json& e : evaluated) d.records.push_back(json{{"evaluated", e}}.dump());
  return d;
}

void CheckpointLog::Committed(const CheckpointDelta& delta) {
  cache_.insert(delta.cache_keys.begin(), delta.cache_keys.end());
  evaluated_ = delta.evaluated_size;
}

}  // namespace prunesvc::server

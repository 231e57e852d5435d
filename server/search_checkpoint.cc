#include "server/search_checkpoint.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace prunesvc::server {
namespace {

using nlohmann::json;

absl::Status Corrupt(const std::string& what) {
  return absl::DataLossError(absl::StrCat("corrupt checkpoint: ", what));
}

}  // namespace

std::string SearchCheckpointToJson(const SearchCheckpoint& c) {
  json blobs = json::object();
  for (const auto& [v, id] : c.projector_blobs) blobs[std::to_string(v)] = id;
  return json{{"search_state", c.state.ToJson()},
              {"projector_blobs", blobs},
              {"evaluated", c.evaluated},
              {"evaluations", c.evaluations}}
      .dump();
}

absl::StatusOr<SearchCheckpoint> ParseSearchCheckpoint(const std::string& text) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Corrupt("not a JSON object");
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
  return c;
}

}  // namespace prunesvc::server

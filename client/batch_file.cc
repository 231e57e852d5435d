// The parsing half of `prunectl batch` (client/batch.h): the YAML file, the grid's expansion and
// the request ids. Pure; fuzzed by batch_file_fuzz.
#include <filesystem>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/batch.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "yaml-cpp/yaml.h"

namespace prunesvc::client {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;

absl::Status Bad(absl::string_view origin, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ": ", what));
}

std::string Origin(absl::string_view source, const YAML::Node& node) {
  return absl::StrCat(source, ":", node.Mark().line + 1);
}

// A node's value as SetFieldFromText takes it: a scalar, a list joined by commas.
absl::StatusOr<std::string> ValueText(const YAML::Node& node, absl::string_view origin) {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsSequence()) {
    std::vector<std::string> items;
    for (const YAML::Node& item : node) {
      if (!item.IsScalar()) return Bad(origin, "expected a list of scalars");
      items.push_back(item.Scalar());
    }
    return absl::StrJoin(items, ",");
  }
  return Bad(origin, "expected a scalar or a list");
}

// `spec:`: every key a JobSpec field (labels a mapping).
absl::Status ParseSpec(const YAML::Node& spec, absl::string_view source, JobRequest& request) {
  if (!spec.IsMap()) return Bad(Origin(source, spec), "spec: expected a mapping of JobSpec fields");
  for (auto it = spec.begin(); it != spec.end(); ++it) {
    const std::string origin = Origin(source, it->first);
    const std::string key = it->first.Scalar();
    const YAML::Node value = it->second;  // a copy: yaml-cpp iterators hand out temporaries
    if (key == "labels" && value.IsMap()) {
      for (auto l = value.begin(); l != value.end(); ++l) {
        RETURN_IF_ERROR(SetFieldFromText(
            "labels", absl::StrCat(l->first.Scalar(), "=", l->second.Scalar()), origin, request));
      }
      continue;
    }
    ASSIGN_OR_RETURN(std::string text, ValueText(value, origin));
    RETURN_IF_ERROR(SetFieldFromText(key, text, origin, request));
  }
  return absl::OkStatus();
}

// A value as a file-name-safe piece: a path's base name, [A-Za-z0-9._-] kept.
std::string NamePiece(const std::string& field, const std::string& value) {
  std::string v = value;
  if (field == "model_uri" || field == "modelUri") v = fs::path(value).filename().string();
  std::string out;
  for (char c : v) {
    out.push_back(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ||
                          c == '_'
                      ? c
                      : '_');
  }
  return out.empty() ? "_" : out;
}

// The offset of the first byte that breaks UTF-8, or npos.
size_t InvalidUtf8At(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t n = c < 0x80           ? 1
                     : (c >> 5) == 0x6  ? 2
                     : (c >> 4) == 0xE  ? 3
                     : (c >> 3) == 0x1E ? 4
                                        : 0;
    if (n == 0 || i + n > text.size()) return i;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) >> 6) != 0x2) return i;
    }
    i += n;
  }
  return absl::string_view::npos;
}

absl::StatusOr<BatchFile> ParseBatchFileImpl(absl::string_view text, absl::string_view source);

}  // namespace

absl::StatusOr<BatchFile> ParseBatchFile(absl::string_view text, absl::string_view source) {
  if (const size_t at = InvalidUtf8At(text); at != absl::string_view::npos) {
    return Bad(source, absl::StrCat("not UTF-8 text (byte ", at, ")"));
  }
  try {
    return ParseBatchFileImpl(text, source);
  } catch (const YAML::Exception& e) {  // yaml-cpp throws on a node of an unexpected kind
    return Bad(source, absl::StrCat("unexpected structure: ", e.what()));
  }
}

namespace {

absl::StatusOr<BatchFile> ParseBatchFileImpl(absl::string_view text, absl::string_view source) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  if (!root.IsMap()) return Bad(source, "expected a mapping (name, dataset, spec, grid, ...)");
  BatchFile file;
  file.name = fs::path(std::string(source)).stem().string();
  bool has_grid = false;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string origin = Origin(source, it->first);
    const std::string key = it->first.Scalar();
    const YAML::Node v = it->second;  // a copy: yaml-cpp iterators hand out temporaries
    auto scalar = [&](std::string& into) -> absl::Status {
      if (!v.IsScalar()) return Bad(origin, absl::StrCat(key, ": expected a scalar"));
      into = v.Scalar();
      return absl::OkStatus();
    };
    if (key == "name") {
      RETURN_IF_ERROR(scalar(file.name));
    } else if (key == "dataset") {
      RETURN_IF_ERROR(scalar(file.dataset));
    } else if (key == "eval_dataset") {
      RETURN_IF_ERROR(scalar(file.eval_dataset));
    } else if (key == "out") {
      RETURN_IF_ERROR(scalar(file.out));
    } else if (key == "spec") {
      RETURN_IF_ERROR(ParseSpec(v, source, file.shared));
    } else if (key == "grid") {
      if (!v.IsMap()) return Bad(origin, "grid: expected a mapping of JobSpec field → values");
      has_grid = true;
      for (auto axis = v.begin(); axis != v.end(); ++axis) {
        const std::string axis_origin = Origin(source, axis->first);
        std::vector<BatchFile::Value> values;
        const YAML::Node list = axis->second;
        if (list.IsScalar()) {
          values.push_back({list.Scalar(), Origin(source, list)});
        } else if (list.IsSequence() && list.size() > 0) {
          for (const YAML::Node& item : list) {
            if (!item.IsScalar()) return Bad(Origin(source, item), "grid values are scalars");
            values.push_back({item.Scalar(), Origin(source, item)});
          }
        } else {
          return Bad(axis_origin, absl::StrCat("grid.", axis->first.Scalar(),
                                               ": expected a value or a non-empty list"));
        }
        file.grid.emplace_back(axis->first.Scalar(), std::move(values));
      }
    } else {
      return Bad(origin, absl::StrCat("unknown key \"", key,
                                      "\" (name, dataset, eval_dataset, out, spec, grid)"));
    }
  }
  if (file.dataset.empty()) return Bad(source, "dataset: required (a directory, tar or id)");
  if (!has_grid) return Bad(source, "grid: required (at least one axis, e.g. flops_budget)");
  for (char c : file.name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') {
      return Bad(source, absl::StrCat("name \"", file.name, "\" must be [A-Za-z0-9._-]"));
    }
  }
  if (file.out.empty()) file.out = "batch-" + file.name;
  return file;
}

}  // namespace

absl::StatusOr<std::vector<BatchJob>> ExpandBatch(const BatchFile& file,
                                                  const std::string& dataset_id,
                                                  const std::string& eval_dataset_id) {
  std::vector<BatchJob> jobs = {BatchJob{"", file.shared}};
  jobs[0].request.spec.set_dataset_id(dataset_id);
  if (!eval_dataset_id.empty()) jobs[0].request.spec.set_eval_dataset_id(eval_dataset_id);
  for (const auto& [field, values] : file.grid) {
    std::vector<BatchJob> next;
    for (const BatchJob& base : jobs) {
      for (const BatchFile::Value& v : values) {
        BatchJob j = base;
        RETURN_IF_ERROR(SetFieldFromText(field, v.text, v.origin, j.request));
        j.name = j.name.empty() ? NamePiece(field, v.text)
                                : absl::StrCat(j.name, ".", NamePiece(field, v.text));
        next.push_back(std::move(j));
      }
    }
    jobs = std::move(next);
  }
  std::set<std::string> names;
  for (const BatchJob& j : jobs) {
    // Every spec is checked before any is sent: a bad value must not leave half a grid behind.
    RETURN_IF_ERROR(ValidateJobRequest(j.request));
    if (!names.insert(j.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("grid: two jobs would both be named \"",
                                                     j.name, "\" (repeated values in an axis?)"));
    }
  }
  return jobs;
}

std::string BatchRequestId(const std::string& batch_name, const pb::JobSpec& spec) {
  pb::JobSpec s = spec;
  s.clear_request_id();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    s.SerializeToCodedStream(&coded);
  }
  return "batch-" + Sha256Hex(absl::StrCat(batch_name, "\n", bytes)).substr(0, 32);
}

}  // namespace prunesvc::client

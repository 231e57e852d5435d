#include "client/job_file.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/job_spec_proto.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace prunesvc::client {
namespace {

namespace pb = ::prune::v1;
using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Reflection;

absl::Status Bad(absl::string_view origin, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ": ", what));
}

// The JobSpec field for a key: proto name (snake_case) or its JSON lowerCamel form.
const FieldDescriptor* FindField(absl::string_view key) {
  const Descriptor* d = pb::JobSpec::descriptor();
  if (const FieldDescriptor* f = d->FindFieldByName(std::string(key))) return f;
  return d->FindFieldByCamelcaseName(std::string(key));
}

std::string KnownKeys() {
  const Descriptor* d = pb::JobSpec::descriptor();
  std::string out;
  for (int i = 0; i < d->field_count(); ++i) {
    absl::StrAppend(&out, i ? ", " : "", d->field(i)->name());
  }
  return out;
}

absl::StatusOr<double> ParseDouble(absl::string_view text, absl::string_view origin) {
  double v;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(text), &v)) {
    return Bad(origin, absl::StrCat("expected a number, got \"", text, "\""));
  }
  return v;
}

absl::StatusOr<bool> ParseBool(absl::string_view text, absl::string_view origin) {
  const std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (t == "true" || t == "yes" || t == "1") return true;
  if (t == "false" || t == "no" || t == "0") return false;
  return Bad(origin, absl::StrCat("expected true or false, got \"", text, "\""));
}

absl::StatusOr<int> ParseEnum(const FieldDescriptor* f, absl::string_view text,
                              absl::string_view origin) {
  std::string name = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  name = absl::StrReplaceAll(name, {{"-", "_"}});
  if (f->name() == "nm_pattern" && absl::StrContains(name, ':')) {
    name = absl::StrCat("NM_", absl::StrReplaceAll(name, {{":", "_"}}));
  }
  const auto* value = f->enum_type()->FindValueByName(name);
  if (value == nullptr || value->number() == 0) {
    std::string choices;
    for (int i = 1; i < f->enum_type()->value_count(); ++i) {
      absl::StrAppend(&choices, i > 1 ? ", " : "", f->enum_type()->value(i)->name());
    }
    return Bad(origin, absl::StrCat("unknown value \"", text, "\" (one of ", choices, ")"));
  }
  return value->number();
}

// Sets a singular field from its text form.
absl::Status SetScalar(const FieldDescriptor* f, absl::string_view text, absl::string_view origin,
                       pb::JobSpec& spec) {
  const Reflection* r = spec.GetReflection();
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      r->SetString(&spec, f, std::string(text));
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      ASSIGN_OR_RETURN(double v, ParseDouble(text, origin));
      r->SetDouble(&spec, f, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v)) {
        return Bad(origin, absl::StrCat("expected an integer, got \"", text, "\""));
      }
      r->SetInt32(&spec, f, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v)) {
        return Bad(origin, absl::StrCat("expected an unsigned integer, got \"", text, "\""));
      }
      r->SetUInt64(&spec, f, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      ASSIGN_OR_RETURN(bool v, ParseBool(text, origin));
      r->SetBool(&spec, f, v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      ASSIGN_OR_RETURN(int v, ParseEnum(f, text, origin));
      r->SetEnumValue(&spec, f, v);
      return absl::OkStatus();
    }
    default:
      return Bad(origin, absl::StrCat("field ", f->name(), " cannot be set from text"));
  }
}

absl::Status SetRatioChoices(const std::vector<std::string>& items, absl::string_view origin,
                             pb::JobSpec& spec) {
  spec.clear_ratio_choices();
  for (const std::string& item : items) {
    ASSIGN_OR_RETURN(double v, ParseDouble(item, origin));
    spec.add_ratio_choices(v);
  }
  return absl::OkStatus();
}

absl::Status SetEta(absl::string_view text, absl::string_view origin, pb::JobSpec& spec) {
  if (absl::AsciiStrToLower(absl::StripAsciiWhitespace(text)) == "auto") {
    spec.clear_eta();
    spec.set_eta_auto(true);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(double v, ParseDouble(text, origin));
  spec.clear_eta_auto();
  spec.set_eta(v);
  return absl::OkStatus();
}

// --- YAML / JSON files ---------------------------------------------------------------------

std::string LineOrigin(absl::string_view source, const YAML::Node& node) {
  return absl::StrCat(source, ":", node.Mark().line + 1);
}

absl::Status SetFromNode(const FieldDescriptor* f, const YAML::Node& value,
                         const std::string& origin, JobRequest& request) {
  const std::string where = absl::StrCat(origin, ": key \"", f->name(), "\"");
  if (!value.IsDefined() || value.IsNull()) return Bad(where, "has no value");
  if (f->is_map()) {
    if (!value.IsMap()) return Bad(where, "expected a mapping of string to string");
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (!it->first.IsScalar() || !it->second.IsScalar()) {
        return Bad(where, "expected string keys and values");
      }
      (*request.spec.mutable_labels())[it->first.Scalar()] = it->second.Scalar();
    }
    return absl::OkStatus();
  }
  if (f->is_repeated()) {
    if (!value.IsSequence()) return Bad(where, "expected a list of numbers");
    std::vector<std::string> items;
    for (const YAML::Node& item : value) {
      if (!item.IsScalar()) return Bad(where, "expected a list of numbers");
      items.push_back(item.Scalar());
    }
    return SetRatioChoices(items, where, request.spec);
  }
  if (!value.IsScalar()) return Bad(where, "expected a single value");
  if (f->name() == "eta") return SetEta(value.Scalar(), where, request.spec);
  return SetScalar(f, value.Scalar(), where, request.spec);
}

absl::StatusOr<YAML::Node> LoadYaml(absl::string_view text, absl::string_view source) {
  try {
    return YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
}

// Strict JSON syntax first (YAML accepts more); nlohmann's message has the line and column.
absl::Status CheckJsonSyntax(absl::string_view text, absl::string_view source) {
  try {
    (void)nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for 1e999
    std::string what = e.what();
    if (auto p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: ", what));
  }
  return absl::OkStatus();
}

}  // namespace

JobFileFormat DetectJobFileFormat(absl::string_view path, absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(path);
  if (absl::EndsWith(lower, ".json")) return JobFileFormat::kJson;
  if (absl::EndsWith(lower, ".yaml") || absl::EndsWith(lower, ".yml")) return JobFileFormat::kYaml;
  absl::string_view t = absl::StripLeadingAsciiWhitespace(text);
  return !t.empty() && t[0] == '{' ? JobFileFormat::kJson : JobFileFormat::kYaml;
}

absl::Status ParseJobFile(absl::string_view text, JobFileFormat format, absl::string_view source,
                          JobRequest& request) {
  if (format == JobFileFormat::kJson) RETURN_IF_ERROR(CheckJsonSyntax(text, source));
  ASSIGN_OR_RETURN(YAML::Node root, LoadYaml(text, source));
  if (!root.IsMap()) {
    return Bad(source, "expected a mapping of JobSpec fields at the top level");
  }
  std::set<std::string> seen;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string origin = LineOrigin(source, it->first);
    if (!it->first.IsScalar()) return Bad(origin, "expected a field name");
    const std::string& key = it->first.Scalar();
    const FieldDescriptor* f = FindField(key);
    if (f == nullptr) {
      return Bad(origin,
                 absl::StrCat("unknown key \"", key, "\" (JobSpec fields: ", KnownKeys(), ")"));
    }
    if (!seen.insert(f->name()).second) {
      return Bad(origin, absl::StrCat("duplicate key \"", key, "\""));
    }
    RETURN_IF_ERROR(SetFromNode(f, it->second, origin, request));
    request.origins[f->name()] = absl::StrCat(origin, " (", f->name(), ")");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<std::string, std::string>> ParseLabel(absl::string_view text,
                                                               absl::string_view origin) {
  const size_t eq = text.find('=');
  if (eq == absl::string_view::npos || eq == 0) {
    return Bad(origin, absl::StrCat("expected key=value, got \"", text, "\""));
  }
  return std::make_pair(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
}

std::string ModelUriFromArg(absl::string_view arg) {
  if (absl::StrContains(arg, "://") || arg.empty()) return std::string(arg);
  // The non-throwing overload: absolute() of a path it cannot handle (e.g. "") throws.
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(std::string(arg), ec).lexically_normal();
  if (ec) return std::string(arg);  // left as given: validation names model_uri
  std::string s = p.string();
  if (s.size() > 1 && s.back() == '/') s.pop_back();
  return "file://" + s;
}

absl::Status SetFieldFromText(absl::string_view field, absl::string_view text,
                              absl::string_view origin, JobRequest& request) {
  const FieldDescriptor* f = FindField(field);
  if (f == nullptr) return Bad(origin, absl::StrCat("unknown JobSpec field ", field));
  pb::JobSpec& spec = request.spec;
  absl::Status s;
  if (f->is_map()) {
    ASSIGN_OR_RETURN(auto kv, ParseLabel(text, origin));
    (*spec.mutable_labels())[kv.first] = kv.second;
  } else if (f->is_repeated()) {
    s = SetRatioChoices(absl::StrSplit(text, ',', absl::SkipWhitespace()), origin, spec);
  } else if (f->name() == "eta") {
    s = SetEta(text, origin, spec);
  } else if (f->name() == "model_uri") {
    spec.set_model_uri(ModelUriFromArg(text));
  } else {
    s = SetScalar(f, text, origin, spec);
  }
  if (s.ok()) request.origins[f->name()] = std::string(origin);
  return s;
}

const std::vector<std::pair<std::string, std::string>>& SubmitFlagFields() {
  static const auto* kFlags = new std::vector<std::pair<std::string, std::string>>{
      {"model", "model_uri"},
      {"dataset", "dataset_id"},
      {"eval-dataset", "eval_dataset_id"},
      {"flops-budget", "flops_budget"},
      {"granularity", "granularity"},
      {"nm", "nm_pattern"},
      {"unit", "unit"},
      {"strategy", "strategy"},
      {"mask-method", "mask_method"},
      {"final-mask-method", "final_mask_method"},
      {"population", "population"},
      {"generations", "generations"},
      {"parents", "parents"},
      {"mutation", "mutation"},
      {"ratio-choices", "ratio_choices"},
      {"eta", "eta"},
      {"projector-every", "projector_every"},
      {"projector-steps", "projector_steps"},
      {"projector-lr", "projector_lr"},
      {"projector-decay", "projector_decay"},
      {"seed", "seed"},
      {"priority", "priority"},
      {"label", "labels"},
      {"request-id", "request_id"},
      {"warm-start", "warm_start_job_id"},
  };
  return *kFlags;
}

absl::Status ApplySubmitFlags(const std::vector<std::pair<std::string, std::string>>& flags,
                              JobRequest& request) {
  for (const auto& [name, value] : flags) {
    const std::string* field = nullptr;
    for (const auto& [flag, proto] : SubmitFlagFields()) {
      if (flag == name) field = &proto;
    }
    if (field == nullptr) return absl::InvalidArgumentError("unknown submit flag --" + name);
    RETURN_IF_ERROR(SetFieldFromText(*field, value, "--" + name, request));
  }
  return absl::OkStatus();
}

absl::Status ValidateJobRequest(const JobRequest& request) {
  absl::Status s = JobSpecFromProto(request.spec).status();
  if (s.ok()) return s;
  const std::string msg(s.message());
  // JobSpec's messages start with the proto field's name; name where the user set it instead.
  std::string best;
  for (const auto& [field, origin] : request.origins) {
    if (absl::StartsWith(msg, field) && field.size() > best.size() &&
        (msg.size() == field.size() || msg[field.size()] == ' ' || msg[field.size()] == ':')) {
      best = field;
    }
  }
  if (!best.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(request.origins.at(best), ": ", msg));
  }
  for (const auto& [flag, proto] : SubmitFlagFields()) {
    if (absl::StartsWith(msg, proto + " ")) {
      return absl::InvalidArgumentError(absl::StrCat(msg, " (set --", flag, ")"));
    }
  }
  return s;
}

}  // namespace prunesvc::client

#include "worker/model/config.h"

#include <climits>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace prunesvc::model {
namespace {

using nlohmann::json;

constexpr size_t kMaxConfigBytes = 16 << 20;

// Reads typed fields of one JSON object, naming `source: path.key` in every error.
class Fields {
 public:
  Fields(absl::string_view source, std::string prefix, const json* obj)
      : source_(source), prefix_(std::move(prefix)), obj_(obj) {}

  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", prefix_, key, ": ", what));
  }

  // The value, or nullptr when absent. `null_is_absent`: JSON null means "use the default" (for
  // keys HF declares Optional, like head_dim); otherwise null is a type error.
  absl::StatusOr<const json*> Get(absl::string_view key, bool null_is_absent = false) const {
    if (obj_ == nullptr) return nullptr;
    auto it = obj_->find(key);
    if (it == obj_->end()) return nullptr;
    if (it->is_null() && null_is_absent) return nullptr;
    return &*it;
  }

  absl::Status Int(absl::string_view key, int min, int* out, bool null_is_absent = false) const {
    ASSIGN_OR_RETURN(const json* v, Get(key, null_is_absent));
    if (v == nullptr) return absl::OkStatus();
    const char* what = min == 1   ? "expected a positive integer"
                       : min == 0 ? "expected a non-negative integer"
                                  : "expected an integer";
    if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(INT_MAX) || static_cast<int>(u) < min) {
        return Error(key, what);
      }
      *out = static_cast<int>(u);
      return absl::OkStatus();
    }
    if (v->is_number_integer()) {
      int64_t i = v->get<int64_t>();
      if (i < min || i < INT_MIN || i > INT_MAX) return Error(key, what);
      *out = static_cast<int>(i);
      return absl::OkStatus();
    }
    return Error(key, what);
  }

  absl::Status OptionalInt(absl::string_view key, int min, std::optional<int>* out) const {
    ASSIGN_OR_RETURN(const json* v, Get(key, /*null_is_absent=*/true));
    if (v == nullptr) return absl::OkStatus();
    int value = 0;
    RETURN_IF_ERROR(Int(key, min, &value));
    *out = value;
    return absl::OkStatus();
  }

  absl::Status PositiveDouble(absl::string_view key, double* out) const {
    ASSIGN_OR_RETURN(const json* v, Get(key));
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number() || !(v->get<double>() > 0) || v->get<double>() > 1e300) {
      return Error(key, "expected a positive number");
    }
    *out = v->get<double>();
    return absl::OkStatus();
  }

  absl::Status String(absl::string_view key, std::string* out) const {
    ASSIGN_OR_RETURN(const json* v, Get(key));
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_string()) return Error(key, "expected a string");
    *out = v->get<std::string>();
    return absl::OkStatus();
  }

  absl::Status Bool(absl::string_view key, bool* out) const {
    ASSIGN_OR_RETURN(const json* v, Get(key));
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return Error(key, "expected true or false");
    *out = v->get<bool>();
    return absl::OkStatus();
  }

  absl::Status IntList(absl::string_view key, int min, std::vector<int>* out) const {
    ASSIGN_OR_RETURN(const json* v, Get(key, /*null_is_absent=*/true));
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_array()) return Error(key, "expected an array of integers");
    out->clear();
    for (size_t i = 0; i < v->size(); ++i) {
      const json& e = (*v)[i];
      bool ok =
          (e.is_number_unsigned() && e.get<uint64_t>() <= INT_MAX) ||
          (e.is_number_integer() && e.get<int64_t>() >= INT_MIN && e.get<int64_t>() <= INT_MAX);
      if (!ok || e.get<int64_t>() < min) {
        return absl::InvalidArgumentError(absl::StrCat(
            source_, ": ", prefix_, key, "[", i,
            "]: ", min == 0 ? "expected a non-negative integer" : "expected an integer"));
      }
      out->push_back(static_cast<int>(e.get<int64_t>()));
    }
    return absl::OkStatus();
  }

 private:
  absl::string_view source_;
  std::string prefix_;
  const json* obj_;
};

absl::Status ParseVision(absl::string_view source, const json& top, VisionConfig* v) {
  auto it = top.find("vision_config");
  if (it == top.end() || it->is_null()) {
    // LlavaConfig builds CLIPVisionConfig(intermediate_size=4096, hidden_size=1024,
    // patch_size=14, image_size=336, num_hidden_layers=24, num_attention_heads=16).
    *v = VisionConfig();
    return absl::OkStatus();
  }
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": vision_config: expected a JSON object"));
  }
  // A present vision_config gets CLIPVisionConfig's own (ViT-B/32) defaults for missing keys.
  v->hidden_size = 768;
  v->intermediate_size = 3072;
  v->num_attention_heads = 12;
  v->num_hidden_layers = 12;
  v->patch_size = 32;
  v->image_size = 224;
  v->num_channels = 3;
  v->layer_norm_eps = 1e-5;
  v->hidden_act = "quick_gelu";
  Fields f(source, "vision_config.", &*it);
  std::string model_type = "clip_vision_model";
  RETURN_IF_ERROR(f.String("model_type", &model_type));
  if (model_type != "clip_vision_model") {
    return f.Error("model_type", absl::StrCat("'", model_type,
                                              "' is not supported (expected clip_vision_model)"));
  }
  RETURN_IF_ERROR(f.Int("hidden_size", 1, &v->hidden_size));
  RETURN_IF_ERROR(f.Int("intermediate_size", 1, &v->intermediate_size));
  RETURN_IF_ERROR(f.Int("num_attention_heads", 1, &v->num_attention_heads));
  RETURN_IF_ERROR(f.Int("num_hidden_layers", 1, &v->num_hidden_layers));
  RETURN_IF_ERROR(f.Int("patch_size", 1, &v->patch_size));
  RETURN_IF_ERROR(f.Int("image_size", 1, &v->image_size));
  RETURN_IF_ERROR(f.Int("num_channels", 1, &v->num_channels));
  RETURN_IF_ERROR(f.PositiveDouble("layer_norm_eps", &v->layer_norm_eps));
  RETURN_IF_ERROR(f.String("hidden_act", &v->hidden_act));
  if (v->hidden_act != "quick_gelu" && v->hidden_act != "gelu") {
    return f.Error("hidden_act", absl::StrCat("unsupported activation '", v->hidden_act,
                                              "' (supported: quick_gelu, gelu)"));
  }
  if (v->hidden_size % v->num_attention_heads != 0) {
    return f.Error("hidden_size", absl::StrCat(v->hidden_size,
                                               " is not divisible by "
                                               "num_attention_heads ",
                                               v->num_attention_heads));
  }
  if (v->patch_size > v->image_size) {
    return f.Error("patch_size",
                   absl::StrCat(v->patch_size, " is larger than image_size ", v->image_size));
  }
  if (static_cast<int64_t>(v->image_size / v->patch_size) * (v->image_size / v->patch_size) >
      (1 << 20)) {
    return f.Error("image_size", "too many patches");
  }
  return absl::OkStatus();
}

absl::Status ParseText(absl::string_view source, const json& top, TextConfig* t) {
  // LlamaConfig() defaults.
  *t = TextConfig();
  t->vocab_size = 32000;
  t->max_position_embeddings = 2048;
  t->rms_norm_eps = 1e-6;
  const json* obj = nullptr;
  auto it = top.find("text_config");
  if (it != top.end() && !it->is_null()) {
    if (!it->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": text_config: expected a JSON object"));
    }
    obj = &*it;
  }
  Fields f(source, "text_config.", obj);
  std::string model_type = "llama";
  RETURN_IF_ERROR(f.String("model_type", &model_type));
  if (model_type != "llama") {
    return f.Error("model_type",
                   absl::StrCat("'", model_type, "' is not supported (expected llama)"));
  }
  // Configs written by transformers 4.36 (llava-1.5-*-hf) also carry the padded vocabulary at the
  // top level; prefer text_config's own value, as current HF does.
  Fields top_fields(source, "", &top);
  RETURN_IF_ERROR(top_fields.Int("vocab_size", 1, &t->vocab_size));
  RETURN_IF_ERROR(f.Int("vocab_size", 1, &t->vocab_size));
  RETURN_IF_ERROR(f.Int("hidden_size", 1, &t->hidden_size));
  RETURN_IF_ERROR(f.Int("intermediate_size", 1, &t->intermediate_size));
  RETURN_IF_ERROR(f.Int("num_hidden_layers", 1, &t->num_hidden_layers));
  RETURN_IF_ERROR(f.Int("num_attention_heads", 1, &t->num_attention_heads));
  t->num_key_value_heads = t->num_attention_heads;
  RETURN_IF_ERROR(f.Int("num_key_value_heads", 1, &t->num_key_value_heads, true));
  RETURN_IF_ERROR(f.Int("max_position_embeddings", 1, &t->max_position_embeddings));
  if (t->hidden_size % t->num_attention_heads != 0) {
    return f.Error("hidden_size", absl::StrCat(t->hidden_size,
                                               " is not divisible by "
                                               "num_attention_heads ",
                                               t->num_attention_heads));
  }
  if (t->num_attention_heads % t->num_key_value_heads != 0) {
    return f.Error(
        "num_key_value_heads",
        absl::StrCat("num_attention_heads ", t->num_attention_heads,
                     " is not divisible by num_key_value_heads ", t->num_key_value_heads));
  }
  t->head_dim = t->hidden_size / t->num_attention_heads;
  RETURN_IF_ERROR(f.Int("head_dim", 1, &t->head_dim, true));
  if (t->head_dim % 2 != 0) {
    return f.Error("head_dim", absl::StrCat(t->head_dim,
                                            " is odd; rotate-half RoPE needs an "
                                            "even head_dim"));
  }
  RETURN_IF_ERROR(f.PositiveDouble("rms_norm_eps", &t->rms_norm_eps));
  RETURN_IF_ERROR(f.PositiveDouble("rope_theta", &t->rope_theta));
  // Rope scaling changes the positional formula; only the plain "default" form is implemented.
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    ASSIGN_OR_RETURN(const json* rope, f.Get(key, /*null_is_absent=*/true));
    if (rope == nullptr) continue;
    if (!rope->is_object()) return f.Error(key, "expected a JSON object or null");
    std::string type = "default";
    Fields rf(source, absl::StrCat("text_config.", key, "."), rope);
    RETURN_IF_ERROR(rf.String(rope->contains("rope_type") ? "rope_type" : "type", &type));
    if (type != "default") {
      return f.Error(key, absl::StrCat("rope type '", type,
                                       "' is not supported (only plain "
                                       "RoPE)"));
    }
    RETURN_IF_ERROR(rf.PositiveDouble("rope_theta", &t->rope_theta));
  }
  RETURN_IF_ERROR(f.String("hidden_act", &t->hidden_act));
  if (t->hidden_act != "silu") {
    return f.Error("hidden_act",
                   absl::StrCat("unsupported activation '", t->hidden_act, "' (supported: silu)"));
  }
  RETURN_IF_ERROR(f.Bool("attention_bias", &t->attention_bias));
  RETURN_IF_ERROR(f.Bool("mlp_bias", &t->mlp_bias));
  RETURN_IF_ERROR(f.Int("bos_token_id", 0, &t->bos_token_id, true));
  // eos_token_id may be a list in newer configs; the first entry is the primary one.
  ASSIGN_OR_RETURN(const json* eos, f.Get("eos_token_id", true));
  if (eos != nullptr && eos->is_array()) {
    std::vector<int> ids;
    RETURN_IF_ERROR(f.IntList("eos_token_id", 0, &ids));
    if (ids.empty()) return f.Error("eos_token_id", "empty list");
    t->eos_token_id = ids[0];
  } else {
    RETURN_IF_ERROR(f.Int("eos_token_id", 0, &t->eos_token_id, true));
  }
  RETURN_IF_ERROR(f.OptionalInt("pad_token_id", 0, &t->pad_token_id));

  RETURN_IF_ERROR(f.IntList("prunesvc_intermediate_sizes", 0, &t->layer_intermediate_sizes));
  RETURN_IF_ERROR(f.IntList("prunesvc_num_heads", 0, &t->layer_num_heads));
  const std::pair<const char*, const std::vector<int>*> lists[] = {
      {"prunesvc_intermediate_sizes", &t->layer_intermediate_sizes},
      {"prunesvc_num_heads", &t->layer_num_heads}};
  for (const auto& [key, list] : lists) {
    if (!list->empty() && static_cast<int>(list->size()) != t->num_hidden_layers) {
      return f.Error(key, absl::StrCat("has ", list->size(), " entries but num_hidden_layers is ",
                                       t->num_hidden_layers));
    }
  }
  for (size_t i = 0; i < t->layer_num_heads.size(); ++i) {
    if (t->layer_num_heads[i] > t->num_attention_heads) {
      return f.Error(absl::StrCat("prunesvc_num_heads[", i, "]"),
                     absl::StrCat(t->layer_num_heads[i], " exceeds num_attention_heads ",
                                  t->num_attention_heads));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int VisionConfig::num_patches() const {
  if (patch_size <= 0) return 0;
  const int per_side = image_size / patch_size;
  return per_side * per_side;
}

int VisionConfig::head_dim() const {
  return num_attention_heads > 0 ? hidden_size / num_attention_heads : 0;
}

int TextConfig::IntermediateSize(int layer) const {
  if (layer >= 0 && layer < static_cast<int>(layer_intermediate_sizes.size())) {
    return layer_intermediate_sizes[layer];
  }
  return intermediate_size;
}

int TextConfig::NumHeads(int layer) const {
  if (layer >= 0 && layer < static_cast<int>(layer_num_heads.size())) {
    return layer_num_heads[layer];
  }
  return num_attention_heads;
}

int LlavaConfig::NumVisionLayersToRun() const {
  return vision_feature_layer >= 0 ? vision_feature_layer
                                   : vision.num_hidden_layers + 1 + vision_feature_layer;
}

absl::StatusOr<LlavaConfig> ParseLlavaConfig(std::string_view json_text,
                                             std::string_view source_name) {
  const absl::string_view source(source_name.data(), source_name.size());
  LlavaConfig c;
  try {
    c.raw = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!c.raw.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object"));
  }
  const json& top = c.raw;
  Fields f(source, "", &top);

  std::string model_type;
  RETURN_IF_ERROR(f.String("model_type", &model_type));
  if (model_type.empty()) return f.Error("model_type", "missing (expected \"llava\")");
  if (model_type.rfind("llava_next", 0) == 0 || model_type == "llava_onevision") {
    return f.Error("model_type", absl::StrCat("'", model_type,
                                              "': anyres/llava-next is not supported (only "
                                              "LLaVA-1.5, model_type \"llava\")"));
  }
  if (model_type != "llava") {
    return f.Error("model_type",
                   absl::StrCat("'", model_type, "' is not supported (expected \"llava\")"));
  }
  if (top.contains("image_grid_pinpoints")) {
    return f.Error("image_grid_pinpoints", "anyres/llava-next is not supported");
  }

  RETURN_IF_ERROR(ParseVision(source, top, &c.vision));
  RETURN_IF_ERROR(ParseText(source, top, &c.text));

  // `image_token_id` is the newer spelling (HF's attribute_map); both must agree if both given.
  RETURN_IF_ERROR(f.Int("image_token_index", 0, &c.image_token_index));
  if (top.contains("image_token_id")) {
    int id = 0;
    RETURN_IF_ERROR(f.Int("image_token_id", 0, &id));
    if (top.contains("image_token_index") && id != c.image_token_index) {
      return f.Error("image_token_id",
                     absl::StrCat(id, " disagrees with image_token_index ", c.image_token_index));
    }
    c.image_token_index = id;
  }
  // No check against vocab_size: HF's own defaults put image_token_index (32000) at the edge of
  // LlamaConfig's vocabulary (32000), and modeling_llava maps image-token ids out of range
  // before the embedding lookup; their embedding rows are never used.
  RETURN_IF_ERROR(f.OptionalInt("pad_token_id", 0, &c.pad_token_id));

  ASSIGN_OR_RETURN(const json* layer, f.Get("vision_feature_layer"));
  if (layer != nullptr && layer->is_array()) {
    return f.Error("vision_feature_layer",
                   "a list of feature layers is not supported (expected one integer)");
  }
  RETURN_IF_ERROR(f.Int("vision_feature_layer", INT_MIN, &c.vision_feature_layer));
  const int num_states = c.vision.num_hidden_layers + 1;  // embeddings + each layer's output
  if (c.vision_feature_layer >= num_states || c.vision_feature_layer < -num_states) {
    return f.Error(
        "vision_feature_layer",
        absl::StrCat(c.vision_feature_layer, " is out of range for ", c.vision.num_hidden_layers,
                     " vision layers (valid: ", -num_states, " .. ", num_states - 1, ")"));
  }
  RETURN_IF_ERROR(f.String("vision_feature_select_strategy", &c.vision_feature_select_strategy));
  if (c.vision_feature_select_strategy != "default" && c.vision_feature_select_strategy != "full") {
    return f.Error("vision_feature_select_strategy",
                   absl::StrCat("'", c.vision_feature_select_strategy,
                                "' is not supported (expected default or full)"));
  }
  RETURN_IF_ERROR(f.String("projector_hidden_act", &c.projector_hidden_act));
  if (c.projector_hidden_act != "gelu") {
    return f.Error(
        "projector_hidden_act",
        absl::StrCat("unsupported activation '", c.projector_hidden_act, "' (supported: gelu)"));
  }
  RETURN_IF_ERROR(f.Bool("multimodal_projector_bias", &c.multimodal_projector_bias));
  RETURN_IF_ERROR(f.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  // HF: a text_config that ties its embeddings wins over a false top-level flag.
  if (!c.tie_word_embeddings) {
    auto tc = top.find("text_config");
    if (tc != top.end() && tc->is_object()) {
      Fields tf(source, "text_config.", &*tc);
      RETURN_IF_ERROR(tf.Bool("tie_word_embeddings", &c.tie_word_embeddings));
    }
  }

  c.image_seq_length =
      c.vision.num_patches() + (c.vision_feature_select_strategy == "full" ? 1 : 0);
  if (top.contains("image_seq_length")) {
    int given = 0;
    RETURN_IF_ERROR(f.Int("image_seq_length", 1, &given));
    if (given != c.image_seq_length) {
      return f.Error("image_seq_length",
                     absl::StrCat(given, " disagrees with the vision config, which yields ",
                                  c.image_seq_length, " image tokens ((", c.vision.image_size, "/",
                                  c.vision.patch_size, ")^2 patches",
                                  c.vision_feature_select_strategy == "full" ? " + CLS" : "", ")"));
    }
  }

  // `dtype` is the newer spelling of `torch_dtype`; fall back to text_config's.
  for (const char* key : {"torch_dtype", "dtype"}) {
    ASSIGN_OR_RETURN(const json* d, f.Get(key, true));
    if (d != nullptr) {
      RETURN_IF_ERROR(f.String(key, &c.torch_dtype));
      break;
    }
  }
  if (c.torch_dtype.empty()) {
    auto tc = top.find("text_config");
    if (tc != top.end() && tc->is_object()) {
      Fields tf(source, "text_config.", &*tc);
      ASSIGN_OR_RETURN(const json* d, tf.Get("torch_dtype", true));
      if (d != nullptr) RETURN_IF_ERROR(tf.String("torch_dtype", &c.torch_dtype));
    }
  }
  return c;
}

absl::StatusOr<LlavaConfig> LoadLlavaConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string text;
  char buf[65536];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxConfigBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": larger than ", kMaxConfigBytes, " bytes"));
    }
  }
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read error"));
  return ParseLlavaConfig(text, path);
}

}  // namespace prunesvc::model

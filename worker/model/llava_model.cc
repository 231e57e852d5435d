#include "worker/model/llava_model.h"

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/model/checkpoint.h"
#include "worker/model/torch_guard.h"

namespace prunesvc::model {
namespace {

constexpr char kVisionPrefix[] = "vision_tower.vision_model.";
constexpr char kTextPrefix[] = "language_model.model.";
constexpr char kLmHead[] = "language_model.lm_head.weight";

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

at::Tensor Lin(const at::Tensor& x, const Linear& l) {
  return l.bias.defined() ? at::linear(x, l.weight, l.bias) : at::linear(x, l.weight);
}

// LLaMA RMSNorm; the weights are float32 here, so HF's "compute in fp32, cast back" is a no-op.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true);
  return w * (x * at::rsqrt(var + eps));
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

enum class Act { kGeluErf, kGeluTanh, kQuickGelu, kSilu, kRelu };

absl::StatusOr<Act> ParseAct(const std::string& name, const char* field) {
  if (name == "gelu") return Act::kGeluErf;
  if (name == "gelu_pytorch_tanh" || name == "gelu_new") return Act::kGeluTanh;
  if (name == "quick_gelu") return Act::kQuickGelu;
  if (name == "silu" || name == "swish") return Act::kSilu;
  if (name == "relu") return Act::kRelu;
  return absl::InvalidArgumentError(
      absl::StrCat("config: ", field, ": unsupported activation \"", name, "\""));
}

at::Tensor Apply(Act act, const at::Tensor& x) {
  switch (act) {
    case Act::kGeluErf:
      return at::gelu(x);
    case Act::kGeluTanh:
      return at::gelu(x, "tanh");
    case Act::kQuickGelu:
      return x * at::sigmoid(1.702 * x);
    case Act::kSilu:
      return at::silu(x);
    case Act::kRelu:
      return at::relu(x);
  }
  return x;
}

// Collects the expected tensors with their shapes, then checks a name → tensor map against them.
class TensorSpec {
 public:
  explicit TensorSpec(const std::map<std::string, at::Tensor>& tensors) : tensors_(tensors) {}

  // Requires `name` with `shape`; returns the tensor as contiguous float32 on `device`.
  absl::StatusOr<at::Tensor> Take(const std::string& name, std::vector<int64_t> shape,
                                  at::Device device) {
    seen_.insert(name);
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint: missing tensor \"", name, "\" (expected shape ", ShapeString(shape), ")"));
    }
    RETURN_IF_ERROR(CheckShape(it->second, name, shape));
    return it->second.to(device, at::kFloat).contiguous();
  }
  // Optional tensor: checked if present, ignored otherwise.
  absl::Status Allow(const std::string& name, std::vector<int64_t> shape) {
    seen_.insert(name);
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return absl::OkStatus();
    return CheckShape(it->second, name, shape);
  }
  // Everything not taken or allowed is an error (a checkpoint for a different architecture or
  // config should not load silently), except buffers that HF itself ignores.
  absl::Status CheckNoExtra() const {
    for (const auto& [name, t] : tensors_) {
      if (seen_.count(name)) continue;
      if (absl::EndsWith(name, ".rotary_emb.inv_freq") ||
          absl::EndsWith(name, "embeddings.position_ids")) {
        continue;
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint: unexpected tensor \"", name, "\" with shape ", ShapeString(t.sizes()),
          " (not part of a LLaVA model with this config.json)"));
    }
    return absl::OkStatus();
  }

 private:
  static absl::Status CheckShape(const at::Tensor& t, const std::string& name,
                                 const std::vector<int64_t>& shape) {
    if (!t.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint: tensor \"", name, "\" is undefined"));
    }
    if (t.sizes() != at::IntArrayRef(shape)) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint: tensor \"", name, "\" has shape ",
                                                     ShapeString(t.sizes()), ", expected ",
                                                     ShapeString(shape)));
    }
    if (!at::isFloatingType(t.scalar_type())) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint: tensor \"", name, "\" is not a floating-point tensor"));
    }
    return absl::OkStatus();
  }

  const std::map<std::string, at::Tensor>& tensors_;
  std::set<std::string> seen_;
};

absl::StatusOr<Linear> TakeLinear(TensorSpec& spec, const std::string& prefix, int64_t out,
                                  int64_t in, bool bias, at::Device device) {
  Linear l;
  ASSIGN_OR_RETURN(l.weight, spec.Take(prefix + ".weight", {out, in}, device));
  if (bias) {
    ASSIGN_OR_RETURN(l.bias, spec.Take(prefix + ".bias", {out}, device));
  }
  // A stored bias the config says is absent is left unclaimed, so CheckNoExtra reports it.
  return l;
}

}  // namespace

absl::StatusOr<at::Tensor> StackPixels(absl::Span<const PixelValues> images, at::Device device) {
  if (images.empty()) return absl::InvalidArgumentError("StackPixels: no images");
  const PixelValues& f = images[0];
  const int64_t C = f.channels, H = f.height, W = f.width;
  for (size_t i = 0; i < images.size(); ++i) {
    const PixelValues& p = images[i];
    if (p.channels != C || p.height != H || p.width != W || C <= 0 || H <= 0 || W <= 0 ||
        int64_t(p.data.size()) != C * H * W) {
      return absl::InvalidArgumentError(absl::StrCat(
          "StackPixels: image ", i, " is ", p.channels, "x", p.height, "x", p.width, " with ",
          p.data.size(), " values; expected ", C, "x", H, "x", W, " like image 0"));
    }
  }
  return TorchGuarded("stacking pixels", [&]() -> absl::StatusOr<at::Tensor> {
    at::Tensor out = at::empty({int64_t(images.size()), C, H, W}, at::kFloat);
    float* dst = out.data_ptr<float>();
    for (const PixelValues& p : images) {
      std::copy(p.data.begin(), p.data.end(), dst);
      dst += p.data.size();
    }
    return out.to(device);
  });
}

LlavaModel::LlavaModel(const LlavaConfig& config, at::Device device)
    : config_(config), device_(device) {}

absl::StatusOr<std::unique_ptr<LlavaModel>> LlavaModel::Create(const LlavaConfig& config,
                                                               const Checkpoint& checkpoint,
                                                               at::Device device) {
  return CreateFromTensors(config, checkpoint.tensors, device);
}

absl::StatusOr<std::unique_ptr<LlavaModel>> LlavaModel::CreateFromTensors(
    const LlavaConfig& config, const std::map<std::string, at::Tensor>& tensors,
    at::Device device) {
  std::unique_ptr<LlavaModel> model(new LlavaModel(config, device));
  absl::Status status = TorchGuarded("loading LLaVA weights", [&] { return model->Load(tensors); });
  if (!status.ok()) return status;
  return model;
}

absl::Status LlavaModel::Load(const std::map<std::string, at::Tensor>& tensors) {
  const VisionConfig& vc = config_.vision;
  const TextConfig& tc = config_.text;
  RETURN_IF_ERROR(ParseAct(vc.hidden_act, "vision_config.hidden_act").status());
  RETURN_IF_ERROR(ParseAct(config_.projector_hidden_act, "projector_hidden_act").status());
  if (tc.hidden_act != "silu") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config: text_config.hidden_act: only \"silu\" is supported, got \"", tc.hidden_act, "\""));
  }
  if (config_.vision_feature_select_strategy != "default" &&
      config_.vision_feature_select_strategy != "full") {
    return absl::InvalidArgumentError(
        absl::StrCat("config: vision_feature_select_strategy: unsupported \"",
                     config_.vision_feature_select_strategy, "\""));
  }
  num_vision_layers_run_ = config_.NumVisionLayersToRun();
  if (num_vision_layers_run_ < 0 || num_vision_layers_run_ > vc.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: vision_feature_layer ", config_.vision_feature_layer,
                     " is outside the vision tower's ", vc.num_hidden_layers, " layers"));
  }
  const int64_t patches = vc.num_patches();
  const int64_t expected_seq =
      config_.vision_feature_select_strategy == "default" ? patches : patches + 1;
  if (config_.image_seq_length != expected_seq) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: image_seq_length ", config_.image_seq_length,
                     " does not match the vision tower (", expected_seq, ")"));
  }
  if (tc.num_key_value_heads <= 0 || tc.num_attention_heads % tc.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: text_config.num_attention_heads (", tc.num_attention_heads,
                     ") must be a multiple of num_key_value_heads (", tc.num_key_value_heads, ")"));
  }
  if (tc.head_dim <= 0 || tc.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: text_config.head_dim must be positive and even, got ", tc.head_dim));
  }

  TensorSpec spec(tensors);
  const auto dev = device_;
  const std::string vp = kVisionPrefix;
  const int64_t D = vc.hidden_size, Mv = vc.intermediate_size;
  ASSIGN_OR_RETURN(patch_embedding_,
                   spec.Take(vp + "embeddings.patch_embedding.weight",
                             {D, vc.num_channels, vc.patch_size, vc.patch_size}, dev));
  ASSIGN_OR_RETURN(class_embedding_, spec.Take(vp + "embeddings.class_embedding", {D}, dev));
  ASSIGN_OR_RETURN(position_embedding_,
                   spec.Take(vp + "embeddings.position_embedding.weight", {patches + 1, D}, dev));
  ASSIGN_OR_RETURN(pre_layrnorm_weight_, spec.Take(vp + "pre_layrnorm.weight", {D}, dev));
  ASSIGN_OR_RETURN(pre_layrnorm_bias_, spec.Take(vp + "pre_layrnorm.bias", {D}, dev));
  for (int l = 0; l < vc.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat(vp, "encoder.layers.", l, ".");
    if (l >= num_vision_layers_run_) {
      // Layers after the feature layer never run; they are shape-checked but not kept.
      for (const char* n : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
        RETURN_IF_ERROR(spec.Allow(p + "self_attn." + n + ".weight", {D, D}));
        RETURN_IF_ERROR(spec.Allow(p + "self_attn." + n + ".bias", {D}));
      }
      for (const char* n : {"layer_norm1", "layer_norm2"}) {
        RETURN_IF_ERROR(spec.Allow(p + n + ".weight", {D}));
        RETURN_IF_ERROR(spec.Allow(p + n + ".bias", {D}));
      }
      RETURN_IF_ERROR(spec.Allow(p + "mlp.fc1.weight", {Mv, D}));
      RETURN_IF_ERROR(spec.Allow(p + "mlp.fc1.bias", {Mv}));
      RETURN_IF_ERROR(spec.Allow(p + "mlp.fc2.weight", {D, Mv}));
      RETURN_IF_ERROR(spec.Allow(p + "mlp.fc2.bias", {D}));
      continue;
    }
    VisionLayer layer;
    ASSIGN_OR_RETURN(layer.q, TakeLinear(spec, p + "self_attn.q_proj", D, D, true, dev));
    ASSIGN_OR_RETURN(layer.k, TakeLinear(spec, p + "self_attn.k_proj", D, D, true, dev));
    ASSIGN_OR_RETURN(layer.v, TakeLinear(spec, p + "self_attn.v_proj", D, D, true, dev));
    ASSIGN_OR_RETURN(layer.out, TakeLinear(spec, p + "self_attn.out_proj", D, D, true, dev));
    ASSIGN_OR_RETURN(layer.ln1_weight, spec.Take(p + "layer_norm1.weight", {D}, dev));
    ASSIGN_OR_RETURN(layer.ln1_bias, spec.Take(p + "layer_norm1.bias", {D}, dev));
    ASSIGN_OR_RETURN(layer.ln2_weight, spec.Take(p + "layer_norm2.weight", {D}, dev));
    ASSIGN_OR_RETURN(layer.ln2_bias, spec.Take(p + "layer_norm2.bias", {D}, dev));
    ASSIGN_OR_RETURN(layer.fc1, TakeLinear(spec, p + "mlp.fc1", Mv, D, true, dev));
    ASSIGN_OR_RETURN(layer.fc2, TakeLinear(spec, p + "mlp.fc2", D, Mv, true, dev));
    vision_.push_back(std::move(layer));
  }
  RETURN_IF_ERROR(spec.Allow(vp + "post_layernorm.weight", {D}));  // never used by LLaVA
  RETURN_IF_ERROR(spec.Allow(vp + "post_layernorm.bias", {D}));

  const int64_t H = tc.hidden_size, V = tc.vocab_size, hd = tc.head_dim;
  const bool pb = config_.multimodal_projector_bias;
  ASSIGN_OR_RETURN(proj1_, TakeLinear(spec, "multi_modal_projector.linear_1", H, D, pb, dev));
  ASSIGN_OR_RETURN(proj2_, TakeLinear(spec, "multi_modal_projector.linear_2", H, H, pb, dev));

  const std::string tp = kTextPrefix;
  ASSIGN_OR_RETURN(embed_tokens_, spec.Take(tp + "embed_tokens.weight", {V, H}, dev));
  const int groups = tc.num_attention_heads / tc.num_key_value_heads;
  for (int l = 0; l < tc.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat(tp, "layers.", l, ".");
    DecoderLayer layer;
    layer.num_heads = tc.NumHeads(l);
    if (layer.num_heads < 0 || layer.num_heads % groups != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: layer ", l, " has ", layer.num_heads,
                       " attention heads, not a multiple of the GQA group size ", groups));
    }
    layer.num_kv_heads = layer.num_heads / groups;
    const int64_t qw = int64_t(layer.num_heads) * hd, kvw = int64_t(layer.num_kv_heads) * hd;
    const int64_t I = tc.IntermediateSize(l);
    const bool ab = tc.attention_bias, mb = tc.mlp_bias;
    ASSIGN_OR_RETURN(layer.q, TakeLinear(spec, p + "self_attn.q_proj", qw, H, ab, dev));
    ASSIGN_OR_RETURN(layer.k, TakeLinear(spec, p + "self_attn.k_proj", kvw, H, ab, dev));
    ASSIGN_OR_RETURN(layer.v, TakeLinear(spec, p + "self_attn.v_proj", kvw, H, ab, dev));
    ASSIGN_OR_RETURN(layer.o, TakeLinear(spec, p + "self_attn.o_proj", H, qw, ab, dev));
    ASSIGN_OR_RETURN(layer.gate, TakeLinear(spec, p + "mlp.gate_proj", I, H, mb, dev));
    ASSIGN_OR_RETURN(layer.up, TakeLinear(spec, p + "mlp.up_proj", I, H, mb, dev));
    ASSIGN_OR_RETURN(layer.down, TakeLinear(spec, p + "mlp.down_proj", H, I, mb, dev));
    ASSIGN_OR_RETURN(layer.input_norm, spec.Take(p + "input_layernorm.weight", {H}, dev));
    ASSIGN_OR_RETURN(layer.post_attention_norm,
                     spec.Take(p + "post_attention_layernorm.weight", {H}, dev));
    decoder_.push_back(std::move(layer));
  }
  ASSIGN_OR_RETURN(final_norm_, spec.Take(tp + "norm.weight", {H}, dev));
  if (config_.tie_word_embeddings) {
    // HF ties lm_head to embed_tokens and ignores a stored lm_head.
    if (tensors.count(kLmHead)) {
      spdlog::warn("checkpoint: tie_word_embeddings is set; ignoring stored {}", kLmHead);
      RETURN_IF_ERROR(spec.Allow(kLmHead, {V, H}));
    }
    lm_head_ = embed_tokens_;
  } else {
    if (!tensors.count(kLmHead)) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint: missing tensor \"", kLmHead,
                       "\" (tie_word_embeddings is false, so lm_head must be stored)"));
    }
    ASSIGN_OR_RETURN(lm_head_, spec.Take(kLmHead, {V, H}, dev));
  }
  RETURN_IF_ERROR(spec.CheckNoExtra());

  // Name index for MutableWeight.
  by_name_[vp + "embeddings.patch_embedding.weight"] = &patch_embedding_;
  by_name_[vp + "embeddings.class_embedding"] = &class_embedding_;
  by_name_[vp + "embeddings.position_embedding.weight"] = &position_embedding_;
  by_name_[vp + "pre_layrnorm.weight"] = &pre_layrnorm_weight_;
  by_name_[vp + "pre_layrnorm.bias"] = &pre_layrnorm_bias_;
  auto add_linear = [&](const std::string& prefix, Linear& lin) {
    by_name_[prefix + ".weight"] = &lin.weight;
    if (lin.bias.defined()) by_name_[prefix + ".bias"] = &lin.bias;
  };
  for (int l = 0; l < int(vision_.size()); ++l) {
    const std::string p = absl::StrCat(vp, "encoder.layers.", l, ".");
    VisionLayer& v = vision_[l];
    add_linear(p + "self_attn.q_proj", v.q);
    add_linear(p + "self_attn.k_proj", v.k);
    add_linear(p + "self_attn.v_proj", v.v);
    add_linear(p + "self_attn.out_proj", v.out);
    add_linear(p + "mlp.fc1", v.fc1);
    add_linear(p + "mlp.fc2", v.fc2);
    by_name_[p + "layer_norm1.weight"] = &v.ln1_weight;
    by_name_[p + "layer_norm1.bias"] = &v.ln1_bias;
    by_name_[p + "layer_norm2.weight"] = &v.ln2_weight;
    by_name_[p + "layer_norm2.bias"] = &v.ln2_bias;
  }
  add_linear("multi_modal_projector.linear_1", proj1_);
  add_linear("multi_modal_projector.linear_2", proj2_);
  by_name_[tp + "embed_tokens.weight"] = &embed_tokens_;
  for (int l = 0; l < int(decoder_.size()); ++l) {
    const std::string p = absl::StrCat(tp, "layers.", l, ".");
    DecoderLayer& d = decoder_[l];
    add_linear(p + "self_attn.q_proj", d.q);
    add_linear(p + "self_attn.k_proj", d.k);
    add_linear(p + "self_attn.v_proj", d.v);
    add_linear(p + "self_attn.o_proj", d.o);
    add_linear(p + "mlp.gate_proj", d.gate);
    add_linear(p + "mlp.up_proj", d.up);
    add_linear(p + "mlp.down_proj", d.down);
    by_name_[p + "input_layernorm.weight"] = &d.input_norm;
    by_name_[p + "post_attention_layernorm.weight"] = &d.post_attention_norm;
  }
  by_name_[tp + "norm.weight"] = &final_norm_;
  if (!config_.tie_word_embeddings) by_name_[kLmHead] = &lm_head_;
  return absl::OkStatus();
}

at::Tensor* LlavaModel::MutableWeight(std::string_view canonical_name) {
  auto it = by_name_.find(canonical_name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::map<std::string, at::Tensor> LlavaModel::NamedTensors() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : by_name_) out[name] = *t;
  return out;
}

std::vector<NamedLinear> LlavaModel::DecoderLinears() {
  static constexpr std::pair<DecoderLinear, const char*> kNames[] = {
      {DecoderLinear::kQ, "self_attn.q_proj"}, {DecoderLinear::kK, "self_attn.k_proj"},
      {DecoderLinear::kV, "self_attn.v_proj"}, {DecoderLinear::kO, "self_attn.o_proj"},
      {DecoderLinear::kGate, "mlp.gate_proj"}, {DecoderLinear::kUp, "mlp.up_proj"},
      {DecoderLinear::kDown, "mlp.down_proj"}};
  std::vector<NamedLinear> out;
  for (int l = 0; l < int(decoder_.size()); ++l) {
    DecoderLayer& d = decoder_[l];
    Linear* ptrs[] = {&d.q, &d.k, &d.v, &d.o, &d.gate, &d.up, &d.down};
    for (int i = 0; i < kNumDecoderLinears; ++i) {
      out.push_back({absl::StrCat(kTextPrefix, "layers.", l, ".", kNames[i].second, ".weight"), l,
                     kNames[i].first, ptrs[i]});
    }
  }
  return out;
}

FlopsModelDims LlavaModel::FlopsDims() const {
  FlopsModelDims d;
  const VisionConfig& vc = config_.vision;
  d.vision.width = vc.hidden_size;
  d.vision.mlp_width = vc.intermediate_size;
  d.vision.layers_run = num_vision_layers_run_;
  d.vision.tokens = vc.num_patches() + 1;
  d.vision.patch_size = vc.patch_size;
  d.vision.channels = vc.num_channels;
  d.images_per_sample = 1;
  d.image_tokens = config_.image_seq_length;
  d.projector_in = int(proj1_.weight.size(1));
  d.projector_hidden = int(proj1_.weight.size(0));
  d.projector_out = int(proj2_.weight.size(0));
  for (const DecoderLayer& l : decoder_) {
    d.decoder.push_back({.hidden = int(l.q.weight.size(1)),
                         .q_width = int(l.q.weight.size(0)),
                         .kv_width = int(l.k.weight.size(0)),
                         .mlp_width = int(l.gate.weight.size(0))});
  }
  d.vocab = int(lm_head_.size(0));
  return d;
}

int64_t LlavaModel::ExpandedLength(absl::Span<const int> token_ids) const {
  int64_t n = 0;
  for (int id : token_ids) n += id == config_.image_token_index ? config_.image_seq_length : 1;
  return n;
}

// ---- vision tower + projector ----

at::Tensor LlavaModel::VisionFeaturesImpl(const at::Tensor& pixels_in) const {
  const VisionConfig& vc = config_.vision;
  const int64_t D = vc.hidden_size, nh = vc.num_attention_heads, hd = vc.head_dim();
  at::Tensor pixels = pixels_in.to(device_, at::kFloat);
  const Act act = *ParseAct(vc.hidden_act, "");
  // Patch embedding: conv with kernel = stride = patch, no bias; row-major patches.
  at::Tensor x = at::conv2d(pixels, patch_embedding_, {}, vc.patch_size);
  x = x.flatten(2).transpose(1, 2);  // [N, P, D]
  const int64_t N = x.size(0);
  x = at::cat({class_embedding_.view({1, 1, D}).expand({N, 1, D}), x}, 1);
  x = x + position_embedding_.unsqueeze(0);
  x = at::layer_norm(x, {D}, pre_layrnorm_weight_, pre_layrnorm_bias_, vc.layer_norm_eps);
  const double scale = 1.0 / std::sqrt(double(hd));
  for (const VisionLayer& l : vision_) {
    at::Tensor h = at::layer_norm(x, {D}, l.ln1_weight, l.ln1_bias, vc.layer_norm_eps);
    const int64_t S = h.size(1);
    auto split = [&](const at::Tensor& t) { return t.view({N, S, nh, hd}).transpose(1, 2); };
    at::Tensor q = split(Lin(h, l.q)), k = split(Lin(h, l.k)), v = split(Lin(h, l.v));
    at::Tensor probs = at::softmax(at::matmul(q, k.transpose(-1, -2)) * scale, -1);
    at::Tensor a = at::matmul(probs, v).transpose(1, 2).reshape({N, S, D});
    x = x + Lin(a, l.out);
    h = at::layer_norm(x, {D}, l.ln2_weight, l.ln2_bias, vc.layer_norm_eps);
    x = x + Lin(Apply(act, Lin(h, l.fc1)), l.fc2);
  }
  if (config_.vision_feature_select_strategy == "default") x = x.narrow(1, 1, x.size(1) - 1);
  return x;
}

at::Tensor LlavaModel::ProjectImpl(const at::Tensor& x) const {
  const Act act = *ParseAct(config_.projector_hidden_act, "");
  return Lin(Apply(act, Lin(x.to(device_, at::kFloat), proj1_)), proj2_);
}

absl::StatusOr<at::Tensor> LlavaModel::VisionFeatures(const at::Tensor& pixels) const {
  const VisionConfig& vc = config_.vision;
  if (!pixels.defined() || pixels.dim() != 4 || pixels.size(1) != vc.num_channels ||
      pixels.size(2) != vc.image_size || pixels.size(3) != vc.image_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vision tower: pixels must be [N, ", vc.num_channels, ", ", vc.image_size, ", ",
        vc.image_size, "], got ", pixels.defined() ? ShapeString(pixels.sizes()) : "undefined"));
  }
  return TorchGuarded("vision tower", [&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;  // the tower is never trained here
    return VisionFeaturesImpl(pixels);
  });
}

absl::StatusOr<at::Tensor> LlavaModel::Project(const at::Tensor& vision_features) const {
  if (!vision_features.defined() || vision_features.dim() < 1 ||
      vision_features.size(-1) != proj1_.weight.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "projector: features must end in ", proj1_.weight.size(1), " channels, got ",
        vision_features.defined() ? ShapeString(vision_features.sizes()) : "undefined"));
  }
  return TorchGuarded("projector",
                      [&]() -> absl::StatusOr<at::Tensor> { return ProjectImpl(vision_features); });
}

absl::StatusOr<at::Tensor> LlavaModel::ComputeImageFeatures(const at::Tensor& pixels) const {
  ASSIGN_OR_RETURN(at::Tensor f, VisionFeatures(pixels));
  return Project(f);
}

// ---- decoder ----

at::Tensor LlavaModel::EmbedSequence(const SequenceInput& input) const {
  const int image_id = config_.image_token_index;
  std::vector<at::Tensor> parts;
  std::vector<int64_t> text;
  int image = 0;
  auto flush = [&] {
    if (text.empty()) return;
    at::Tensor idx = at::tensor(text, at::kLong).to(device_);
    parts.push_back(embed_tokens_.index_select(0, idx));
    text.clear();
  };
  for (int id : input.token_ids) {
    if (id == image_id) {
      flush();
      parts.push_back(input.image_features[image++].to(device_, at::kFloat));
    } else {
      text.push_back(id);
    }
  }
  flush();
  return at::cat(parts, 0);
}

void LlavaModel::DecoderTables(const at::Tensor& positions, const at::Tensor& key_valid,
                               int64_t past, at::Tensor* cos, at::Tensor* sin,
                               at::Tensor* blocked) const {
  const TextConfig& tc = config_.text;
  const int64_t B = positions.size(0), T = positions.size(1), hd = tc.head_dim;
  const int64_t Tk = past + T;
  // RoPE tables (HF: inv_freq in float32, angles = positions × inv_freq, emb = cat(f, f)).
  at::Tensor inv_freq =
      1.0 /
      at::pow(tc.rope_theta, at::arange(0, hd, 2, at::TensorOptions(at::kFloat)) / double(hd));
  at::Tensor ang = positions.to(at::kFloat).unsqueeze(-1) * inv_freq.to(device_).view({1, 1, -1});
  at::Tensor emb = at::cat({ang, ang}, -1).unsqueeze(1);  // [B, 1, T, hd]
  *cos = emb.cos();
  *sin = emb.sin();
  // Mask: query t (absolute past + t) sees key j ≤ past + t that is not padding. A padding query
  // also sees itself so its softmax row is finite (its output is never read, but NaNs there
  // would reach real rows through 0 × NaN in the next layer's AV product).
  at::Tensor qpos = at::arange(past, Tk, at::TensorOptions(at::kLong).device(device_));
  at::Tensor kpos = at::arange(0, Tk, at::TensorOptions(at::kLong).device(device_));
  at::Tensor causal = kpos.view({1, Tk}) <= qpos.view({T, 1});
  at::Tensor diag = kpos.view({1, Tk}) == qpos.view({T, 1});
  at::Tensor allowed =
      (causal.view({1, 1, T, Tk}) & key_valid.view({B, 1, 1, Tk})) | diag.view({1, 1, T, Tk});
  *blocked = allowed.logical_not();
}

at::Tensor LlavaModel::LayerForward(int li, at::Tensor x, const at::Tensor& cos,
                                    const at::Tensor& sin, const at::Tensor& blocked,
                                    KvCache* cache, const LayerObserver& observe) const {
  const TextConfig& tc = config_.text;
  const int64_t B = x.size(0), T = x.size(1), hd = tc.head_dim;
  const double scale = 1.0 / std::sqrt(double(hd));
  const DecoderLayer& l = decoder_[li];
  if (l.num_heads > 0) {
    at::Tensor h = RmsNorm(x, l.input_norm, tc.rms_norm_eps);
    if (observe) {
      observe(li, DecoderLinear::kQ, h);
      observe(li, DecoderLinear::kK, h);
      observe(li, DecoderLinear::kV, h);
    }
    at::Tensor q = Lin(h, l.q).view({B, T, l.num_heads, hd}).transpose(1, 2);
    at::Tensor k = Lin(h, l.k).view({B, T, l.num_kv_heads, hd}).transpose(1, 2);
    at::Tensor v = Lin(h, l.v).view({B, T, l.num_kv_heads, hd}).transpose(1, 2);
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
    if (cache) {
      if (cache->keys[li].defined()) {
        k = at::cat({cache->keys[li], k}, 2);
        v = at::cat({cache->values[li], v}, 2);
      }
      cache->keys[li] = k;
      cache->values[li] = v;
    }
    const int groups = l.num_heads / l.num_kv_heads;
    if (groups > 1) {
      // HF's repeat_kv: query head h reads kv head h / groups.
      k = k.repeat_interleave(groups, 1);
      v = v.repeat_interleave(groups, 1);
    }
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * scale;
    scores = scores.masked_fill(blocked, -std::numeric_limits<float>::infinity());
    at::Tensor a = at::matmul(at::softmax(scores, -1), v);
    a = a.transpose(1, 2).reshape({B, T, int64_t(l.num_heads) * hd});
    if (observe) observe(li, DecoderLinear::kO, a);
    x = x + Lin(a, l.o);
  } else if (cache) {
    cache->keys[li] = at::Tensor();
    cache->values[li] = at::Tensor();
  }
  if (l.gate.weight.size(0) > 0) {
    at::Tensor h = RmsNorm(x, l.post_attention_norm, tc.rms_norm_eps);
    if (observe) {
      observe(li, DecoderLinear::kGate, h);
      observe(li, DecoderLinear::kUp, h);
    }
    at::Tensor m = at::silu(Lin(h, l.gate)) * Lin(h, l.up);
    if (observe) observe(li, DecoderLinear::kDown, m);
    x = x + Lin(m, l.down);
  }
  return x;
}

at::Tensor LlavaModel::RunDecoder(at::Tensor x, const at::Tensor& positions,
                                  const at::Tensor& key_valid, KvCache* cache,
                                  const ForwardOptions& options) const {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t past = cache ? cache->length : 0;
  at::Tensor cos, sin, blocked;
  DecoderTables(positions, key_valid, past, &cos, &sin, &blocked);

  LayerObserver observe;
  if (options.observer) {
    // Rows of real (non-pad) queries, for the calibration observer.
    at::Tensor real_rows = key_valid.narrow(1, past, T).reshape({-1}).nonzero().view({-1});
    std::vector<NamedLinear> names = const_cast<LlavaModel*>(this)->DecoderLinears();
    observe = [&, real_rows, names](int layer, DecoderLinear kind, const at::Tensor& input) {
      at::Tensor rows = input.reshape({B * T, input.size(-1)}).index_select(0, real_rows);
      options.observer(names[layer * kNumDecoderLinears + int(kind)], rows);
    };
  }
  if (cache) {
    cache->keys.resize(decoder_.size());
    cache->values.resize(decoder_.size());
  }
  for (int li = 0; li < int(decoder_.size()); ++li) {
    x = LayerForward(li, x, cos, sin, blocked, cache, observe);
  }
  if (cache) cache->length = past + T;
  return x;
}

at::Tensor LlavaModel::Logits(const at::Tensor& hidden_rows) const {
  return at::linear(RmsNorm(hidden_rows, final_norm_, config_.text.rms_norm_eps), lm_head_);
}

namespace {

// Checks one sequence's ids and images against the model; returns the map from unexpanded index
// to expanded index.
absl::StatusOr<std::vector<int64_t>> CheckSequence(const SequenceInput& s, const LlavaConfig& c,
                                                   int64_t text_hidden, size_t index) {
  const int image_id = c.image_token_index;
  const int vocab = c.text.vocab_size;
  std::vector<int64_t> expanded(s.token_ids.size());
  int64_t pos = 0;
  int64_t images = 0;
  for (size_t i = 0; i < s.token_ids.size(); ++i) {
    const int id = s.token_ids[i];
    if (id == image_id) {
      pos += c.image_seq_length;
      ++images;
    } else {
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("sample ", index, ": token ", i, " id ", id,
                                                       " is outside the vocabulary [0, ", vocab,
                                                       ")"));
      }
      pos += 1;
    }
    expanded[i] = pos - 1;
  }
  if (s.image_features.defined() && s.image_features.numel() > 0 && s.image_features.dim() != 3) {
    return absl::InvalidArgumentError(absl::StrCat("sample ", index,
                                                   ": image features must be 3-D, got ",
                                                   ShapeString(s.image_features.sizes())));
  }
  const int64_t have =
      s.image_features.defined() && s.image_features.numel() > 0 ? s.image_features.size(0) : 0;
  if (have != images) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample ", index, ": ", images, " image tokens but features for ", have, " images"));
  }
  if (images > 0 &&
      (s.image_features.dim() != 3 || s.image_features.size(1) != c.image_seq_length ||
       s.image_features.size(2) != text_hidden)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sample ", index, ": image features must be [images, ", c.image_seq_length,
                     ", ", text_hidden, "], got ", ShapeString(s.image_features.sizes())));
  }
  for (int p : s.logit_positions) {
    if (p < 0 || p >= int64_t(s.token_ids.size())) {
      return absl::InvalidArgumentError(absl::StrCat("sample ", index, ": logit position ", p,
                                                     " is outside the sequence of ",
                                                     s.token_ids.size(), " tokens"));
    }
  }
  if (s.token_ids.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("sample ", index, ": empty token sequence"));
  }
  return expanded;
}

}  // namespace

absl::StatusOr<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> LlavaModel::PadBatch(
    absl::Span<const SequenceInput> batch) const {
  std::vector<std::vector<int64_t>> expanded;
  int64_t max_len = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    ASSIGN_OR_RETURN(auto e, CheckSequence(batch[i], config_, config_.text.hidden_size, i));
    max_len = std::max(max_len, e.back() + 1);
    expanded.push_back(std::move(e));
  }
  const int64_t B = batch.size(), H = config_.text.hidden_size;
  std::vector<at::Tensor> rows;
  std::vector<int64_t> valid(B * max_len, 0), positions(B * max_len, 0);
  for (int64_t b = 0; b < B; ++b) {
    at::Tensor e = EmbedSequence(batch[b]);
    const int64_t len = e.size(0), pad = max_len - len;
    if (pad > 0) e = at::cat({at::zeros({pad, H}, e.options()), e}, 0);  // left padding
    rows.push_back(e);
    for (int64_t t = 0; t < len; ++t) {
      valid[b * max_len + pad + t] = 1;
      positions[b * max_len + pad + t] = t;  // = cumsum(mask) − 1 on real tokens
    }
  }
  at::Tensor x = at::stack(rows, 0);
  at::Tensor key_valid = at::tensor(valid, at::kLong).view({B, max_len}).to(device_).to(at::kBool);
  at::Tensor pos = at::tensor(positions, at::kLong).view({B, max_len}).to(device_);
  // The requested rows, to gather before the final norm and lm_head.
  std::vector<int64_t> flat;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pad = max_len - (expanded[b].back() + 1);
    for (int p : batch[b].logit_positions) flat.push_back(b * max_len + pad + expanded[b][p]);
  }
  at::Tensor idx = at::tensor(flat, at::kLong).to(device_);
  return std::make_tuple(x, key_valid, pos, idx);
}

std::vector<at::Tensor> LlavaModel::SplitLogits(const at::Tensor& x, const at::Tensor& rows,
                                                absl::Span<const int64_t> counts) const {
  const int64_t H = config_.text.hidden_size;
  at::Tensor logits = Logits(x.reshape({x.size(0) * x.size(1), H}).index_select(0, rows));
  std::vector<at::Tensor> out;
  int64_t off = 0;
  for (int64_t n : counts) {
    out.push_back(logits.narrow(0, off, n));
    off += n;
  }
  return out;
}

namespace {

std::vector<int64_t> LogitCounts(absl::Span<const SequenceInput> batch) {
  std::vector<int64_t> counts;
  for (const SequenceInput& s : batch) counts.push_back(int64_t(s.logit_positions.size()));
  return counts;
}

}  // namespace

absl::StatusOr<std::vector<at::Tensor>> LlavaModel::Forward(absl::Span<const SequenceInput> batch,
                                                            const ForwardOptions& options) const {
  if (batch.empty()) return std::vector<at::Tensor>{};
  return TorchGuarded("decoder forward", [&]() -> absl::StatusOr<std::vector<at::Tensor>> {
    std::optional<at::NoGradGuard> no_grad;
    if (!options.enable_grad) no_grad.emplace();
    ASSIGN_OR_RETURN(auto padded, PadBatch(batch));
    auto& [x, key_valid, pos, rows] = padded;
    x = RunDecoder(x, pos, key_valid, nullptr, options);
    return SplitLogits(x, rows, LogitCounts(batch));
  });
}

absl::StatusOr<DecoderPass> LlavaModel::StartPass(absl::Span<const SequenceInput> batch) const {
  if (batch.empty()) return absl::InvalidArgumentError("StartPass: empty batch");
  return TorchGuarded("decoder pass", [&]() -> absl::StatusOr<DecoderPass> {
    at::NoGradGuard no_grad;
    ASSIGN_OR_RETURN(auto padded, PadBatch(batch));
    auto& [x, key_valid, pos, rows] = padded;
    DecoderPass pass;
    pass.input_ = x;
    DecoderTables(pos, key_valid, 0, &pass.cos_, &pass.sin_, &pass.blocked_);
    pass.logit_rows_ = rows;
    pass.logit_counts_ = LogitCounts(batch);
    return pass;
  });
}

absl::StatusOr<at::Tensor> LlavaModel::RunLayer(const DecoderPass& pass, int layer,
                                                const at::Tensor& x) const {
  if (layer < 0 || layer >= int(decoder_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("RunLayer: layer ", layer, " outside [0, ", decoder_.size(), ")"));
  }
  return TorchGuarded("decoder layer", [&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    return LayerForward(layer, x, pass.cos_, pass.sin_, pass.blocked_, nullptr, {});
  });
}

absl::StatusOr<std::vector<at::Tensor>> LlavaModel::FinishPass(const DecoderPass& pass,
                                                               const at::Tensor& x) const {
  return TorchGuarded("decoder pass logits", [&]() -> absl::StatusOr<std::vector<at::Tensor>> {
    at::NoGradGuard no_grad;
    return SplitLogits(x, pass.logit_rows_, pass.logit_counts_);
  });
}

absl::StatusOr<at::Tensor> LlavaModel::ForwardWithCache(const SequenceInput& chunk,
                                                        KvCache* cache) const {
  if (cache == nullptr) return absl::InvalidArgumentError("ForwardWithCache: null cache");
  ASSIGN_OR_RETURN(auto expanded, CheckSequence(chunk, config_, config_.text.hidden_size, 0));
  return TorchGuarded("decoder forward (KV cache)", [&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    at::Tensor x = EmbedSequence(chunk).unsqueeze(0);
    const int64_t T = x.size(1), past = cache->length;
    at::Tensor pos =
        at::arange(past, past + T, at::TensorOptions(at::kLong).device(device_)).view({1, T});
    at::Tensor key_valid = at::ones({1, past + T}, at::TensorOptions(at::kBool).device(device_));
    x = RunDecoder(x, pos, key_valid, cache, ForwardOptions{});
    return Logits(x[0][T - 1]);
  });
}

}  // namespace prunesvc::model

#include "worker/prune/structured.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/torch_guard.h"

namespace prunesvc::prune {
namespace {

constexpr char kLayerPrefix[] = "language_model.model.layers.";
constexpr const char* kLinearNames[kNumDecoderLinears] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

std::string LinearName(int layer, DecoderLinear kind) {
  return absl::StrCat(kLayerPrefix, layer, ".", kLinearNames[int(kind)]);
}

// float64 CPU copy of a tensor's values as a vector.
std::vector<double> ToVector(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  const double* p = c.data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

// Indices 0..n-1 by increasing score; stable, so ties remove the lower index first.
std::vector<int64_t> AscendingOrder(const std::vector<double>& scores) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
  return order;
}

std::vector<double> Prefix(const std::vector<int64_t>& order, const std::vector<double>& mass) {
  std::vector<double> p(order.size() + 1, 0.0);
  for (size_t k = 0; k < order.size(); ++k) p[k + 1] = p[k] + mass[order[k]];
  return p;
}

// Rows [g·width, (g+1)·width) of every group g in `groups`, as an int64 index tensor.
at::Tensor GroupRows(const std::vector<int64_t>& groups, int64_t width, at::Device device) {
  std::vector<int64_t> rows;
  rows.reserve(groups.size() * width);
  for (int64_t g : groups) {
    for (int64_t i = 0; i < width; ++i) rows.push_back(g * width + i);
  }
  return at::tensor(rows, at::TensorOptions(at::kLong)).to(device);
}

absl::Status CheckShape(const at::Tensor& t, const std::string& name,
                        const std::array<int64_t, 2>& want) {
  if (!t.defined() || t.sizes() != at::IntArrayRef(want)) {
    return absl::InvalidArgumentError(absl::StrCat("structured: ", name, " has shape ",
                                                   t.defined() ? c10::str(t.sizes()) : "(none)",
                                                   ", expected ", c10::str(at::IntArrayRef(want))));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<DecoderLayerHeads> LayerHeadsOf(const model::LlavaModel& model) {
  const int hd = model.config().text.head_dim;
  std::vector<DecoderLayerHeads> out;
  for (const DecoderLayerFlopsDims& d : model.FlopsDims().decoder) {
    out.push_back({.num_heads = d.q_width / hd, .num_kv_heads = d.kv_width / hd, .head_dim = hd});
  }
  return out;
}

int StructuredLayerPlan::num_heads_after() const {
  const int group = heads.num_kv_heads > 0 ? heads.num_heads / heads.num_kv_heads : 0;
  return heads.num_heads - cut.kv_groups * group;
}

absl::StatusOr<std::unique_ptr<StructuredBank>> StructuredBank::Build(
    absl::Span<const at::Tensor> dense_weights, const std::vector<DecoderLayerHeads>& heads,
    MaskMethod method, const CalibrationStats* stats) {
  const size_t layers = heads.size();
  if (dense_weights.size() != layers * kNumDecoderLinears) {
    return absl::InvalidArgumentError(absl::StrCat("structured bank: ", dense_weights.size(),
                                                   " decoder weights for ", layers, " layers"));
  }
  if (method == MaskMethod::kWanda &&
      (stats == nullptr || stats->linears.size() != dense_weights.size())) {
    return absl::InvalidArgumentError(
        "structured bank: WANDA scores need calibration statistics for every decoder linear");
  }
  auto bank = std::unique_ptr<StructuredBank>(new StructuredBank(method));
  RETURN_IF_ERROR(model::TorchGuarded("structured scores", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    for (size_t l = 0; l < layers; ++l) {
      const at::Tensor* w = &dense_weights[l * kNumDecoderLinears];
      const DecoderLayerHeads& h = heads[l];
      if (h.head_dim <= 0 || h.num_heads < 0 || h.num_kv_heads < 0 ||
          (h.num_kv_heads == 0 ? h.num_heads != 0 : h.num_heads % h.num_kv_heads != 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "structured bank: layer ", l, " has ", h.num_heads, " heads and ", h.num_kv_heads,
            " kv heads of dim ", h.head_dim, " (heads must be a multiple of kv heads)"));
      }
      const int64_t H =
          w[int(DecoderLinear::kQ)].defined() ? w[int(DecoderLinear::kQ)].size(-1) : 0;
      const int64_t qw = int64_t(h.num_heads) * h.head_dim,
                    kvw = int64_t(h.num_kv_heads) * h.head_dim;
      const int64_t I =
          w[int(DecoderLinear::kGate)].defined() ? w[int(DecoderLinear::kGate)].size(0) : -1;
      const std::pair<DecoderLinear, std::array<int64_t, 2>> shapes[] = {
          {DecoderLinear::kQ, {qw, H}},   {DecoderLinear::kK, {kvw, H}},
          {DecoderLinear::kV, {kvw, H}},  {DecoderLinear::kO, {H, qw}},
          {DecoderLinear::kGate, {I, H}}, {DecoderLinear::kUp, {I, H}},
          {DecoderLinear::kDown, {H, I}}};
      for (const auto& [kind, shape] : shapes) {
        RETURN_IF_ERROR(CheckShape(w[int(kind)], LinearName(int(l), kind) + ".weight", shape));
        if (!at::isfinite(w[int(kind)]).all().item<bool>()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "structured bank: ", LinearName(int(l), kind), ".weight has non-finite values"));
        }
      }
      auto sq = [&](DecoderLinear kind) {
        return w[int(kind)].detach().to(at::kCPU, at::kDouble).square();
      };
      // Input column norms ‖X_j‖² of down_proj and o_proj (WANDA).
      auto x_norms = [&](DecoderLinear kind, int64_t in) -> absl::StatusOr<std::vector<double>> {
        if (method != MaskMethod::kWanda) return std::vector<double>(in, 1.0);
        const auto& s = stats->linears[l * kNumDecoderLinears + int(kind)];
        if (s == nullptr || !s->col_sq_norms.defined() || s->col_sq_norms.numel() != in) {
          return absl::InvalidArgumentError(
              absl::StrCat("structured bank: calibration statistics of ", LinearName(int(l), kind),
                           " do not have ", in, " input columns"));
        }
        std::vector<double> v = ToVector(s->col_sq_norms);
        for (double x : v) {
          if (!std::isfinite(x) || x < 0) {
            return absl::InvalidArgumentError(
                absl::StrCat("structured bank: calibration statistics of ",
                             LinearName(int(l), kind), " are not finite and non-negative"));
          }
        }
        return v;
      };

      StructuredLayerOrder o;
      o.intermediate = I;
      o.heads = h;
      // MLP channels.
      const std::vector<double> down_col = ToVector(sq(DecoderLinear::kDown).sum(0));
      const std::vector<double> gate_row = ToVector(sq(DecoderLinear::kGate).sum(1));
      const std::vector<double> up_row = ToVector(sq(DecoderLinear::kUp).sum(1));
      ASSIGN_OR_RETURN(std::vector<double> x_down, x_norms(DecoderLinear::kDown, I));
      o.channel_scores.resize(I);
      std::vector<double> channel_mass(I);
      for (int64_t j = 0; j < I; ++j) {
        o.channel_scores[j] = std::sqrt(x_down[j]) * std::sqrt(down_col[j]);
        channel_mass[j] = gate_row[j] + up_row[j] + down_col[j];
      }
      o.channel_order = AscendingOrder(o.channel_scores);
      o.channel_mass_prefix = Prefix(o.channel_order, channel_mass);
      // KV groups.
      const int64_t G = h.num_kv_heads;
      const int64_t group_cols = G > 0 ? qw / G : 0;
      const std::vector<double> o_col = ToVector(sq(DecoderLinear::kO).sum(0));
      const std::vector<double> q_row = ToVector(sq(DecoderLinear::kQ).sum(1));
      const std::vector<double> k_row = ToVector(sq(DecoderLinear::kK).sum(1));
      const std::vector<double> v_row = ToVector(sq(DecoderLinear::kV).sum(1));
      ASSIGN_OR_RETURN(std::vector<double> x_o, x_norms(DecoderLinear::kO, qw));
      o.group_scores.assign(G, 0.0);
      std::vector<double> group_mass(G, 0.0);
      for (int64_t g = 0; g < G; ++g) {
        double s2 = 0, m = 0;
        for (int64_t j = g * group_cols; j < (g + 1) * group_cols; ++j) {
          s2 += x_o[j] * o_col[j];
          m += q_row[j] + o_col[j];
        }
        for (int64_t j = g * h.head_dim; j < (g + 1) * h.head_dim; ++j) m += k_row[j] + v_row[j];
        o.group_scores[g] = std::sqrt(s2);
        group_mass[g] = m;
      }
      o.group_order = AscendingOrder(o.group_scores);
      o.group_mass_prefix = Prefix(o.group_order, group_mass);
      for (int i = 0; i < kNumDecoderLinears; ++i) {
        o.dense_mass += sq(DecoderLinear(i)).sum().item<double>();
      }
      bank->layers_.push_back(std::move(o));
    }
    return absl::OkStatus();
  }));
  return bank;
}

absl::StatusOr<std::vector<StructuredLayerPlan>> PlanStructured(
    const StructuredBank& bank, const std::vector<double>& layer_ratios) {
  if (int(layer_ratios.size()) != bank.num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("structured plan: ", layer_ratios.size(),
                                                   " layer ratios for ", bank.num_layers(),
                                                   " decoder layers"));
  }
  std::vector<StructuredLayerPlan> plan;
  for (int l = 0; l < bank.num_layers(); ++l) {
    const double r = layer_ratios[l];
    if (!(r >= 0 && r <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("structured plan: layer ", l, " ratio ", r, " is not in [0, 1]"));
    }
    const StructuredLayerOrder& o = bank.layer(l);
    StructuredLayerPlan p;
    p.ratio = r;
    p.cut = bank.Cut(l, r);
    p.intermediate = o.intermediate;
    p.heads = o.heads;
    p.removed_channels.assign(o.channel_order.begin(), o.channel_order.begin() + p.cut.channels);
    p.removed_groups.assign(o.group_order.begin(), o.group_order.begin() + p.cut.kv_groups);
    p.kept_channels.assign(o.channel_order.begin() + p.cut.channels, o.channel_order.end());
    p.kept_groups.assign(o.group_order.begin() + p.cut.kv_groups, o.group_order.end());
    std::sort(p.kept_channels.begin(), p.kept_channels.end());
    std::sort(p.kept_groups.begin(), p.kept_groups.end());
    plan.push_back(std::move(p));
  }
  return plan;
}

absl::Status ShrinkDecoderTensors(const std::vector<StructuredLayerPlan>& plan,
                                  std::map<std::string, at::Tensor>& tensors) {
  return model::TorchGuarded("shrinking the decoder", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    for (int l = 0; l < int(plan.size()); ++l) {
      const StructuredLayerPlan& p = plan[l];
      auto find = [&](DecoderLinear kind, const char* what) -> absl::StatusOr<at::Tensor*> {
        const std::string name = absl::StrCat(LinearName(l, kind), ".", what);
        auto it = tensors.find(name);
        if (it == tensors.end()) {
          if (std::string_view(what) == "bias") return nullptr;
          return absl::InvalidArgumentError(absl::StrCat("structured: no tensor ", name));
        }
        return &it->second;
      };
      const DecoderLayerHeads& h = p.heads;
      const int64_t group = h.num_kv_heads > 0 ? h.num_heads / h.num_kv_heads : 0;
      const int64_t qw = int64_t(h.num_heads) * h.head_dim,
                    kvw = int64_t(h.num_kv_heads) * h.head_dim;
      ASSIGN_OR_RETURN(at::Tensor * q, find(DecoderLinear::kQ, "weight"));
      const int64_t H = q->size(-1);
      const std::pair<DecoderLinear, std::array<int64_t, 2>> shapes[] = {
          {DecoderLinear::kQ, {qw, H}},
          {DecoderLinear::kK, {kvw, H}},
          {DecoderLinear::kV, {kvw, H}},
          {DecoderLinear::kO, {H, qw}},
          {DecoderLinear::kGate, {p.intermediate, H}},
          {DecoderLinear::kUp, {p.intermediate, H}},
          {DecoderLinear::kDown, {H, p.intermediate}}};
      for (const auto& [kind, shape] : shapes) {
        ASSIGN_OR_RETURN(at::Tensor * t, find(kind, "weight"));
        RETURN_IF_ERROR(CheckShape(*t, LinearName(l, kind) + ".weight", shape));
      }
      const at::Device dev = q->device();
      const at::Tensor q_rows = GroupRows(p.kept_groups, group * h.head_dim, dev);
      const at::Tensor kv_rows = GroupRows(p.kept_groups, h.head_dim, dev);
      const at::Tensor channels = at::tensor(p.kept_channels, at::TensorOptions(at::kLong)).to(dev);
      // Outputs (rows, with their biases) of q/k/v/gate/up; inputs (columns) of o/down.
      const std::pair<DecoderLinear, const at::Tensor*> rows[] = {{DecoderLinear::kQ, &q_rows},
                                                                  {DecoderLinear::kK, &kv_rows},
                                                                  {DecoderLinear::kV, &kv_rows},
                                                                  {DecoderLinear::kGate, &channels},
                                                                  {DecoderLinear::kUp, &channels}};
      for (const auto& [kind, idx] : rows) {
        for (const char* what : {"weight", "bias"}) {
          ASSIGN_OR_RETURN(at::Tensor * t, find(kind, what));
          if (t == nullptr) continue;
          if (t->size(0) != (kind == DecoderLinear::kGate || kind == DecoderLinear::kUp
                                 ? p.intermediate
                                 : (kind == DecoderLinear::kQ ? qw : kvw))) {
            return absl::InvalidArgumentError(absl::StrCat("structured: ", LinearName(l, kind), ".",
                                                           what, " has ", t->size(0),
                                                           " rows, inconsistent with the plan"));
          }
          *t = t->index_select(0, idx->to(t->device()));
        }
      }
      const std::pair<DecoderLinear, const at::Tensor*> cols[] = {
          {DecoderLinear::kO, &q_rows}, {DecoderLinear::kDown, &channels}};
      for (const auto& [kind, idx] : cols) {
        ASSIGN_OR_RETURN(at::Tensor * t, find(kind, "weight"));
        *t = t->index_select(1, idx->to(t->device()));
        ASSIGN_OR_RETURN(at::Tensor * bias, find(kind, "bias"));
        if (bias != nullptr && t->size(1) == 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "structured: layer ", l, " would lose its whole ",
              kind == DecoderLinear::kO ? "attention" : "MLP", " block, but ", LinearName(l, kind),
              " has a bias (the runtime would drop it, the masked model "
              "keeps it); use ratios below 1"));
        }
      }
    }
    return absl::OkStatus();
  });
}

model::LlavaConfig StructuredConfig(const model::LlavaConfig& config,
                                    const std::vector<StructuredLayerPlan>& plan) {
  model::LlavaConfig c = config;
  c.text.layer_intermediate_sizes.clear();
  c.text.layer_num_heads.clear();
  for (const StructuredLayerPlan& p : plan) {
    c.text.layer_intermediate_sizes.push_back(int(p.intermediate_after()));
    c.text.layer_num_heads.push_back(p.num_heads_after());
  }
  if (!c.raw.is_object()) c.raw = nlohmann::json::object();
  if (!c.raw.contains("text_config") || !c.raw["text_config"].is_object()) {
    c.raw["text_config"] = nlohmann::json::object();
  }
  c.raw["text_config"]["prunesvc_intermediate_sizes"] = c.text.layer_intermediate_sizes;
  c.raw["text_config"]["prunesvc_num_heads"] = c.text.layer_num_heads;
  return c;
}

absl::StatusOr<std::unique_ptr<model::LlavaModel>> ShrinkModel(
    const model::LlavaModel& model, const std::vector<StructuredLayerPlan>& plan) {
  std::map<std::string, at::Tensor> tensors = model.NamedTensors();
  RETURN_IF_ERROR(ShrinkDecoderTensors(plan, tensors));
  return model::LlavaModel::CreateFromTensors(StructuredConfig(model.config(), plan), tensors,
                                              model.device());
}

nlohmann::json StructuredLayerJson(const StructuredLayerPlan& p) {
  return {{"intermediate_size", p.intermediate},
          {"intermediate_size_pruned", p.intermediate_after()},
          {"mlp_channels_removed", p.cut.channels},
          {"num_heads", p.heads.num_heads},
          {"num_heads_pruned", p.num_heads_after()},
          {"num_kv_heads", p.heads.num_kv_heads},
          {"num_kv_heads_pruned", p.num_kv_heads_after()},
          {"kv_groups_removed", p.cut.kv_groups},
          {"removed_channels", p.removed_channels},
          {"removed_kv_groups", p.removed_groups}};
}

}  // namespace prunesvc::prune

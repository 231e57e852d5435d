#include "common/flops.h"

#include <cmath>
#include <initializer_list>
#include <numeric>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace prunesvc {
namespace {

absl::Status CheckNonNegative(double v, const std::string& field) {
  if (!(v >= 0) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLOPs model: ", field, " must be a finite non-negative number, got ", v));
  }
  return absl::OkStatus();
}

template <size_t N>
absl::Status CheckFractions(const std::vector<std::array<double, N>>& keep, size_t layers,
                            const char* part) {
  if (keep.empty()) return absl::OkStatus();
  if (keep.size() != layers) {
    return absl::InvalidArgumentError(absl::StrCat("FLOPs model: ", part, " kept fractions have ",
                                                   keep.size(), " layers, the model has ", layers));
  }
  for (size_t l = 0; l < keep.size(); ++l) {
    for (size_t i = 0; i < N; ++i) {
      if (!(keep[l][i] >= 0 && keep[l][i] <= 1)) {
        return absl::InvalidArgumentError(absl::StrCat("FLOPs model: ", part, " layer ", l,
                                                       " linear ", i, " kept fraction ", keep[l][i],
                                                       " is not in [0, 1]"));
      }
    }
  }
  return absl::OkStatus();
}

template <size_t N>
double SumArrays(const std::vector<std::array<double, N>>& v) {
  double s = 0;
  for (const auto& a : v) s += std::accumulate(a.begin(), a.end(), 0.0);
  return s;
}

template <size_t N>
double ScaledSum(const std::vector<std::array<double, N>>& dense,
                 const std::vector<std::array<double, N>>& keep) {
  if (keep.empty()) return SumArrays(dense);
  double s = 0;
  for (size_t l = 0; l < dense.size(); ++l) {
    for (size_t i = 0; i < N; ++i) s += dense[l][i] * keep[l][i];
  }
  return s;
}

}  // namespace

int64_t PrunedPerRow(double ratio, int64_t in_features) {
  if (!(ratio > 0)) return 0;  // also NaN
  const double k = std::floor(ratio * double(in_features) + 1e-9);
  if (k >= double(in_features)) return in_features;
  return int64_t(k);
}

double KeptFraction(double ratio, int64_t in_features) {
  if (in_features <= 0) return 1.0;
  return double(in_features - PrunedPerRow(ratio, in_features)) / double(in_features);
}

StructuredCut StructuredCutOf(double ratio, int64_t intermediate, int num_kv_heads) {
  return {.channels = PrunedPerRow(ratio, intermediate),
          .kv_groups = int(PrunedPerRow(ratio, num_kv_heads))};
}

absl::Status CheckLayerHeads(const FlopsModelDims& dims,
                             const std::vector<DecoderLayerHeads>& heads) {
  if (heads.size() != dims.decoder.size()) {
    return absl::InvalidArgumentError(absl::StrCat("structured FLOPs: ", heads.size(),
                                                   " head layouts for ", dims.decoder.size(),
                                                   " decoder layers"));
  }
  for (size_t l = 0; l < heads.size(); ++l) {
    const DecoderLayerHeads& h = heads[l];
    const DecoderLayerFlopsDims& d = dims.decoder[l];
    const bool shape_ok =
        h.num_heads >= 0 && h.num_kv_heads >= 0 && h.head_dim > 0 &&
        (h.num_kv_heads == 0 ? h.num_heads == 0 : h.num_heads % h.num_kv_heads == 0) &&
        int64_t(h.num_heads) * h.head_dim == d.q_width &&
        int64_t(h.num_kv_heads) * h.head_dim == d.kv_width;
    if (!shape_ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "structured FLOPs: decoder layer ", l, " has ", h.num_heads, " heads, ", h.num_kv_heads,
          " kv heads of dim ", h.head_dim, ", inconsistent with q_width ", d.q_width,
          " / kv_width ", d.kv_width, " (heads must be a multiple of kv heads)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<FlopsModelDims> ShrinkDecoderDims(const FlopsModelDims& dims,
                                                 const std::vector<DecoderLayerHeads>& heads,
                                                 const std::vector<double>& layer_ratios) {
  RETURN_IF_ERROR(CheckLayerHeads(dims, heads));
  if (layer_ratios.size() != dims.decoder.size()) {
    return absl::InvalidArgumentError(absl::StrCat("structured FLOPs: ", layer_ratios.size(),
                                                   " layer ratios for ", dims.decoder.size(),
                                                   " decoder layers"));
  }
  FlopsModelDims out = dims;
  for (size_t l = 0; l < dims.decoder.size(); ++l) {
    const double r = layer_ratios[l];
    if (!(r >= 0 && r <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("structured FLOPs: layer ", l, " ratio ", r, " is not in [0, 1]"));
    }
    const DecoderLayerHeads& h = heads[l];
    DecoderLayerFlopsDims& d = out.decoder[l];
    const StructuredCut cut = StructuredCutOf(r, d.mlp_width, h.num_kv_heads);
    const int group = h.num_kv_heads > 0 ? h.num_heads / h.num_kv_heads : 0;
    d.mlp_width -= int(cut.channels);
    d.q_width -= cut.kv_groups * group * h.head_dim;
    d.kv_width -= cut.kv_groups * h.head_dim;
  }
  return out;
}

double FlopsBreakdown::VisionTotal() const {
  return vision_patch_embed + SumArrays(vision_linear) + vision_attention;
}
double FlopsBreakdown::DecoderLinearTotal() const { return SumArrays(decoder_linear); }
double FlopsBreakdown::DecoderAttentionTotal() const {
  return std::accumulate(decoder_attention.begin(), decoder_attention.end(), 0.0);
}
double FlopsBreakdown::Total() const {
  return VisionTotal() + projector + DecoderLinearTotal() + DecoderAttentionTotal() + lm_head;
}

absl::StatusOr<FlopsBreakdown> ComputeDenseFlops(const FlopsModelDims& dims,
                                                 const TokenStats& stats) {
  const VisionFlopsDims& v = dims.vision;
  for (const auto& [value, name] : std::initializer_list<std::pair<double, const char*>>{
           {double(v.width), "vision.width"},
           {double(v.mlp_width), "vision.mlp_width"},
           {double(v.layers_run), "vision.layers_run"},
           {double(v.tokens), "vision.tokens"},
           {double(v.patch_size), "vision.patch_size"},
           {double(v.channels), "vision.channels"},
           {double(dims.images_per_sample), "images_per_sample"},
           {double(dims.image_tokens), "image_tokens"},
           {double(dims.projector_in), "projector_in"},
           {double(dims.projector_hidden), "projector_hidden"},
           {double(dims.projector_out), "projector_out"},
           {double(dims.vocab), "vocab"},
           {stats.mean_tokens, "mean_tokens"},
           {stats.mean_tokens_sq, "mean_tokens_sq"},
           {stats.mean_answer_tokens, "mean_answer_tokens"}}) {
    RETURN_IF_ERROR(CheckNonNegative(value, name));
  }
  // E[T²] ≥ E[T]² for any distribution; a violation means the caller mixed up the statistics.
  if (stats.mean_tokens_sq + 1e-9 * stats.mean_tokens_sq < stats.mean_tokens * stats.mean_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLOPs model: mean_tokens_sq (", stats.mean_tokens_sq,
                     ") is below mean_tokens² (", stats.mean_tokens * stats.mean_tokens, ")"));
  }
  for (size_t l = 0; l < dims.decoder.size(); ++l) {
    const DecoderLayerFlopsDims& d = dims.decoder[l];
    for (const auto& [value, name] :
         std::initializer_list<std::pair<int, const char*>>{{d.hidden, "hidden"},
                                                            {d.q_width, "q_width"},
                                                            {d.kv_width, "kv_width"},
                                                            {d.mlp_width, "mlp_width"}}) {
      RETURN_IF_ERROR(CheckNonNegative(value, absl::StrCat("decoder[", l, "].", name)));
    }
  }

  FlopsBreakdown f;
  const double images = dims.images_per_sample;
  // Vision tower, per image. Patch embedding: one (C·p²) × D product per patch (not the CLS).
  const double S = v.tokens;
  const double D = v.width;
  const double patches = v.tokens > 0 ? v.tokens - 1 : 0;
  f.vision_patch_embed =
      images * 2.0 * patches * (double(v.channels) * v.patch_size * v.patch_size) * D;
  f.vision_linear.resize(v.layers_run);
  for (int l = 0; l < v.layers_run; ++l) {
    auto& a = f.vision_linear[l];
    for (int i = 0; i < 4; ++i) a[i] = images * 2.0 * S * D * D;  // q, k, v, out
    a[int(VisionLinear::kFc1)] = images * 2.0 * S * D * v.mlp_width;
    a[int(VisionLinear::kFc2)] = images * 2.0 * S * v.mlp_width * D;
  }
  // Full attention: QKᵀ and AV are S²·D multiply-adds each.
  f.vision_attention = images * v.layers_run * 2.0 * (2.0 * S * S * D);
  f.projector = images * 2.0 * dims.image_tokens *
                (double(dims.projector_in) * dims.projector_hidden +
                 double(dims.projector_hidden) * dims.projector_out);

  const double T = stats.mean_tokens;
  f.decoder_linear.resize(dims.decoder.size());
  f.decoder_attention.resize(dims.decoder.size());
  f.decoder_linear_in.resize(dims.decoder.size());
  for (size_t l = 0; l < dims.decoder.size(); ++l) {
    const DecoderLayerFlopsDims& d = dims.decoder[l];
    auto& a = f.decoder_linear[l];
    const double h = d.hidden;
    a[int(DecoderLinear::kQ)] = 2.0 * T * h * d.q_width;
    a[int(DecoderLinear::kK)] = 2.0 * T * h * d.kv_width;
    a[int(DecoderLinear::kV)] = 2.0 * T * h * d.kv_width;
    a[int(DecoderLinear::kO)] = 2.0 * T * double(d.q_width) * h;
    a[int(DecoderLinear::kGate)] = 2.0 * T * h * d.mlp_width;
    a[int(DecoderLinear::kUp)] = 2.0 * T * h * d.mlp_width;
    a[int(DecoderLinear::kDown)] = 2.0 * T * double(d.mlp_width) * h;
    f.decoder_linear_in[l] = {d.hidden, d.hidden, d.hidden,   d.q_width,
                              d.hidden, d.hidden, d.mlp_width};
    // Causal: half of the full 2·T²·d multiply-adds, i.e. 2·T²·d FLOPs (docs/architecture.md §5).
    f.decoder_attention[l] = 2.0 * stats.mean_tokens_sq * d.q_width;
  }
  // lm_head's input is the text hidden size, which is the projector's output width.
  f.lm_head = 2.0 * stats.mean_answer_tokens * double(dims.projector_out) * dims.vocab;
  return f;
}

absl::StatusOr<double> PolicyFlops(const FlopsBreakdown& dense, const KeptFractions& keep) {
  RETURN_IF_ERROR(CheckFractions(keep.decoder, dense.decoder_linear.size(), "decoder"));
  RETURN_IF_ERROR(CheckFractions(keep.vision, dense.vision_linear.size(), "vision"));
  return dense.vision_patch_embed + ScaledSum(dense.vision_linear, keep.vision) +
         dense.vision_attention + dense.projector + ScaledSum(dense.decoder_linear, keep.decoder) +
         dense.DecoderAttentionTotal() + dense.lm_head;
}

double UnprunableFraction(const FlopsBreakdown& dense, bool prune_vision) {
  const double total = dense.Total();
  if (total <= 0) return 0;
  double fixed = total - dense.DecoderLinearTotal();
  if (prune_vision) fixed -= SumArrays(dense.vision_linear);
  return fixed / total;
}

}  // namespace prunesvc

#include "worker/prune/calibration.h"

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/torch_guard.h"

namespace prunesvc::prune {
namespace {

using ::prunesvc::DecoderLinear;

// The distinct inputs of a decoder layer: q/k/v read the normed attention input, o the attention
// output, gate/up the normed MLP input, down the gated MLP activations.
constexpr int kInputsPerLayer = 4;
int InputSlot(DecoderLinear kind) {
  switch (kind) {
    case DecoderLinear::kQ:
    case DecoderLinear::kK:
    case DecoderLinear::kV:
      return 0;
    case DecoderLinear::kO:
      return 1;
    case DecoderLinear::kGate:
    case DecoderLinear::kUp:
      return 2;
    case DecoderLinear::kDown:
      return 3;
  }
  return 0;
}
// The linear whose observation feeds the slot (the others in the slot see the same tensor).
bool IsSlotOwner(DecoderLinear kind) {
  return kind == DecoderLinear::kQ || kind == DecoderLinear::kO || kind == DecoderLinear::kGate ||
         kind == DecoderLinear::kDown;
}

// Input width of each slot of layer `l`, from the config (structured-pruned layers included).
int64_t SlotWidth(const model::TextConfig& tc, int layer, int slot) {
  switch (slot) {
    case 1:
      return int64_t(tc.NumHeads(layer)) * tc.head_dim;
    case 3:
      return tc.IntermediateSize(layer);
    default:
      return tc.hidden_size;
  }
}

}  // namespace

absl::StatusOr<CalibrationStats> Calibrate(const model::LlavaModel& model,
                                           absl::Span<const model::ScoringSample> samples,
                                           const CalibrationOptions& options) {
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration batch size must be at least 1, got ", options.batch_size));
  }
  const model::TextConfig& tc = model.config().text;
  const int layers = tc.num_hidden_layers;
  for (size_t i = 0; i < samples.size(); ++i) {
    const model::ScoringSample& s = samples[i];
    if (!(0 < s.answer_begin && s.answer_begin < s.answer_end &&
          s.answer_end <= int(s.token_ids.size()))) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration sample ", i, ": answer range [", s.answer_begin, ", ",
                       s.answer_end, ") is not inside its ", s.token_ids.size(), " tokens"));
    }
  }
  return model::TorchGuarded("calibration", [&]() -> absl::StatusOr<CalibrationStats> {
    std::vector<std::shared_ptr<LinearInputStats>> slots(size_t(layers) * kInputsPerLayer);
    // Accumulated on the model's device (a GPU's float64 GEMM for the Gram matrices; all of them
    // are held there until the end, docs/gpu.md), returned on the CPU.
    const auto f64 = at::TensorOptions(at::kDouble).device(model.device());
    for (int l = 0; l < layers; ++l) {
      for (int s = 0; s < kInputsPerLayer; ++s) {
        auto st = std::make_shared<LinearInputStats>();
        st->in_features = SlotWidth(tc, l, s);
        st->col_sq_norms = at::zeros({st->in_features}, f64);
        if (options.collect_gram) st->gram = at::zeros({st->in_features, st->in_features}, f64);
        slots[size_t(l) * kInputsPerLayer + s] = std::move(st);
      }
    }
    absl::Status observer_error;
    model::ForwardOptions fo;
    fo.observer = [&](const model::NamedLinear& linear, const at::Tensor& input) {
      if (!IsSlotOwner(linear.kind) || !observer_error.ok()) return;
      if (linear.layer < 0 || linear.layer >= layers) {
        observer_error = absl::InternalError(absl::StrCat("observer: layer ", linear.layer));
        return;
      }
      LinearInputStats& st =
          *slots[size_t(linear.layer) * kInputsPerLayer + InputSlot(linear.kind)];
      if (input.dim() != 2 || input.size(1) != st.in_features) {
        observer_error = absl::InternalError(absl::StrCat("observer: ", linear.name, " input has ",
                                                          input.size(-1), " columns, expected ",
                                                          st.in_features));
        return;
      }
      // float64 before squaring: sums over ~10⁴–10⁶ rows must not depend on the batch split.
      at::Tensor x = input.to(st.col_sq_norms.device(), at::kDouble);
      st.col_sq_norms.add_(x.square().sum(0));
      if (st.gram.defined()) st.gram.addmm_(x.t(), x);
      st.rows += x.size(0);
    };
    int64_t rows = 0;
    for (size_t start = 0; start < samples.size(); start += options.batch_size) {
      const size_t end = std::min(samples.size(), start + size_t(options.batch_size));
      std::vector<model::SequenceInput> batch;
      for (size_t i = start; i < end; ++i) {
        const model::ScoringSample& s = samples[i];
        model::SequenceInput in;
        in.token_ids.assign(s.token_ids.begin(), s.token_ids.begin() + s.answer_end - 1);
        in.image_features = s.image_features;
        // One logit row per sample keeps lm_head's cost negligible; the logits are unused.
        in.logit_positions = {int(in.token_ids.size()) - 1};
        rows += model.ExpandedLength(in.token_ids);
        batch.push_back(std::move(in));
      }
      RETURN_IF_ERROR(model.Forward(batch, fo).status());
      RETURN_IF_ERROR(observer_error);
    }
    // The stats live on the CPU (calibration.h); a no-op when the model is on the CPU.
    for (const auto& st : slots) {
      st->col_sq_norms = st->col_sq_norms.to(at::kCPU);
      if (st->gram.defined()) st->gram = st->gram.to(at::kCPU);
    }
    CalibrationStats out;
    out.num_samples = int64_t(samples.size());
    out.num_rows = rows;
    for (int l = 0; l < layers; ++l) {
      for (int k = 0; k < kNumDecoderLinears; ++k) {
        out.linears.push_back(slots[size_t(l) * kInputsPerLayer + InputSlot(DecoderLinear(k))]);
      }
    }
    return out;
  });
}

}  // namespace prunesvc::prune

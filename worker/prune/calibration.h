// Calibration statistics of the decoder linears (docs/architecture.md §5 "Masks"): the inputs each
// decoder linear sees when the DENSE model with the current projector runs over the search samples.
//
//  - col_sq_norms[j] = ‖X_j‖² = Σ over every non-padding token row of every sample of X_rj², in
//    float64 — WANDA's score is |W_ij|·‖X_j‖₂. (Wanda's reference keeps the mean over sequences,
//    a per-linear constant factor that does not change any row's order.)
//  - gram = XᵀX (float64 [in, in]) when CalibrationOptions::collect_gram is set — the pluggable
//    statistic for SPARSEGPT (H = (2/N)·XᵀX); off by default because it costs in² doubles per
//    distinct input (LLaMA-7B: 4 distinct inputs per layer, 0.13 GB each for in = 4096 and
//    0.97 GB for down_proj's in = 11008).
//  - The rows are exactly those the search-time evaluation feeds (prompt + answer minus the last
//    answer token, which predicts nothing scored; image rows included), so the masks are tuned
//    on the activations the fitness is measured on.
//  - Unlike Wanda's sequential recipe (layer i calibrated on the outputs of already-pruned layers
//    0..i−1) the statistics come from the dense model: masks must not depend on the other
//    layers' ratios, or the bank could not serve every policy from one score order.
//  - Linears that read the same tensor share one LinearInputStats (q/k/v: the attention input;
//    gate/up: the MLP input), so memory is per distinct input.
//  - The result does not depend on the batch size beyond float32 forward rounding (the model is
//    batch-invariant to ~1e-6; accumulation is float64).
//
// Thread-safety: Calibrate only calls LlavaModel's const methods; it must not overlap weight
// mutation. The returned stats are immutable. Statistics live on the CPU.
#ifndef PRUNESVC_WORKER_PRUNE_CALIBRATION_H_
#define PRUNESVC_WORKER_PRUNE_CALIBRATION_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/model/llava_model.h"
#include "worker/model/scoring.h"

namespace prunesvc::prune {

struct CalibrationOptions {
  int batch_size = 8;         // samples per forward
  bool collect_gram = false;  // accumulate XᵀX (SPARSEGPT)
};

struct LinearInputStats {
  int64_t in_features = 0;
  int64_t rows = 0;         // token rows observed
  at::Tensor col_sq_norms;  // float64 [in] on CPU
  at::Tensor gram;          // float64 [in, in] on CPU, undefined unless collect_gram
};

struct CalibrationStats {
  // One entry per decoder linear in LlavaModel::DecoderLinears() order (layer-major; q k v o
  // gate up down within a layer). Entries of linears sharing an input point to the same stats.
  std::vector<std::shared_ptr<const LinearInputStats>> linears;
  int64_t num_samples = 0;
  int64_t num_rows = 0;  // non-padding token rows of all samples
};

// Runs the model over `samples` (image_features must be those of the current projector) in
// batches, observing every decoder linear's input. The model's weights should be dense.
// Errors: batch_size < 1, invalid samples (as ScoreSamples), forward failures.
absl::StatusOr<CalibrationStats> Calibrate(const model::LlavaModel& model,
                                           absl::Span<const model::ScoringSample> samples,
                                           const CalibrationOptions& options = {});

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_CALIBRATION_H_

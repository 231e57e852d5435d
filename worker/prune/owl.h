// OWL's outlier ratios (Yin et al. 2023; common/owl.h turns them into ratios): per unit (decoder
// layer), D_l = the fraction of the layer's Wanda scores |W_ij|·‖X_j‖₂ — all 7 linears' scores
// pooled, as the reference's torch.cat over the layer's linears — that exceed `multiple` (M = 5)
// × their mean. The statistics are the dense model's (calibration.h: ‖X_j‖² summed over the
// search samples' token rows; the reference's per-sample mean differs by one constant factor for
// all linears of a layer, which cancels in "score > M × mean"). Scores are float64.
//
// Memory: two passes per linear (sum, then count), so no layer's scores are held at once.
// Thread-safety: a pure function of its arguments.
#ifndef PRUNESVC_WORKER_PRUNE_OWL_H_
#define PRUNESVC_WORKER_PRUNE_OWL_H_

#include <ATen/ATen.h>

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/owl.h"
#include "worker/prune/calibration.h"

namespace prunesvc::prune {

// `weights[i]` and `stats.linears[i]` belong to decoder linear i, `unit_of_linear[i]` its unit
// in [0, num_units); every unit must have at least one linear. Errors: InvalidArgument on
// mismatched sizes, missing or non-finite statistics, an empty unit, multiple ≤ 0.
absl::StatusOr<std::vector<double>> OwlOutlierRatios(absl::Span<const at::Tensor> weights,
                                                     const CalibrationStats& stats,
                                                     absl::Span<const int> unit_of_linear,
                                                     int num_units,
                                                     double multiple = search::kOwlOutlierMultiple);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_OWL_H_

// The mask bank (docs/architecture.md §5 "Masks"): for every decoder linear, each output
// row's columns ordered by increasing pruning score, so the UNSTRUCTURED mask at any ratio is
// available without recomputation and masks are nested (a higher ratio prunes a superset).
//
// Conventions (the same for every row and every linear):
//  - Scores: MAGNITUDE |W_ij|; WANDA |W_ij|·‖X_j‖₂ (‖X_j‖² from calibration.h). The comparison
//    group is the output row, as in Wanda's reference (locuslab/wanda lib/prune.py) — for
//    MAGNITUDE too (Wanda's magnitude baseline thresholds the whole matrix instead), so every row
//    of every linear holds exactly the same ratio.
//  - Ratio r ∈ [0, 1] prunes k = PrunedPerRow(r, in) = floor(r·in + 1e-9) lowest-scoring weights
//    of each row (common/flops.h, where the FLOPs model's KeptFraction uses the same count, so
//    the search's FLOPs are exactly those of these masks).
//  - Ties are broken by column index: among equal scores the lower column is pruned first (a
//    stable ascending sort, as Wanda's torch.sort(stable=True)).
//  - The bank is built from the dense weights and, for WANDA, the statistics of the current
//    projector version; rebuild it after every projector update.
//  - N:M banks (Build's `nm`, common/nm_sparsity.h): the same scores, but each row's order puts
//    first the M − N lowest-scoring columns of every group of M consecutive columns (within a
//    group, a stable ascending sort: among equal scores the lower column is pruned), those sorted
//    by score (then column), then the N kept columns of every group sorted the same way. So the
//    mask at PrunedPerRow(1 − N/M, in) = in·(M − N)/M — the policy space's only non-zero choice
//    under N:M — keeps exactly N of every M, and the pruned-mass prefix (Ω) stays exact. Other
//    ratios give nested masks that are not N:M; the N:M policy space never asks for them.
//
// Memory: the order is stored as int16 when in ≤ 32767 (every LLaMA/LLaVA-7B/13B linear), else
// int32, plus in+1 doubles per linear for the pruned-mass prefix. A LLaMA-7B layer has
// 4·4096² + 3·4096·11008 = 202.4 M weights → 405 MB of int16 orders per layer (12.95 GB for 32
// layers — about the fp16 model's own size); int32 would double it.
//
// Thread-safety: immutable after Build; all const methods may run concurrently.
#ifndef PRUNESVC_WORKER_PRUNE_MASK_BANK_H_
#define PRUNESVC_WORKER_PRUNE_MASK_BANK_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/flops.h"  // PrunedPerRow
#include "common/job_spec.h"
#include "common/nm_sparsity.h"
#include "worker/prune/calibration.h"

namespace prunesvc::prune {

// MaskMethod lives in common/job_spec.h (the job spec is torch-free). The bank takes MAGNITUDE and
// WANDA; SPARSEGPT (non-nested, weight-updating) is applied at finalize by a separate path.
using ::prunesvc::MaskMethod;
using ::prunesvc::MaskMethodName;
using ::prunesvc::ParseMaskMethod;

// The scores of one linear, float64 [out, in] on the CPU. `weight` [out, in] (any float dtype,
// any device); `col_sq_norms` float64 [in] (WANDA only; ignored for MAGNITUDE).
absl::StatusOr<at::Tensor> MaskScores(const at::Tensor& weight, MaskMethod method,
                                      const at::Tensor& col_sq_norms);

class MaskBank {
 public:
  // `dense_weights[i]` is linear i's dense weight [out, in]; for WANDA `stats` must have one
  // entry per weight with matching in_features (it is not used for MAGNITUDE and may be null).
  // Non-finite weights or statistics → InvalidArgument naming the linear. With `nm` the orders
  // are N:M orders (see the header comment); every in_features must then be a multiple of M.
  static absl::StatusOr<std::unique_ptr<MaskBank>> Build(
      absl::Span<const at::Tensor> dense_weights, MaskMethod method, const CalibrationStats* stats,
      std::optional<NmPattern> nm = std::nullopt);

  MaskBank(const MaskBank&) = delete;
  MaskBank& operator=(const MaskBank&) = delete;

  MaskMethod method() const { return method_; }
  const std::optional<NmPattern>& nm() const { return nm_; }
  int num_linears() const { return int(linears_.size()); }
  int64_t out_features(int i) const { return linears_[i].out; }
  int64_t in_features(int i) const { return linears_[i].in; }
  // [out, in] kInt16 (in ≤ 32767) or kInt32, contiguous, CPU: row r's columns by increasing
  // score; the mask at k prunes order[r, 0:k] of every row r.
  const at::Tensor& order(int i) const { return linears_[i].order; }
  // Σ over rows of the squared dense weights the mask at k prunes (k ∈ [0, in]); float64 sums.
  double PrunedSquaredMass(int i, int64_t k) const { return linears_[i].pruned_mass[k]; }
  double DenseSquaredMass(int i) const { return linears_[i].pruned_mass.back(); }
  // The keep-mask at `ratio`: bool [out, in] on the CPU, true = kept. For tests and finalize;
  // the evaluator applies order() incrementally instead.
  absl::StatusOr<at::Tensor> KeepMask(int i, double ratio) const;
  // Bytes held (orders + prefix sums).
  int64_t MemoryBytes() const;

 private:
  struct LinearBank {
    int64_t out = 0, in = 0;
    at::Tensor order;
    std::vector<double> pruned_mass;  // [in + 1]
  };
  MaskBank(MaskMethod method, std::optional<NmPattern> nm) : method_(method), nm_(nm) {}

  const MaskMethod method_;
  const std::optional<NmPattern> nm_;
  std::vector<LinearBank> linears_;
};

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_MASK_BANK_H_

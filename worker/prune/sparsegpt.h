// SPARSEGPT (OBS) pruning of one linear (docs/architecture.md §5 "Masks"): chooses the mask from
// the weights and the calibration Gram matrix and compensates every pruned weight's error on the
// not-yet-pruned columns, so the layer's output WXᵀ is reconstructed as well as the second-order
// model allows. Used at finalize (masks are not nested and cost a weight copy per ratio).
//
//  - H = (2/N)·XᵀX from LinearInputStats (gram, rows). Dead columns (H_jj = 0: an input that is
//    always zero) get H_jj = 1 and W[:, j] = 0, so H stays invertible and the weight, which never
//    contributes, is dropped. Damping λ = damp·mean(diag H) (default 0.01) is added to the
//    diagonal.
//  - U = the upper Cholesky factor of H⁻¹ (H⁻¹ itself via Cholesky). U_ii² is the inverse-Hessian
//    diagonal of the sub-problem "columns i.. still free, columns before i fixed" — exactly the
//    sequential OBS setting, which is why the scores and updates use U and not H⁻¹.
//  - Columns are processed in blocks of `block_size` (128). UNSTRUCTURED: the matrix prunes
//    K = out·PrunedPerRow(ratio, in) weights in all — exactly the count of the per-row methods,
//    so common/flops.h's KeptFraction is exact for these masks too — split over the blocks in
//    proportion to their widths (block [i1, i2) gets ⌊K·i2/in⌋ − ⌊K·i1/in⌋, integers, so the
//    shares sum to K; the reference's int(r·out·count) per block differs by at most one weight per
//    block). At the start of each block the mask prunes the block's share of lowest scores
//    w²/U_jj² across all rows (stable order: ties go to the lower flat index, row-major), so
//    individual rows may lose more or fewer than the ratio (the paper's adaptive mask).
//    N:M: at the start of each group of M columns (relative to the block, which M must divide),
//    each row prunes its M − N lowest scores of the group (keeps exactly N of every M).
//  - Within a block, column i: q = w_i with the mask applied, err = (w_i − q)/U_ii, and
//    W[:, i:block_end] −= err·U[i, i:block_end]; after the block, W[:, block_end:] −= Err·U[block,
//    block_end:] (the lazy batched update of the paper; the same arithmetic as per-column).
//  - Arithmetic is float64 on the weight's device (CPU or GPU) whatever the weight's dtype: the
//    reference runs float32 on GPU, but H⁻¹ of a near-singular Gram matrix (damping 1 %) loses
//    ~cond(H)·1e-7 in float32, and the cost here is O(in³ + out·in²) once per linear at finalize,
//    so the safer precision is worth it. The result is converted back to the weight's dtype.
//
// Thread-safety: a pure function of its arguments; safe to call concurrently on distinct tensors.
#ifndef PRUNESVC_WORKER_PRUNE_SPARSEGPT_H_
#define PRUNESVC_WORKER_PRUNE_SPARSEGPT_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace prunesvc::prune {

struct SparseGptOptions {
  double ratio = 0.0;        // UNSTRUCTURED target fraction in [0, 1]; ignored for N:M
  int nm_n = 0;              // N:M when nm_m > 0: keep nm_n of every nm_m consecutive weights
  int nm_m = 0;              // 0 = unstructured
  int64_t block_size = 128;  // columns per block (≥ 1)
  double damp = 0.01;        // λ = damp · mean(diag H)
};

struct SparseGptResult {
  at::Tensor weight;      // pruned and compensated, the input weight's dtype and device
  at::Tensor keep;        // bool [out, in] on the CPU, true = kept (pruned weights are exactly 0)
  int64_t pruned = 0;     // weights the mask prunes
  double sparsity = 0.0;  // pruned / numel
};

// Prunes `weight` [out, in] given `gram` = XᵀX (float64 or float32 [in, in]) accumulated over
// `num_rows` > 0 input rows. Errors: shapes, non-finite inputs, bad options, H not positive
// definite after damping (e.g. a corrupt Gram matrix), libtorch failures.
absl::StatusOr<SparseGptResult> SparseGptPrune(const at::Tensor& weight, const at::Tensor& gram,
                                               int64_t num_rows, const SparseGptOptions& options);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_SPARSEGPT_H_

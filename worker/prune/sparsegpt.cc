#include "worker/prune/sparsegpt.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/flops.h"  // PrunedPerRow
#include "worker/model/torch_guard.h"

namespace prunesvc::prune {
namespace {

absl::Status Validate(const at::Tensor& weight, const at::Tensor& gram, int64_t num_rows,
                      const SparseGptOptions& options) {
  if (!weight.defined() || weight.dim() != 2) {
    return absl::InvalidArgumentError("sparsegpt: the weight must be a 2-D tensor");
  }
  const int64_t in = weight.size(1);
  if (!gram.defined() || gram.dim() != 2 || gram.size(0) != in || gram.size(1) != in) {
    return absl::InvalidArgumentError(
        absl::StrCat("sparsegpt: the Gram matrix must be [", in, ", ", in, "] (the weight's in)"));
  }
  if (num_rows <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sparsegpt: num_rows must be positive, got ", num_rows));
  }
  if (options.block_size < 1) {
    return absl::InvalidArgumentError("sparsegpt: block_size must be at least 1");
  }
  if (!(options.damp >= 0.0) || !std::isfinite(options.damp)) {
    return absl::InvalidArgumentError("sparsegpt: damp must be finite and non-negative");
  }
  if (options.nm_m > 0) {
    if (options.nm_n < 0 || options.nm_n > options.nm_m) {
      return absl::InvalidArgumentError(
          absl::StrCat("sparsegpt: N:M needs 0 ≤ N ≤ M, got ", options.nm_n, ":", options.nm_m));
    }
    if (in % options.nm_m != 0 || options.block_size % options.nm_m != 0) {
      return absl::InvalidArgumentError(absl::StrCat("sparsegpt: N:M group size ", options.nm_m,
                                                     " must divide in (", in, ") and block_size (",
                                                     options.block_size, ")"));
    }
  } else if (options.nm_m < 0 || options.nm_n != 0) {
    return absl::InvalidArgumentError("sparsegpt: nm_n set without a positive nm_m");
  } else if (!(options.ratio >= 0.0 && options.ratio <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sparsegpt: ratio must be in [0, 1], got ", options.ratio));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SparseGptResult> SparseGptPrune(const at::Tensor& weight, const at::Tensor& gram,
                                               int64_t num_rows, const SparseGptOptions& options) {
  if (absl::Status s = Validate(weight, gram, num_rows, options); !s.ok()) return s;
  return model::TorchGuarded("sparsegpt", [&]() -> absl::StatusOr<SparseGptResult> {
    using at::indexing::Slice;
    const int64_t rows = weight.size(0);
    const int64_t cols = weight.size(1);
    // float64 on the weight's device (the GPU when the model is on one; sparsegpt.h).
    at::Tensor w = weight.detach().to(at::kDouble).clone();
    at::Tensor h =
        gram.detach().to(w.device(), at::kDouble) * (2.0 / static_cast<double>(num_rows));
    if (!at::isfinite(w).all().item<bool>() || !at::isfinite(h).all().item<bool>()) {
      return absl::InvalidArgumentError("sparsegpt: the weight or Gram matrix is not finite");
    }
    // Dead inputs: the weight never contributes, and H_jj = 1 keeps H invertible.
    const at::Tensor dead = h.diagonal() == 0;
    h.diagonal().masked_fill_(dead, 1.0);
    w.masked_fill_(dead.unsqueeze(0), 0.0);
    const double lambda = options.damp * h.diagonal().mean().item<double>();
    h.diagonal().add_(lambda);

    at::Tensor chol, info;
    std::tie(chol, info) = at::linalg_cholesky_ex(h);
    if (info.item<int64_t>() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sparsegpt: H + λI is not positive definite (leading minor ",
                       info.item<int64_t>(), "); the Gram matrix is not a valid XᵀX"));
    }
    const at::Tensor hinv = at::cholesky_inverse(chol);
    std::tie(chol, info) = at::linalg_cholesky_ex(hinv, /*upper=*/true);
    if (info.item<int64_t>() != 0) {
      return absl::InternalError("sparsegpt: H⁻¹ lost positive definiteness (ill-conditioned H)");
    }
    const at::Tensor u = chol;  // upper: H⁻¹ = UᵀU

    const bool nm = options.nm_m > 0;
    // The whole matrix prunes exactly what the per-row methods prune (out · PrunedPerRow), so the
    // FLOPs model's KeptFraction counts SparseGPT's masks exactly too.
    const int64_t total = nm ? 0 : rows * PrunedPerRow(options.ratio, cols);
    const auto bool_options = w.options().dtype(at::kBool);
    at::Tensor keep = at::ones({rows, cols}, bool_options);
    for (int64_t i1 = 0; i1 < cols; i1 += options.block_size) {
      const int64_t i2 = std::min(i1 + options.block_size, cols);
      const int64_t count = i2 - i1;
      at::Tensor w1 = w.index({Slice(), Slice(i1, i2)}).clone();
      at::Tensor q1 = at::zeros_like(w1);
      at::Tensor err1 = at::zeros_like(w1);
      const at::Tensor u1 = u.index({Slice(i1, i2), Slice(i1, i2)});
      const at::Tensor d1 = u1.diagonal();
      at::Tensor prune1 = at::zeros({rows, count}, bool_options);
      if (!nm) {
        // One threshold for the whole block: the lowest scores across all rows. The block's
        // share of the matrix total (exact integers, so the shares sum to the total).
        const int64_t k = total * i2 / cols - total * i1 / cols;
        if (k > 0) {
          const at::Tensor scores = (w1.square() / d1.square().unsqueeze(0)).flatten();
          const at::Tensor order =
              std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/false));
          prune1.view({-1}).index_fill_(0, order.slice(0, 0, k), true);
        }
      }
      for (int64_t i = 0; i < count; ++i) {
        if (nm && i % options.nm_m == 0 && options.nm_m > options.nm_n) {
          // Scores from the weights as compensated so far within the block.
          const int64_t m = options.nm_m;
          const at::Tensor scores = w1.index({Slice(), Slice(i, i + m)}).square() /
                                    d1.slice(0, i, i + m).square().unsqueeze(0);
          const at::Tensor order =
              std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/1, /*descending=*/false));
          prune1.index({Slice(), Slice(i, i + m)})
              .scatter_(1, order.index({Slice(), Slice(0, m - options.nm_n)}), true);
        }
        const at::Tensor wi = w1.select(1, i);
        const at::Tensor qi = wi.masked_fill(prune1.select(1, i), 0.0);
        q1.select(1, i).copy_(qi);
        const at::Tensor err = (wi - qi) / u1.index({i, i});
        w1.index({Slice(), Slice(i, at::indexing::None)})
            .sub_(at::outer(err, u1.index({i, Slice(i, at::indexing::None)})));
        err1.select(1, i).copy_(err);
      }
      w.index({Slice(), Slice(i1, i2)}).copy_(q1);
      if (i2 < cols) {
        w.index({Slice(), Slice(i2, at::indexing::None)})
            .sub_(err1.matmul(u.index({Slice(i1, i2), Slice(i2, at::indexing::None)})));
      }
      keep.index({Slice(), Slice(i1, i2)}).copy_(prune1.logical_not());
    }
    SparseGptResult result;
    result.pruned = rows * cols - keep.sum().item<int64_t>();
    result.sparsity = static_cast<double>(result.pruned) / static_cast<double>(rows * cols);
    result.weight = w.to(weight.device(), weight.scalar_type());
    result.keep = keep.to(at::kCPU);
    return result;
  });
}

}  // namespace prunesvc::prune

#include "worker/prune/mask_bank.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/torch_guard.h"

namespace prunesvc::prune {

absl::StatusOr<at::Tensor> MaskScores(const at::Tensor& weight, MaskMethod method,
                                      const at::Tensor& col_sq_norms) {
  return model::TorchGuarded("mask scores", [&]() -> absl::StatusOr<at::Tensor> {
    if (method == MaskMethod::kSparseGpt) {
      return absl::InvalidArgumentError(
          "mask scores: SPARSEGPT masks are not nested; it prunes at finalize (sparsegpt.h)");
    }
    if (!weight.defined() || weight.dim() != 2) {
      return absl::InvalidArgumentError("mask scores: the weight must be a 2-D tensor");
    }
    at::Tensor w = weight.detach().to(at::kCPU, at::kDouble).abs();
    if (method == MaskMethod::kMagnitude) return w;
    if (!col_sq_norms.defined() || col_sq_norms.dim() != 1 ||
        col_sq_norms.size(0) != weight.size(1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "WANDA scores need the input column norms of all ", weight.size(1), " columns"));
    }
    return w * col_sq_norms.to(at::kCPU, at::kDouble).sqrt().unsqueeze(0);
  });
}

namespace {

// The N:M order of one linear (see mask_bank.h): `scores` [out, in] float64, `order` the rows'
// stable ascending score order. Returns the rows' columns, the M − N pruned of every group first.
absl::StatusOr<at::Tensor> NmOrder(const at::Tensor& scores, const at::Tensor& order,
                                   const NmPattern& nm) {
  const int64_t out = scores.size(0), in = scores.size(1);
  // Rank of every column within its group: a stable ascending sort of each group's scores.
  const at::Tensor grouped = scores.reshape({out, in / nm.m, nm.m});
  const at::Tensor within = std::get<1>(at::sort(grouped, /*stable=*/true, /*dim=*/2,
                                                 /*descending=*/false));
  at::Tensor rank = at::empty_like(within);
  rank.scatter_(2, within, at::arange(nm.m, within.options()).expand_as(within));
  // kept[r, j] = 1 when column j is among its group's N highest.
  const at::Tensor kept = (rank.reshape({out, in}) >= nm.m - nm.n).to(at::kLong);
  // Stable sort of the score order by the kept flag: pruned first, each part still by score
  // (then column).
  const at::Tensor flag = kept.gather(1, order);
  const at::Tensor by_flag = std::get<1>(at::sort(flag, /*stable=*/true, /*dim=*/1,
                                                  /*descending=*/false));
  return order.gather(1, by_flag);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MaskBank>> MaskBank::Build(
    absl::Span<const at::Tensor> dense_weights, MaskMethod method, const CalibrationStats* stats,
    std::optional<NmPattern> nm) {
  if (method == MaskMethod::kWanda &&
      (stats == nullptr || stats->linears.size() != dense_weights.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("WANDA mask bank: calibration statistics for ", dense_weights.size(),
                     " linears are required, got ", stats == nullptr ? 0 : stats->linears.size()));
  }
  if (nm.has_value() && !(nm->m > 0 && nm->n >= 0 && nm->n <= nm->m)) {
    return absl::InvalidArgumentError(
        absl::StrCat("mask bank: invalid N:M pattern ", NmPatternName(*nm)));
  }
  auto bank = std::unique_ptr<MaskBank>(new MaskBank(method, nm));
  RETURN_IF_ERROR(model::TorchGuarded("building the mask bank", [&]() -> absl::Status {
    for (size_t i = 0; i < dense_weights.size(); ++i) {
      const at::Tensor& w = dense_weights[i];
      if (!w.defined() || w.dim() != 2) {
        return absl::InvalidArgumentError(absl::StrCat("mask bank: linear ", i, " is not 2-D"));
      }
      at::Tensor norms;
      if (method == MaskMethod::kWanda) {
        const LinearInputStats* st = stats->linears[i].get();
        if (st == nullptr || st->in_features != w.size(1) || !st->col_sq_norms.defined()) {
          return absl::InvalidArgumentError(
              absl::StrCat("mask bank: linear ", i, " has ", w.size(1),
                           " input columns but its calibration statistics do not match"));
        }
        norms = st->col_sq_norms;
        if (!at::isfinite(norms).all().item<bool>() || (norms < 0).any().item<bool>()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "mask bank: linear ", i, " has non-finite or negative input column norms"));
        }
      }
      if (!at::isfinite(w).all().item<bool>()) {
        return absl::InvalidArgumentError(
            absl::StrCat("mask bank: linear ", i, " has non-finite weights"));
      }
      ASSIGN_OR_RETURN(at::Tensor scores, MaskScores(w, method, norms));
      LinearBank lb;
      lb.out = w.size(0);
      lb.in = w.size(1);
      // Stable ascending sort: equal scores keep increasing column order (lower pruned first).
      at::Tensor idx = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/1,
                                            /*descending=*/false));
      if (nm.has_value()) {
        if (w.size(1) % nm->m != 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("mask bank: linear ", i, " has ", w.size(1),
                           " input columns, not a multiple of N:M's M = ", nm->m));
        }
        ASSIGN_OR_RETURN(idx, NmOrder(scores, idx, *nm));
      }
      // Pruned-mass prefix: column t of the row-sorted squared weights, summed over rows.
      at::Tensor sorted_sq = w.detach().to(at::kCPU, at::kDouble).gather(1, idx).square();
      at::Tensor per_rank = sorted_sq.sum(0);  // [in]
      lb.pruned_mass.assign(size_t(lb.in) + 1, 0.0);
      const double* pr = per_rank.data_ptr<double>();
      for (int64_t t = 0; t < lb.in; ++t) lb.pruned_mass[t + 1] = lb.pruned_mass[t] + pr[t];
      const bool narrow = lb.in <= std::numeric_limits<int16_t>::max();
      lb.order = idx.to(narrow ? at::kShort : at::kInt).contiguous();
      bank->linears_.push_back(std::move(lb));
    }
    return absl::OkStatus();
  }));
  return bank;
}

absl::StatusOr<at::Tensor> MaskBank::KeepMask(int i, double ratio) const {
  if (i < 0 || i >= num_linears()) {
    return absl::OutOfRangeError(absl::StrCat("mask bank: no linear ", i));
  }
  if (!(ratio >= 0 && ratio <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("ratio ", ratio, " is outside [0, 1]"));
  }
  return model::TorchGuarded("keep mask", [&]() -> absl::StatusOr<at::Tensor> {
    const LinearBank& lb = linears_[i];
    const int64_t k = PrunedPerRow(ratio, lb.in);
    at::Tensor keep = at::ones({lb.out, lb.in}, at::TensorOptions(at::kBool));
    if (k > 0) keep.scatter_(1, lb.order.narrow(1, 0, k).to(at::kLong), false);
    return keep;
  });
}

int64_t MaskBank::MemoryBytes() const {
  int64_t bytes = 0;
  for (const LinearBank& lb : linears_) {
    bytes += lb.order.numel() * int64_t(lb.order.element_size());
    bytes += int64_t(lb.pruned_mass.size() * sizeof(double));
  }
  return bytes;
}

}  // namespace prunesvc::prune

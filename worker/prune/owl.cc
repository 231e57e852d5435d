#include "worker/prune/owl.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/torch_guard.h"
#include "worker/prune/mask_bank.h"

namespace prunesvc::prune {

absl::StatusOr<std::vector<double>> OwlOutlierRatios(absl::Span<const at::Tensor> weights,
                                                     const CalibrationStats& stats,
                                                     absl::Span<const int> unit_of_linear,
                                                     int num_units, double multiple) {
  const size_t n = weights.size();
  if (stats.linears.size() != n || unit_of_linear.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("OWL outlier ratios: ", n, " weights, ", stats.linears.size(),
                     " statistics and ", unit_of_linear.size(), " unit indices (all must match)"));
  }
  if (!(multiple > 0) || !std::isfinite(multiple)) {
    return absl::InvalidArgumentError(
        absl::StrCat("OWL outlier ratios: the outlier multiple must be positive, got ", multiple));
  }
  if (num_units < 1) return absl::InvalidArgumentError("OWL outlier ratios: no units");
  for (size_t i = 0; i < n; ++i) {
    if (unit_of_linear[i] < 0 || unit_of_linear[i] >= num_units) {
      return absl::InvalidArgumentError(
          absl::StrCat("OWL outlier ratios: linear ", i, " has unit ", unit_of_linear[i]));
    }
    const LinearInputStats* st = stats.linears[i].get();
    if (st == nullptr || !st->col_sq_norms.defined() || !weights[i].defined() ||
        weights[i].dim() != 2 || st->col_sq_norms.numel() != weights[i].size(1)) {
      return absl::InvalidArgumentError(absl::StrCat("OWL outlier ratios: linear ", i,
                                                     " has no matching calibration statistics"));
    }
  }
  return model::TorchGuarded("OWL outlier ratios", [&]() -> absl::StatusOr<std::vector<double>> {
    std::vector<double> sum(num_units, 0.0), count(num_units, 0.0), outliers(num_units, 0.0);
    for (size_t i = 0; i < n; ++i) {
      ASSIGN_OR_RETURN(at::Tensor s,
                       MaskScores(weights[i], MaskMethod::kWanda, stats.linears[i]->col_sq_norms));
      if (!at::isfinite(s).all().item<bool>()) {
        return absl::InvalidArgumentError(
            absl::StrCat("OWL outlier ratios: linear ", i, " has non-finite scores"));
      }
      sum[unit_of_linear[i]] += s.sum().item<double>();
      count[unit_of_linear[i]] += double(s.numel());
    }
    for (int u = 0; u < num_units; ++u) {
      if (count[u] == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("OWL outlier ratios: unit ", u, " has no linears"));
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const int u = unit_of_linear[i];
      const double threshold = multiple * (sum[u] / count[u]);
      ASSIGN_OR_RETURN(at::Tensor s,
                       MaskScores(weights[i], MaskMethod::kWanda, stats.linears[i]->col_sq_norms));
      outliers[u] += double((s > threshold).sum().item<int64_t>());
    }
    std::vector<double> ratio(num_units);
    for (int u = 0; u < num_units; ++u) ratio[u] = outliers[u] / count[u];
    return ratio;
  });
}

}  // namespace prunesvc::prune

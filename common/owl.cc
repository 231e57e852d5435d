#include "common/owl.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace prunesvc::search {

absl::StatusOr<std::vector<double>> OwlDeviations(std::span<const double> outlier_ratios,
                                                  double lambda) {
  if (outlier_ratios.empty()) return absl::InvalidArgumentError("OWL: no outlier ratios");
  if (!std::isfinite(lambda) || lambda < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("OWL: lambda must be finite and ≥ 0, got ", lambda));
  }
  for (size_t i = 0; i < outlier_ratios.size(); ++i) {
    const double d = outlier_ratios[i];
    if (!(d >= 0 && d <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("OWL: outlier ratio of unit ", i, " is ", d, ", outside [0, 1]"));
    }
  }
  const auto [lo, hi] = std::minmax_element(outlier_ratios.begin(), outlier_ratios.end());
  const size_t n = outlier_ratios.size();
  std::vector<double> dev(n, 0.0);
  if (!(*hi > *lo)) return dev;  // all equal: UNIFORM
  std::vector<double> a(n);
  for (size_t i = 0; i < n; ++i) a[i] = (outlier_ratios[i] - *lo) / (*hi - *lo) * (2 * lambda);
  const double mean = std::accumulate(a.begin(), a.end(), 0.0) / double(n);
  for (size_t i = 0; i < n; ++i) dev[i] = mean - a[i];
  return dev;
}

absl::StatusOr<std::vector<double>> OwlRatios(const PolicySpace& space,
                                              std::span<const double> outlier_ratios, double budget,
                                              double lambda) {
  if (outlier_ratios.size() != size_t(space.num_units())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "OWL: ", outlier_ratios.size(), " outlier ratios for ", space.num_units(), " units"));
  }
  ASSIGN_OR_RETURN(std::vector<double> dev, OwlDeviations(outlier_ratios, lambda));
  return space.ShiftToBudget(dev, budget);
}

absl::StatusOr<std::vector<double>> OwlNmRatios(const PolicySpace& space,
                                                std::span<const double> outlier_ratios,
                                                double budget) {
  const int n = space.num_units();
  if (outlier_ratios.size() != size_t(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("OWL: ", outlier_ratios.size(), " outlier ratios for ", n, " units"));
  }
  if (space.num_choices() != 2 || space.ratio_choices()[0] != 0.0) {
    return absl::InvalidArgumentError(
        "OWL for N:M needs the two unit choices {dense, N:M} (ratios {0, 1 − N/M})");
  }
  RETURN_IF_ERROR(OwlDeviations(outlier_ratios).status());  // validates the ratios
  RETURN_IF_ERROR(space.CheckBudget(budget));
  Policy policy(n, 1);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return outlier_ratios[a] > outlier_ratios[b]; });
  const double limit = budget * space.dense_flops();
  for (int u : order) {
    policy[u] = 0;
    ASSIGN_OR_RETURN(double f, space.Flops(policy));
    if (f > limit) {
      policy[u] = 1;
      break;
    }
  }
  return space.UnitRatios(policy);
}

}  // namespace prunesvc::search

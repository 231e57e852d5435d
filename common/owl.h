// OWL, outlier-weighted layerwise sparsity (Yin et al. 2023, "Outlier Weighed Layerwise Sparsity
// (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity"; docs/architecture.md §5
// "Strategies"): the torch-free half — from per-layer outlier ratios to per-unit pruning ratios
// that meet a FLOPs budget. The outlier ratios themselves come from the weights and calibration
// statistics (worker/prune/owl.h).
//
// The paper's rule, as its reference code computes it (github.com/luuyin/OWL,
// lib/prune_all.py prune_wanda_outlier):
//   D_l  = fraction of layer l's Wanda scores |W_ij|·‖X_j‖₂ (all 7 linears of the layer pooled)
//          that exceed M × their mean, M = 5;
//   a_l  = (D_l − min D) / (max D − min D) · 2λ, λ = 0.08     (so a spans [0, 2λ]);
//   keep_l = a_l − mean(a) + (1 − S)  →  sparsity r_l = S + (mean(a) − a_l).
// So the deviations dev_l = mean(a) − a_l span a window of width 2λ (they are [−λ, +λ] only
// when mean(a) = λ), average to 0, and a layer with MORE outliers gets a LOWER ratio.
// Here S is not fixed in advance: the budget is FLOPs, so the ratios are
//   r_l = clamp(dev_l + t, 0, max ratio) with the smallest shift t meeting the budget
// (PolicySpace::ShiftToBudget: never above the budget). Wherever no clamp binds, t is S, the mean
// ratio. When every D_l is equal (max D = min D, where the reference divides by zero) every
// deviation is 0: OWL degenerates to UNIFORM.
//
// N:M (unit choices {dense, N:M}, common/nm_sparsity.h): there is no continuous ratio to shift.
// OwlNmRatios starts from every unit N:M (the floor) and makes units dense in decreasing order
// of D (ties: the lower unit index first) while the budget still holds, stopping at the first unit
// that does not fit — so a unit is dense only if every unit with more outliers is, the discrete
// form of "more outliers → lower sparsity".
//
// Thread-safety: pure functions.
#ifndef PRUNESVC_COMMON_OWL_H_
#define PRUNESVC_COMMON_OWL_H_

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/policy.h"

namespace prunesvc::search {

inline constexpr double kOwlOutlierMultiple = 5.0;  // M: an outlier exceeds M × the layer's mean
inline constexpr double kOwlLambda = 0.08;          // λ: the deviations span 2λ

// dev_l = mean(a) − a_l as above. Outlier ratios must be finite and in [0, 1]; λ finite, ≥ 0.
absl::StatusOr<std::vector<double>> OwlDeviations(std::span<const double> outlier_ratios,
                                                  double lambda = kOwlLambda);

// UNSTRUCTURED OWL: ShiftToBudget(OwlDeviations(D, λ), budget).
absl::StatusOr<std::vector<double>> OwlRatios(const PolicySpace& space,
                                              std::span<const double> outlier_ratios, double budget,
                                              double lambda = kOwlLambda);

// N:M OWL over a space whose ratio choices are {0, N:M's ratio}: see the header comment. Each
// returned ratio is 0 or space.max_ratio(); F ≤ budget·F_dense (CheckBudget's error otherwise).
absl::StatusOr<std::vector<double>> OwlNmRatios(const PolicySpace& space,
                                                std::span<const double> outlier_ratios,
                                                double budget);

}  // namespace prunesvc::search

#endif  // PRUNESVC_COMMON_OWL_H_

// Small rank statistics for reports and studies (torch-free).
//
// Spearman's ρ is Pearson's correlation of the ranks, with tied values given the average of the
// ranks they span (the "fractional" ranking scipy.stats.spearmanr uses), so it is well defined
// with ties — accuracies on a few dozen samples tie a lot.
#ifndef PRUNESVC_COMMON_RANK_STATS_H_
#define PRUNESVC_COMMON_RANK_STATS_H_

#include <cstddef>
#include <optional>
#include <vector>

namespace prunesvc {

// 1-based fractional ranks: ties share the mean of the positions they occupy.
std::vector<double> FractionalRanks(const std::vector<double>& values);

// Spearman's ρ ∈ [−1, 1]; nullopt when the sizes differ, there are fewer than 3 points, or
// either side is constant (ρ undefined). Values must be finite (NaN compares unordered).
std::optional<double> SpearmanRho(const std::vector<double>& x, const std::vector<double>& y);

// Up to `limit` of the indices 0..count−1, evenly spaced with the first and the last included,
// ascending and distinct (all of them when count ≤ limit).
std::vector<size_t> EvenlySpacedIndices(size_t count, size_t limit);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_RANK_STATS_H_

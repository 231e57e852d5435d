#include "common/rank_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace prunesvc {

std::vector<double> FractionalRanks(const std::vector<double>& values) {
  const size_t n = values.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(n);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && values[order[j + 1]] == values[order[i]]) ++j;
    // Positions i..j (0-based) share the mean 1-based rank.
    const double rank = 0.5 * double(i + j) + 1.0;
    for (size_t k = i; k <= j; ++k) ranks[order[k]] = rank;
    i = j + 1;
  }
  return ranks;
}

std::optional<double> SpearmanRho(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = x.size();
  if (n < 3 || y.size() != n) return std::nullopt;
  const std::vector<double> rx = FractionalRanks(x), ry = FractionalRanks(y);
  const double mean = 0.5 * double(n + 1);  // the mean of any fractional ranking of n values
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < n; ++i) {
    sxy += (rx[i] - mean) * (ry[i] - mean);
    sxx += (rx[i] - mean) * (rx[i] - mean);
    syy += (ry[i] - mean) * (ry[i] - mean);
  }
  if (!(sxx > 0 && syy > 0)) return std::nullopt;
  return std::clamp(sxy / std::sqrt(sxx * syy), -1.0, 1.0);
}

std::vector<size_t> EvenlySpacedIndices(size_t count, size_t limit) {
  std::vector<size_t> out;
  if (count == 0 || limit == 0) return out;
  if (count <= limit) {
    out.resize(count);
    std::iota(out.begin(), out.end(), size_t{0});
    return out;
  }
  if (limit == 1) return {0};
  for (size_t i = 0; i < limit; ++i) {
    // Round-to-nearest of i·(count−1)/(limit−1), in integers.
    const size_t idx = (2 * i * (count - 1) + (limit - 1)) / (2 * (limit - 1));
    if (out.empty() || out.back() != idx) out.push_back(idx);
  }
  return out;
}

}  // namespace prunesvc

#include "common/racing.h"

#include <algorithm>
#include <cmath>

namespace prunesvc::search {

double RaceLimit::Term(size_t i, double omega) const {
  double t = 0;
  if (norm_eta != 0) t = norm_eta * omega / std::sqrt(static_cast<double>(num_samples));
  if (i < extra.size()) t += extra[i];
  return t;
}

bool RacedOut(double partial_sum, int scored, int num_samples, double term, double threshold) {
  if (scored >= num_samples || num_samples <= 0) return false;
  return partial_sum / num_samples + term > threshold;
}

std::optional<int> ReplayRace(std::span<const double> sample_losses, int batch, double term,
                              double threshold) {
  return ReplayRacePrefix(sample_losses, int(sample_losses.size()), batch, term, threshold);
}

std::optional<int> ReplayRacePrefix(std::span<const double> sample_losses, int num_samples,
                                    int batch, double term, double threshold) {
  const int m = std::min(int(sample_losses.size()), num_samples);
  const int step = batch > 0 ? batch : 1;
  double sum = 0;
  for (int k = 0; k < m; ++k) {
    sum += sample_losses[k];
    const int scored = k + 1;
    if (scored % step == 0 && RacedOut(sum, scored, num_samples, term, threshold)) return scored;
  }
  return std::nullopt;
}

}  // namespace prunesvc::search

#include "common/racing.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/estimators.h"

namespace prunesvc::search {

double RaceLimit::Term(size_t i, double omega) const {
  double t = 0;
  if (norm_eta != 0) t = norm_eta * omega / std::sqrt(static_cast<double>(num_samples));
  if (i < extra.size()) t += extra[i];
  return t;
}

double RaceLimit::BoundTerm(size_t i, double omega, std::span<const double> scored) const {
  const double t = Term(i, omega);
  if (paired_eta == 0) return t;
  return t + paired_eta * PairedTermLowerBound(scored, reference_losses, num_samples);
}

double PairedTermLowerBound(std::span<const double> scored, std::span<const double> reference,
                            int num_samples) {
  const size_t k = scored.size();
  if (k < 2 || num_samples < 2 || reference.size() < k) return 0;
  std::vector<int> prefix(k);
  std::iota(prefix.begin(), prefix.end(), 0);
  // The prefix's own paired SE, √(SS_k/(k−1))/√k, rescaled to the whole set's √(SS_k/(n−1))/√n.
  const double se_k = PairedStandardErrorOver(scored, reference, prefix);
  const double n = num_samples;
  const double b_k = se_k * std::sqrt(double(k) * double(k - 1) / (n * (n - 1)));
  // The margin keeps the bound under the search's own rounding of SE_D (its sums run in another
  // order), so a cut candidate's computed fitness is above the threshold too.
  const double b = b_k * (1 - 1e-9) - 1e-12;
  return b > 0 ? b : 0;
}

bool RacedOut(double partial_sum, int scored, int num_samples, double term, double threshold) {
  if (scored >= num_samples || num_samples <= 0) return false;
  return partial_sum / num_samples + term > threshold;
}

std::optional<int> ReplayRace(std::span<const double> sample_losses, int batch,
                              const RaceLimit& race, size_t i, double omega) {
  return ReplayRacePrefix(sample_losses, int(sample_losses.size()), batch, race, i, omega);
}

std::optional<int> ReplayRacePrefix(std::span<const double> sample_losses, int num_samples,
                                    int batch, const RaceLimit& race, size_t i, double omega) {
  if (!race.active()) return std::nullopt;
  const int m = std::min(int(sample_losses.size()), num_samples);
  const int step = batch > 0 ? batch : 1;
  double sum = 0;
  for (int k = 0; k < m; ++k) {
    sum += sample_losses[k];
    const int scored = k + 1;
    if (scored % step != 0 || scored >= num_samples) continue;
    const double term = race.BoundTerm(i, omega, sample_losses.first(size_t(scored)));
    if (RacedOut(sum, scored, num_samples, term, race.threshold)) return scored;
  }
  return std::nullopt;
}

}  // namespace prunesvc::search

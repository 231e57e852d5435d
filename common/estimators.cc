#include "common/estimators.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/prng.h"
#include "common/rank_stats.h"
#include "common/status_macros.h"

namespace prunesvc::search {

absl::StatusOr<Estimator> ParseEstimator(absl::string_view given) {
  const std::string name = absl::AsciiStrToUpper(given);  // case-insensitive
  if (name == "NORM") return Estimator::kNorm;
  if (name == "UCB") return Estimator::kUcb;
  if (name == "SPLIT") return Estimator::kSplit;
  if (name == "CAPACITY") return Estimator::kCapacity;
  if (name == "PAIRED") return Estimator::kPaired;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown estimator \"", given, "\" (expected NORM, UCB, SPLIT, CAPACITY or PAIRED)"));
}

absl::string_view EstimatorName(Estimator estimator) {
  switch (estimator) {
    case Estimator::kNorm:
      return "NORM";
    case Estimator::kUcb:
      return "UCB";
    case Estimator::kSplit:
      return "SPLIT";
    case Estimator::kCapacity:
      return "CAPACITY";
    case Estimator::kPaired:
      return "PAIRED";
  }
  return "UNKNOWN";
}

bool EstimatorNeedsSampleLosses(Estimator estimator) {
  return estimator == Estimator::kUcb || estimator == Estimator::kSplit ||
         estimator == Estimator::kPaired;
}

absl::StatusOr<EtaRule> ParseEtaRule(absl::string_view given) {
  const std::string name = absl::AsciiStrToUpper(given);  // case-insensitive
  if (name == "AUTO") return EtaRule::kAuto;
  if (name == "CV") return EtaRule::kCrossValidated;
  if (name == "SAMPLES") return EtaRule::kSamples;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown eta rule \"", given, "\" (expected AUTO, CV or SAMPLES)"));
}

absl::string_view EtaRuleName(EtaRule rule) {
  switch (rule) {
    case EtaRule::kAuto:
      return "AUTO";
    case EtaRule::kCrossValidated:
      return "CV";
    case EtaRule::kSamples:
      return "SAMPLES";
  }
  return "AUTO";
}

std::vector<double> DefaultEtaGrid() { return {0, 0.1, 0.3, 1, 3, 10, 30, 100}; }

double SamplesEta(int num_samples) { return num_samples >= kSamplesEtaMinSamples ? 1.0 : 0.0; }

std::vector<int> SamplePermutation(uint64_t seed, uint64_t stream, int n) {
  std::vector<int> perm(std::max(n, 0));
  std::iota(perm.begin(), perm.end(), 0);
  Prng prng = Prng(seed).Fork(stream);
  prng.Shuffle(perm);
  return perm;
}

double MeanOver(std::span<const double> losses, std::span<const int> indices) {
  if (indices.empty()) return 0;
  double sum = 0;
  for (int i : indices) sum += losses[i];
  return sum / indices.size();
}

double StandardErrorOver(std::span<const double> losses, std::span<const int> indices) {
  const size_t m = indices.size();
  if (m < 2) return 0;
  const double mean = MeanOver(losses, indices);
  double ss = 0;
  for (int i : indices) ss += (losses[i] - mean) * (losses[i] - mean);
  return std::sqrt(ss / (m - 1)) / std::sqrt(static_cast<double>(m));
}

double SplitGapOver(std::span<const double> losses, std::span<const int> indices) {
  const size_t m = indices.size();
  if (m < 2) return 0;
  return std::abs(MeanOver(losses, indices.first(m / 2)) -
                  MeanOver(losses, indices.subspan(m / 2)));
}

double PairedStandardErrorOver(std::span<const double> losses, std::span<const double> reference,
                               std::span<const int> indices) {
  std::vector<double> diffs(losses.size());
  for (int i : indices) diffs[i] = losses[i] - reference[i];
  return StandardErrorOver(diffs, indices);
}

double SquaredCapacity(std::span<const double> unit_ratios, std::span<const int64_t> params) {
  double weighted = 0, total = 0;
  for (size_t u = 0; u < unit_ratios.size() && u < params.size(); ++u) {
    const double p = static_cast<double>(params[u]);
    weighted += p * unit_ratios[u] * unit_ratios[u];
    total += p;
  }
  return total > 0 ? weighted / total : 0;
}

absl::StatusOr<double> EstimatorTerm(Estimator estimator, const TermInputs& in,
                                     std::span<const int> indices) {
  if (indices.empty()) return absl::InvalidArgumentError("estimator term: no samples");
  const double root_m = std::sqrt(static_cast<double>(indices.size()));
  if (EstimatorNeedsSampleLosses(estimator)) {
    for (int i : indices) {
      if (i < 0 || static_cast<size_t>(i) >= in.sample_losses.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("estimator ", EstimatorName(estimator), ": sample index ", i, " but only ",
                         in.sample_losses.size(), " per-sample losses"));
      }
      if (estimator == Estimator::kPaired && static_cast<size_t>(i) >= in.reference_losses.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("estimator PAIRED: sample index ", i, " but only ",
                         in.reference_losses.size(), " per-sample losses of the reference policy"));
      }
    }
  }
  switch (estimator) {
    case Estimator::kNorm:
      return in.omega / root_m;
    case Estimator::kCapacity:
      return in.capacity / root_m;
    case Estimator::kUcb:
      return StandardErrorOver(in.sample_losses, indices);
    case Estimator::kSplit:
      return SplitGapOver(in.sample_losses, indices);
    case Estimator::kPaired:
      return PairedStandardErrorOver(in.sample_losses, in.reference_losses, indices);
  }
  return absl::InternalError("estimator term: unknown estimator");
}

absl::StatusOr<CvChoice> CrossValidateEta(Estimator estimator, std::span<const TermInputs> policies,
                                          std::span<const double> grid,
                                          std::span<const int> permutation) {
  const size_t n = permutation.size();
  if (n < 2) return absl::InvalidArgumentError("cross-validated eta: needs at least 2 samples");
  if (grid.empty()) return absl::InvalidArgumentError("cross-validated eta: empty grid");
  for (double eta : grid) {
    if (!(std::isfinite(eta) && eta >= 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cross-validated eta: grid value ", eta, " is not finite and ≥ 0"));
    }
  }
  const std::span<const int> part_a = permutation.first(n / 2);
  const std::span<const int> part_b = permutation.subspan(n / 2);
  std::vector<double> loss_a, term_a, loss_b;
  for (const TermInputs& p : policies) {
    if (p.sample_losses.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat("cross-validated eta: a policy has ",
                                                     p.sample_losses.size(),
                                                     " per-sample losses, expected ", n));
    }
    loss_a.push_back(MeanOver(p.sample_losses, part_a));
    ASSIGN_OR_RETURN(double t, EstimatorTerm(estimator, p, part_a));
    term_a.push_back(t);
    loss_b.push_back(MeanOver(p.sample_losses, part_b));
  }
  CvChoice out;
  out.eta = *std::min_element(grid.begin(), grid.end());
  std::vector<double> fitness_a(policies.size());
  for (double eta : grid) {
    for (size_t i = 0; i < fitness_a.size(); ++i) fitness_a[i] = loss_a[i] + eta * term_a[i];
    const std::optional<double> rho = SpearmanRho(fitness_a, loss_b);
    out.rhos.push_back(rho);
    if (!rho.has_value()) continue;
    // Larger ρ wins; on an exact tie the smaller η.
    if (!out.rho.has_value() || *rho > *out.rho || (*rho == *out.rho && eta < out.eta)) {
      out.eta = eta;
      out.rho = rho;
    }
  }
  return out;
}

}  // namespace prunesvc::search

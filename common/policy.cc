#include "common/policy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace prunesvc::search {
namespace {

constexpr std::array<const char*, kNumDecoderLinears> kLinearPaths = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

int64_t LinearParams(const DecoderLayerFlopsDims& d, DecoderLinear linear) {
  const int64_t h = d.hidden;
  switch (linear) {
    case DecoderLinear::kQ:
    case DecoderLinear::kO:
      return h * d.q_width;
    case DecoderLinear::kK:
    case DecoderLinear::kV:
      return h * d.kv_width;
    case DecoderLinear::kGate:
    case DecoderLinear::kUp:
    case DecoderLinear::kDown:
      return h * d.mlp_width;
  }
  return 0;
}

int64_t FixedPoint(double ratio) { return std::llround(ratio * kRatioFixedPointScale); }

absl::Status CheckBudgetValue(double budget) {
  if (!std::isfinite(budget) || !(budget > 0) || budget > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLOPs budget must be a number in (0, 1], got ", budget));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<UnitKind> ParseUnitKind(absl::string_view given) {
  const std::string name = absl::AsciiStrToLower(given);  // case-insensitive
  if (name == "layer") return UnitKind::kLayer;
  if (name == "linear") return UnitKind::kLinear;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown pruning unit \"", given, "\" (expected layer or linear)"));
}

absl::StatusOr<Granularity> ParseGranularity(absl::string_view given) {
  const std::string name = absl::AsciiStrToUpper(given);  // case-insensitive
  if (name == "UNSTRUCTURED") return Granularity::kUnstructured;
  if (name == "STRUCTURED") return Granularity::kStructured;
  if (name == "N_M") return Granularity::kNM;
  return absl::InvalidArgumentError(absl::StrCat("unknown granularity \"", given,
                                                 "\" (expected UNSTRUCTURED, STRUCTURED or N_M)"));
}

absl::string_view GranularityName(Granularity granularity) {
  switch (granularity) {
    case Granularity::kStructured:
      return "STRUCTURED";
    case Granularity::kNM:
      return "N_M";
    case Granularity::kUnstructured:
      break;
  }
  return "UNSTRUCTURED";
}

absl::string_view UnitKindName(UnitKind kind) {
  return kind == UnitKind::kLayer ? "layer" : "linear";
}

std::vector<double> DefaultRatioChoices() { return {0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8}; }

absl::Status ValidateRatioChoices(const std::vector<double>& ratios) {
  if (ratios.empty()) return absl::InvalidArgumentError("ratio choices must not be empty");
  for (size_t i = 0; i < ratios.size(); ++i) {
    const double r = ratios[i];
    if (!std::isfinite(r) || r < 0 || r >= 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("ratio choice ", i, " is ", r, "; ratios must be within [0, 1)"));
    }
    if (i > 0 && !(FixedPoint(ratios[i - 1]) < FixedPoint(r))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ratio choices must be strictly increasing and differ by at least 1e-6; choice ", i, " (",
          r, ") follows ", ratios[i - 1]));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> ParseRatioChoices(absl::string_view list) {
  std::vector<double> ratios;
  int field = 0;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    const absl::string_view trimmed = absl::StripAsciiWhitespace(part);
    double r;
    if (trimmed.empty() || !absl::SimpleAtod(trimmed, &r)) {
      return absl::InvalidArgumentError(
          absl::StrCat("ratio choices: item ", field, " (\"", part, "\") is not a number"));
    }
    ratios.push_back(r);
    ++field;
  }
  RETURN_IF_ERROR(ValidateRatioChoices(ratios));
  return ratios;
}

absl::StatusOr<PruningUnits> PruningUnits::Build(const FlopsModelDims& dims,
                                                 const FlopsBreakdown& dense, UnitKind kind) {
  const size_t layers = dims.decoder.size();
  if (layers == 0) return absl::InvalidArgumentError("pruning units: the model has no decoder");
  if (dense.decoder_linear.size() != layers) {
    return absl::InvalidArgumentError(absl::StrCat("pruning units: the FLOPs breakdown has ",
                                                   dense.decoder_linear.size(),
                                                   " decoder layers, the model dims ", layers));
  }
  PruningUnits u;
  u.kind = kind;
  auto add = [&](std::string name, std::vector<UnitMember> members) {
    double flops = 0;
    int64_t params = 0;
    for (const UnitMember& m : members) {
      flops += dense.decoder_linear[m.layer][static_cast<int>(m.linear)];
      params += LinearParams(dims.decoder[m.layer], m.linear);
    }
    u.names.push_back(std::move(name));
    u.members.push_back(std::move(members));
    u.dense_flops.push_back(flops);
    u.params.push_back(params);
  };
  for (size_t l = 0; l < layers; ++l) {
    if (kind == UnitKind::kLayer) {
      std::vector<UnitMember> members;
      for (int i = 0; i < kNumDecoderLinears; ++i) {
        members.push_back({static_cast<int>(l), static_cast<DecoderLinear>(i)});
      }
      add(absl::StrCat("layers.", l), std::move(members));
    } else {
      for (int i = 0; i < kNumDecoderLinears; ++i) {
        add(absl::StrCat("layers.", l, ".", kLinearPaths[i]),
            {{static_cast<int>(l), static_cast<DecoderLinear>(i)}});
      }
    }
  }
  double total = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    if (!(u.dense_flops[i] > 0) || !std::isfinite(u.dense_flops[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("pruning unit ", u.names[i], " has no FLOPs (", u.dense_flops[i],
                       "); are the token statistics or the layer dims zero?"));
    }
    total += u.dense_flops[i];
  }
  for (double f : u.dense_flops) u.flops_share.push_back(f / total);
  return u;
}

uint64_t Fnv1a64(absl::string_view data) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string CanonicalPolicyEncoding(std::span<const double> unit_ratios) {
  std::string out;
  out.reserve(4 + 8 * unit_ratios.size());
  const uint32_t n = static_cast<uint32_t>(unit_ratios.size());
  for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((n >> (8 * b)) & 0xff));
  for (double r : unit_ratios) {
    const uint64_t v = static_cast<uint64_t>(FixedPoint(r));
    for (int b = 0; b < 8; ++b) out.push_back(static_cast<char>((v >> (8 * b)) & 0xff));
  }
  return out;
}

std::string PolicyHashOfRatios(std::span<const double> unit_ratios) {
  return absl::StrFormat("%016x", Fnv1a64(CanonicalPolicyEncoding(unit_ratios)));
}

PolicySpace::PolicySpace(FlopsBreakdown dense, PruningUnits units, std::vector<double> ratios)
    : dense_(std::move(dense)), units_(std::move(units)), ratios_(std::move(ratios)) {
  ComputeEnds();
}

void PolicySpace::ComputeEnds() {
  dense_flops_ = FlopsUnchecked(std::vector<double>(units_.size(), 0.0));
  min_flops_ = FlopsUnchecked(std::vector<double>(units_.size(), ratios_.back()));
}

absl::StatusOr<PolicySpace> PolicySpace::CreateStructured(FlopsModelDims dims, TokenStats stats,
                                                          std::vector<DecoderLayerHeads> heads,
                                                          std::vector<double> ratio_choices) {
  RETURN_IF_ERROR(CheckLayerHeads(dims, heads));
  ASSIGN_OR_RETURN(FlopsBreakdown dense, ComputeDenseFlops(dims, stats));
  ASSIGN_OR_RETURN(PruningUnits units, PruningUnits::Build(dims, dense, UnitKind::kLayer));
  ASSIGN_OR_RETURN(PolicySpace space,
                   Create(std::move(dense), std::move(units), std::move(ratio_choices)));
  space.structured_ = StructuredModel{std::move(dims), stats, std::move(heads)};
  space.ComputeEnds();
  if (!(space.dense_flops_ > 0) || !std::isfinite(space.dense_flops_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy space: dense FLOPs are ", space.dense_flops_));
  }
  return space;
}

absl::StatusOr<FlopsModelDims> PolicySpace::StructuredDims(
    std::span<const double> unit_ratios) const {
  if (!structured_) {
    return absl::FailedPreconditionError("StructuredDims: the policy space is UNSTRUCTURED");
  }
  if (unit_ratios.size() != units_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("policy has ", unit_ratios.size(),
                                                   " unit ratios, the model has ", units_.size()));
  }
  // Units are the layers in order (CreateStructured builds them with UnitKind::kLayer).
  return ShrinkDecoderDims(structured_->dims, structured_->heads,
                           std::vector<double>(unit_ratios.begin(), unit_ratios.end()));
}

absl::StatusOr<PolicySpace> PolicySpace::Create(FlopsBreakdown dense, PruningUnits units,
                                                std::vector<double> ratio_choices) {
  RETURN_IF_ERROR(ValidateRatioChoices(ratio_choices));
  const size_t n = units.size();
  if (n == 0) return absl::InvalidArgumentError("policy space: no pruning units");
  if (dense.decoder_linear_in.size() != dense.decoder_linear.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy space: the FLOPs breakdown has input widths for ",
                     dense.decoder_linear_in.size(), " decoder layers and FLOPs for ",
                     dense.decoder_linear.size(), " (build it with ComputeDenseFlops)"));
  }
  if (units.members.size() != n || units.dense_flops.size() != n || units.params.size() != n ||
      units.flops_share.size() != n) {
    return absl::InvalidArgumentError("policy space: pruning unit fields differ in length");
  }
  for (size_t i = 0; i < n; ++i) {
    for (const UnitMember& m : units.members[i]) {
      const int linear = static_cast<int>(m.linear);
      if (m.layer < 0 || static_cast<size_t>(m.layer) >= dense.decoder_linear.size() ||
          linear < 0 || linear >= kNumDecoderLinears) {
        return absl::InvalidArgumentError(absl::StrCat(
            "policy space: unit ", units.names[i], " names layer ", m.layer, " linear ", linear,
            ", outside the model's ", dense.decoder_linear.size(), " decoder layers"));
      }
    }
  }
  PolicySpace space(std::move(dense), std::move(units), std::move(ratio_choices));
  if (!(space.dense_flops_ > 0) || !std::isfinite(space.dense_flops_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy space: dense FLOPs are ", space.dense_flops_));
  }
  return space;
}

absl::Status PolicySpace::Validate(const Policy& policy) const {
  if (policy.size() != units_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy has ", policy.size(), " units, the model has ", units_.size()));
  }
  for (size_t i = 0; i < policy.size(); ++i) {
    if (policy[i] < 0 || policy[i] >= num_choices()) {
      return absl::InvalidArgumentError(absl::StrCat("policy unit ", i, " (", units_.names[i],
                                                     ") has ratio index ", policy[i],
                                                     ", outside [0, ", num_choices(), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> PolicySpace::UnitRatios(const Policy& policy) const {
  RETURN_IF_ERROR(Validate(policy));
  std::vector<double> r(policy.size());
  for (size_t i = 0; i < policy.size(); ++i) r[i] = ratios_[policy[i]];
  return r;
}

absl::StatusOr<std::string> PolicySpace::Hash(const Policy& policy) const {
  ASSIGN_OR_RETURN(std::vector<double> r, UnitRatios(policy));
  return PolicyHashOfRatios(r);
}

absl::StatusOr<KeptFractions> PolicySpace::KeptFractionsOf(
    std::span<const double> unit_ratios) const {
  if (structured_) {
    return absl::FailedPreconditionError(
        "kept fractions do not describe STRUCTURED policies (the attention term shrinks too); "
        "use StructuredDims");
  }
  if (unit_ratios.size() != units_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("policy has ", unit_ratios.size(),
                                                   " unit ratios, the model has ", units_.size()));
  }
  for (size_t i = 0; i < unit_ratios.size(); ++i) {
    if (!(unit_ratios[i] >= 0 && unit_ratios[i] <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat("unit ", units_.names[i], " has ratio ",
                                                     unit_ratios[i], ", outside [0, 1]"));
    }
  }
  return KeptFractionsUnchecked(unit_ratios);
}

KeptFractions PolicySpace::KeptFractionsUnchecked(std::span<const double> unit_ratios) const {
  KeptFractions keep;
  keep.decoder.assign(dense_.decoder_linear.size(), {1, 1, 1, 1, 1, 1, 1});
  for (size_t u = 0; u < units_.size(); ++u) {
    for (const UnitMember& m : units_.members[u]) {
      const int i = static_cast<int>(m.linear);
      keep.decoder[m.layer][i] = KeptFraction(unit_ratios[u], dense_.decoder_linear_in[m.layer][i]);
    }
  }
  return keep;
}

double PolicySpace::FlopsUnchecked(std::span<const double> unit_ratios) const {
  if (structured_) {
    // The FLOPs of the shrunk shapes; validated at creation, so this cannot fail either.
    absl::StatusOr<FlopsModelDims> dims = StructuredDims(unit_ratios);
    if (!dims.ok()) return std::numeric_limits<double>::infinity();
    absl::StatusOr<FlopsBreakdown> f = ComputeDenseFlops(*dims, structured_->stats);
    return f.ok() ? f->Total() : std::numeric_limits<double>::infinity();
  }
  // Shapes and ranges were checked by the callers, so PolicyFlops cannot fail here.
  absl::StatusOr<double> f = PolicyFlops(dense_, KeptFractionsUnchecked(unit_ratios));
  return f.ok() ? *f : std::numeric_limits<double>::infinity();
}

double PolicySpace::FlopsOfIndices(const Policy& policy) const {
  std::vector<double> r(policy.size());
  for (size_t i = 0; i < policy.size(); ++i) r[i] = ratios_[policy[i]];
  return FlopsUnchecked(r);
}

absl::StatusOr<double> PolicySpace::Flops(const Policy& policy) const {
  ASSIGN_OR_RETURN(std::vector<double> r, UnitRatios(policy));
  return FlopsUnchecked(r);
}

absl::StatusOr<double> PolicySpace::FlopsRatio(const Policy& policy) const {
  ASSIGN_OR_RETURN(double f, Flops(policy));
  return f / dense_flops_;
}

absl::StatusOr<double> PolicySpace::FlopsOfRatios(std::span<const double> unit_ratios) const {
  if (structured_) {
    ASSIGN_OR_RETURN(FlopsModelDims dims, StructuredDims(unit_ratios));
    ASSIGN_OR_RETURN(FlopsBreakdown f, ComputeDenseFlops(dims, structured_->stats));
    return f.Total();
  }
  ASSIGN_OR_RETURN(KeptFractions keep, KeptFractionsOf(unit_ratios));
  return PolicyFlops(dense_, keep);
}

double PolicySpace::SmallestReachableBudget() const {
  double b = std::ceil(MinReachableRatio() * 1e4) / 1e4;
  // ceil(x·1e4)/1e4 can land a hair below x in binary; step up until CheckBudget's test holds.
  while (min_flops_ > b * dense_flops_) b = (std::round(b * 1e4) + 1) / 1e4;
  return b;
}

absl::Status PolicySpace::CheckBudget(double budget) const {
  RETURN_IF_ERROR(CheckBudgetValue(budget));
  if (min_flops_ > budget * dense_flops_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "FLOPs budget %g is unreachable: with every unit at the largest ratio %g the model still "
        "costs %.6f of its dense FLOPs (%s); the smallest reachable budget is %.4f",
        budget, max_ratio(), MinReachableRatio(),
        structured_ ? "STRUCTURED: the vision tower, projector and lm_head are not pruned, and a "
                      "ratio below 1 keeps part of every layer's heads and channels"
                    : "the vision tower, projector, attention and lm_head are not pruned",
        SmallestReachableBudget()));
  }
  return absl::OkStatus();
}

absl::StatusOr<Policy> PolicySpace::RepairToBudget(Policy policy, double budget, Prng& prng) const {
  RETURN_IF_ERROR(Validate(policy));
  RETURN_IF_ERROR(CheckBudget(budget));
  const int top = num_choices() - 1;
  const double limit = budget * dense_flops_;
  const size_t n = policy.size();
  std::vector<double> weights(n);
  double f = FlopsOfIndices(policy);
  while (f > limit) {
    bool any = false;
    for (size_t u = 0; u < n; ++u) {
      weights[u] = policy[u] < top ? units_.dense_flops[u] : 0.0;
      any = any || policy[u] < top;
    }
    // CheckBudget guarantees the all-max policy fits, so some unit is always below the top here.
    if (!any) return absl::InternalError("budget repair: no unit left to raise");
    const size_t u = prng.WeightedIndex(weights);
    ++policy[u];
    f = FlopsOfIndices(policy);
  }
  const double low = (budget - kRepairSlack) * dense_flops_;
  std::vector<bool> fits(n, true);
  while (f < low) {
    bool any = false;
    for (size_t u = 0; u < n; ++u) {
      const bool eligible = policy[u] > 0 && fits[u];
      weights[u] = eligible ? units_.dense_flops[u] : 0.0;
      any = any || eligible;
    }
    if (!any) break;
    const size_t u = prng.WeightedIndex(weights);
    --policy[u];
    const double lowered = FlopsOfIndices(policy);
    if (lowered <= limit) {
      f = lowered;
    } else {
      ++policy[u];
      fits[u] = false;
    }
  }
  return policy;
}

absl::StatusOr<Policy> PolicySpace::UniformPolicyForBudget(double budget) const {
  RETURN_IF_ERROR(CheckBudget(budget));
  const double limit = budget * dense_flops_;
  for (int k = 0; k < num_choices(); ++k) {
    Policy p(units_.size(), k);
    if (FlopsOfIndices(p) <= limit) return p;
  }
  return absl::InternalError("uniform policy: no ratio meets a budget CheckBudget accepted");
}

absl::StatusOr<Policy> PolicySpace::SnapToGrid(std::span<const double> unit_ratios) const {
  if (unit_ratios.size() != units_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("policy has ", unit_ratios.size(),
                                                   " unit ratios, the model has ", units_.size()));
  }
  Policy p(units_.size());
  for (size_t u = 0; u < p.size(); ++u) {
    const double r = unit_ratios[u];
    if (!(r >= 0 && r <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit ", units_.names[u], " has ratio ", r, ", outside [0, 1]"));
    }
    int best = 0;
    for (int k = 1; k < num_choices(); ++k) {
      if (std::abs(ratios_[k] - r) < std::abs(ratios_[best] - r)) best = k;
    }
    p[u] = best;
  }
  return p;
}

absl::StatusOr<Policy> PolicySpace::RandomFeasiblePolicy(double budget, Prng& prng) const {
  RETURN_IF_ERROR(CheckBudget(budget));
  Policy p(units_.size());
  for (int& i : p) i = static_cast<int>(prng.UniformInt(num_choices()));
  return RepairToBudget(std::move(p), budget, prng);
}

absl::StatusOr<double> PolicySpace::UniformContinuousRatio(double budget) const {
  ASSIGN_OR_RETURN(std::vector<double> r,
                   ShiftToBudget(std::vector<double>(units_.size(), 0.0), budget));
  return r[0];
}

absl::StatusOr<std::vector<double>> PolicySpace::ShiftToBudget(std::span<const double> preferences,
                                                               double budget) const {
  if (preferences.size() != units_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("ratio preferences: ", preferences.size(),
                                                   " values for ", units_.size(), " units"));
  }
  for (size_t i = 0; i < preferences.size(); ++i) {
    if (!std::isfinite(preferences[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("ratio preference of unit ", units_.names[i], " is ", preferences[i]));
    }
  }
  RETURN_IF_ERROR(CheckBudget(budget));
  const double rmax = max_ratio();
  std::vector<double> r(preferences.size());
  auto at = [&](double t) {
    for (size_t i = 0; i < r.size(); ++i) r[i] = std::clamp(preferences[i] + t, 0.0, rmax);
    return FlopsUnchecked(r);
  };
  const double limit = budget * dense_flops_;
  const auto [pmin, pmax] = std::minmax_element(preferences.begin(), preferences.end());
  // At lo every ratio clamps to 0, at hi every ratio clamps to rmax (F = min_flops_ ≤ limit).
  double lo = -*pmax;
  double hi = rmax - *pmin;
  // rmax − pmin can round down so that pmin + hi < rmax; step up until every ratio clamps.
  while (*pmin + hi < rmax) hi = std::nextafter(hi, std::numeric_limits<double>::infinity());
  if (at(lo) <= limit) {
    at(lo);
    return r;
  }
  // Invariant: F(lo) > limit ≥ F(hi). F is monotone (a step function of t, not continuous), so
  // this brackets the smallest t that meets the budget; 2000 halvings reach adjacent doubles from
  // any start, and hi — never lo — is returned.
  for (int it = 0; it < 2000; ++it) {
    const double mid = lo + (hi - lo) / 2;
    if (mid <= lo || mid >= hi) break;
    if (at(mid) > limit) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  // Never above the budget: the invariant guarantees it; checked because the caller writes it.
  if (at(hi) > limit) {
    return absl::InternalError(
        absl::StrCat("shift to budget ", budget, ": the bracket's upper end exceeds the budget"));
  }
  return r;
}

}  // namespace prunesvc::search

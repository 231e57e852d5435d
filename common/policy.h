// Pruning policies and their FLOPs (docs/architecture.md §5): the search space of the
// EfficientLLaVA search, the budget pre-flight, budget repair, canonical hashing, and the
// continuous solvers the UNIFORM and OWL strategies use.
//
// A policy π assigns one pruning ratio to each unit; a unit is a decoder layer (its 7 linears
// share the ratio) or a single decoder linear. Discrete policies (the evolutionary and random
// searches) are indices into the sorted ratio choices R; continuous ones (UNIFORM, OWL) are the
// ratio values themselves. F(π) is the per-sample FLOPs of flops.h's PolicyFlops with each linear
// of a unit kept at fraction KeptFraction(ratio, in_features) — the whole weights the UNSTRUCTURED
// masks keep (PrunedPerRow per row), not 1 − ratio — so the search, the budget pre-flight, repair
// and the continuous solvers all score exactly what finalize writes. F is therefore a
// non-increasing STEP function of each ratio, with steps where ratio·in crosses an integer. The
// vision tower and projector are not units (prune_vision is not supported here yet).
//
// STRUCTURED policies (PolicySpace::CreateStructured): units are decoder layers and F(π) is the
// FLOPs of the physically shrunk model (flops.h ShrinkDecoderDims → ComputeDenseFlops), so every
// method below — budget check, repair, the uniform and continuous solvers — is exact for them too.
//
// Budget convention: π meets budget b ∈ (0, 1] iff F(π) ≤ b · F(dense), where F(dense) is the same
// PolicyFlops call with every kept fraction 1, so the all-dense policy meets b = 1 exactly.
//
// Thread-safety: PolicySpace is immutable after Create; its const methods are thread-safe except
// that the Prng passed in is mutated (one Prng per thread).
#ifndef PRUNESVC_COMMON_POLICY_H_
#define PRUNESVC_COMMON_POLICY_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/flops.h"
#include "common/prng.h"

namespace prunesvc::search {

enum class UnitKind { kLayer, kLinear };
// "layer" | "linear" (the --unit flag).
absl::StatusOr<UnitKind> ParseUnitKind(absl::string_view name);
absl::string_view UnitKindName(UnitKind kind);

// What a ratio removes (docs/architecture.md §5 "Granularities"): UNSTRUCTURED (whole weights per
// row), STRUCTURED (MLP channels and KV groups; PolicySpace::CreateStructured), N_M (unit choices
// {dense, N:M}: an ordinary UNSTRUCTURED space over the ratios {0, 1 − N/M},
// common/nm_sparsity.h — so a PolicySpace itself is only ever UNSTRUCTURED or STRUCTURED).
enum class Granularity { kUnstructured, kStructured, kNM };
// "UNSTRUCTURED" | "STRUCTURED" | "N_M" (the --granularity flag; case-sensitive, as in the API).
absl::StatusOr<Granularity> ParseGranularity(absl::string_view name);
absl::string_view GranularityName(Granularity granularity);

// A discrete policy: per unit, an index into the ratio choices.
using Policy = std::vector<int>;

// The lower edge of the band repair aims for: it stops lowering ratios once F ≥ (b −
// slack)·F_dense.
inline constexpr double kRepairSlack = 0.02;

// Fixed-point scale of the canonical encoding: ratio r is encoded as llround(r · 1e6).
inline constexpr double kRatioFixedPointScale = 1e6;

// {0, 0.1, …, 0.8} as decimal literals (so 0.3 is the double nearest 0.3, not 3 × 0.1).
std::vector<double> DefaultRatioChoices();
// R must be non-empty, finite, within [0, 1), strictly increasing, and distinct after fixed-point
// rounding (so different choices never share a hash).
absl::Status ValidateRatioChoices(const std::vector<double>& ratios);
// A comma-separated list, e.g. "0,0.25,0.5"; validated as above.
absl::StatusOr<std::vector<double>> ParseRatioChoices(absl::string_view list);

struct UnitMember {
  int layer = 0;
  DecoderLinear linear = DecoderLinear::kQ;
};

// The prunable units of a model, in canonical order (layer-major; within a layer q, k, v, o,
// gate, up, down).
struct PruningUnits {
  UnitKind kind = UnitKind::kLayer;
  // "layers.3" or "layers.3.self_attn.q_proj" (the HF module path under the language model).
  std::vector<std::string> names;
  std::vector<std::vector<UnitMember>> members;
  // Dense per-sample FLOPs of the unit's linears, and their share of all prunable linears.
  std::vector<double> dense_flops;
  std::vector<double> flops_share;
  // Weight parameters of the unit's linears (LLaMA's linears have no bias).
  std::vector<int64_t> params;

  size_t size() const { return names.size(); }

  // `dense` must be ComputeDenseFlops(dims, …). Every unit must have positive FLOPs: a unit that
  // costs nothing cannot be traded against the budget and would only dilute the search.
  static absl::StatusOr<PruningUnits> Build(const FlopsModelDims& dims, const FlopsBreakdown& dense,
                                            UnitKind kind);
};

// FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
uint64_t Fnv1a64(absl::string_view data);
// Canonical encoding of per-unit ratio values: the unit count as u32 little-endian, then each
// ratio as llround(ratio · 1e6) in i64 little-endian. Indices are not encoded, so the hash of a
// policy does not depend on how R is indexed, and discrete and continuous policies share one
// scheme.
std::string CanonicalPolicyEncoding(std::span<const double> unit_ratios);
// Fnv1a64 of the canonical encoding as 16 lowercase hex digits. Never std::hash / absl::Hash,
// which are salted per process.
std::string PolicyHashOfRatios(std::span<const double> unit_ratios);

class PolicySpace {
 public:
  // Validates the ratio choices and that `units` belongs to `dense`.
  static absl::StatusOr<PolicySpace> Create(FlopsBreakdown dense, PruningUnits units,
                                            std::vector<double> ratio_choices);

  // STRUCTURED: `dims` are the model's (per-layer) shapes, `stats` the samples' token statistics,
  // `heads` each decoder layer's head layout; units are the decoder layers (UnitKind::kLayer;
  // PruningUnits::Build over the dense breakdown). F(π) = ComputeDenseFlops(ShrinkDecoderDims(
  // dims, heads, π), stats).Total(), and F(dense) the same with every ratio 0, i.e. exactly the
  // count of the shrunk model's own FlopsDims().
  static absl::StatusOr<PolicySpace> CreateStructured(FlopsModelDims dims, TokenStats stats,
                                                      std::vector<DecoderLayerHeads> heads,
                                                      std::vector<double> ratio_choices);

  Granularity granularity() const {
    return structured_ ? Granularity::kStructured : Granularity::kUnstructured;
  }
  // STRUCTURED only: the dims of the model shrunk by per-unit (= per-layer) ratios.
  absl::StatusOr<FlopsModelDims> StructuredDims(std::span<const double> unit_ratios) const;

  const FlopsBreakdown& dense() const { return dense_; }
  const PruningUnits& units() const { return units_; }
  int num_units() const { return static_cast<int>(units_.size()); }
  int num_choices() const { return static_cast<int>(ratios_.size()); }
  const std::vector<double>& ratio_choices() const { return ratios_; }
  double max_ratio() const { return ratios_.back(); }
  // F(dense): every kept fraction 1.
  double dense_flops() const { return dense_flops_; }

  // One index per unit, each within [0, num_choices()).
  absl::Status Validate(const Policy& policy) const;
  // Per-unit ratio values of a valid policy.
  absl::StatusOr<std::vector<double>> UnitRatios(const Policy& policy) const;
  absl::StatusOr<std::string> Hash(const Policy& policy) const;

  // F(π) per sample, and F(π)/F(dense).
  absl::StatusOr<double> Flops(const Policy& policy) const;
  absl::StatusOr<double> FlopsRatio(const Policy& policy) const;
  // The same for continuous per-unit ratios (each within [0, 1]).
  absl::StatusOr<double> FlopsOfRatios(std::span<const double> unit_ratios) const;
  // Kept fractions for flops.h / the worker's counter: each linear of unit u keeps
  // KeptFraction(ratio[u], its in_features). UNSTRUCTURED only (FailedPrecondition for
  // STRUCTURED, whose attention term shrinks too: use StructuredDims).
  absl::StatusOr<KeptFractions> KeptFractionsOf(std::span<const double> unit_ratios) const;

  // F(every unit at the largest ratio) / F(dense): the smallest reachable FLOPs ratio, exact.
  double MinReachableRatio() const { return min_flops_ / dense_flops_; }
  // The one rounding rule for showing it to users: MinReachableRatio rounded UP at 4 decimals,
  // so that the printed value, passed back as a budget, is accepted by CheckBudget.
  double SmallestReachableBudget() const;
  // INVALID_ARGUMENT unless b is finite and in (0, 1]; FAILED_PRECONDITION when even the largest
  // ratio everywhere exceeds b (the message names the smallest reachable ratio).
  absl::Status CheckBudget(double budget) const;

  // Budget repair, exactly docs/architecture.md §5:
  //  1. while F > b·F_dense: raise one unit by one step, chosen at random FLOPs-weighted among the
  //     units below the largest ratio;
  //  2. then while F < (b − kRepairSlack)·F_dense: pick a unit at random FLOPs-weighted among the
  //     units above the smallest ratio that have not been found not to fit, lower it one step, and
  //     keep the step if F ≤ b·F_dense — otherwise undo it and mark the unit as not fitting (F only
  //     grows from then on, so it never fits later); stop when no unit is left.
  // "At random FLOPs-weighted" means one Prng::WeightedIndex draw over all units in canonical
  // order, with weight = the unit's dense FLOPs (PruningUnits::dense_flops, not its current kept
  // FLOPs) for eligible units and 0 for the others: a unit's chance is proportional to the FLOPs
  // one step of it moves. Each pick draws exactly once.
  // Result: F ≤ b·F_dense always. It is ≥ (b − kRepairSlack)·F_dense unless every unit is at the
  // smallest ratio or no single step fits (impossible when R contains 0 and every unit step —
  // the FLOPs of the whole weights per row it prunes, Σ linear FLOPs · Δk/in, which can exceed
  // Δratio · unit FLOPs by up to one weight per row — is ≤ kRepairSlack·F_dense). A policy already
  // in the band is returned unchanged without drawing.
  absl::StatusOr<Policy> RepairToBudget(Policy policy, double budget, Prng& prng) const;

  // The discrete uniform policy meeting the budget: every unit at the smallest common index k
  // with F ≤ b·F_dense. Not repaired (it is the baseline the search must beat).
  absl::StatusOr<Policy> UniformPolicyForBudget(double budget) const;

  // Each unit at the ratio choice nearest its continuous ratio (ties to the smaller choice), e.g.
  // UNIFORM's or OWL's solution as a search seed. Not repaired. Ratios must be finite, in [0, 1],
  // one per unit.
  absl::StatusOr<Policy> SnapToGrid(std::span<const double> unit_ratios) const;

  // Each unit an independent UniformInt(num_choices()) draw, in unit order; then repaired.
  absl::StatusOr<Policy> RandomFeasiblePolicy(double budget, Prng& prng) const;

  // UNIFORM strategy: the smallest common continuous ratio r ∈ [0, max_ratio()] with
  // F(r, …, r) ≤ b·F_dense (never above). F is a step function of r, so there is no closed form
  // and F(r) is in general below b·F_dense by less than the step at r; r lies on a step (to
  // adjacent doubles: F at the next smaller double exceeds the budget) unless r = 0. b = 1 gives 0.
  // Found by ShiftToBudget's bisection with every preference 0.
  absl::StatusOr<double> UniformContinuousRatio(double budget) const;

  // OWL (and UNIFORM): per-unit ratios r_u(t) = clamp(preference_u + t, 0, max_ratio()) with the
  // smallest shift t that meets the budget, F(t) ≤ b·F_dense (never above). F(t) is a
  // non-increasing step function (whole pruned weights), so t is found by bisection down to
  // adjacent doubles, keeping the side that meets the budget: F at the next smaller t exceeds
  // it, and F(t) is below b·F_dense by less than the step at t. When the dense model already
  // meets it, the least-pruned solution (all clamped at 0) is returned. An additive shift keeps
  // OWL's deviations between units intact wherever no clamp binds.
  absl::StatusOr<std::vector<double>> ShiftToBudget(std::span<const double> preferences,
                                                    double budget) const;

 private:
  PolicySpace(FlopsBreakdown dense, PruningUnits units, std::vector<double> ratios);
  // dense_flops_ and min_flops_ from FlopsUnchecked (after structured_ is set).
  void ComputeEnds();
  // The one mapping from unit ratios to kept fractions (KeptFraction per member linear, 1 for
  // linears in no unit); callers validated shapes and ranges.
  KeptFractions KeptFractionsUnchecked(std::span<const double> unit_ratios) const;
  // Unchecked F of per-unit ratios (callers validated shapes and ranges).
  double FlopsUnchecked(std::span<const double> unit_ratios) const;
  double FlopsOfIndices(const Policy& policy) const;

  // STRUCTURED's FLOPs model (absent for UNSTRUCTURED).
  struct StructuredModel {
    FlopsModelDims dims;
    TokenStats stats;
    std::vector<DecoderLayerHeads> heads;
  };

  FlopsBreakdown dense_;
  PruningUnits units_;
  std::optional<StructuredModel> structured_;
  std::vector<double> ratios_;
  double dense_flops_ = 0;
  double min_flops_ = 0;
};

}  // namespace prunesvc::search

#endif  // PRUNESVC_COMMON_POLICY_H_

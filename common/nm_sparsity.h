// N:M semi-structured sparsity (docs/architecture.md §5 "Granularities"): in every output row of a
// pruned linear, each group of M consecutive input columns (columns [g·M, (g+1)·M)) keeps exactly N
// weights. Supported patterns: 2:4 and 4:8 (what sparse tensor cores run); anything else is an
// error naming the --nm flag.
//
// How N:M lives in the ratio machinery (common/policy.h), so the search, repair, the random and
// uniform policies and the FLOPs model need no second code path:
//  - A unit's choices are {dense, N:M}: the policy space is built with the two ratio choices
//    {0, NmPrunedRatio(p)} = {0, 1 − N/M} (0.5 for both 2:4 and 4:8). Index 0 = dense, index 1 =
//    every linear of the unit N:M.
//  - FLOPs count kept multiply-adds. An N:M linear keeps exactly N/M of its weights; the FLOPs
//    model's KeptFraction(1 − N/M, in) = (in − PrunedPerRow(1 − N/M, in))/in equals N/M exactly
//    when M divides in (1 − N/M is a dyadic rational for M ∈ {4, 8}, so (1 − N/M)·in is computed
//    exactly). CheckNmDivisible rejects a model where some decoder linear's in is not a multiple
//    of M, naming the linear.
//  - The smallest reachable budget of N:M alone is F(every unit N:M)/F(dense) (the policy space's
//    MinReachableRatio): N:M cannot prune more than 1 − N/M of any linear.
//
// Torch-free; pure functions, thread-safe.
#ifndef PRUNESVC_COMMON_NM_SPARSITY_H_
#define PRUNESVC_COMMON_NM_SPARSITY_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/flops.h"

namespace prunesvc {

struct NmPattern {
  int n = 2;  // kept weights per group
  int m = 4;  // group size (consecutive input columns)

  bool operator==(const NmPattern& o) const { return n == o.n && m == o.m; }
};

// "2:4" | "4:8" → pattern; anything else InvalidArgument naming --nm.
absl::StatusOr<NmPattern> ParseNmPattern(absl::string_view text);
// "2:4".
std::string NmPatternName(const NmPattern& p);
// The pruned fraction 1 − N/M: the ratio that stands for "N:M" in the policy space.
double NmPrunedRatio(const NmPattern& p);
// The unit choices {dense, N:M} as ratio choices: {0, NmPrunedRatio(p)}.
std::vector<double> NmRatioChoices(const NmPattern& p);
// Every decoder linear's in_features (dense.decoder_linear_in) must be a multiple of M; the
// error (InvalidArgument) names the first linear that is not, as
// "layers.3.mlp.down_proj (in_features 100)".
absl::Status CheckNmDivisible(const FlopsBreakdown& dense, const NmPattern& p);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_NM_SPARSITY_H_

// The audit of a finished search (prune-local --audit N; docs/RESULTS.md's ablations): up to N of
// the distinct policies the search evaluated (evenly spaced in evaluation order, plus the chosen
// one) are re-scored under the final projector on the search set and scored on the held-out set,
// and report.json gets `audit` with the Spearman ρ of −fitness and −search loss against held-out
// accuracy: does the fitness rank policies the way held-out data does?
//
// It evaluates through the PreparedJob (moving its weights) but does not change what the job
// writes: the artifact is cut from the chosen policy's ratios afterwards.
#ifndef PRUNESVC_WORKER_PRUNE_AUDIT_H_
#define PRUNESVC_WORKER_PRUNE_AUDIT_H_

#include <vector>

#include "absl/status/statusor.h"
#include "common/policy.h"
#include "nlohmann/json.hpp"
#include "worker/prune/progress.h"
#include "worker/prune/steps.h"

namespace prunesvc::prune {

// `distinct`: every distinct policy evaluated, in first-evaluation order; `best` the chosen one;
// `version` the final projector version; `eta` the fitness weight in use.
absl::StatusOr<nlohmann::json> RunAudit(PreparedJob& job,
                                        const std::vector<search::Policy>& distinct,
                                        const search::Policy& best, int version, double eta,
                                        int max_policies, StepContext& ctx);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_AUDIT_H_

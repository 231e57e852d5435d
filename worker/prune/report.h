// report.json and README.md (the model card) of a pruning artifact, and the end-of-job summary
// table prune-local prints (docs/architecture.md §5 "Report", "Artifact"). Pure functions of what
// the steps measured; provenance helpers read /proc/cpuinfo and compile-time library versions.
#ifndef PRUNESVC_WORKER_PRUNE_REPORT_H_
#define PRUNESVC_WORKER_PRUNE_REPORT_H_

#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/policy.h"
#include "nlohmann/json.hpp"
#include "worker/prune/structured.h"

namespace prunesvc::prune {

// "2026-12-04T17:00:00Z".
std::string UtcNow();
// {model, flags, cores} of this machine.
nlohmann::json CpuInfo();
// libtorch, compiler, and (when built with them) gRPC and protobuf versions.
nlohmann::json LibraryVersions();

// report.json's "nm": the pattern under N_M, else null.
nlohmann::json NmJson(const JobSpec& spec);

// policy.json of a STRUCTURED artifact: per layer, the channels and KV groups kept.
nlohmann::json StructuredPolicyJson(const JobSpec& spec, const search::PolicySpace& space,
                                    const std::vector<double>& unit_ratios,
                                    const std::vector<StructuredLayerPlan>& splan,
                                    const std::string& policy_hash, double nominal_flops);

// The warning a pruned result deserves, if any: accuracy within 10 points of `chance` (the mean
// of 1 / options over the set's multiple-choice samples), or more than 10 points below dense.
// `set` names the accuracy set ("eval" | "search").
std::optional<std::string> AccuracyWarning(double pruned, std::optional<double> dense,
                                           std::optional<double> chance, const std::string& set);

// README.md: what was pruned, dense vs pruned, what the pruning saves, the policy, and every
// warning of report.json.
std::string ModelCard(const JobSpec& spec, const std::string& model_dir,
                      const nlohmann::json& report, const nlohmann::json& policy);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_REPORT_H_

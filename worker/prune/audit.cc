#include "worker/prune/audit.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "common/rank_stats.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace prunesvc::prune {
namespace {

using nlohmann::json;

json OptionalJson(std::optional<double> v) { return v ? json(*v) : json(nullptr); }

}  // namespace

absl::StatusOr<json> RunAudit(PreparedJob& job, const std::vector<search::Policy>& distinct,
                              const search::Policy& best, int version, double eta, int max_policies,
                              StepContext& ctx) {
  std::vector<search::Policy> audit;
  for (size_t i : EvenlySpacedIndices(distinct.size(), size_t(max_policies))) {
    audit.push_back(distinct[i]);
  }
  if (std::find(audit.begin(), audit.end(), best) == audit.end()) audit.push_back(best);
  const search::PolicySpace& space = job.space();
  const int n = job.summary().num_samples;
  json rows = json::array();
  std::vector<double> neg_fitness, neg_loss, held_acc;
  spdlog::info("audit: {} policies on the search and eval sets", audit.size());
  for (size_t i = 0; i < audit.size(); ++i) {
    RETURN_IF_ERROR(ctx.CheckStop());
    // Not counted as search evaluations (report.json search.evaluations).
    ASSIGN_OR_RETURN(std::vector<search::EvalResult> r,
                     job.local_evaluator().Evaluate({audit[i]}, version));
    // The evaluator leaves the policy's weights in the model: score the eval set with them.
    ASSIGN_OR_RETURN(ModelMetrics held, job.ScoreEvalSet());
    const double fitness = r[0].loss + eta * r[0].omega / std::sqrt(double(n));
    ASSIGN_OR_RETURN(std::string hash, space.Hash(audit[i]));
    ASSIGN_OR_RETURN(double fr, space.FlopsRatio(audit[i]));
    ASSIGN_OR_RETURN(std::vector<double> ratios, space.UnitRatios(audit[i]));
    rows.push_back({{"hash", hash},
                    {"chosen", audit[i] == best},
                    {"unit_ratios", ratios},
                    {"flops_ratio", fr},
                    {"search_loss", r[0].loss},
                    {"search_accuracy", r[0].accuracy},
                    {"omega", r[0].omega},
                    {"fitness", fitness},
                    {"heldout_loss", held.loss},
                    {"heldout_accuracy", OptionalJson(held.accuracy)}});
    neg_fitness.push_back(-fitness);
    neg_loss.push_back(-r[0].loss);
    held_acc.push_back(held.accuracy.value_or(0));
    if ((i + 1) % 8 == 0 || i + 1 == audit.size()) {
      spdlog::info("audit: {}/{} policies", i + 1, audit.size());
    }
  }
  return json{{"projector_version", version},
              {"eta", eta},
              {"num_samples", n},
              {"num_eval_samples", job.eval_set().samples.size()},
              {"distinct_policies_evaluated", distinct.size()},
              {"policies", std::move(rows)},
              {"spearman_neg_fitness_vs_heldout_accuracy",
               OptionalJson(SpearmanRho(neg_fitness, held_acc))},
              {"spearman_neg_search_loss_vs_heldout_accuracy",
               OptionalJson(SpearmanRho(neg_loss, held_acc))}};
}

}  // namespace prunesvc::prune

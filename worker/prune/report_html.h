// report.html: the artifact's report as a page people look at (issue 18). Self-contained: inline
// CSS and SVG, no script, nothing fetched. Sections, each drawn only when report.json has its
// data: the dense vs pruned table; the best fitness and best accuracy per generation; the kept
// ratio per unit; accuracy vs FLOPs of every distinct evaluated policy with their Pareto front,
// the budget, the chosen policy and UNIFORM's point (`uniform_point`); the provenance.
// Charts carry ids (chart-generations, chart-policy, chart-pareto) for tests.
//
// Pure function of report.json; thread-safe; deterministic (same report, same bytes).
#ifndef PRUNESVC_WORKER_PRUNE_REPORT_HTML_H_
#define PRUNESVC_WORKER_PRUNE_REPORT_HTML_H_

#include <string>

#include "nlohmann/json.hpp"

namespace prunesvc::prune {

std::string ReportHtml(const nlohmann::json& report);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_REPORT_HTML_H_

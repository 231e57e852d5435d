#include "worker/prune/preflight.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "worker/model/torch_guard.h"
#include "worker/prune/artifact.h"
#include "worker/prune/job.h"
#include "worker/prune/measure.h"

namespace prunesvc::prune {
namespace {

// Rough peak memory: the search (weights, dense copies, mask bank, features, activations) or
// finalize (weights, masks, the checkpoint being written), whichever is larger.
int64_t EstimatePeakBytes(const LocalJobSpec& spec, const PreparedJob& job,
                          const PreflightReport& r) {
  const model::LlavaModel& m = *job.bundle().model;
  int64_t decoder_weights = 0, max_linear = 0;
  for (const auto& layer : const_cast<model::LlavaModel&>(m).decoder_layers()) {
    for (const model::Linear* lin :
         {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down}) {
      decoder_weights += lin->weight.numel();
      max_linear = std::max<int64_t>(max_linear, lin->weight.numel());
    }
  }
  const model::LlavaConfig& c = m.config();
  const double n = r.num_search_samples;
  const double mean_t = job.summary().token_stats.mean_tokens;
  const int64_t bank_bytes_per = decoder_weights > 0 ? 2 : 0;
  const double activations = 4.0 * spec.batch_size *
                             (mean_t * (4.0 * c.text.hidden_size + 3.0 * c.text.intermediate_size) +
                              c.text.num_attention_heads * mean_t * mean_t);
  const double features =
      4.0 * n * c.image_seq_length * (c.vision.hidden_size + c.text.hidden_size);
  // Decoder activations kept across generations (evaluator.h): the budget, or one layer input
  // per layer boundary, batch and planned evaluation if that is less.
  const double one_input = 4.0 * spec.batch_size * mean_t * c.text.hidden_size;
  const double kept = std::min(double(spec.activation_cache_mb) * double(1 << 20),
                               one_input * std::max(0, c.text.num_hidden_layers - 1) *
                                   std::ceil(n / spec.batch_size) *
                                   double(std::max<int64_t>(1, r.planned_evaluations)));
  const double search_peak = 4.0 * r.parameters + 4.0 * decoder_weights +
                             double(bank_bytes_per) * decoder_weights + 8.0 * max_linear +
                             features + activations + kept;
  const double finalize_peak = 4.0 * r.parameters + 1.0 * decoder_weights +
                               double(model::DTypeSize(job.bundle().source_dtype)) * r.parameters;
  return int64_t(std::max(search_peak, finalize_peak));
}

double EstimateSeconds(const LocalJobSpec& spec, const PreflightReport& r) {
  const double n = r.num_search_samples, t = r.forward_seconds_per_sample;
  int trainings = 0;
  if (spec.strategy == search::Strategy::kEfficientLlava && spec.projector_every > 0) {
    trainings = spec.generations / spec.projector_every;
  }
  const int64_t rescored = int64_t(trainings) * spec.population;
  double seconds = 2 * n * t + r.num_eval_samples * t * 2;  // baselines + reload check
  seconds += (1 + trainings) * 2 * n * t;                   // calibration + bank per version
  seconds += double(r.planned_evaluations + rescored) * n * t;
  seconds += double(trainings) * spec.projector_steps * 3 * n * t;
  seconds += 2.0 * (1 + spec.latency_repeats) * std::min(spec.latency_batch, int(n)) * t + n * t;
  return seconds;
}

absl::StatusOr<PreflightReport> RunPreflightImpl(const LocalJobSpec& spec_in) {
  LocalJobSpec spec = spec_in;
  spec.out_dir = NormalizeOutDir(spec.out_dir);
  RETURN_IF_ERROR(spec.Validate(/*dry_run=*/true));
  if (!spec.out_dir.empty()) RETURN_IF_ERROR(CheckOutDir(spec.out_dir, spec.force));
  StepContext ctx;
  ASSIGN_OR_RETURN(auto job, PreparedJob::LoadOnly(spec.ToPrepareOptions(), ctx));
  const search::PolicySpace& space = job->space();
  const model::LlavaModel& m = *job->bundle().model;
  PreflightReport r;
  r.min_reachable_ratio = space.MinReachableRatio();
  r.smallest_reachable_budget = space.SmallestReachableBudget();
  r.dense_flops_per_sample = space.dense_flops();
  r.prunable_fraction = job->dense_flops().DecoderLinearTotal() / job->dense_flops().Total();
  r.unit_names = space.units().names;
  r.unit_flops_share = space.units().flops_share;
  r.num_search_samples = job->summary().num_samples;
  r.num_eval_samples = job->summary().num_eval_samples;
  if (absl::Status s = CheckBudget(spec, space); !s.ok()) {
    r.budget_error = std::string(s.message());
  } else {
    r.budget_reachable = true;
  }
  for (const auto& [name, t] : m.NamedTensors()) r.parameters += t.numel();
  r.checkpoint_parameters = job->bundle().checkpoint_parameters;
  // One timed dense forward of a batch (after a warm-up).
  const int b = std::max(1, std::min(spec.batch_size, r.num_search_samples));
  std::vector<model::PreparedSample> batch(job->loaded_samples().begin(),
                                           job->loaded_samples().begin() + b);
  // The median of 3 timed batches: one batch right after loading varied by 2x and more.
  ASSIGN_OR_RETURN(double ms, MedianLatencyMs(m, batch, 3));
  r.forward_seconds_per_sample = ms / 1e3 / b;
  r.planned_evaluations =
      spec.searching() ? search::NominalEvaluations(spec.ToSearchConfig(r.num_search_samples)) : 0;
  r.estimated_seconds = EstimateSeconds(spec, r);
  r.estimated_peak_bytes = EstimatePeakBytes(spec, *job, r);
  if (!job->has_eval()) {
    r.warnings.push_back(
        "no --eval-samples: accuracy will be measured on the search samples and overstate "
        "held-out accuracy");
  }
  return r;
}

}  // namespace

absl::StatusOr<PreflightReport> RunPreflight(const LocalJobSpec& spec) {
  return model::TorchGuarded("pre-flight", [&] { return RunPreflightImpl(spec); });
}

std::string PreflightText(const LocalJobSpec& spec, const PreflightReport& r) {
  std::string out;
  absl::StrAppend(&out, "prune-local dry run (nothing written)\n");
  absl::StrAppend(&out, absl::StrFormat("  model              %s (%d parameters; %d of them run: "
                                        "vision layers past the feature layer never do)\n",
                                        spec.model_dir, r.checkpoint_parameters, r.parameters));
  absl::StrAppend(&out, absl::StrFormat("  search samples     %d\n", r.num_search_samples));
  absl::StrAppend(&out, absl::StrFormat("  eval samples       %d%s\n", r.num_eval_samples,
                                        r.num_eval_samples == 0 ? " (none)" : ""));
  absl::StrAppend(&out, absl::StrFormat("  dense FLOPs/sample %.6g (%.4f GFLOPs)\n",
                                        r.dense_flops_per_sample, r.dense_flops_per_sample / 1e9));
  absl::StrAppend(&out,
                  absl::StrFormat("  reachable budget   [%.4f, 1]  (prunable decoder linears: "
                                  "%.1f%% of dense FLOPs; largest ratio %.2f)\n",
                                  r.smallest_reachable_budget, 100 * r.prunable_fraction,
                                  spec.EffectiveRatioChoices().back()));
  if (spec.granularity == search::Granularity::kNM) {
    absl::StrAppend(&out, absl::StrFormat("  granularity        N_M %s: unit choices {dense, %s}; "
                                          "every unit %s is the floor %.6f\n",
                                          NmPatternName(spec.nm), NmPatternName(spec.nm),
                                          NmPatternName(spec.nm), r.min_reachable_ratio));
  }
  absl::StrAppend(&out, absl::StrFormat("  budget             %.4g: %s\n", spec.flops_budget,
                                        r.budget_reachable ? "reachable" : "UNREACHABLE"));
  absl::StrAppend(&out, absl::StrFormat("  strategy           %s, %s, unit %s, %d units\n",
                                        search::StrategyName(spec.strategy),
                                        search::GranularityName(spec.granularity),
                                        search::UnitKindName(spec.unit), r.unit_names.size()));
  for (size_t u = 0; u < r.unit_names.size(); ++u) {
    absl::StrAppend(&out, absl::StrFormat("    %-40s %.4f of prunable FLOPs\n", r.unit_names[u],
                                          r.unit_flops_share[u]));
  }
  absl::StrAppend(
      &out, absl::StrFormat("  evaluations        %d planned (nominal)\n", r.planned_evaluations));
  absl::StrAppend(&out, absl::StrFormat("  forward            %.4f s/sample (median of 3 timed "
                                        "batches)\n",
                                        r.forward_seconds_per_sample));
  // An evaluation is one masked forward over the search set whatever the unit, so --unit
  // changes the estimate only through the measured forward time.
  absl::StrAppend(&out, absl::StrFormat("  estimated time     %.0f s (rough: evaluations x search "
                                        "samples x forward, plus calibration, checks and "
                                        "latency; the same for --unit layer and linear)\n",
                                        r.estimated_seconds));
  absl::StrAppend(&out, absl::StrFormat("  estimated memory   %.1f MiB peak (rough)\n",
                                        double(r.estimated_peak_bytes) / (1 << 20)));
  for (const std::string& w : r.warnings) absl::StrAppend(&out, "  warning: ", w, "\n");
  return out;
}

}  // namespace prunesvc::prune

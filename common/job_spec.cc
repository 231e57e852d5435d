#include "common/job_spec.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"

namespace prunesvc {
namespace {

absl::Status Invalid(absl::string_view field, FieldNaming naming, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(FieldName(field, naming), " ", what));
}

absl::Status IntInRange(absl::string_view field, FieldNaming naming, int64_t v, int64_t lo,
                        int64_t hi) {
  if (v >= lo && v <= hi) return absl::OkStatus();
  return Invalid(field, naming, absl::StrCat("must be in [", lo, ", ", hi, "], got ", v));
}

absl::Status FiniteNonNegative(absl::string_view field, FieldNaming naming, double v) {
  if (std::isfinite(v) && v >= 0) return absl::OkStatus();
  return Invalid(field, naming, absl::StrCat("must be finite and ≥ 0, got ", v));
}

absl::Status NotSupportedYet(absl::string_view field, FieldNaming naming, absl::string_view what) {
  return Invalid(field, naming, absl::StrCat(what, " is not supported yet"));
}

absl::Status ValidateCombinations(const JobSpec& s, FieldNaming naming) {
  if (s.strategy == search::Strategy::kOwl && s.unit != search::UnitKind::kLayer) {
    return Invalid("unit", naming,
                   "must be LAYER with strategy OWL: OWL's outlier ratios and ratios are per "
                   "decoder layer (Yin et al. 2023)");
  }
  if (s.granularity == search::Granularity::kStructured && s.unit != search::UnitKind::kLayer) {
    return Invalid("unit", naming,
                   "must be LAYER with granularity STRUCTURED (a layer's heads and channels share "
                   "its ratio)");
  }
  if (s.granularity == search::Granularity::kStructured && s.final_mask_method.has_value()) {
    return Invalid("final_mask_method", naming,
                   "does not apply to granularity STRUCTURED: whole channels and heads are removed "
                   "by the search's orders (mask_method); leave it unset");
  }
  if (s.granularity != search::Granularity::kStructured && !s.final_mask_method.has_value()) {
    return Invalid("final_mask_method", naming, "is required unless granularity is STRUCTURED");
  }
  if (s.granularity == search::Granularity::kNM) {
    if (!ParseNmPattern(NmPatternName(s.nm)).ok()) {
      return Invalid("nm_pattern", naming,
                     absl::StrCat("must be 2:4 or 4:8, got ", NmPatternName(s.nm)));
    }
    if (s.ratio_choices != search::DefaultRatioChoices()) {
      return Invalid("ratio_choices", naming,
                     "does not apply to granularity N_M: its unit choices are {dense, N:M}");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateNotYetSupported(const JobSpec& s, FieldNaming naming) {
  if (s.prune_vision) return NotSupportedYet("prune_vision", naming, "pruning the vision tower");
  if (s.rerank_top_k != 0) {
    return NotSupportedYet("rerank_top_k", naming, "re-ranking the top candidates");
  }
  if (s.mask_method == MaskMethod::kSparseGpt) {
    return NotSupportedYet("mask_method", naming,
                           "a SPARSEGPT search mask (its masks are not nested; use it as "
                           "final_mask_method)");
  }
  return absl::OkStatus();
}

absl::Status ValidateSearch(const JobSpec& s, FieldNaming naming) {
  RETURN_IF_ERROR(IntInRange("population", naming, s.population, kMinPopulation, kMaxPopulation));
  RETURN_IF_ERROR(IntInRange("generations", naming, s.generations, 1, kMaxGenerations));
  if (s.parents < 2 || s.parents >= s.population) {
    return Invalid(
        "parents", naming,
        absl::StrCat("must be in [2, population) = [2, ", s.population, "), got ", s.parents));
  }
  if (!(s.mutation >= 0 && s.mutation <= 1)) {
    return Invalid("mutation", naming, absl::StrCat("must be in [0, 1], got ", s.mutation));
  }
  if (s.eta.has_value()) {
    RETURN_IF_ERROR(FiniteNonNegative("eta", naming, *s.eta));
  }
  RETURN_IF_ERROR(IntInRange("projector_every", naming, s.projector_every, 0, kMaxProjectorEvery));
  RETURN_IF_ERROR(IntInRange("projector_steps", naming, s.projector_steps, 0, kMaxProjectorSteps));
  RETURN_IF_ERROR(FiniteNonNegative("projector_lr", naming, s.projector_lr));
  return FiniteNonNegative("projector_decay", naming, s.projector_decay);
}

// The issue-14 search options: ranges, then the strategies (and unit) they apply to.
absl::Status ValidateSearchOptions(const JobSpec& s, FieldNaming naming) {
  if (!(s.mutation_step >= 0 && s.mutation_step <= 1)) {
    return Invalid("mutation_step", naming,
                   absl::StrCat("must be in [0, 1], got ", s.mutation_step));
  }
  RETURN_IF_ERROR(
      IntInRange("slack_evaluations", naming, s.slack_evaluations, 0, kMaxSlackEvaluations));
  if (s.eta_rule == search::EtaRule::kCrossValidated && s.eta.has_value()) {
    return Invalid("eta_rule", naming, "CV chooses eta itself; leave eta unset (auto)");
  }
  const bool searching = s.searching();
  const std::pair<const char*, bool> searching_only[] = {
      {"estimator", s.estimator != Estimator::kNorm},
      {"eta_rule", s.eta_rule != search::EtaRule::kAuto},
      {"slack_evaluations", s.slack_evaluations != 0},
      {"uniform_guard", s.uniform_guard}};
  for (const auto& [field, set] : searching_only) {
    if (set && !searching) {
      return Invalid(field, naming,
                     absl::StrCat("applies to a searching strategy (EFFICIENTLLAVA or "
                                  "RANDOM_SEARCH), not ",
                                  search::StrategyName(s.strategy)));
    }
  }
  const std::pair<const char*, bool> evolution_only[] = {
      {"seed_with_uniform", s.seed_with_uniform},
      {"seed_with_owl", s.seed_with_owl},
      {"repair_uniform_seed", s.repair_uniform_seed},
      {"mutation_step", s.mutation_step != 0},
      {"uniform_ratio_choice", s.uniform_ratio_choice},
      {"warm_start_job_id", !s.warm_start_job_id.empty()}};
  for (const auto& [field, set] : evolution_only) {
    if (set && s.strategy != search::Strategy::kEfficientLlava) {
      return Invalid(field, naming,
                     absl::StrCat("applies to strategy EFFICIENTLLAVA only (it shapes the "
                                  "evolutionary population), not ",
                                  search::StrategyName(s.strategy)));
    }
  }
  if (s.warm_start_job_id.size() > 128) {
    return Invalid("warm_start_job_id", naming,
                   absl::StrCat("is ", s.warm_start_job_id.size(),
                                " characters long: not a job id (SubmitJob returned it)"));
  }
  if (s.seed_with_owl && s.unit != search::UnitKind::kLayer) {
    return Invalid("seed_with_owl", naming,
                   "needs unit LAYER: OWL's outlier ratios and ratios are per decoder layer");
  }
  return absl::OkStatus();
}

absl::Status ValidateScheduling(const JobSpec& s, FieldNaming naming) {
  RETURN_IF_ERROR(IntInRange("priority", naming, s.priority, -kMaxPriority, kMaxPriority));
  if (s.labels.size() > size_t(kMaxLabels)) {
    return Invalid("labels", naming,
                   absl::StrCat("has ", s.labels.size(), " entries; at most ", kMaxLabels));
  }
  for (const auto& [key, value] : s.labels) {
    if (key.empty() || key.size() > 63 || value.size() > 256) {
      return Invalid("labels", naming,
                     absl::StrCat("key \"", key.substr(0, 80),
                                  "\": keys are 1–63 bytes and values at most 256 bytes"));
    }
  }
  if (s.request_id.size() > kMaxRequestIdBytes) {
    return Invalid(
        "request_id", naming,
        absl::StrCat("is ", s.request_id.size(), " bytes; at most ", kMaxRequestIdBytes));
  }
  if (s.rerank_top_k < 0) {
    return Invalid("rerank_top_k", naming, absl::StrCat("must be ≥ 0, got ", s.rerank_top_k));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MaskMethod> ParseMaskMethod(absl::string_view given) {
  const std::string name = absl::AsciiStrToUpper(given);  // case-insensitive
  if (name == "MAGNITUDE") return MaskMethod::kMagnitude;
  if (name == "WANDA") return MaskMethod::kWanda;
  if (name == "SPARSEGPT") return MaskMethod::kSparseGpt;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown mask method \"", given, "\" (MAGNITUDE, WANDA or SPARSEGPT)"));
}

std::string_view MaskMethodName(MaskMethod method) {
  switch (method) {
    case MaskMethod::kMagnitude:
      return "MAGNITUDE";
    case MaskMethod::kWanda:
      return "WANDA";
    case MaskMethod::kSparseGpt:
      return "SPARSEGPT";
  }
  return "UNKNOWN";
}

std::string FieldName(absl::string_view proto_name, FieldNaming naming) {
  if (naming == FieldNaming::kProto) return std::string(proto_name);
  if (proto_name == "nm_pattern") return "--nm";
  if (proto_name == "eta_auto") return "--eta";
  return absl::StrCat("--", absl::StrReplaceAll(proto_name, {{"_", "-"}}));
}

absl::Status JobSpec::Validate(FieldNaming naming) const {
  if (!(std::isfinite(flops_budget) && flops_budget > 0 && flops_budget <= 1)) {
    return Invalid("flops_budget", naming, absl::StrCat("must be in (0, 1], got ", flops_budget));
  }
  if (absl::Status s = search::ValidateRatioChoices(ratio_choices); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(FieldName("ratio_choices", naming), ": ", s.message()));
  }
  RETURN_IF_ERROR(ValidateCombinations(*this, naming));
  RETURN_IF_ERROR(ValidateNotYetSupported(*this, naming));
  RETURN_IF_ERROR(ValidateSearch(*this, naming));
  RETURN_IF_ERROR(ValidateSearchOptions(*this, naming));
  return ValidateScheduling(*this, naming);
}

bool JobSpec::searching() const {
  return strategy == search::Strategy::kEfficientLlava ||
         strategy == search::Strategy::kRandomSearch;
}

std::vector<double> JobSpec::EffectiveRatioChoices() const {
  return granularity == search::Granularity::kNM ? NmRatioChoices(nm) : ratio_choices;
}

MaskMethod JobSpec::EffectiveFinalMaskMethod() const {
  return final_mask_method.value_or(mask_method);
}

search::SearchConfig JobSpec::ToSearchConfig(int num_samples) const {
  search::SearchConfig c;
  c.strategy = strategy;
  c.budget = flops_budget;
  c.population = population;
  c.generations = generations;
  c.parents = parents;
  c.mutation = mutation;
  c.eta = eta;
  c.projector_every = projector_every;
  c.num_samples = num_samples;
  c.seed = seed;
  c.estimator = estimator;
  c.eta_rule = eta_rule;
  c.repair_uniform_seed = repair_uniform_seed;
  c.mutation_step = mutation_step;
  c.slack_evaluations = slack_evaluations;
  c.race = race;
  return c;
}

absl::StatusOr<search::PolicySpace> BuildPolicySpace(const JobSpec& spec,
                                                     const FlopsModelDims& dims,
                                                     const TokenStats& stats,
                                                     const std::vector<DecoderLayerHeads>& heads) {
  auto build = [&](const std::vector<double>& choices) -> absl::StatusOr<search::PolicySpace> {
    if (spec.granularity == search::Granularity::kStructured) {
      // F(π) = the FLOPs of the shrunk shapes (common/policy.h CreateStructured).
      return search::PolicySpace::CreateStructured(dims, stats, heads, choices);
    }
    ASSIGN_OR_RETURN(FlopsBreakdown dense, ComputeDenseFlops(dims, stats));
    if (spec.granularity == search::Granularity::kNM) {
      RETURN_IF_ERROR(CheckNmDivisible(dense, spec.nm));
    }
    ASSIGN_OR_RETURN(search::PruningUnits units,
                     search::PruningUnits::Build(dims, dense, spec.unit));
    return search::PolicySpace::Create(std::move(dense), std::move(units), choices);
  };
  std::vector<double> choices = spec.EffectiveRatioChoices();
  ASSIGN_OR_RETURN(search::PolicySpace space, build(choices));
  if (!spec.uniform_ratio_choice || spec.granularity == search::Granularity::kNM) return space;
  // An unreachable budget is reported by the caller's budget check, with this space.
  absl::StatusOr<double> r = space.UniformContinuousRatio(spec.flops_budget);
  if (!r.ok()) return space;
  for (double c : choices) {
    if (std::abs(c - *r) < 1e-6) return space;
  }
  choices.insert(std::upper_bound(choices.begin(), choices.end(), *r), *r);
  return build(choices);
}

namespace {
// η comes from the SAMPLES rule (the default), not from the population.
bool EtaBySamples(const JobSpec& spec) {
  return spec.strategy != search::Strategy::kRandomSearch && !spec.eta.has_value() &&
         spec.eta_rule == search::EtaRule::kSamples;
}
}  // namespace

nlohmann::json EtaReportJson(const JobSpec& spec, double eta) {
  const bool samples = EtaBySamples(spec);
  const char* how = spec.strategy == search::Strategy::kRandomSearch ? "zero (RANDOM_SEARCH)"
                    : spec.eta.has_value()                           ? "explicit"
                    : samples                                        ? "samples"
                                                                     : "auto";
  const std::string rule =
      samples ? absl::StrCat("samples: 1 with at least ", search::kSamplesEtaMinSamples,
                             " search samples, 0 below (docs/results/SELECTION.md)")
              : "auto: chosen on the first population so that std(eta*omega/sqrt(n)) = "
                "std(loss) (population standard deviations)";
  return {{"value", eta}, {"mode", how}, {"rule", rule}};
}

nlohmann::json SearchEtaJson(const JobSpec& spec, double eta,
                             const std::vector<search::GenerationStats>& history) {
  nlohmann::json j = EtaReportJson(spec, eta);
  if (spec.estimator != search::Estimator::kNorm) {
    j["estimator"] = std::string(search::EstimatorName(spec.estimator));
    if (!EtaBySamples(spec)) {
      j["rule"] =
          "auto: chosen on the first population so that std(eta*T) = std(loss), T the "
          "estimator's term (population standard deviations)";
    }
  }
  const bool cv = spec.eta_rule == search::EtaRule::kCrossValidated && !spec.eta.has_value() &&
                  spec.strategy == search::Strategy::kEfficientLlava;
  if (spec.eta_rule != search::EtaRule::kAuto) {
    j["eta_rule"] = std::string(search::EtaRuleName(spec.eta_rule));
  }
  if (!cv || history.empty()) return j;
  const search::GenerationStats& g0 = history.front();
  j["mode"] = "cv";
  j["rule"] =
      "cv: on the first population, each grid eta ranks the policies by loss + eta*T on one half "
      "of the search samples; the eta whose ranking best predicts the other half's loss "
      "(Spearman rho) wins, ties to the smaller eta";
  j["cv_rho"] = g0.eta_cv_rho ? nlohmann::json(*g0.eta_cv_rho) : nlohmann::json(nullptr);
  j["grid"] = search::DefaultEtaGrid();
  nlohmann::json rhos = nlohmann::json::array();
  for (const std::optional<double>& r : g0.eta_cv_rhos)
    rhos.push_back(r ? nlohmann::json(*r) : nlohmann::json());
  j["cv_rhos"] = std::move(rhos);
  return j;
}

nlohmann::json SearchOptionsJson(const JobSpec& spec,
                                 const std::vector<search::GenerationStats>& history) {
  nlohmann::json o = nlohmann::json::object();
  if (spec.estimator != search::Estimator::kNorm) {
    o["estimator"] = std::string(search::EstimatorName(spec.estimator));
  }
  if (spec.eta_rule != search::EtaRule::kAuto) {
    o["eta_rule"] = std::string(search::EtaRuleName(spec.eta_rule));
  }
  if (spec.seed_with_uniform) o["seed_with_uniform"] = true;
  if (spec.seed_with_owl) o["seed_with_owl"] = true;
  if (spec.repair_uniform_seed) o["repair_uniform_seed"] = true;
  if (spec.mutation_step != 0) o["mutation_step"] = spec.mutation_step;
  if (spec.uniform_guard) o["uniform_guard"] = true;
  if (spec.uniform_ratio_choice) o["uniform_ratio_choice"] = true;
  if (!spec.warm_start_job_id.empty()) o["warm_start_job_id"] = spec.warm_start_job_id;
  if (!spec.race) o["race"] = false;
  int raced = 0;
  for (const search::GenerationStats& g : history) raced += g.raced_out;
  if (raced > 0) o["raced_out"] = raced;
  if (spec.slack_evaluations != 0) {
    o["slack_evaluations"] = spec.slack_evaluations;
    int spent = 0, steps = 0;
    for (const search::GenerationStats& g : history) {
      spent += g.slack_evaluations;
      steps += g.slack_steps;
    }
    o["slack_evaluations_spent"] = spent;
    o["slack_steps"] = steps;
  }
  return o;
}

void SetStrategy(JobSpec& spec, search::Strategy strategy) {
  spec.strategy = strategy;
  const JobSpec defaults;  // EFFICIENTLLAVA's
  const bool evolution = strategy == search::Strategy::kEfficientLlava;
  const bool searching = spec.searching();
  spec.eta = evolution ? defaults.eta : std::nullopt;
  spec.estimator = evolution ? defaults.estimator : Estimator::kNorm;
  spec.eta_rule = evolution ? defaults.eta_rule : search::EtaRule::kAuto;
  spec.seed_with_uniform = evolution && defaults.seed_with_uniform;
  spec.seed_with_owl = evolution && defaults.seed_with_owl;
  spec.repair_uniform_seed = evolution && defaults.repair_uniform_seed;
  spec.mutation_step = evolution ? defaults.mutation_step : 0;
  spec.slack_evaluations = searching ? defaults.slack_evaluations : 0;
  spec.uniform_guard = searching && defaults.uniform_guard;
  spec.uniform_ratio_choice = evolution && defaults.uniform_ratio_choice;
}

void SetGranularity(JobSpec& spec, search::Granularity granularity) {
  spec.granularity = granularity;
  if (granularity == search::Granularity::kStructured) {
    spec.final_mask_method.reset();
  } else if (!spec.final_mask_method.has_value()) {
    spec.final_mask_method = MaskMethod::kSparseGpt;
  }
}

}  // namespace prunesvc

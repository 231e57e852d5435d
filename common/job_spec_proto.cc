#include "common/job_spec_proto.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/model_manifest.h"
#include "common/status_macros.h"

namespace prunesvc {
namespace {

namespace pb = ::prune::v1;

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", what));
}

absl::StatusOr<MaskMethod> MaskFromProto(pb::MaskMethod m, absl::string_view field) {
  switch (m) {
    case pb::MAGNITUDE:
      return MaskMethod::kMagnitude;
    case pb::WANDA:
      return MaskMethod::kWanda;
    case pb::SPARSEGPT:
      return MaskMethod::kSparseGpt;
    default:
      return Invalid(field, absl::StrCat("has an unknown value ", int(m)));
  }
}

pb::MaskMethod MaskToProto(MaskMethod m) {
  switch (m) {
    case MaskMethod::kMagnitude:
      return pb::MAGNITUDE;
    case MaskMethod::kWanda:
      return pb::WANDA;
    case MaskMethod::kSparseGpt:
      return pb::SPARSEGPT;
  }
  return pb::MASK_METHOD_UNSPECIFIED;
}

absl::StatusOr<search::Granularity> GranularityFromProto(pb::Granularity g) {
  switch (g) {
    case pb::GRANULARITY_UNSPECIFIED:
    case pb::UNSTRUCTURED:
      return search::Granularity::kUnstructured;
    case pb::N_M:
      return search::Granularity::kNM;
    case pb::STRUCTURED:
      return search::Granularity::kStructured;
    default:
      return Invalid("granularity", absl::StrCat("has an unknown value ", int(g)));
  }
}

pb::Granularity GranularityToProto(search::Granularity g) {
  switch (g) {
    case search::Granularity::kUnstructured:
      return pb::UNSTRUCTURED;
    case search::Granularity::kNM:
      return pb::N_M;
    case search::Granularity::kStructured:
      return pb::STRUCTURED;
  }
  return pb::GRANULARITY_UNSPECIFIED;
}

absl::StatusOr<search::Strategy> StrategyFromProto(pb::Strategy s) {
  switch (s) {
    case pb::STRATEGY_UNSPECIFIED:
    case pb::EFFICIENTLLAVA:
      return search::Strategy::kEfficientLlava;
    case pb::UNIFORM:
      return search::Strategy::kUniform;
    case pb::OWL:
      return search::Strategy::kOwl;
    case pb::RANDOM_SEARCH:
      return search::Strategy::kRandomSearch;
    default:
      return Invalid("strategy", absl::StrCat("has an unknown value ", int(s)));
  }
}

pb::Strategy StrategyToProto(search::Strategy s) {
  switch (s) {
    case search::Strategy::kEfficientLlava:
      return pb::EFFICIENTLLAVA;
    case search::Strategy::kUniform:
      return pb::UNIFORM;
    case search::Strategy::kOwl:
      return pb::OWL;
    case search::Strategy::kRandomSearch:
      return pb::RANDOM_SEARCH;
  }
  return pb::STRATEGY_UNSPECIFIED;
}

absl::StatusOr<Estimator> EstimatorFromProto(pb::Estimator e) {
  switch (e) {
    case pb::ESTIMATOR_UNSPECIFIED:
    case pb::NORM:
      return Estimator::kNorm;
    case pb::SPLIT:
      return Estimator::kSplit;
    case pb::UCB:
      return Estimator::kUcb;
    case pb::CAPACITY:
      return Estimator::kCapacity;
    case pb::PAIRED:
      return Estimator::kPaired;
    default:
      return Invalid("estimator", absl::StrCat("has an unknown value ", int(e)));
  }
}

pb::Estimator EstimatorToProto(Estimator e) {
  switch (e) {
    case Estimator::kNorm:
      return pb::NORM;
    case Estimator::kSplit:
      return pb::SPLIT;
    case Estimator::kUcb:
      return pb::UCB;
    case Estimator::kCapacity:
      return pb::CAPACITY;
    case Estimator::kPaired:
      return pb::PAIRED;
  }
  return pb::ESTIMATOR_UNSPECIFIED;
}

absl::StatusOr<search::EtaRule> EtaRuleFromProto(pb::EtaRule r) {
  switch (r) {
    case pb::ETA_RULE_UNSPECIFIED:
    case pb::AUTO:
      return search::EtaRule::kAuto;
    case pb::CV:
      return search::EtaRule::kCrossValidated;
    case pb::SAMPLES:
      return search::EtaRule::kSamples;
    default:
      return Invalid("eta_rule", absl::StrCat("has an unknown value ", int(r)));
  }
}

pb::EtaRule EtaRuleToProto(search::EtaRule r) {
  switch (r) {
    case search::EtaRule::kCrossValidated:
      return pb::CV;
    case search::EtaRule::kSamples:
      return pb::SAMPLES;
    case search::EtaRule::kAuto:
      break;
  }
  return pb::AUTO;
}

// The enum-valued fields and the granularity-dependent defaults.
absl::Status EnumsFromProto(const pb::JobSpec& p, JobSpec& s) {
  ASSIGN_OR_RETURN(search::Granularity g, GranularityFromProto(p.granularity()));
  SetGranularity(s, g);
  if (p.has_nm_pattern()) {
    if (g != search::Granularity::kNM) {
      return Invalid("nm_pattern", "is only valid with granularity N_M");
    }
    switch (p.nm_pattern()) {
      case pb::NM_PATTERN_UNSPECIFIED:
      case pb::NM_2_4:
        s.nm = {2, 4};
        break;
      case pb::NM_4_8:
        s.nm = {4, 8};
        break;
      default:
        return Invalid("nm_pattern", absl::StrCat("has an unknown value ", int(p.nm_pattern())));
    }
  }
  if (p.has_unit()) {
    switch (p.unit()) {
      case pb::PRUNING_UNIT_UNSPECIFIED:
      case pb::LAYER:
        s.unit = search::UnitKind::kLayer;
        break;
      case pb::LINEAR:
        s.unit = search::UnitKind::kLinear;
        break;
      default:
        return Invalid("unit", absl::StrCat("has an unknown value ", int(p.unit())));
    }
  }
  if (p.has_mask_method() && p.mask_method() != pb::MASK_METHOD_UNSPECIFIED) {
    ASSIGN_OR_RETURN(s.mask_method, MaskFromProto(p.mask_method(), "mask_method"));
  }
  if (p.has_final_mask_method()) {
    if (g == search::Granularity::kStructured) {
      return Invalid("final_mask_method",
                     "does not apply to granularity STRUCTURED: whole channels and heads are "
                     "removed by the search's orders (mask_method); leave it unset");
    }
    if (p.final_mask_method() != pb::MASK_METHOD_UNSPECIFIED) {
      ASSIGN_OR_RETURN(s.final_mask_method,
                       MaskFromProto(p.final_mask_method(), "final_mask_method"));
    }
  }
  if (p.has_strategy()) {  // before the search options: their defaults depend on it
    ASSIGN_OR_RETURN(search::Strategy strategy, StrategyFromProto(p.strategy()));
    SetStrategy(s, strategy);
  }
  if (p.has_estimator()) {
    ASSIGN_OR_RETURN(s.estimator, EstimatorFromProto(p.estimator()));
  }
  if (p.has_eta_rule() && p.eta_rule() != pb::ETA_RULE_UNSPECIFIED) {  // else EtaFromProto's
    ASSIGN_OR_RETURN(s.eta_rule, EtaRuleFromProto(p.eta_rule()));
  }
  return absl::OkStatus();
}

absl::Status EtaFromProto(const pb::JobSpec& p, JobSpec& s) {
  if (p.has_eta() && p.has_eta_auto() && p.eta_auto()) {
    return Invalid("eta", "and eta_auto = true are both set; set one");
  }
  if (p.has_eta_auto() && !p.eta_auto() && !p.has_eta()) {
    return Invalid("eta_auto", "= false needs an explicit eta");
  }
  if (p.has_eta()) s.eta = p.eta();
  // eta_auto, or an eta_rule / estimator without an eta: η is chosen by the rule — AUTO's unless
  // one is given (the default SAMPLES rule is for a spec that says nothing of η).
  const bool named_rule = p.has_eta_rule() && p.eta_rule() != pb::ETA_RULE_UNSPECIFIED;
  const bool rule_given =
      named_rule || (p.has_estimator() && p.estimator() != pb::ESTIMATOR_UNSPECIFIED);
  if ((p.has_eta_auto() && p.eta_auto()) || (rule_given && !p.has_eta())) {
    s.eta.reset();
    if (!named_rule) s.eta_rule = search::EtaRule::kAuto;
  }
  return absl::OkStatus();
}

// The issue-14 search options (enums aside); ranges are JobSpec::Validate's.
void SearchOptionsFromProto(const pb::JobSpec& p, JobSpec& s) {
  if (p.has_seed_with_uniform()) s.seed_with_uniform = p.seed_with_uniform();
  if (p.has_seed_with_owl()) s.seed_with_owl = p.seed_with_owl();
  if (p.has_repair_uniform_seed()) s.repair_uniform_seed = p.repair_uniform_seed();
  if (p.has_mutation_step()) s.mutation_step = p.mutation_step();
  if (p.has_slack_evaluations()) s.slack_evaluations = p.slack_evaluations();
  if (p.has_uniform_guard()) s.uniform_guard = p.uniform_guard();
  if (p.has_uniform_ratio_choice()) s.uniform_ratio_choice = p.uniform_ratio_choice();
  if (p.has_race()) s.race = p.race();
  s.warm_start_job_id = p.warm_start_job_id();
}

absl::Status ReferencesFromProto(const pb::JobSpec& p, JobSpec& s) {
  if (p.model_uri().empty()) {
    return Invalid("model_uri",
                   "is required (file:///path/to/model, or the blob://sha256:... URI that "
                   "prunectl upload-model printed)");
  }
  if (IsBlobModelUri(p.model_uri())) {
    RETURN_IF_ERROR(BlobModelId(p.model_uri(), "model_uri").status());
  } else {
    RETURN_IF_ERROR(FileUriPath(p.model_uri(), "model_uri").status());
  }
  s.model_uri = p.model_uri();
  if (p.dataset_id().empty()) return Invalid("dataset_id", "is required (from UploadDataset)");
  if (!IsContentId(p.dataset_id())) {
    return Invalid("dataset_id",
                   absl::StrCat("\"", p.dataset_id().substr(0, 80),
                                "\" is not a dataset id (sha256: + 64 lowercase hex digits)"));
  }
  s.dataset_id = p.dataset_id();
  if (p.has_eval_dataset_id()) {
    if (!IsContentId(p.eval_dataset_id())) {
      return Invalid("eval_dataset_id",
                     absl::StrCat("\"", p.eval_dataset_id().substr(0, 80),
                                  "\" is not a dataset id (sha256: + 64 lowercase hex digits)"));
    }
    s.eval_dataset_id = p.eval_dataset_id();
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<search::PolicySpace> PolicySpaceFromPrepare(const JobSpec& spec,
                                                           const pb::PrepareResponse& r) {
  FlopsModelDims d;
  const pb::FlopsModelDims& p = r.flops_dims();
  d.vision = {.width = p.vision().width(),
              .mlp_width = p.vision().mlp_width(),
              .layers_run = p.vision().layers_run(),
              .tokens = p.vision().tokens(),
              .patch_size = p.vision().patch_size(),
              .channels = p.vision().channels()};
  d.images_per_sample = p.images_per_sample();
  d.image_tokens = p.image_tokens();
  d.projector_in = p.projector_in();
  d.projector_hidden = p.projector_hidden();
  d.projector_out = p.projector_out();
  std::vector<DecoderLayerHeads> heads;
  for (const pb::DecoderLayerDims& l : p.decoder()) {
    d.decoder.push_back({l.hidden(), l.q_width(), l.kv_width(), l.mlp_width()});
    heads.push_back({l.num_heads(), l.num_kv_heads(), l.head_dim()});
  }
  d.vocab = p.vocab();
  const TokenStats stats{.mean_tokens = r.token_stats().mean_tokens(),
                         .mean_tokens_sq = r.token_stats().mean_tokens_sq(),
                         .mean_answer_tokens = r.token_stats().mean_answer_tokens()};
  return BuildPolicySpace(spec, d, stats, heads);
}

bool IsContentId(absl::string_view id) {
  constexpr absl::string_view kPrefix = "sha256:";
  if (id.size() != kPrefix.size() + 64 || !absl::StartsWith(id, kPrefix)) return false;
  for (char c : id.substr(kPrefix.size())) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

absl::StatusOr<std::string> FileUriPath(absl::string_view uri, absl::string_view field) {
  constexpr absl::string_view kScheme = "file://";
  if (!absl::StartsWith(uri, kScheme)) {
    return Invalid(field, absl::StrCat("\"", uri.substr(0, 200),
                                       "\" has an unsupported scheme; use file:///absolute/path"));
  }
  const absl::string_view path = uri.substr(kScheme.size());
  if (!path.empty() && path[0] != '/') {
    // file://HOST/path: a model on another machine; the scheduler and workers read local paths
    // only (a host is not a way around --allowed-model-roots either).
    const absl::string_view host = path.substr(0, path.find('/'));
    return Invalid(
        field, absl::StrCat("\"", uri.substr(0, 200), "\" names a host (\"", host.substr(0, 100),
                            "\"); only local paths are accepted: file:///absolute/path"));
  }
  if (path.empty()) {
    return Invalid(field, absl::StrCat("\"", uri.substr(0, 200),
                                       "\" is not an absolute file URI (file:///absolute/path)"));
  }
  if (path.find('\0') != absl::string_view::npos) return Invalid(field, "contains a NUL byte");
  return std::string(path);
}

absl::StatusOr<JobSpec> JobSpecFromProto(const pb::JobSpec& p) {
  JobSpec s;
  RETURN_IF_ERROR(ReferencesFromProto(p, s));
  s.flops_budget = p.flops_budget();
  RETURN_IF_ERROR(EnumsFromProto(p, s));
  if (p.has_prune_vision()) s.prune_vision = p.prune_vision();
  if (p.has_population()) s.population = p.population();
  if (p.has_generations()) s.generations = p.generations();
  if (p.has_parents()) s.parents = p.parents();
  if (p.has_mutation()) s.mutation = p.mutation();
  if (p.ratio_choices_size() > 0) {
    s.ratio_choices.assign(p.ratio_choices().begin(), p.ratio_choices().end());
  }
  RETURN_IF_ERROR(EtaFromProto(p, s));
  if (p.has_projector_every()) s.projector_every = p.projector_every();
  if (p.has_projector_steps()) s.projector_steps = p.projector_steps();
  if (p.has_projector_lr()) s.projector_lr = p.projector_lr();
  if (p.has_projector_decay()) s.projector_decay = p.projector_decay();
  if (p.has_seed()) s.seed = p.seed();
  if (p.has_priority()) s.priority = p.priority();
  s.labels.insert(p.labels().begin(), p.labels().end());
  s.request_id = p.request_id();
  if (p.has_rerank_top_k()) s.rerank_top_k = p.rerank_top_k();
  SearchOptionsFromProto(p, s);
  RETURN_IF_ERROR(s.Validate(FieldNaming::kProto));
  return s;
}

pb::JobSpec JobSpecToProto(const JobSpec& s) {
  pb::JobSpec p;
  p.set_model_uri(s.model_uri);
  p.set_dataset_id(s.dataset_id);
  if (s.eval_dataset_id) p.set_eval_dataset_id(*s.eval_dataset_id);
  p.set_flops_budget(s.flops_budget);
  p.set_granularity(GranularityToProto(s.granularity));
  if (s.granularity == search::Granularity::kNM) {
    p.set_nm_pattern(s.nm.m == 8 ? pb::NM_4_8 : pb::NM_2_4);
  }
  p.set_unit(s.unit == search::UnitKind::kLinear ? pb::LINEAR : pb::LAYER);
  p.set_prune_vision(s.prune_vision);
  p.set_mask_method(MaskToProto(s.mask_method));
  if (s.final_mask_method) p.set_final_mask_method(MaskToProto(*s.final_mask_method));
  p.set_strategy(StrategyToProto(s.strategy));
  p.set_population(s.population);
  p.set_generations(s.generations);
  p.set_parents(s.parents);
  p.set_mutation(s.mutation);
  for (double r : s.ratio_choices) p.add_ratio_choices(r);
  if (s.eta) {
    p.set_eta(*s.eta);
  } else {
    p.set_eta_auto(true);
  }
  p.set_estimator(EstimatorToProto(s.estimator));
  p.set_eta_rule(EtaRuleToProto(s.eta_rule));
  p.set_projector_every(s.projector_every);
  p.set_projector_steps(s.projector_steps);
  p.set_projector_lr(s.projector_lr);
  p.set_projector_decay(s.projector_decay);
  p.set_seed(s.seed);
  p.set_priority(s.priority);
  p.mutable_labels()->insert(s.labels.begin(), s.labels.end());
  p.set_request_id(s.request_id);
  p.set_rerank_top_k(s.rerank_top_k);
  p.set_seed_with_uniform(s.seed_with_uniform);
  p.set_seed_with_owl(s.seed_with_owl);
  p.set_repair_uniform_seed(s.repair_uniform_seed);
  p.set_mutation_step(s.mutation_step);
  p.set_slack_evaluations(s.slack_evaluations);
  p.set_uniform_guard(s.uniform_guard);
  p.set_uniform_ratio_choice(s.uniform_ratio_choice);
  p.set_warm_start_job_id(s.warm_start_job_id);
  p.set_race(s.race);
  return p;
}

}  // namespace prunesvc

#include "worker/prune/steps.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/model/torch_guard.h"
#include "worker/prune/owl.h"
#include "worker/prune/structured.h"

namespace prunesvc::prune {
namespace {

absl::Status BudgetError(const JobSpec& spec, const search::PolicySpace& space,
                         const absl::Status& s) {
  if (spec.granularity == search::Granularity::kNM &&
      s.code() == absl::StatusCode::kFailedPrecondition) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "--flops-budget %g is unreachable with --granularity N_M --nm %s: N:M alone cannot go "
        "below every unit at %s, which costs %.6f of the dense FLOPs (the smallest reachable "
        "budget is %.4f)",
        spec.flops_budget, NmPatternName(spec.nm), NmPatternName(spec.nm),
        space.MinReachableRatio(), space.SmallestReachableBudget()));
  }
  // CheckBudget's message names the smallest reachable budget (one rounding rule).
  return absl::Status(s.code(), absl::StrCat("--flops-budget: ", s.message()));
}

}  // namespace

absl::Status CheckBudget(const JobSpec& spec, const search::PolicySpace& space) {
  if (absl::Status s = space.CheckBudget(spec.flops_budget); !s.ok()) {
    return BudgetError(spec, space, s);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PreparedJob>> PreparedJob::Prepare(const PrepareOptions& options,
                                                                  StepContext& ctx) {
  RETURN_IF_ERROR(options.spec.Validate(FieldNaming::kFlag));
  auto job = std::unique_ptr<PreparedJob>(new PreparedJob(options));
  RETURN_IF_ERROR(model::TorchGuarded("prepare", [&]() -> absl::Status {
    ctx.Phase(JobPhase::kLoad);
    RETURN_IF_ERROR(job->Load(ctx));
    RETURN_IF_ERROR(CheckBudget(job->spec(), *job->space_));
    RETURN_IF_ERROR(ctx.CheckStop());
    const std::string key = job->PreparationKey();
    std::shared_ptr<const Preparation> shared =
        options.preparations != nullptr ? options.preparations->Find(key) : nullptr;
    job->summary_.shared_preparation = shared != nullptr;
    ctx.Phase(JobPhase::kBaseline);
    if (shared != nullptr) {
      job->summary_.dense_search = shared->dense_search;
    } else {
      ASSIGN_OR_RETURN(job->summary_.dense_search,
                       ScoreSampleSet(*job->bundle_, job->search_set_, options.batch_size));
    }
    RETURN_IF_ERROR(ctx.CheckStop());
    ctx.Phase(JobPhase::kCalibration);
    RETURN_IF_ERROR(job->Calibrate(ctx, shared));
    RETURN_IF_ERROR(ctx.CheckStop());
    RETURN_IF_ERROR(job->OrderSamples(shared));
    if (options.preparations != nullptr && shared == nullptr) {
      ASSIGN_OR_RETURN(shared, job->evaluator_->SharedPreparation(
                                   job->summary_.dense_search, job->summary_.sample_order,
                                   job->summary_.sample_order_probe));
      options.preparations->Publish(key, std::move(shared));
    }
    if (job->spec().strategy == search::Strategy::kOwl || job->spec().seed_with_owl) {
      RETURN_IF_ERROR(job->ComputeOwlOutliers());
    }
    return ctx.CheckStop();
  }));
  return job;
}

absl::StatusOr<std::unique_ptr<PreparedJob>> PreparedJob::LoadOnly(const PrepareOptions& options,
                                                                   StepContext& ctx) {
  RETURN_IF_ERROR(options.spec.Validate(FieldNaming::kFlag));
  auto job = std::unique_ptr<PreparedJob>(new PreparedJob(options));
  RETURN_IF_ERROR(model::TorchGuarded("load", [&] { return job->Load(ctx); }));
  return job;
}

PreparedJob::~PreparedJob() {
  // The evaluators borrow the model: release them first.
  local_.reset();
  evaluator_.reset();
}

absl::Status PreparedJob::Load(StepContext& ctx) {
  const JobSpec& spec = options_.spec;
  ASSIGN_OR_RETURN(device_, model::OpenDevice(options_.device, options_.threads));
  ASSIGN_OR_RETURN(bundle_, model::LoadLlavaBundle(options_.model_dir, device_.device()));
  const model::LlavaConfig& c = bundle_->config;
  if (c.text.hidden_act != "silu") {
    return absl::InvalidArgumentError(
        absl::StrCat(options_.model_dir, "/config.json: text_config.hidden_act \"",
                     c.text.hidden_act, "\" is not supported (LLaVA-1.5's LLaMA uses silu)"));
  }
  ASSIGN_OR_RETURN(search_set_, model::LoadSampleSet(options_.samples_path));
  std::vector<model::PreparedSample> prepared;
  prepared.reserve(search_set_.samples.size());
  for (const model::Sample& s : search_set_.samples) {
    ASSIGN_OR_RETURN(model::PreparedSample p, model::PrepareSample(*bundle_, s));
    prepared.push_back(std::move(p));
  }
  if (!options_.eval_samples_path.empty()) {
    ASSIGN_OR_RETURN(eval_set_, model::LoadSampleSet(options_.eval_samples_path));
    has_eval_ = true;
    if (eval_set_.sha256 == search_set_.sha256) {
      // The same content under another name: its accuracy is search-set accuracy, and the report
      // must say so rather than call it held-out.
      ctx.Warn(absl::StrCat("--eval-samples ", options_.eval_samples_path,
                            " has the search set's content (sha256 ",
                            search_set_.sha256.substr(0, 16),
                            "…): accuracy is reported as search-set accuracy, which overstates "
                            "held-out accuracy; pass samples the job never sees"));
      has_eval_ = false;
      eval_set_ = model::SampleSet();
    }
    // Validate the held-out set now, not after a long search.
    for (const model::Sample& s : eval_set_.samples) {
      RETURN_IF_ERROR(model::PrepareSample(*bundle_, s).status());
    }
  }
  std::vector<model::ScoringSample> scoring;
  for (const auto& p : prepared) scoring.push_back(p.scoring);
  const model::LlavaModel& m = *bundle_->model;
  summary_.token_stats = model::ComputeTokenStats(m, scoring);
  summary_.dims = m.FlopsDims();
  summary_.heads = LayerHeadsOf(m);
  ASSIGN_OR_RETURN(dense_flops_, ComputeDenseFlops(summary_.dims, summary_.token_stats));
  ASSIGN_OR_RETURN(search::PolicySpace space,
                   BuildPolicySpace(spec, summary_.dims, summary_.token_stats, summary_.heads));
  space_ = std::make_unique<search::PolicySpace>(std::move(space));
  summary_.num_samples = int(prepared.size());
  summary_.num_eval_samples = has_eval_ ? int(eval_set_.samples.size()) : 0;
  summary_.dataset_sha256 = search_set_.sha256;
  summary_.eval_dataset_sha256 = has_eval_ ? eval_set_.sha256 : "";
  summary_.threads = device_.threads;
  // Samples keep their pixels until calibration has the evaluator's copy.
  latency_batch_ = std::move(prepared);
  return absl::OkStatus();
}

std::string PreparedJob::PreparationKey() const {
  const JobSpec& spec = options_.spec;
  // One field per line, named (preparation_cache.h says why each is there).
  const std::string material = absl::StrCat(
      "prunesvc preparation v1\n", options_.preparation_context, "\ndataset ",
      summary_.dataset_sha256, "\nmask_method ", std::string(MaskMethodName(spec.mask_method)),
      "\ngranularity ", int(spec.granularity), "\nnm ",
      spec.granularity == search::Granularity::kNM ? absl::StrCat(spec.nm.n, ":", spec.nm.m) : "-",
      "\ngram ", spec.final_mask_method == MaskMethod::kSparseGpt, "\nbatch ", options_.batch_size,
      "\ncalibration_batch ", EvaluatorOptions().calibration_batch_size, "\nthreads ",
      device_.threads, "\ndevice ", options_.device, "\n");
  return Sha256Hex(material);
}

absl::Status PreparedJob::Calibrate(StepContext& ctx, std::shared_ptr<const Preparation> shared) {
  const JobSpec& spec = options_.spec;
  model::LlavaModel& m = *bundle_->model;
  ASSIGN_OR_RETURN(std::vector<EvalSample> eval_samples, ToEvalSamples(latency_batch_));
  const int n = int(latency_batch_.size());
  latency_batch_.resize(size_t(std::max(1, std::min(options_.latency_batch, n))));
  ASSIGN_OR_RETURN(unit_of_linear_,
                   UnitOfLinear(space_->units(), m.config().text.num_hidden_layers));
  EvaluatorOptions eopt;
  eopt.method = spec.mask_method;
  eopt.granularity = spec.granularity;
  eopt.batch_size = options_.batch_size;
  eopt.activation_cache_bytes = options_.activation_cache_bytes;
  eopt.unit_of_linear = unit_of_linear_;
  // SPARSEGPT's H = (2/N)·XᵀX at finalize.
  eopt.collect_gram = spec.final_mask_method == MaskMethod::kSparseGpt;
  if (spec.granularity == search::Granularity::kNM) eopt.nm = spec.nm;  // N:M orders
  eopt.prepared = std::move(shared);
  ASSIGN_OR_RETURN(evaluator_, CandidateEvaluator::Create(&m, std::move(eval_samples), eopt));
  ProjectorTrainingOptions topt;
  topt.learning_rate = spec.projector_lr;
  topt.steps = spec.projector_steps;
  topt.mu = spec.projector_decay;
  topt.seed = spec.seed;
  ASSIGN_OR_RETURN(local_, LocalPolicyEvaluator::Create(evaluator_.get(), space_.get(), topt));
  return ctx.CheckStop();
}

absl::StatusOr<double> PreparedJob::ProbeRatio() const {
  const absl::StatusOr<double> uniform = space_->UniformContinuousRatio(spec().flops_budget);
  const std::vector<double> want(size_t(space_->num_units()), uniform.ok() ? *uniform : 0.5);
  ASSIGN_OR_RETURN(search::Policy probe, space_->SnapToGrid(want));
  return space_->ratio_choices()[size_t(probe.at(0))];
}

absl::Status PreparedJob::OrderSamples(const std::shared_ptr<const Preparation>& shared) {
  const int n = summary_.num_samples;
  ASSIGN_OR_RETURN(const double probe_ratio, ProbeRatio());
  summary_.sample_order_probe = probe_ratio;
  std::vector<int> order;
  if (shared != nullptr && shared->sample_order.size() == size_t(n) &&
      shared->sample_order_probe == probe_ratio) {
    order = shared->sample_order;
  } else {
    const std::vector<double> unit_ratios(size_t(space_->num_units()), probe_ratio);
    ASSIGN_OR_RETURN(std::vector<double> ratios, local_->LinearRatios(unit_ratios));
    ASSIGN_OR_RETURN(CandidateResult probe, evaluator_->Evaluate(ratios));
    RETURN_IF_ERROR(evaluator_->RestoreDense());
    const std::vector<double>& losses = probe.sample_losses;
    if (losses.size() != size_t(n)) {
      return absl::InternalError(
          absl::StrCat("the probe policy scored ", losses.size(), " of ", n, " samples"));
    }
    for (int i = 0; i < n; ++i) {
      if (!std::isfinite(losses[size_t(i)])) {
        return absl::InternalError(
            absl::StrCat("the probe policy's loss on sample ", i, " is ", losses[size_t(i)]));
      }
    }
    order.resize(size_t(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return losses[size_t(a)] > losses[size_t(b)]; });
  }
  RETURN_IF_ERROR(evaluator_->SetSampleOrder(order));
  summary_.sample_order = std::move(order);
  return absl::OkStatus();
}

absl::Status PreparedJob::UseSampleOrder(const std::vector<int>& order) {
  RETURN_IF_ERROR(CheckUsable());
  if (order == summary_.sample_order) return absl::OkStatus();
  if (absl::Status s = evaluator_->SetSampleOrder(order); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sample_order: ", s.message()));
  }
  summary_.sample_order = order;
  return absl::OkStatus();
}

absl::Status PreparedJob::ComputeOwlOutliers() {
  std::vector<at::Tensor> weights;
  for (int i = 0; i < evaluator_->num_linears(); ++i) {
    weights.push_back(evaluator_->dense_weight(i));
  }
  ASSIGN_OR_RETURN(summary_.owl_outlier_ratios,
                   OwlOutlierRatios(weights, evaluator_->calibration(),
                                    evaluator_->unit_of_linear(), space_->num_units()));
  return absl::OkStatus();
}

absl::Status PreparedJob::CheckUsable() const {
  if (spent_) {
    return absl::FailedPreconditionError("this job was finalized on this worker; prepare it again");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<search::EvalResult>> PreparedJob::Evaluate(
    const std::vector<search::Policy>& policies, int version, StepContext& ctx,
    const std::function<void(int, const CandidateResult&)>& on_result, SampleRange range,
    const search::RaceLimit& race) {
  RETURN_IF_ERROR(CheckUsable());
  if (!HasProjector(version)) {
    return absl::FailedPreconditionError(
        absl::StrCat("projector version ", version, " is not registered on this worker"));
  }
  return model::TorchGuarded("evaluate", [&]() -> absl::StatusOr<std::vector<search::EvalResult>> {
    std::vector<search::EvalResult> out;
    const int n = summary_.num_samples;
    if (range.begin == 0 && (range.end < 0 || range.end == n)) {
      // In lexicographic order of the policies (neighbours share the longest prefixes), groups
      // of kEvaluateGroup scored together, each group's results reported as it completes.
      std::vector<int> order(policies.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return policies[a] < policies[b]; });
      out.resize(policies.size());
      for (size_t g = 0; g < order.size(); g += kEvaluateGroup) {
        const size_t end = std::min(order.size(), g + kEvaluateGroup);
        std::vector<search::Policy> group;
        search::RaceLimit group_race = race;
        group_race.extra.clear();
        for (size_t k = g; k < end; ++k) {
          group.push_back(policies[order[k]]);
          if (!race.extra.empty()) group_race.extra.push_back(race.extra[order[k]]);
        }
        ASSIGN_OR_RETURN(std::vector<CandidateResult> results,
                         local_->EvaluateCandidates(group, version, group_race,
                                                    [&] { return ctx.CheckStop(); }));
        for (size_t k = g; k < end; ++k) {
          ctx.Evaluated();
          if (on_result) on_result(order[k], results[k - g]);
          out[order[k]] = ToEvalResult(std::move(results[k - g]));
        }
      }
      return out;
    }
    for (size_t i = 0; i < policies.size(); ++i) {
      RETURN_IF_ERROR(ctx.CheckStop());
      ASSIGN_OR_RETURN(CandidateResult r, local_->EvaluateSlice(policies[i], version, range));
      ctx.Evaluated();
      if (on_result) on_result(int(i), r);
      out.push_back(ToEvalResult(std::move(r)));
    }
    return out;
  });
}

absl::StatusOr<search::ProjectorUpdate> PreparedJob::TrainProjector(
    const std::vector<search::Policy>& top_k, int from_version, int new_version, StepContext& ctx) {
  RETURN_IF_ERROR(CheckUsable());
  RETURN_IF_ERROR(ctx.CheckStop());
  if (!HasProjector(from_version)) {
    return absl::FailedPreconditionError(
        absl::StrCat("projector version ", from_version, " is not registered on this worker"));
  }
  absl::StatusOr<search::ProjectorUpdate> update = model::TorchGuarded("train projector", [&] {
    return local_->TrainProjectorAs(top_k, from_version, new_version);
  });
  if (update.ok()) trained_[new_version] = *update;
  return update;
}

const search::ProjectorUpdate* PreparedJob::TrainedUpdate(int version) const {
  auto it = trained_.find(version);
  return it == trained_.end() ? nullptr : &it->second;
}

absl::Status PreparedJob::RegisterProjector(int version, const ProjectorWeights& weights) {
  RETURN_IF_ERROR(CheckUsable());
  return model::TorchGuarded("register projector",
                             [&] { return local_->RegisterProjector(version, weights); });
}

bool PreparedJob::HasProjector(int version) const { return local_->projector(version) != nullptr; }

const ProjectorWeights* PreparedJob::projector(int version) const {
  return local_->projector(version);
}

int PreparedJob::latest_projector_version() const { return local_->latest_version(); }

absl::StatusOr<ModelMetrics> PreparedJob::ScoreEvalSet() {
  return model::TorchGuarded(
      "score eval set", [&] { return ScoreSampleSet(*bundle_, eval_set_, options_.batch_size); });
}

}  // namespace prunesvc::prune

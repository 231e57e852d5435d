#include "worker/prune/job.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/owl.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/model/device.h"
#include "worker/model/torch_guard.h"
#include "worker/prune/artifact.h"
#include "worker/prune/audit.h"
#include "worker/prune/report.h"

namespace prunesvc::prune {
namespace {

using nlohmann::json;

// The search's evaluator: PreparedJob's steps (groups of candidates scored together, the context
// polled between scoring batches; racing when the search asks), with a record of every
// evaluated policy for report.json and the audit.
class TrackingEvaluator : public search::PolicyEvaluator {
 public:
  TrackingEvaluator(PreparedJob* job, StepContext* ctx) : job_(job), ctx_(ctx) {}

  absl::StatusOr<std::vector<search::EvalResult>> Evaluate(
      const std::vector<search::Policy>& policies, int projector_version) override {
    return EvaluateRaced(policies, projector_version, {});
  }

  absl::StatusOr<std::vector<search::EvalResult>> EvaluateRaced(
      const std::vector<search::Policy>& policies, int projector_version,
      const search::RaceLimit& race) override {
    ASSIGN_OR_RETURN(std::vector<search::EvalResult> out,
                     job_->Evaluate(policies, projector_version, *ctx_, nullptr, {}, race));
    for (size_t i = 0; i < policies.size(); ++i) {
      const search::Policy& p = policies[i];
      ASSIGN_OR_RETURN(std::string hash, job_->space().Hash(p));
      ASSIGN_OR_RETURN(double flops, job_->space().FlopsRatio(p));
      evaluated_.push_back(search::EvaluatedJson(hash, projector_version, out[i], flops));
      if (seen_.insert(hash).second) distinct_.push_back(p);
    }
    return out;
  }

  // New versions are numbered after the latest one, as the scheduler numbers them.
  absl::StatusOr<search::ProjectorUpdate> TrainProjector(const std::vector<search::Policy>& top_k,
                                                         int from_version) override {
    return job_->TrainProjector(top_k, from_version, job_->latest_projector_version() + 1, *ctx_);
  }

  // The evaluated sequence, in order. (A failed Step fails the job, so no partial batch is ever
  // left to roll back.)
  const json& evaluated() const { return evaluated_; }
  // Continues a resumed run's record (the resume file's "evaluated" and "distinct").
  void Restore(json evaluated, std::vector<search::Policy> distinct) {
    evaluated_ = std::move(evaluated);
    distinct_ = std::move(distinct);
    for (const search::Policy& p : distinct_) {
      if (auto hash = job_->space().Hash(p); hash.ok()) seen_.insert(*hash);
    }
  }
  // Every distinct policy evaluated, in first-evaluation order.
  const std::vector<search::Policy>& distinct() const { return distinct_; }

 private:
  PreparedJob* const job_;
  StepContext* const ctx_;
  json evaluated_ = json::array();
  std::set<std::string> seen_;
  std::vector<search::Policy> distinct_;
};

// UNIFORM's continuous per-unit ratios: one ratio meeting the budget exactly (N:M: every unit
// N:M, the budget having passed the N:M floor).
absl::StatusOr<std::vector<double>> UniformUnitRatios(const JobSpec& spec,
                                                      const search::PolicySpace& space) {
  double r = space.max_ratio();
  if (spec.granularity != search::Granularity::kNM) {
    ASSIGN_OR_RETURN(r, space.UniformContinuousRatio(spec.flops_budget));
  }
  return std::vector<double>(space.num_units(), r);
}

// OWL's per-unit ratios from the dense model's outlier ratios (Prepare computed them): UNSTRUCTURED
// shifts the deviations to the budget; under N:M the most-outlier layers stay dense while the
// budget allows.
absl::StatusOr<std::vector<double>> OwlUnitRatios(const JobSpec& spec, const PreparedJob& job) {
  const std::vector<double>& outliers = job.summary().owl_outlier_ratios;
  if (spec.granularity == search::Granularity::kNM) {
    return search::OwlNmRatios(job.space(), outliers, spec.flops_budget);
  }
  ASSIGN_OR_RETURN(std::vector<double> deviations, search::OwlDeviations(outliers));
  return job.space().ShiftToBudget(deviations, spec.flops_budget);
}

// --seed-with-uniform / --seed-with-owl: the continuous solutions the initial population starts
// from (in that order), recorded in `options` (report.json's "search").
absl::Status AddSeeds(const LocalJobSpec& spec, const PreparedJob& job,
                      search::SearchConfig& config, json& options) {
  json seeds = json::object();
  if (spec.seed_with_uniform) {
    ASSIGN_OR_RETURN(std::vector<double> r, UniformUnitRatios(spec, job.space()));
    seeds["UNIFORM"] = r;
    config.seed_unit_ratios.push_back(std::move(r));
  }
  if (spec.seed_with_owl) {
    ASSIGN_OR_RETURN(std::vector<double> r, OwlUnitRatios(spec, job));
    seeds["OWL"] = r;
    config.seed_unit_ratios.push_back(std::move(r));
  }
  if (!seeds.empty()) options["seed_unit_ratios"] = std::move(seeds);
  return absl::OkStatus();
}

// --uniform-guard ("never worse than the baseline", issue 14): UNIFORM's policy is scored on the
// search samples under the search's final projector with the search's fitness (estimator, η),
// and replaces the search's pick when its fitness is strictly lower. One evaluation, counted.
absl::Status RunUniformGuard(const LocalJobSpec& spec, PreparedJob& job, StepContext& ctx,
                             const search::EvolutionarySearch& search,
                             const search::ScoredPolicy& best, FinalizeOptions& fin) {
  RETURN_IF_ERROR(ctx.CheckStop());
  ASSIGN_OR_RETURN(std::vector<double> ratios, UniformUnitRatios(spec, job.space()));
  const int version = search.state().projector_version;
  LocalPolicyEvaluator& local = job.local_evaluator();
  RETURN_IF_ERROR(local.SwitchTo(version));
  ASSIGN_OR_RETURN(CandidateResult r, local.EvaluateUnitRatios(ratios));
  ctx.Evaluated();
  const search::EvalResult result{.loss = r.loss,
                                  .accuracy = r.accuracy,
                                  .omega = r.omega,
                                  .sample_losses = std::move(r.sample_losses)};
  const double eta = search.state().eta.value_or(0.0);
  ASSIGN_OR_RETURN(double fitness,
                   search::FitnessOfUnitRatios(job.space(), search.state().config, ratios, result,
                                               eta, search.ReferenceLosses()));
  ASSIGN_OR_RETURN(double flops, job.space().FlopsOfRatios(ratios));
  const double flops_ratio = flops / job.space().dense_flops();
  const bool fired = fitness < best.fitness;
  fin.guard = {{"fired", fired},
               {"winner", fired ? "UNIFORM" : "search"},
               {"projector_version", version},
               {"rule",
                "UNIFORM's policy replaces the search's pick when its fitness (same estimator "
                "and eta, search samples) is strictly lower"},
               {"search_pick",
                {{"hash", best.hash},
                 {"fitness", best.fitness},
                 {"loss", best.result.loss},
                 {"accuracy", best.result.accuracy},
                 {"flops_ratio_nominal", best.flops_ratio}}},
               {"uniform",
                {{"ratio", ratios.empty() ? 0.0 : ratios[0]},
                 {"fitness", fitness},
                 {"loss", result.loss},
                 {"accuracy", result.accuracy},
                 {"omega", result.omega},
                 {"flops_ratio_nominal", flops_ratio}}}};
  if (fired) fin.unit_ratios = std::move(ratios);
  return absl::OkStatus();
}

// `object[key]` when it is a string, else "" (json::value throws on a present key of another
// type; user files must get an error naming the field instead).
std::string StringField(const json& object, const char* key) {
  if (!object.is_object()) return "";
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// A policy as JSON: an array of non-negative integers (choice indices).
bool IsPolicyJson(const json& p) {
  if (!p.is_array()) return false;
  for (const json& x : p) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > 1000) return false;
  }
  return true;
}

// --resume (issue 15): after every generation the search's state is written atomically to
// OUT.search-state.json, beside OUT rather than inside OUT.partial-PID, so an interrupted run
// (SIGINT, a crash) leaves it behind; a successful run removes it. With it: the search state
// (SearchState, PRNG and cache included), the evaluated sequence and distinct policies (the
// report and --audit need them), and what the state belongs to (model, search set, config).
constexpr char kResumeFormat[] = "prunesvc.prune-local.resume.v1";

absl::Status WriteResumeFile(const LocalJobSpec& spec, const PreparedJob& job,
                             const search::EvolutionarySearch& search,
                             const TrackingEvaluator& tracker) {
  json distinct = json::array();
  for (const search::Policy& p : tracker.distinct()) distinct.push_back(p);
  const json file = {{"format", kResumeFormat},
                     {"model_dir", spec.model_dir},
                     {"dataset_sha256", job.summary().dataset_sha256},
                     {"sample_order", job.summary().sample_order},
                     {"search", search.state().ToJson()},
                     {"evaluated", tracker.evaluated()},
                     {"distinct", std::move(distinct)}};
  const std::string path = ResumeStatePath(spec.out_dir);
  const std::string tmp = absl::StrCat(path, ".tmp-", getpid());
  RETURN_IF_ERROR(WriteTextFile(tmp, file.dump() + "\n"));
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", ec.message()));
  return absl::OkStatus();
}

// The search to run: a fresh one, or with --resume the saved one, checked against this run's
// model, search set and search config (same flags → the same config).
absl::StatusOr<std::unique_ptr<search::EvolutionarySearch>> StartOrResume(
    const LocalJobSpec& spec, PreparedJob& job, const search::SearchConfig& config,
    TrackingEvaluator& tracker, StepContext& ctx) {
  ASSIGN_OR_RETURN(auto fresh, search::EvolutionarySearch::Create(&job.space(), config));
  const std::string path = ResumeStatePath(spec.out_dir);
  if (!std::filesystem::exists(path)) {
    if (spec.resume) spdlog::info("--resume: no {} yet; starting from the beginning", path);
    return fresh;
  }
  if (!spec.resume) {
    ctx.Warn(absl::StrCat(path,
                          " holds an interrupted run's search; starting over (pass --resume "
                          "to continue it)"));
    return fresh;
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return absl::DataLossError(absl::StrCat("--resume: cannot read ", path));
  const json file = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  auto refuse = [&path](const std::string& why) {
    return absl::FailedPreconditionError(
        absl::StrCat("--resume: ", path, ": ", why, " (remove the file to start over)"));
  };
  if (!file.is_object() || StringField(file, "format") != kResumeFormat) {
    return refuse("not a prune-local resume file (format)");
  }
  if (StringField(file, "model_dir") != spec.model_dir ||
      StringField(file, "dataset_sha256") != job.summary().dataset_sha256) {
    return refuse("saved for another --model or --samples");
  }
  // The saved losses count positions of the order they were scored in: this run scores in it too
  // (a file without one was written when the samples were scored in index order).
  std::vector<int> order(size_t(job.summary().num_samples));
  std::iota(order.begin(), order.end(), 0);
  if (file.contains("sample_order")) {
    const json& o = file["sample_order"];
    if (!o.is_array() || o.size() != order.size()) {
      return refuse(absl::StrCat("sample_order is not a list of ", order.size(), " positions"));
    }
    for (size_t j = 0; j < order.size(); ++j) {
      if (!o[j].is_number_integer()) return refuse("sample_order holds a non-integer");
      order[j] = o[j].get<int>();
    }
  }
  if (absl::Status s = job.UseSampleOrder(order); !s.ok()) return refuse(std::string(s.message()));
  const json& saved = file["search"];
  if (!saved.is_object() || !saved.contains("config") ||
      saved["config"] != fresh->state().ToJson()["config"]) {
    return refuse("saved with other search flags (the search config differs)");
  }
  absl::StatusOr<search::SearchState> state = search::SearchState::FromJson(saved);
  if (!state.ok()) return refuse(absl::StrCat("search: ", state.status().message()));
  absl::StatusOr<std::unique_ptr<search::EvolutionarySearch>> resumed_or =
      search::EvolutionarySearch::Resume(&job.space(), *std::move(state));
  if (!resumed_or.ok()) return refuse(absl::StrCat("search: ", resumed_or.status().message()));
  std::unique_ptr<search::EvolutionarySearch> resumed = *std::move(resumed_or);
  std::vector<search::Policy> distinct;
  if (!file.contains("distinct") || !file["distinct"].is_array() || !file.contains("evaluated") ||
      !file["evaluated"].is_array()) {
    return refuse("evaluated / distinct missing");
  }
  for (const json& p : file["distinct"]) {
    if (!IsPolicyJson(p)) return refuse("distinct: not a policy");
    distinct.push_back(p.get<search::Policy>());
  }
  tracker.Restore(file["evaluated"], std::move(distinct));
  ctx.progress().evaluations = int64_t(file["evaluated"].size());
  spdlog::info("--resume: continuing the search at generation {} ({} evaluations done) from {}",
               resumed->state().generation, file["evaluated"].size(), path);
  return resumed;
}

// Steps the search to the end, reporting progress and saving the resume state after every
// generation.
absl::Status StepToTheEnd(const LocalJobSpec& spec, const PreparedJob& job,
                          search::EvolutionarySearch& search, TrackingEvaluator& tracker,
                          StepContext& ctx) {
  JobProgress& progress = ctx.progress();
  const double search_start = ctx.ElapsedSeconds();
  while (!search.done()) {
    RETURN_IF_ERROR(ctx.CheckStop());
    RETURN_IF_ERROR(search.Step(tracker));
    RETURN_IF_ERROR(WriteResumeFile(spec, job, search, tracker));
    const search::GenerationStats& g = search.history().back();
    progress.generation = g.generation;
    progress.latest = g;
    progress.elapsed_seconds = ctx.ElapsedSeconds();
    const double per_gen = (ctx.ElapsedSeconds() - search_start) / (g.generation + 1);
    progress.eta_seconds = per_gen * (progress.generations - g.generation - 1);
    spdlog::debug(
        "generation {}/{}: best J {:.5f} loss {:.5f} acc {:.4f} flops {:.4f} ({} evaluations, "
        "{} cache hits, projector v{})",
        g.generation, spec.generations, g.best_fitness, g.best_loss, g.best_accuracy,
        g.best_flops_ratio, g.evaluations, g.cache_hits, g.projector_version);
    ctx.Generation();
  }
  return absl::OkStatus();
}

// EFFICIENTLLAVA / RANDOM_SEARCH: the evolutionary driver over the job's steps, then the audit
// and (--uniform-guard) the guard.
absl::Status RunSearch(const LocalJobSpec& spec, PreparedJob& job, StepContext& ctx,
                       FinalizeOptions& fin) {
  search::SearchConfig config = spec.ToSearchConfig(job.summary().num_samples);
  json options = SearchOptionsJson(spec, {});
  RETURN_IF_ERROR(AddSeeds(spec, job, config, options));
  TrackingEvaluator tracker(&job, &ctx);
  ASSIGN_OR_RETURN(auto search, StartOrResume(spec, job, config, tracker, ctx));
  JobProgress& progress = ctx.progress();
  progress.generations = spec.generations + 1;
  progress.planned_evaluations = search::NominalEvaluations(config) + (spec.uniform_guard ? 1 : 0);
  RETURN_IF_ERROR(StepToTheEnd(spec, job, *search, tracker, ctx));
  ASSIGN_OR_RETURN(search::ScoredPolicy best, search->Best());
  ASSIGN_OR_RETURN(fin.unit_ratios, job.space().UnitRatios(best.policy));
  for (const auto& g : search->history()) fin.history.push_back(g.ToJson());
  fin.evaluated = tracker.evaluated();
  fin.search_best = {{"hash", best.hash},
                     {"fitness", best.fitness},
                     {"loss", best.result.loss},
                     {"accuracy", best.result.accuracy},
                     {"omega", best.result.omega},
                     {"flops_ratio_nominal", best.flops_ratio},
                     {"projector_version", search->state().projector_version}};
  const double eta = search->state().eta.value_or(0.0);
  fin.eta = SearchEtaJson(spec, eta, search->history());
  options.update(SearchOptionsJson(spec, search->history()));
  if (!options.empty()) fin.search_options = std::move(options);
  fin.projector_version = job.latest_projector_version();
  if (spec.audit > 0) {
    ASSIGN_OR_RETURN(fin.audit, RunAudit(job, tracker.distinct(), best.policy,
                                         fin.projector_version, eta, spec.audit, ctx));
  }
  if (spec.uniform_guard) RETURN_IF_ERROR(RunUniformGuard(spec, job, ctx, *search, best, fin));
  return absl::OkStatus();
}

// OWL: layerwise ratios from the dense model's outlier ratios (Prepare computed them): UNSTRUCTURED
// shifts the deviations to the budget; under N:M the most-outlier layers stay dense while the
// budget allows. No search, no projector training.
absl::Status RunOwl(const LocalJobSpec& spec, const PreparedJob& job, FinalizeOptions& fin) {
  const search::PolicySpace& space = job.space();
  const std::vector<double>& outliers = job.summary().owl_outlier_ratios;
  ASSIGN_OR_RETURN(std::vector<double> deviations, search::OwlDeviations(outliers));
  const bool nm = spec.granularity == search::Granularity::kNM;
  ASSIGN_OR_RETURN(fin.unit_ratios, OwlUnitRatios(spec, job));
  double mean = 0;
  for (double r : fin.unit_ratios) mean += r / double(fin.unit_ratios.size());
  fin.owl = {{"outlier_multiple", search::kOwlOutlierMultiple},
             {"lambda", search::kOwlLambda},
             {"units", space.units().names},
             {"outlier_ratios", outliers},
             {"deviations", deviations},
             {"ratios", fin.unit_ratios},
             {"mean_ratio", mean},
             {"rule", nm ? "N:M: units made dense in decreasing outlier ratio while the budget "
                           "holds (stop at the first that does not fit)"
                         : "ratio = clamp(deviation + t, 0, max ratio), smallest t meeting the "
                           "budget"}};
  fin.eta = {{"value", nullptr}, {"mode", "unused (OWL has no fitness)"}};
  return absl::OkStatus();
}

// UNIFORM: one continuous ratio meeting the budget (N:M: every unit N:M, the budget having passed
// the N:M floor). No search, no projector training.
absl::Status RunUniform(const LocalJobSpec& spec, const PreparedJob& job, FinalizeOptions& fin) {
  ASSIGN_OR_RETURN(fin.unit_ratios, UniformUnitRatios(spec, job.space()));
  fin.uniform_ratio = fin.unit_ratios.empty() ? 0.0 : fin.unit_ratios[0];
  fin.eta = {{"value", nullptr}, {"mode", "unused (UNIFORM has no fitness)"}};
  return absl::OkStatus();
}

// --policy: the per-unit ratios of a policy.json, checked against this model's units, the job's
// granularity and unit, and the budget. No search, no projector training.
absl::Status RunGivenPolicy(const LocalJobSpec& spec, const PreparedJob& job,
                            FinalizeOptions& fin) {
  const std::string& path = spec.policy_path;
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--policy ", path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  const json p = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  auto bad = [&path](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("--policy ", path, ": ", what));
  };
  if (p.is_discarded()) return bad("not valid JSON");
  if (!p.is_object() || StringField(p, "format") != "prunesvc.policy.v1") {
    return bad("format: expected \"prunesvc.policy.v1\" (a prune-local policy.json)");
  }
  const std::string gran(search::GranularityName(spec.granularity));
  const std::string unit(search::UnitKindName(spec.unit));
  if (p.contains("granularity") && p["granularity"] != gran) {
    return bad(absl::StrCat("granularity ", p["granularity"].dump(), " differs from --granularity ",
                            gran));
  }
  if (p.contains("unit") && p["unit"] != unit) {
    return bad(absl::StrCat("unit ", p["unit"].dump(), " differs from --unit ", unit));
  }
  const search::PolicySpace& space = job.space();
  if (!p.contains("units") || !p["units"].is_array() ||
      p["units"].size() != size_t(space.num_units())) {
    return bad(absl::StrCat("units: expected an array of ", space.num_units(),
                            " units (this model with --unit ", unit, ")"));
  }
  std::vector<double> ratios;
  for (int u = 0; u < space.num_units(); ++u) {
    const json& entry = p["units"][u];
    const std::string field = absl::StrCat("units[", u, "]");
    if (StringField(entry, "name") != space.units().names[u]) {
      return bad(absl::StrCat(field, ".name: expected \"", space.units().names[u], "\""));
    }
    if (!entry.contains("ratio") || !entry["ratio"].is_number() ||
        !(entry["ratio"].get<double>() >= 0 && entry["ratio"].get<double>() <= space.max_ratio())) {
      return bad(absl::StrCat(field, ".ratio: expected a number in [0, ", space.max_ratio(), "]"));
    }
    ratios.push_back(entry["ratio"].get<double>());
  }
  ASSIGN_OR_RETURN(double flops, space.FlopsOfRatios(ratios));
  const double ratio = flops / space.dense_flops();
  if (!(flops <= spec.flops_budget * space.dense_flops())) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--policy %s costs %.6f of the dense FLOPs, above --flops-budget %g (pass "
                        "--flops-budget %.4f or more)",
                        path, ratio, spec.flops_budget, std::ceil(ratio * 1e4) / 1e4));
  }
  ASSIGN_OR_RETURN(std::string sha, Sha256OfFile(path));
  fin.unit_ratios = std::move(ratios);
  fin.given_policy = {{"path", std::filesystem::absolute(path).lexically_normal().string()},
                      {"sha256", sha},
                      {"flops_ratio_nominal", ratio}};
  fin.eta = {{"value", nullptr}, {"mode", "unused (--policy: no search)"}};
  return absl::OkStatus();
}

void WarnAboutFlags(const LocalJobSpec& spec, StepContext& ctx) {
  if (spec.eval_samples_path.empty()) {
    ctx.Warn(absl::StrCat("no --eval-samples: accuracy is measured on the search samples, which ",
                          spec.searching() ? "the search optimised" : "calibrated the masks",
                          "; it overstates held-out accuracy"));
  }
  if (spec.strategy == search::Strategy::kRandomSearch && spec.eta.has_value()) {
    ctx.Warn("--eta is ignored by RANDOM_SEARCH (η = 0 by definition)");
  }
  if (spec.strategy == search::Strategy::kRandomSearch &&
      (spec.eta_rule != search::EtaRule::kAuto || spec.estimator != search::Estimator::kNorm)) {
    ctx.Warn(
        "--eta-rule and --estimator do not change RANDOM_SEARCH's ranking (η = 0: the loss "
        "alone); its --uniform-guard compares losses");
  }
}

absl::StatusOr<JobResult> RunLocalJobImpl(const LocalJobSpec& spec_in, ProgressSink* sink) {
  LocalJobSpec spec = spec_in;
  spec.out_dir = NormalizeOutDir(spec.out_dir);
  RETURN_IF_ERROR(spec.Validate(/*dry_run=*/false));
  RETURN_IF_ERROR(CheckOutDir(spec.out_dir, spec.force));
  StepContext ctx(sink);
  FinalizeOptions fin;
  fin.started_at = UtcNow();
  fin.out_dir = spec.out_dir;
  fin.replace_out = spec.force;
  fin.command_line = spec.command_line;
  ASSIGN_OR_RETURN(fin.partial, PartialDir::Create(spec.out_dir, spec.force));
  fin.eval_batch_size = spec.eval_batch_size;
  fin.latency_repeats = spec.latency_repeats;

  ASSIGN_OR_RETURN(std::unique_ptr<PreparedJob> job,
                   PreparedJob::Prepare(spec.ToPrepareOptions(), ctx));
  WarnAboutFlags(spec, ctx);
  ctx.Phase(JobPhase::kSearch);
  if (!spec.policy_path.empty()) {
    RETURN_IF_ERROR(RunGivenPolicy(spec, *job, fin));
  } else if (spec.searching()) {
    RETURN_IF_ERROR(RunSearch(spec, *job, ctx, fin));
  } else if (spec.strategy == search::Strategy::kOwl) {
    RETURN_IF_ERROR(RunOwl(spec, *job, fin));
  } else {
    RETURN_IF_ERROR(RunUniform(spec, *job, fin));
  }
  fin.evaluations = ctx.progress().evaluations;
  RETURN_IF_ERROR(ctx.CheckStop());
  ASSIGN_OR_RETURN(JobResult result, job->Finalize(std::move(fin), ctx));
  std::error_code ec;
  if (!spec.keep_search_state) {
    std::filesystem::remove(ResumeStatePath(spec.out_dir), ec);  // done: nothing to resume
  }
  ctx.Phase(JobPhase::kDone);
  return result;
}

}  // namespace

absl::Status LocalJobSpec::Validate(bool dry_run) const {
  if (model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (samples_path.empty()) return absl::InvalidArgumentError("--samples is required");
  if (out_dir.empty() && !dry_run) return absl::InvalidArgumentError("--out is required");
  RETURN_IF_ERROR(JobSpec::Validate(FieldNaming::kFlag));
  if (threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--threads must be ≥ 0, got ", threads));
  }
  RETURN_IF_ERROR(model::ParseDeviceSpec(device).status());
  if (audit < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--audit must be ≥ 0, got ", audit));
  }
  if (audit > 0 && eval_samples_path.empty()) {
    return absl::InvalidArgumentError("--audit needs --eval-samples (it scores held-out data)");
  }
  if (!policy_path.empty() && (audit > 0 || uniform_guard || resume)) {
    return absl::InvalidArgumentError(
        "--policy applies a given policy: --audit, --uniform-guard and --resume need a search");
  }
  if (!policy_path.empty() && granularity == search::Granularity::kNM) {
    return absl::InvalidArgumentError("--policy with --granularity N_M is not supported yet");
  }
  if (resume && projector_every > 0) {
    return absl::InvalidArgumentError(
        "--resume needs --projector-every 0: the re-trained projector is not saved with the "
        "search state yet");
  }
  if (audit > 0 && !searching()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--audit needs a searching strategy (EFFICIENTLLAVA or RANDOM_SEARCH): ",
                     search::StrategyName(strategy), " evaluates a single policy"));
  }
  if (batch_size < 1 || eval_batch_size < 1 || latency_batch < 1 || latency_repeats < 1) {
    return absl::InvalidArgumentError("batch sizes and latency repeats must be ≥ 1");
  }
  if (activation_cache_mb < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--activation-cache-mb must be ≥ 0 (0 = keep no "
                     "activations across generations), got ",
                     activation_cache_mb));
  }
  return absl::OkStatus();
}

PrepareOptions LocalJobSpec::ToPrepareOptions() const {
  PrepareOptions o;
  o.spec = static_cast<const JobSpec&>(*this);
  o.model_dir = model_dir;
  o.samples_path = samples_path;
  o.eval_samples_path = eval_samples_path;
  o.device = device;
  o.threads = threads;
  o.batch_size = batch_size;
  o.activation_cache_bytes = int64_t(activation_cache_mb) << 20;
  o.latency_batch = latency_batch;
  return o;
}

absl::StatusOr<JobResult> RunLocalJob(const LocalJobSpec& spec, ProgressSink* sink) {
  return model::TorchGuarded("pruning job", [&] { return RunLocalJobImpl(spec, sink); });
}

std::string JobSummaryTable(const JobResult& r) {
  auto acc = [](const std::optional<double>& a) {
    return a ? absl::StrFormat("%.4f", *a) : std::string("-");
  };
  std::string out;
  absl::StrAppend(&out, absl::StrFormat("%-22s %12s %12s\n", "", "dense", "pruned"));
  absl::StrAppend(
      &out, absl::StrFormat("%-22s %12s %12s\n", absl::StrCat("accuracy (", r.accuracy_set, ")"),
                            acc(r.dense.accuracy), acc(r.pruned.accuracy)));
  absl::StrAppend(&out,
                  absl::StrFormat("%-22s %12.4f %12.4f\n", "loss", r.dense.loss, r.pruned.loss));
  absl::StrAppend(&out, absl::StrFormat("%-22s %12.2f %12.2f\n", "latency (ms/batch)",
                                        r.dense_latency_ms, r.pruned_latency_ms));
  absl::StrAppend(&out, absl::StrFormat("%-22s %12s %12.4f\n", "FLOPs ratio", "1", r.flops_ratio));
  absl::StrAppend(
      &out, absl::StrFormat("%-22s %12s %12.4f\n", "latency ratio", "1",
                            r.dense_latency_ms > 0 ? r.pruned_latency_ms / r.dense_latency_ms : 0));
  absl::StrAppend(&out, "\npolicy:\n");
  for (size_t u = 0; u < r.unit_names.size(); ++u) {
    absl::StrAppend(&out, absl::StrFormat("  %-40s %.4f\n", r.unit_names[u], r.unit_ratios[u]));
  }
  absl::StrAppend(&out, "\nartifact: ", r.out_dir, "\n");
  for (const std::string& w : r.warnings) absl::StrAppend(&out, "warning: ", w, "\n");
  return out;
}

}  // namespace prunesvc::prune

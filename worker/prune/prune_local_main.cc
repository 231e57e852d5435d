// prune-local: a whole pruning job in one process, no gRPC (docs/architecture.md §5) — for
// debugging and as the reference a distributed run must reproduce. The logic lives in
// worker/prune/job.h; this main parses flags, draws progress on stderr and prints the summary
// table on stdout.
// Exit codes: 0 ok; 2 unreachable budget, existing non-empty --out, bad flags or input, or an
// unsupported configuration; 1 other failures; 130/143 after SIGINT/SIGTERM (the job stops at
// the next safe point and removes its partial output directory).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/cli_exit.h"
#include "common/flags.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "common/status_macros.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/llava_eval.h"
#include "worker/prune/job.h"

namespace {
// The search options' flag defaults are EFFICIENTLLAVA's (JobSpec's member defaults).
const prunesvc::JobSpec kDefaults;
std::string EtaFlagDefault() { return kDefaults.eta ? absl::StrCat(*kDefaults.eta) : ""; }
}  // namespace

ABSL_FLAG(std::string, model, "", "LLaVA model directory (HF layout)");
ABSL_FLAG(std::string, samples, "", "search samples: directory or tar with samples.jsonl");
ABSL_FLAG(std::string, eval_samples, "",
          "held-out samples for the final accuracy (else the search set, with a warning)");
ABSL_FLAG(double, flops_budget, -1, "FLOPs budget b in (0, 1]: F(pruned) <= b * F(dense)");
ABSL_FLAG(std::string, strategy, "EFFICIENTLLAVA",
          "EFFICIENTLLAVA | UNIFORM | OWL | RANDOM_SEARCH");
ABSL_FLAG(
    std::string, mask_method, "WANDA",
    "search masks: MAGNITUDE | WANDA (SPARSEGPT is not nested: use it as --final-mask-method)");
ABSL_FLAG(std::string, final_mask_method, "",
          "artifact masks (UNSTRUCTURED): SPARSEGPT (OBS with error compensation; the default) | "
          "MAGNITUDE | WANDA. Refused with --granularity STRUCTURED, whose artifact is cut by the "
          "search's channel/head orders (--mask-method)");
ABSL_FLAG(std::string, unit, "layer", "layer | linear");
ABSL_FLAG(std::string, granularity, "UNSTRUCTURED",
          "UNSTRUCTURED (weights zeroed in place) | STRUCTURED (MLP channels and attention heads "
          "removed; the artifact is physically smaller; --unit layer only) | N_M (unit choices "
          "{dense, N:M}; see --nm)");
ABSL_FLAG(std::string, nm, "", "N:M pattern with --granularity N_M: 2:4 (default) | 4:8");
ABSL_FLAG(uint64_t, seed, 0, "search seed");
ABSL_FLAG(int, generations, 12, "generations after the initial population, [1, 1000]");
ABSL_FLAG(int, population, 32, "population size, [4, 1024]");
ABSL_FLAG(int, parents, 8,
          "survivors per generation (also the projector's top-k), [2, population)");
ABSL_FLAG(double, mutation, 0.2, "mutation probability per unit");
ABSL_FLAG(std::string, ratio_choices, "", "comma-separated ratios (default 0,0.1,...,0.8)");
ABSL_FLAG(std::string, eta, EtaFlagDefault(),
          "weight of the generalization term (PAIRED: the z): auto (chosen by --eta-rule, AUTO "
          "unless given) or a number >= 0; default: the strategy's (EFFICIENTLLAVA: --eta-rule "
          "SAMPLES, 1 from 32 search samples up and 0 below)");
ABSL_FLAG(
    std::string, estimator, std::string(prunesvc::EstimatorName(kDefaults.estimator)),
    "generalization term T of the fitness J = loss + eta*T: NORM (kept norm mass / sqrt(n), "
    "the default) | UCB (standard error of the per-sample losses; eta is the z of an upper "
    "confidence bound) | SPLIT (|loss on one half - loss on the other|) | CAPACITY "
    "(parameter-weighted mean squared ratio / sqrt(n): convex, pulls towards UNIFORM) | PAIRED "
    "(standard error of the per-sample loss differences against UNIFORM's policy; eta is "
    "the z of a lower confidence bound on the improvement over UNIFORM)");
ABSL_FLAG(std::string, eta_rule, std::string(prunesvc::search::EtaRuleName(kDefaults.eta_rule)),
          "how eta is chosen when --eta is not a number: SAMPLES (1 with at least 32 search "
          "samples, 0 below; the default) | AUTO (std(eta*T) = std(loss) over the first "
          "population; what --eta=auto or --estimator alone means) | CV (cross-validated on two "
          "halves of the search samples over the grid 0,0.1,0.3,1,3,10,30,100)");
ABSL_FLAG(bool, seed_with_uniform, kDefaults.seed_with_uniform,
          "EFFICIENTLLAVA: start the population with UNIFORM's continuous solution, snapped to "
          "the ratio grid and repaired into the budget band (default on; "
          "--seed-with-uniform=false turns it off)");
ABSL_FLAG(bool, seed_with_owl, kDefaults.seed_with_owl,
          "EFFICIENTLLAVA, --unit layer: start the population with OWL's solution too");
ABSL_FLAG(bool, repair_uniform_seed, kDefaults.repair_uniform_seed,
          "EFFICIENTLLAVA: repair the discrete uniform seed into the budget band like every other "
          "policy (default on; off, it may sit a whole ratio step under the budget)");
ABSL_FLAG(double, mutation_step, kDefaults.mutation_step,
          "EFFICIENTLLAVA: probability in [0, 1] that a mutation moves one grid step instead of "
          "jumping to a random other ratio (0 = always jump)");
ABSL_FLAG(int, slack_evaluations, kDefaults.slack_evaluations,
          "evaluations the final slack step may spend lowering units into the FLOPs left under "
          "the budget (RANDOM_SEARCH: exactly this many more random policies); 0 = off, "
          "[0, 100000]");
ABSL_FLAG(bool, race, kDefaults.race,
          "race each generation's candidates: stop scoring one that provably cannot reach the "
          "top --parents (same survivors and final policy as --race=false, fewer forwards)");
ABSL_FLAG(bool, uniform_guard, kDefaults.uniform_guard,
          "before finalizing, score UNIFORM's policy on the search samples with the search's "
          "fitness and keep it if it beats the search's pick (report.json \"guard\"; one more "
          "evaluation)");
ABSL_FLAG(bool, uniform_ratio_choice, kDefaults.uniform_ratio_choice,
          "EFFICIENTLLAVA (no effect under N_M): add UNIFORM's continuous ratio at the budget to "
          "the ratio choices, so UNIFORM's own policy is in the search space (with "
          "--seed-with-uniform: in the initial population); default on");
ABSL_FLAG(int, projector_every, kDefaults.projector_every,
          "train the projector every N generations (0 = never)");
ABSL_FLAG(int, projector_steps, 50, "Adam steps per projector training");
ABSL_FLAG(double, projector_lr, 1e-4, "projector learning rate");
ABSL_FLAG(double, projector_decay, 1e-3, "mu of the pull mu*|theta - theta0|^2");
ABSL_FLAG(int, threads, 0, "torch intra-op threads (0 = number of cores)");
ABSL_FLAG(std::string, device, "cpu",
          "cpu, cuda or cuda:N (a CUDA build of libtorch; docs/gpu.md)");
ABSL_FLAG(int, audit, 0,
          "after the search, score up to N of its evaluated policies on --eval-samples too "
          "(report.json audit: fitness vs held-out rank correlation); 0 = off");
ABSL_FLAG(int, batch, 16, "samples per forward pass during the search");
ABSL_FLAG(int, activation_cache_mb, 256,
          "MiB of decoder activations the search keeps across generations, so a candidate that "
          "agrees on its leading layers with one evaluated before starts after them (0 = none; "
          "the results are the same either way)");
ABSL_FLAG(bool, dry_run, false,
          "pre-flight only: reachable budget range, units, FLOPs, memory and time estimates");
ABSL_FLAG(std::string, out, "", "output directory (must not exist or be empty, unless --force)");
ABSL_FLAG(std::string, policy, "",
          "apply this policy.json (an artifact's, or {\"format\": \"prunesvc.policy.v1\", "
          "\"units\": [{\"name\", \"ratio\"}...]} in the model's unit order) instead of a search; "
          "its FLOPs must meet --flops-budget");
ABSL_FLAG(bool, resume, false,
          "continue the search an interrupted run with the same flags saved in "
          "OUT.search-state.json (written after every generation, removed on success); without "
          "one, start from the beginning. Needs --projector-every 0");
ABSL_FLAG(bool, keep_search_state, false,
          "keep OUT.search-state.json after success: the finished search with every "
          "evaluation's per-sample losses (scripts/paired_pick.py compares the pick with "
          "UNIFORM's policy from it)");
ABSL_FLAG(bool, force, false,
          "replace an existing --out; the old directory stays until the new artifact is "
          "complete");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");

namespace {

volatile std::sig_atomic_t g_signal = 0;

void OnSignal(int sig) { g_signal = sig; }

void InstallSignalHandlers() {
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// On a terminal: one line redrawn with \r (at most ~10×/s); otherwise one line per generation.
class CliProgress : public prunesvc::prune::ProgressSink {
 public:
  CliProgress() : tty_(isatty(STDERR_FILENO) == 1) {}

  void OnProgress(const prunesvc::prune::JobProgress& p) override {
    if (!tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (p.phase == last_phase_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_phase_ = p.phase;
    last_draw_ = now;
    Draw(p);
  }
  void OnGeneration(const prunesvc::prune::JobProgress& p) override {
    if (tty_) {
      Draw(p);
    } else {
      std::fprintf(stderr, "%s\n", Line(p).c_str());
      std::fflush(stderr);
    }
  }
  void OnWarning(const std::string& message) override {
    std::fprintf(stderr, "%sprune-local: warning: %s\n", tty_ ? "\r\033[K" : "", message.c_str());
    std::fflush(stderr);
  }
  bool StopRequested() override { return g_signal != 0; }
  void Finish() {
    if (tty_) std::fputs("\n", stderr);
  }

 private:
  static std::string Line(const prunesvc::prune::JobProgress& p) {
    std::string s = absl::StrCat("[", std::string(prunesvc::prune::JobPhaseName(p.phase)), "]");
    if (p.generations > 0) {
      // Generation 0 is the initial population; N more follow (--generations N).
      absl::StrAppend(&s, absl::StrFormat(" generation %d/%d  evaluations %d (nominal %d)",
                                          std::max(p.generation, 0), p.generations - 1,
                                          p.evaluations, p.planned_evaluations));
    }
    if (p.latest.has_value()) {
      absl::StrAppend(&s,
                      absl::StrFormat("  best J %.4f acc %.4f flops %.4f", p.latest->best_fitness,
                                      p.latest->best_accuracy, p.latest->best_flops_ratio));
    }
    absl::StrAppend(&s, absl::StrFormat("  elapsed %.0fs", p.elapsed_seconds));
    if (p.eta_seconds >= 0) absl::StrAppend(&s, absl::StrFormat("  ETA %.0fs", p.eta_seconds));
    return s;
  }
  void Draw(const prunesvc::prune::JobProgress& p) {
    std::fprintf(stderr, "\r\033[K%s", Line(p).c_str());
    std::fflush(stderr);
  }

  const bool tty_;
  prunesvc::prune::JobPhase last_phase_ = prunesvc::prune::JobPhase::kDone;
  std::chrono::steady_clock::time_point last_draw_;
};

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "prune-local: error: %s\n", prunesvc::model::OneLineError(status).c_str());
  if (status.code() == absl::StatusCode::kCancelled) return 128 + (g_signal ? g_signal : SIGINT);
  return prunesvc::ExitCodeForStatus(status);
}

// The issue-14 search options; ranges and combinations are JobSpec::Validate's (naming flags).
// Whether `flag` holds something else than its default. The search options' defaults are the
// strategy's (prunesvc::SetStrategy; the flags' defaults are EFFICIENTLLAVA's, from JobSpec{}),
// and a flag overrides them only then: `--strategy RANDOM_SEARCH --slack-evaluations 0` turns
// RANDOM_SEARCH's slack off, a flag left alone keeps each strategy's own default.
// On the command line, even at its default value (common/flags.h FlagGiven).
template <typename T>
bool Given(const absl::Flag<T>& flag) {
  return prunesvc::FlagGiven(absl::GetFlagReflectionHandle(flag).Name());
}

template <typename T>
void Override(const absl::Flag<T>& flag, T& field) {
  if (Given(flag)) field = absl::GetFlag(flag);
}

absl::Status SearchOptionsFromFlags(prunesvc::prune::LocalJobSpec& spec) {
  namespace search = prunesvc::search;
  if (Given(FLAGS_estimator)) {
    auto estimator = search::ParseEstimator(absl::GetFlag(FLAGS_estimator));
    if (!estimator.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--estimator: ", estimator.status().message()));
    }
    spec.estimator = *estimator;
  }
  if (Given(FLAGS_eta_rule)) {
    auto rule = search::ParseEtaRule(absl::GetFlag(FLAGS_eta_rule));
    if (!rule.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--eta-rule: ", rule.status().message()));
    }
    spec.eta_rule = *rule;
  }
  Override(FLAGS_seed_with_uniform, spec.seed_with_uniform);
  Override(FLAGS_seed_with_owl, spec.seed_with_owl);
  Override(FLAGS_repair_uniform_seed, spec.repair_uniform_seed);
  Override(FLAGS_mutation_step, spec.mutation_step);
  Override(FLAGS_slack_evaluations, spec.slack_evaluations);
  Override(FLAGS_uniform_guard, spec.uniform_guard);
  Override(FLAGS_uniform_ratio_choice, spec.uniform_ratio_choice);
  Override(FLAGS_race, spec.race);
  return absl::OkStatus();
}

absl::StatusOr<prunesvc::prune::LocalJobSpec> SpecFromFlags() {
  namespace search = prunesvc::search;
  prunesvc::prune::LocalJobSpec spec;
  spec.model_dir = absl::GetFlag(FLAGS_model);
  spec.samples_path = absl::GetFlag(FLAGS_samples);
  spec.eval_samples_path = absl::GetFlag(FLAGS_eval_samples);
  spec.out_dir = absl::GetFlag(FLAGS_out);
  spec.force = absl::GetFlag(FLAGS_force);
  spec.resume = absl::GetFlag(FLAGS_resume);
  spec.keep_search_state = absl::GetFlag(FLAGS_keep_search_state);
  spec.policy_path = absl::GetFlag(FLAGS_policy);
  spec.flops_budget = absl::GetFlag(FLAGS_flops_budget);
  if (spec.flops_budget == -1) return absl::InvalidArgumentError("--flops-budget is required");
  auto strategy = search::ParseStrategy(absl::GetFlag(FLAGS_strategy));
  if (!strategy.ok())
    return absl::InvalidArgumentError(absl::StrCat("--strategy: ", strategy.status().message()));
  prunesvc::SetStrategy(spec, *strategy);  // the search options' defaults
  auto mask = prunesvc::ParseMaskMethod(absl::GetFlag(FLAGS_mask_method));
  if (!mask.ok())
    return absl::InvalidArgumentError(absl::StrCat("--mask-method: ", mask.status().message()));
  spec.mask_method = *mask;
  {
    auto g = search::ParseGranularity(absl::GetFlag(FLAGS_granularity));
    if (!g.ok())
      return absl::InvalidArgumentError(absl::StrCat("--granularity: ", g.status().message()));
    prunesvc::SetGranularity(spec, *g);  // STRUCTURED: no final mask method
  }
  if (const std::string fm_name = absl::GetFlag(FLAGS_final_mask_method); !fm_name.empty()) {
    if (spec.granularity == search::Granularity::kStructured) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--final-mask-method ", fm_name,
          " does not apply to --granularity STRUCTURED: whole channels and heads are removed by "
          "the search's orders (scored with --mask-method); drop the flag"));
    }
    auto fm = prunesvc::ParseMaskMethod(fm_name);
    if (!fm.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--final-mask-method: ", fm.status().message()));
    }
    spec.final_mask_method = *fm;
  }
  auto unit = search::ParseUnitKind(absl::GetFlag(FLAGS_unit));
  if (!unit.ok())
    return absl::InvalidArgumentError(absl::StrCat("--unit: ", unit.status().message()));
  spec.unit = *unit;
  {
    const std::string nm = absl::GetFlag(FLAGS_nm);
    if (spec.granularity == search::Granularity::kNM) {
      auto p = prunesvc::ParseNmPattern(nm.empty() ? "2:4" : nm);
      if (!p.ok()) return p.status();
      spec.nm = *p;
    } else if (!nm.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--nm ", nm, " is only valid with --granularity N_M"));
    }
  }
  spec.seed = absl::GetFlag(FLAGS_seed);
  spec.generations = absl::GetFlag(FLAGS_generations);
  spec.population = absl::GetFlag(FLAGS_population);
  spec.parents = absl::GetFlag(FLAGS_parents);
  spec.mutation = absl::GetFlag(FLAGS_mutation);
  if (!absl::GetFlag(FLAGS_ratio_choices).empty()) {
    auto r = search::ParseRatioChoices(absl::GetFlag(FLAGS_ratio_choices));
    if (!r.ok())
      return absl::InvalidArgumentError(absl::StrCat("--ratio-choices: ", r.status().message()));
    spec.ratio_choices = *r;
  }
  const std::string eta = absl::GetFlag(FLAGS_eta);
  // --eta auto, or --eta-rule / --estimator without --eta: η is chosen by the rule, AUTO's unless
  // --eta-rule names one (the default SAMPLES rule is for a command that says nothing of η).
  if ((Given(FLAGS_eta) && eta == "auto") ||
      (!Given(FLAGS_eta) && (Given(FLAGS_eta_rule) || Given(FLAGS_estimator)))) {
    spec.eta.reset();
    if (!Given(FLAGS_eta_rule)) spec.eta_rule = search::EtaRule::kAuto;
  }
  if (Given(FLAGS_eta) && eta != "auto") {
    double v = 0;
    if (!absl::SimpleAtod(eta, &v) || !std::isfinite(v) || v < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--eta must be \"auto\" or a finite number ≥ 0, got \"", eta, "\""));
    }
    spec.eta = v;
  }
  RETURN_IF_ERROR(SearchOptionsFromFlags(spec));
  spec.projector_every = absl::GetFlag(FLAGS_projector_every);
  spec.projector_steps = absl::GetFlag(FLAGS_projector_steps);
  spec.projector_lr = absl::GetFlag(FLAGS_projector_lr);
  spec.projector_decay = absl::GetFlag(FLAGS_projector_decay);
  spec.threads = absl::GetFlag(FLAGS_threads);
  spec.device = absl::GetFlag(FLAGS_device);
  spec.batch_size = absl::GetFlag(FLAGS_batch);
  spec.activation_cache_mb = absl::GetFlag(FLAGS_activation_cache_mb);
  spec.audit = absl::GetFlag(FLAGS_audit);
  return spec;
}

// argv as one line a POSIX shell reads back into the same words (for report.json).
std::string ShellQuoted(int argc, char** argv) {
  std::string line;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i > 0) line += ' ';
    const bool plain = !arg.empty() && arg.find_first_not_of(
                                           "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                           "0123456789-_=.,/:+@%") == std::string::npos;
    if (plain) {
      line += arg;
    } else {
      line += '\'' + absl::StrReplaceAll(arg, {{"'", "'\\''"}}) + '\'';
    }
  }
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  const std::vector<std::string> positional = prunesvc::ParseFlags(
      argc, argv,
      "prune-local --model DIR --samples DIR|TAR [--eval-samples DIR|TAR] --flops-budget B "
      "[--strategy EFFICIENTLLAVA|UNIFORM|OWL|RANDOM_SEARCH] [--mask-method MAGNITUDE|WANDA] "
      "[--final-mask-method ...] [--unit layer|linear] "
      "[--granularity UNSTRUCTURED|STRUCTURED|N_M] [--nm 2:4|4:8] [--seed N] [--generations N] "
      "[--population N] [--parents N] [--mutation P] [--ratio-choices LIST] [--eta auto|X] "
      "[--estimator NORM|UCB|SPLIT|CAPACITY|PAIRED] [--eta-rule AUTO|CV] [--seed-with-uniform] "
      "[--seed-with-owl] [--repair-uniform-seed] [--mutation-step P] [--slack-evaluations N] "
      "[--uniform-guard] [--uniform-ratio-choice] [--projector-every N] [--projector-steps N] "
      "[--threads N] [--device "
      "cpu|cuda:N] [--dry-run] "
      "--out DIR");
  prunesvc::InitLogging("prune-local", absl::GetFlag(FLAGS_log_level));
  if (positional.size() > 1) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", positional[1], "\" (flags only)")));
  }
  InstallSignalHandlers();
  auto spec = SpecFromFlags();
  if (!spec.ok()) return Fail(spec.status());
  spec->command_line = ShellQuoted(argc, argv);
  if (!spec->model_dir.empty()) {  // an artifact directory is accepted as --model (its model/)
    auto model_dir = prunesvc::model::ResolveModelDir(spec->model_dir);
    if (!model_dir.ok()) return Fail(model_dir.status());
    spec->model_dir = *model_dir;
  }

  if (absl::GetFlag(FLAGS_dry_run)) {
    auto pre = prunesvc::prune::RunPreflight(*spec);
    if (!pre.ok()) return Fail(pre.status());
    std::fputs(prunesvc::prune::PreflightText(*spec, *pre).c_str(), stdout);
    std::fflush(stdout);
    if (!pre->budget_reachable) return Fail(absl::FailedPreconditionError(pre->budget_error));
    return 0;
  }

  CliProgress progress;
  auto result = prunesvc::prune::RunLocalJob(*spec, &progress);
  progress.Finish();
  if (!result.ok()) return Fail(result.status());
  std::fputs(prunesvc::prune::JobSummaryTable(*result).c_str(), stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}

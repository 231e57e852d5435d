// search-bench (issue 20, figure 2): what one candidate evaluation costs inside a real search,
// as a fraction of one dense forward over the same samples, on the bundled model — measured in
// one process, same threads, side by side (docs/PERFORMANCE.md; nothing asserts a time).
//
// The dense forward: the model's batched scoring forward over the search samples with the
// vision features cached (what a candidate evaluation would cost if nothing were shared; the
// vision-feature cache is already there). The search: the default EFFICIENTLLAVA search of
// prune-local (population 32, 8 parents, 12 generations), run three times on the same
// prepared job and seed (the fitness is prune-local's default, PAIRED with η = 1; --estimator and
// --eta set another, e.g. --estimator=NORM --eta=0 for the loss alone):
//   exhaustive   every candidate through every layer and every sample (race off, no sharing);
//   prefix       the generation's candidates share leading layers (CandidateEvaluator::
//                EvaluateMany's prefix walk), and with the activations kept across
//                generations (--activation-cache-mb, prune-local's default 256; 0 = none) with
//                earlier generations' candidates too, every sample;
//   prefix+race  the default: shared prefixes and racing (common/racing.h).
// Amortised cost = seconds inside the evaluator / candidates it scored (cache hits are free and
// not counted). The three runs must end on the same policy with the same top parents in every
// generation; the bench fails (exit 1) otherwise.
//
// Usage: search-bench --model=DIR --samples=DIR [--threads=N] [--budget=B]
//                     [--granularity=UNSTRUCTURED|STRUCTURED] [--seed=S] [--repeats=K]
//                     [--batch=N] [--dump=FILE] [--estimator=E] [--eta=X]
//                     [--activation-cache-mb=MB]
// --batch is the scoring batch of the search (prune-local --batch-size); the dense forward is
// timed at batches 8, 16, 32 and 64 and the fastest is the denominator.
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/calibration_estimate.h"
#include "common/evolution.h"
#include "common/job_spec.h"
#include "common/malloc_tuning.h"
#include "worker/model/scoring.h"
#include "worker/prune/calibration.h"
#include "worker/prune/progress.h"
#include "worker/prune/steps.h"

namespace {

namespace prune = prunesvc::prune;
namespace search = prunesvc::search;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Token rows of the samples (each one's expanded length less the last token) and the rows their
// forwards run in batches of `batch`, every sample padded to its batch's longest.
struct TokenRows {
  int64_t real = 0, padded = 0;
};
TokenRows RowsInBatches(prune::CandidateEvaluator& ev, int batch) {
  const int n = int(ev.scoring_samples().size());
  TokenRows r;
  for (int s = 0; s < n; s += batch) {
    int64_t mx = 0;
    const int e = std::min(n, s + batch);
    for (int i = s; i < e; ++i) {
      const int64_t len = ev.model().ExpandedLength(ev.scoring_samples()[i].token_ids) - 1;
      r.real += len;
      mx = std::max(mx, len);
    }
    r.padded += mx * (e - s);
  }
  return r;
}

// What the evaluator spent in one search.
struct Counts {
  double seconds = 0, layer_seconds = 0, scoring_seconds = 0;
  int64_t candidates = 0, layer_runs = 0, layer_runs_exhaustive = 0, samples = 0;
};

// Times the prepared job's Evaluate calls (what prune-local and a worker run).
class TimedEvaluator : public search::PolicyEvaluator {
 public:
  explicit TimedEvaluator(prune::PreparedJob* job) : job_(job) {}
  absl::StatusOr<std::vector<search::EvalResult>> Evaluate(const std::vector<search::Policy>& ps,
                                                           int v) override {
    return EvaluateRaced(ps, v, {});
  }
  absl::StatusOr<std::vector<search::EvalResult>> EvaluateRaced(
      const std::vector<search::Policy>& ps, int v, const search::RaceLimit& race) override {
    const prune::ManyTiming before = job_->candidate_evaluator().total_many_timing();
    const auto t0 = Clock::now();
    auto r = job_->Evaluate(ps, v, ctx_, nullptr, {}, race);  // as prune-local and workers do
    c.seconds += Since(t0);
    c.candidates += int64_t(ps.size());
    const prune::ManyTiming& t = job_->candidate_evaluator().total_many_timing();
    c.layer_runs += t.layer_runs - before.layer_runs;
    c.layer_seconds += t.layer_seconds - before.layer_seconds;
    c.scoring_seconds += t.scoring_seconds - before.scoring_seconds;
    c.layer_runs_exhaustive += t.layer_runs_exhaustive - before.layer_runs_exhaustive;
    if (r.ok()) {
      for (const search::EvalResult& e : *r) {
        c.samples += e.raced_out ? e.samples_scored : int64_t(e.sample_losses.size());
        if (dump != nullptr) {
          std::fprintf(dump, "%s %.17g", race.active() ? "R" : "E", race.threshold);
          for (double x : e.sample_losses) std::fprintf(dump, " %.9g", x);
          std::fprintf(dump, "\n");
        }
      }
    }
    return r;
  }
  absl::StatusOr<search::ProjectorUpdate> TrainProjector(const std::vector<search::Policy>& top,
                                                         int from) override {
    return job_->local_evaluator().TrainProjector(top, from);
  }
  FILE* dump = nullptr;
  Counts c;

 private:
  prune::PreparedJob* job_;
  prune::StepContext ctx_;
};

struct Run {
  const char* name;
  bool prefix, race;
  double per_candidate = 0;  // seconds
  Counts counts;
  std::vector<std::vector<std::string>> tops;
  std::string best;
  int raced_out = 0;
};

std::string Flag(int argc, char** argv, const char* name, const char* def) {
  const std::string p = std::string("--") + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], p.c_str(), p.size()) == 0) return argv[i] + p.size();
  }
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  const std::string model = Flag(argc, argv, "model", "");
  const std::string samples = Flag(argc, argv, "samples", "");
  int threads = 0, seed = 0, repeats = 1, batch = 16, cache_mb = 256;
  double budget = 0;
  if (model.empty() || samples.empty() ||
      !absl::SimpleAtoi(Flag(argc, argv, "threads", "2"), &threads) ||
      !absl::SimpleAtoi(Flag(argc, argv, "seed", "0"), &seed) ||
      !absl::SimpleAtoi(Flag(argc, argv, "repeats", "1"), &repeats) ||
      !absl::SimpleAtoi(Flag(argc, argv, "batch", "16"), &batch) ||
      !absl::SimpleAtoi(Flag(argc, argv, "activation-cache-mb", "256"), &cache_mb) ||
      cache_mb < 0 || !absl::SimpleAtod(Flag(argc, argv, "budget", "0.35"), &budget)) {
    std::fprintf(stderr,
                 "usage: search-bench --model=DIR --samples=DIR [--threads=N] [--budget=B] "
                 "[--granularity=G] [--seed=S] [--repeats=K] [--estimator=E] [--eta=X] "
                 "[--activation-cache-mb=MB]\n");
    return 2;
  }
  prune::PrepareOptions opt;
  opt.model_dir = model;
  opt.samples_path = samples;
  opt.threads = threads;
  opt.batch_size = batch;
  opt.activation_cache_bytes = int64_t(cache_mb) << 20;
  opt.spec.flops_budget = budget;
  opt.spec.seed = uint64_t(seed);
  auto granularity = search::ParseGranularity(Flag(argc, argv, "granularity", "UNSTRUCTURED"));
  if (!granularity.ok()) {
    std::fprintf(stderr, "search-bench: %s\n", granularity.status().ToString().c_str());
    return 2;
  }
  prunesvc::SetGranularity(opt.spec, *granularity);
  auto estimator = search::ParseEstimator(Flag(
      argc, argv, "estimator", std::string(search::EstimatorName(opt.spec.estimator)).c_str()));
  // Without --eta, η is the spec's default: its rule (SAMPLES: 1 with these 64 samples).
  const std::string eta_flag = Flag(argc, argv, "eta", "");
  double eta = 0;
  if (!estimator.ok() || (!eta_flag.empty() && (!absl::SimpleAtod(eta_flag, &eta) || eta < 0))) {
    std::fprintf(stderr,
                 "search-bench: --estimator must be NORM|UCB|SPLIT|CAPACITY|PAIRED and "
                 "--eta a number >= 0\n");
    return 2;
  }
  opt.spec.estimator = *estimator;
  if (!eta_flag.empty()) opt.spec.eta = eta;
  const std::string eta_text =
      opt.spec.eta.has_value() ? absl::StrCat(*opt.spec.eta)
                               : absl::StrCat("by rule ", search::EtaRuleName(opt.spec.eta_rule));
  std::printf("fitness: estimator %s, eta %s\n",
              std::string(search::EstimatorName(opt.spec.estimator)).c_str(), eta_text.c_str());
  prune::StepContext ctx;
  // Work done once across jobs: this job prepares alone and shares its preparation
  // (preparation_cache.h) as a worker does; a second job of the same inputs (another seed and
  // budget) then prepares from it. Timed side by side: what the second job on a worker pays.
  prune::PreparationCache preparations(1);
  opt.preparations = &preparations;
  opt.preparation_context = "search-bench";
  auto t_prepare = Clock::now();
  auto job = prune::PreparedJob::Prepare(opt, ctx);
  if (!job.ok()) {
    std::fprintf(stderr, "search-bench: %s\n", job.status().ToString().c_str());
    return 1;
  }
  const double prepare_alone = Since(t_prepare);
  std::string prepare_line;
  {
    prune::PrepareOptions other = opt;
    other.spec.seed = opt.spec.seed + 1;
    other.spec.flops_budget = std::min(0.9, opt.spec.flops_budget + 0.1);
    t_prepare = Clock::now();
    auto second = prune::PreparedJob::Prepare(other, ctx);
    const double prepare_shared = Since(t_prepare);
    if (!second.ok() || !(*second)->summary().shared_preparation) {
      std::fprintf(stderr, "search-bench: the second job did not share the preparation\n");
      return 1;
    }
    prepare_line = absl::StrFormat(
        "prepare: %.2f s alone, %.2f s for a second job of the same inputs from the shared "
        "preparation (%.2f)",
        prepare_alone, prepare_shared, prepare_shared / prepare_alone);
  }
  prune::CandidateEvaluator& ev = (*job)->candidate_evaluator();
  const int n = int(ev.scoring_samples().size());
  // One dense forward over the same samples (features cached), best of 5 after a warm-up.
  if (!ev.RestoreDense().ok()) return 1;
  double dense = 1e30;
  int dense_batch = 0;
  for (int b : {8, 16, 32, 64}) {
    for (int k = 0; k < 4; ++k) {
      const auto t0 = Clock::now();
      if (!prunesvc::model::ScoreSamples(ev.model(), ev.scoring_samples(), {.batch_size = b})
               .ok()) {
        return 1;
      }
      const double t = Since(t0);
      if (k > 0 && t < dense) {
        dense = t;
        dense_batch = b;
      }
    }
  }
  // The same dense forward through the pass API (StartPass / RunLayer / FinishPass) at the search's
  // batch, and ScoreSamples at that batch: what each costs in this process.
  {
    const int b = ev.options().batch_size;
    const int layers = ev.model().config().text.num_hidden_layers;
    const int vocab = ev.model().config().text.vocab_size;
    double via_pass = 1e30, via_score = 1e30;
    for (int k = 0; k < 4; ++k) {
      auto t0 = Clock::now();
      for (int s = 0; s < n; s += b) {
        const auto part = absl::MakeConstSpan(ev.scoring_samples()).subspan(s, std::min(b, n - s));
        auto pass = ev.model().StartPass(prunesvc::model::ScoringInputs(part));
        if (!pass.ok()) return 1;
        at::Tensor x = pass->input();
        for (int l = 0; l < layers; ++l) x = *ev.model().RunLayer(*pass, l, x);
        auto logits = ev.model().FinishPass(*pass, x);
        std::vector<prunesvc::model::SampleScore> sc(part.size());
        if (!logits.ok() ||
            !prunesvc::model::ScoresFromLogits(part, *logits, vocab, false, absl::MakeSpan(sc))
                 .ok()) {
          return 1;
        }
      }
      if (k > 0) via_pass = std::min(via_pass, Since(t0));
      t0 = Clock::now();
      if (!prunesvc::model::ScoreSamples(ev.model(), ev.scoring_samples(), {.batch_size = b})
               .ok()) {
        return 1;
      }
      if (k > 0) via_score = std::min(via_score, Since(t0));
    }
    std::printf("dense at batch %d: ScoreSamples %.2f ms, pass API %.2f ms\n", b, via_score * 1e3,
                via_pass * 1e3);
  }
  // Figure 7: the bundled model's calibration per sample, measured (Calibrate, as Prepare runs
  // it), beside the estimate built from its operations at the same shapes
  // (bench/calibration_estimate.h, the method sparsegpt-bench applies to LLaVA-1.5-7B).
  std::string calibration_line;
  {
    const int cb = ev.options().calibration_batch_size;
    double measured[2] = {1e30, 1e30};
    for (int gram = 0; gram < 2; ++gram) {
      for (int k = 0; k < 3; ++k) {
        const auto t0 = Clock::now();
        if (!prune::Calibrate(ev.model(), ev.scoring_samples(),
                              {.batch_size = cb, .collect_gram = gram == 1})
                 .ok()) {
          return 1;
        }
        measured[gram] = std::min(measured[gram], Since(t0) / n);
      }
    }
    const auto& t = ev.model().config().text;
    const prunesvc::bench::CalibrationShape shape{
        .rows = RowsInBatches(ev, cb).padded / n,  // the rows Calibrate's batches run
        .hidden = t.hidden_size,
        .q_width = int64_t(t.num_attention_heads) * t.head_dim,
        .kv_width = int64_t(t.num_key_value_heads) * t.head_dim,
        .mlp = t.intermediate_size,
        .layers = t.num_hidden_layers};
    const prunesvc::bench::CalibrationEstimate est =
        prunesvc::bench::EstimateCalibration(shape, 20);
    calibration_line = absl::StrFormat(
        "calibration per sample (batch %d, %lld rows): measured %.3f ms (‖X‖²) / %.3f ms (with "
        "XᵀX); estimated from its operations %.3f / %.3f ms",
        cb, (long long)shape.rows, measured[0] * 1e3, measured[1] * 1e3,
        est.PerSample(false, shape.layers) * 1e3, est.PerSample(true, shape.layers) * 1e3);
  }
  std::vector<Run> runs = {
      {"exhaustive", false, false}, {"prefix", true, false}, {"prefix+race", true, true}};
  for (int rep = 0; rep < repeats; ++rep) {
    for (Run& r : runs) {
      ev.set_prefix_sharing(r.prefix);
      ev.ClearActivationCache();  // each search starts cold: it must not find the last one's
      search::SearchConfig c = (*job)->spec().ToSearchConfig(n);
      c.race = r.race;
      auto s = search::EvolutionarySearch::Create(&(*job)->space(), c);
      if (!s.ok()) {
        std::fprintf(stderr, "search-bench: %s\n", s.status().ToString().c_str());
        return 1;
      }
      TimedEvaluator timed(job->get());
      const std::string dump_path = Flag(argc, argv, "dump", "");
      if (!dump_path.empty() && !r.race && !r.prefix)
        timed.dump = std::fopen(dump_path.c_str(), "w");
      std::vector<std::vector<std::string>> tops;
      int raced = 0;
      while (!(*s)->done()) {
        const absl::Status st = (*s)->Step(timed);
        if (!st.ok()) {
          std::fprintf(stderr, "search-bench: %s\n", st.ToString().c_str());
          return 1;
        }
        std::vector<std::string> top;
        for (const search::ScoredPolicy& sp : (*s)->Ranking()) {
          if (int(top.size()) == c.parents) break;
          top.push_back(sp.hash);
        }
        tops.push_back(std::move(top));
        raced += (*s)->history().back().raced_out;
      }
      if (timed.dump != nullptr) std::fclose(timed.dump);
      timed.dump = nullptr;
      const double per = timed.c.seconds / double(std::max<int64_t>(1, timed.c.candidates));
      if (rep == 0 || per < r.per_candidate) r.per_candidate = per;  // best of the repeats
      r.counts = timed.c;
      r.tops = std::move(tops);
      r.best = (*s)->Best()->hash;
      r.raced_out = raced;
    }
  }
  ev.set_prefix_sharing(true);
  bool same = true;
  for (const Run& r : runs) same = same && r.tops == runs[0].tops && r.best == runs[0].best;
  std::printf("threads %d, %d search samples (batch %d), %s, budget %.2f, seed %d\n",
              at::get_num_threads(), n, ev.options().batch_size,
              std::string(search::GranularityName(*granularity)).c_str(), budget, seed);
  std::printf("dense forward over the search samples   %.2f ms (fastest batch: %d)\n", dense * 1e3,
              dense_batch);
  std::printf("FLOPs of that forward (FLOPs model)     %.4g\n",
              (*job)->space().dense_flops() * double(n));
  std::printf("%s\n", calibration_line.c_str());
  std::printf("%s\n", prepare_line.c_str());
  {  // Padding: token rows the batches run vs the samples' own.
    const TokenRows rows = RowsInBatches(ev, ev.options().batch_size);
    std::printf("token rows %lld, padded to %lld (%.0f %% padding)\n", (long long)rows.real,
                (long long)rows.padded,
                100.0 * double(rows.padded - rows.real) / double(rows.padded));
  }
  for (const Run& r : runs) {
    const Counts& t = r.counts;
    std::printf(
        "%-12s %4lld candidates  %.2f ms each = %.3f of a dense forward  (layers run %.2f, "
        "samples scored %.2f, raced out %d)\n",
        r.name, (long long)t.candidates, r.per_candidate * 1e3, r.per_candidate / dense,
        double(t.layer_runs) / double(std::max<int64_t>(1, t.layer_runs_exhaustive)),
        double(t.samples) / double(std::max<int64_t>(1, t.candidates * n)), r.raced_out);
    std::printf("             time in layers %.0f %%, in scoring %.0f %%, elsewhere %.0f %%\n",
                100 * t.layer_seconds / t.seconds, 100 * t.scoring_seconds / t.seconds,
                100 * (t.seconds - t.layer_seconds - t.scoring_seconds) / t.seconds);
  }
  std::printf("same top parents every generation and same final policy: %s\n", same ? "yes" : "NO");
  return same ? 0 : 1;
}

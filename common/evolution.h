// The EfficientLLaVA evolutionary search and the RANDOM_SEARCH baseline (docs/architecture.md §5),
// as a torch-free step-wise driver: prune-local runs it in-process, the scheduler later drives it
// with remote evaluation and checkpoints its state after every generation.
//
// One Step() = one generation g (0 = the initial population, then `generations` more):
//  1. score the population under the current projector version: the cache misses, deduplicated,
//     in population order, go to PolicyEvaluator::Evaluate in one batch — or, with racing
//     (SearchConfig::race, racing.h), to EvaluateRaced with the survivors' threshold; a first
//     population with η known in advance sends its first `parents` misses whole first;
//  2. on the first population, resolve η (explicit, 0 for RANDOM_SEARCH, else auto:
//     η = std(L)·√n / std(Ω) with population stds (÷ N) over the first population, so
//     std(η·Ω/√n) = std(L); 0 when std(Ω) = 0, i.e. ≤ 1e-12·max(1, |mean Ω|), rounding level);
//  3. rank by fitness J = L + η·Ω/√n ascending, ties by policy hash (lexicographic hex);
//  4. EFFICIENTLLAVA, g ≥ 1 and g % projector_every == 0: train the projector on the top
//     `parents` policies, then re-score and re-rank the population under the new version;
//  5. record GenerationStats; unless g is the last generation, build the next population: the
//     top `parents` survive (elitism), children fill the rest (below), everything deduplicated.
// Children (EFFICIENTLLAVA), per child: parent a = UniformInt(k), parent b = another parent
// (UniformInt(k − 1), skipping a; a itself when k = 1); then per unit in order: Bernoulli(0.5)
// picks a's or b's index (uniform crossover), Bernoulli(mutation) decides a mutation, which
// draws a *different* ratio index uniformly (UniformInt(|R| − 1), skipping the current one) — a
// jump anywhere in R rather than ±1, so a unit can leave a poor region in one generation; the
// repair pulls the child back into the budget band. Then RepairToBudget; a child whose hash is
// already in the population is discarded. After 20 × (children needed) attempts, fresh random
// feasible policies fill the remaining slots (same attempt bound); if the feasible space is too
// small, the population shrinks rather than repeating a policy.
// RANDOM_SEARCH uses the same schedule with η = 0, no projector training, random feasible
// policies as the initial population and as "children", deduplicated against every policy
// evaluated so far — so it evaluates exactly population + generations·(population − parents)
// distinct policies when the space allows, the nominal count of the evolutionary search.
//
// Opt-in options (SearchConfig, issue 14; all off by default, and then nothing above changes —
// not a draw, not an evaluation, not a byte of the history JSON):
//  - estimator / eta_rule / eta_grid: the generalization term T of J = L̂ + η·T and how η is
//    resolved (estimators.h). AUTO generalises step 2 to std(η·T) = std(L) (NORM keeps the formula
//    above bit for bit). CV chooses η once, on the first population (like AUTO): the first
//    population is the most diverse set the search ever scores (random feasible policies), and a
//    fixed η keeps J stationary, so an elite's fitness never changes between generations; later
//    populations are concentrated around the elites and would rank a narrow band. SAMPLES sets η
//    from num_samples alone (estimators.h SamplesEta), before the first population. UCB, SPLIT,
//    PAIRED and CV need the evaluator's per-sample losses; a whole-set result without them fails
//    the Step (FAILED_PRECONDITION). The permutations they use come from Prng(seed).Fork, never
//    from the search's stream. GenerationStats records the estimator, the η method and CV's ρ.
//    PAIRED compares every policy with SearchState::reference, the uniform seed below: scored
//    whole as the first population's first policy, and again (one counted evaluation) under each
//    new projector version before the population is re-scored.
//  - seed_unit_ratios, repair_uniform_seed: the initial population is the uniform seed (repaired
//    if asked: RepairToBudget, drawing from the search's Prng), then each continuous seed snapped
//    to the grid and repaired, then random feasible policies; duplicates dropped.
//  - mutation_step: a mutation moves one grid step with that probability (one extra Bernoulli
//    per mutation, only when the option is > 0), else jumps as above (CrossoverAndMutate).
//  - slack_evaluations: after the last generation is ranked, the slack step greedily lowers units
//    of the best policy one step at a time while F stays ≤ b·F_dense and fitness improves,
//    spending at most slack_evaluations evaluations (counted in the generation's `evaluations`
//    and total_evaluations); its neighbours join the final ranking. Deterministic: candidates in
//    unit order, the uncached ones cheapest in added FLOPs first, the best by fitness then hash.
//    RANDOM_SEARCH instead evaluates exactly slack_evaluations more random feasible policies, so
//    NominalEvaluations (which includes them) stays its exact count and an upper bound on what the
//    search proposes: the baseline never gets fewer evaluations than the search it is compared to.
//    Projector re-scoring (EFFICIENTLLAVA only) is not part of the nominal count, as before.
//
// Determinism: every random draw comes from the state's Prng in the order above; evaluation
// results never steer the Prng except through the ranking. For a fixed seed and evaluator
// results, the evaluated sequence and the final policy are identical, also across
// ToJson()/FromJson() at any generation boundary. Step() is transactional: if the evaluator
// fails, the state is unchanged and Step() may be retried.
//
// Thread-compatible: one driver per job; the PolicySpace must outlive it.
#ifndef PRUNESVC_COMMON_EVOLUTION_H_
#define PRUNESVC_COMMON_EVOLUTION_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/estimators.h"
#include "common/policy.h"
#include "common/prng.h"
#include "common/racing.h"
#include "nlohmann/json.hpp"

namespace prunesvc::search {

// UNIFORM and OWL solve continuous ratios (PolicySpace::ShiftToBudget); only EFFICIENTLLAVA and
// RANDOM_SEARCH run through EvolutionarySearch.
enum class Strategy { kEfficientLlava, kUniform, kOwl, kRandomSearch };
// "EFFICIENTLLAVA" | "UNIFORM" | "OWL" | "RANDOM_SEARCH".
absl::StatusOr<Strategy> ParseStrategy(absl::string_view name);
absl::string_view StrategyName(Strategy strategy);

struct EvalResult {
  double loss = 0;      // mean answer loss on the n search samples
  double accuracy = 0;  // on the same samples
  double omega = 0;     // Ω(π): parameter-weighted kept norm mass, in [0, 1]
  // Per-sample answer losses in sample order (their mean is `loss`); empty = the evaluator did
  // not provide them. The UCB, SPLIT and PAIRED estimators and cross-validated η need them (one per
  // search sample); the default NORM fitness does not read them.
  std::vector<double> sample_losses;
  // Racing (racing.h): the evaluator stopped after `samples_scored` samples because the policy
  // cannot reach the top `parents`; then loss is the lower bound S_k / n, accuracy is 0 (not
  // measured) and sample_losses holds those k. False: a whole-set result.
  bool raced_out = false;
  int samples_scored = 0;  // raced out only
};

// report.json's "evaluated" entry for one evaluation: {hash, projector_version, loss, accuracy,
// flops_ratio} (the nominal FLOPs ratio of the grid policy). prune-local and the service write the
// same entries (report.html plots them).
nlohmann::json EvaluatedJson(const std::string& hash, int projector_version,
                             const EvalResult& result, double flops_ratio);

struct ProjectorUpdate {
  int version = 0;  // the new version; must be greater than the one trained from
  double loss_before = 0;
  double loss_after = 0;
};

class PolicyEvaluator {
 public:
  virtual ~PolicyEvaluator() = default;
  // Evaluates a batch (the driver batches one generation's cache misses, all distinct). Returns
  // one finite result per policy, in order. An error fails the Step.
  virtual absl::StatusOr<std::vector<EvalResult>> Evaluate(const std::vector<Policy>& policies,
                                                           int projector_version) = 0;
  // Evaluate with a racing limit (racing.h): a policy whose bound exceeds race.threshold may come
  // back raced out. The default ignores the limit (whole-set results are always valid).
  virtual absl::StatusOr<std::vector<EvalResult>> EvaluateRaced(const std::vector<Policy>& policies,
                                                                int projector_version,
                                                                const RaceLimit& race) {
    (void)race;
    return Evaluate(policies, projector_version);
  }
  // Projector training on the top-k (EFFICIENTLLAVA only); returns the new version.
  virtual absl::StatusOr<ProjectorUpdate> TrainProjector(const std::vector<Policy>& top_k,
                                                         int from_version) = 0;
};

struct SearchConfig {
  Strategy strategy = Strategy::kEfficientLlava;
  double budget = 0.5;
  int population = 32;
  int generations = 12;       // after the initial population (generation 0)
  int parents = 8;            // survivors per generation; also the projector's top-k
  double mutation = 0.2;      // per unit
  std::optional<double> eta;  // nullopt = chosen by eta_rule
  int projector_every = 4;    // 0 = never
  int num_samples = 0;        // n of Ω/√n
  uint64_t seed = 0;

  // ---- Opt-in options (issue 14). Every default replays the search above bit for bit: same
  // draws, same evaluated sequence, same final policy. ----
  // The generalization term T of J = L̂ + η·T (estimators.h). UCB, SPLIT and PAIRED need the
  // evaluator's per-sample losses (num_samples of them) and num_samples ≥ 2. For UCB, η is the z of
  // L̂ + z·SE.
  Estimator estimator = Estimator::kNorm;
  // How η is resolved when `eta` is not given (RANDOM_SEARCH: always 0). CV needs per-sample
  // losses and num_samples ≥ 4 (each half must have 2) and is chosen once, on the first
  // population (see the file comment); SAMPLES (SamplesEta) is known from the start and then
  // searches exactly as that η given explicitly.
  EtaRule eta_rule = EtaRule::kAuto;
  std::vector<double> eta_grid = DefaultEtaGrid();  // CV's candidates: finite, ≥ 0, non-empty
  // EFFICIENTLLAVA: extra initial policies as continuous per-unit ratios (e.g. UNIFORM's and
  // OWL's solutions), each snapped to the nearest grid point (PolicySpace::SnapToGrid), repaired
  // into the budget band and placed after the uniform seed, duplicates dropped. Each must have
  // one ratio per unit in [0, 1] (checked by EvolutionarySearch::Create). Ignored by
  // RANDOM_SEARCH, whose initial population stays random.
  std::vector<std::vector<double>> seed_unit_ratios;
  // EFFICIENTLLAVA: repair the discrete uniform seed into the band like every other policy
  // (by default it is kept unrepaired, up to a whole ratio step under the budget).
  bool repair_uniform_seed = false;
  // Probability that a mutation moves the unit one grid step (±1, direction Bernoulli(0.5), the
  // only neighbour at either end of R) instead of jumping to a uniformly drawn other index.
  double mutation_step = 0;
  // 0 = off. Otherwise the final slack step (EFFICIENTLLAVA) may spend up to this many
  // evaluations after the last generation to lower units of the best policy into the FLOPs left
  // under the budget; RANDOM_SEARCH evaluates exactly this many extra random policies in its
  // last generation, so NominalEvaluations counts them and the baseline never gets fewer
  // evaluations than the search (see the file comment).
  int slack_evaluations = 0;
  // Racing (racing.h, issue 20): from the generation after η is resolved, each generation's
  // misses are scored with a limit at the `parents`-th best fitness of the population's
  // fully-scored policies, so candidates that cannot survive stop early. Same top `parents`, in
  // the same order, and the same final policy as exhaustive evaluation; only raced-out
  // candidates' results (lower bounds) and the generation's mean/std fitness differ. Applies to
  // NORM and CAPACITY (a mean loss plus a policy-only term) and PAIRED (a term ≥ 0: the bound
  // holds with t = 0, and a raced-out candidate's fitness is its bound); off for UCB and SPLIT, the
  // projector's re-scoring and the slack step.
  bool race = true;

  // Ranges only (the budget is checked against the model by EvolutionarySearch::Create).
  absl::Status Validate() const;
};

// population + generations·(population − parents) + slack_evaluations: what RANDOM_SEARCH
// evaluates (and the most the evolutionary search's generations and slack step propose as new
// policies, projector re-scoring aside).
int64_t NominalEvaluations(const SearchConfig& config);

// One child before repair (EFFICIENTLLAVA; see the file comment): per unit in order,
// Bernoulli(0.5) picks a's or b's index, Bernoulli(mutation) decides a mutation, which — only
// when mutation_step > 0, else without the draw — is a ±1 step with probability mutation_step
// (Bernoulli(0.5) for the direction inside R), else a jump to a different index drawn by
// UniformInt(choices − 1). `a` and `b` have the same size.
Policy CrossoverAndMutate(const Policy& a, const Policy& b, const SearchConfig& c, int choices,
                          Prng& prng);

// J = L̂ + η·T of an evaluation of continuous per-unit ratios (e.g. UNIFORM's solution, which
// is off the grid), computed as the search ranks its policies: the config's estimator, sample
// order and num_samples, and `eta` (e.g. the state's resolved η). For a grid policy's ratios it
// equals the ranking's fitness bit for bit. `unit_ratios` needs one ratio per unit (CAPACITY);
// UCB, SPLIT and PAIRED need num_samples per-sample losses in `result`, PAIRED the reference's
// too (EvolutionarySearch::ReferenceLosses; INVALID_ARGUMENT otherwise).
absl::StatusOr<double> FitnessOfUnitRatios(const PolicySpace& space, const SearchConfig& config,
                                           std::span<const double> unit_ratios,
                                           const EvalResult& result, double eta,
                                           std::span<const double> reference_losses = {});

struct GenerationStats {
  int generation = 0;
  int population_size = 0;
  double best_fitness = 0;
  double best_loss = 0;
  double best_accuracy = 0;
  double best_omega = 0;
  double best_flops_ratio = 0;
  std::string best_hash;
  double mean_fitness = 0;
  double std_fitness = 0;  // population standard deviation (÷ N)
  int evaluations = 0;     // policies sent to the evaluator in this generation (re-scoring too)
  int cache_hits = 0;
  double eta = 0;
  int projector_version = 0;  // at the end of the generation
  bool projector_trained = false;
  double projector_loss_before = 0;
  double projector_loss_after = 0;
  // Recorded only when an issue-14 option is in use (empty / unset otherwise, and then absent
  // from the JSON, which keeps default histories byte-identical):
  std::string estimator;   // "NORM" | "UCB" | "SPLIT" | "CAPACITY" | "PAIRED"
  std::string eta_method;  // "explicit" | "zero" (RANDOM_SEARCH) | "auto" | "cv" | "samples"
  // CV, in the generation that chose η: Spearman ρ of the chosen η and of every grid value
  // (nullopt = undefined), in SearchConfig::eta_grid order.
  std::optional<double> eta_cv_rho;
  std::vector<std::optional<double>> eta_cv_rhos;
  int slack_evaluations = 0;  // spent by the final slack step (also in `evaluations`)
  // Racing: candidates raced out in this generation (0, and absent from the JSON, without
  // racing) and the race's threshold τ (unset: no race this generation).
  int raced_out = 0;
  std::optional<double> race_threshold;
  int slack_steps = 0;  // lowering steps it accepted

  nlohmann::json ToJson() const;
  static absl::StatusOr<GenerationStats> FromJson(const nlohmann::json& j);
  friend bool operator==(const GenerationStats&, const GenerationStats&) = default;
};

struct ScoredPolicy {
  Policy policy;
  std::string hash;
  EvalResult result;
  double fitness = 0;
  double flops_ratio = 0;
};

// The checkpoint version SearchState::ToJson writes. 1: no "version" key, no per-sample losses;
// 2: "version": 2, every cache entry has "sample_losses" (possibly empty) and the config has the
// opt-in search options. FromJson reads both.
inline constexpr int kSearchStateVersion = 2;

// Everything needed to continue a search exactly where it stopped.
struct SearchState {
  SearchConfig config;
  // The space it belongs to, checked on resume.
  UnitKind unit_kind = UnitKind::kLayer;
  int num_units = 0;
  std::vector<double> ratio_choices;

  int generation = 0;  // the generation the next Step() scores
  bool done = false;
  std::string prng_state;  // Prng::StateHex()
  int projector_version = 0;
  std::optional<double> eta;       // resolved on the first population
  std::vector<Policy> population;  // to be scored by the next Step(); empty when done
  std::vector<Policy> ranked;      // the last scored population, best first
  // Estimator PAIRED (EFFICIENTLLAVA): the policy every other is compared with, sample by sample —
  // the initial population's uniform seed (UNIFORM's own policy when its ratio is in the grid);
  // empty otherwise (and then absent from the JSON).
  Policy reference;
  // Evaluations by (policy hash, projector version).
  std::map<std::pair<std::string, int>, EvalResult> cache;
  std::vector<GenerationStats> history;
  int64_t total_evaluations = 0;

  nlohmann::json ToJson() const;
  // ToJson with an empty "cache": the head of an incremental checkpoint, whose cache entries are
  // stored once each (CacheEntryJson) and put back into "cache" before FromJson.
  nlohmann::json ToJsonWithoutCache() const;
  // One entry of ToJson's "cache".
  static nlohmann::json CacheEntryJson(const std::pair<std::string, int>& key,
                                       const EvalResult& result);
  // Checks types and ranges of every field; errors name the field. Consistency with a
  // PolicySpace is checked by EvolutionarySearch::Resume.
  static absl::StatusOr<SearchState> FromJson(const nlohmann::json& j);
};

class EvolutionarySearch {
 public:
  // Validates the config and budget and builds the initial population (EFFICIENTLLAVA: the
  // unrepaired uniform policy meeting the budget + repaired random feasible ones; RANDOM_SEARCH:
  // random feasible ones only), deduplicated.
  static absl::StatusOr<std::unique_ptr<EvolutionarySearch>> Create(const PolicySpace* space,
                                                                    SearchConfig config);
  // Continues from a checkpoint; the state must belong to `space`.
  static absl::StatusOr<std::unique_ptr<EvolutionarySearch>> Resume(const PolicySpace* space,
                                                                    SearchState state);

  // Runs one generation (see the file comment). FAILED_PRECONDITION once done. The state changes
  // only when the generation succeeds, at its very end: `before_update`, when given, runs then,
  // once, just before the change, on the calling thread — state() still shows the previous
  // generation (the scheduler starts that generation's checkpoint write there at the latest).
  absl::Status Step(PolicyEvaluator& evaluator,
                    const std::function<void()>& before_update = nullptr);
  // Steps until done.
  absl::Status Run(PolicyEvaluator& evaluator);

  bool done() const { return state_.done; }
  const SearchState& state() const { return state_; }
  const std::vector<GenerationStats>& history() const { return state_.history; }
  // The last scored population, ranked; empty before the first Step().
  std::vector<ScoredPolicy> Ranking() const;
  // Its best policy: the search's result once done.
  absl::StatusOr<ScoredPolicy> Best() const;
  // PAIRED: the reference policy's per-sample losses under the current projector version (what
  // FitnessOfUnitRatios needs to score a policy as the ranking does); empty otherwise.
  std::span<const double> ReferenceLosses() const;

 private:
  EvolutionarySearch(const PolicySpace* space, SearchState state)
      : space_(space), state_(std::move(state)) {}

  const PolicySpace* space_;
  SearchState state_;
};

}  // namespace prunesvc::search

#endif  // PRUNESVC_COMMON_EVOLUTION_H_

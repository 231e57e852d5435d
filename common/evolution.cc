#include "common/evolution.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace prunesvc::search {
namespace {

using json = nlohmann::json;

constexpr char kStateFormat[] = "prunesvc.search_state.v1";
// Attempts per missing population slot before giving up on crossover children, and again before
// giving up on fresh random policies (the feasible space may be smaller than the population).
constexpr int kAttemptsPerSlot = 20;

// ---- JSON reading with errors that name the field ----

absl::Status FieldError(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("search state: ", path, ": ", what));
}

absl::StatusOr<const json*> Field(const json& obj, const std::string& path, const char* name) {
  if (!obj.is_object()) return FieldError(path, "expected an object");
  auto it = obj.find(name);
  if (it == obj.end()) return FieldError(absl::StrCat(path, ".", name), "missing");
  return &*it;
}

absl::StatusOr<int64_t> GetInt(const json& obj, const std::string& path, const char* name,
                               int64_t lo, int64_t hi) {
  ASSIGN_OR_RETURN(const json* v, Field(obj, path, name));
  const std::string p = absl::StrCat(path, ".", name);
  if (!v->is_number_integer()) return FieldError(p, "expected an integer");
  int64_t x;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return FieldError(p, "out of range");
    }
    x = static_cast<int64_t>(u);
  } else {
    x = v->get<int64_t>();
  }
  if (x < lo || x > hi) return FieldError(p, absl::StrCat(x, " is outside [", lo, ", ", hi, "]"));
  return x;
}

absl::StatusOr<double> AsDouble(const json& v, const std::string& path) {
  if (!v.is_number()) return FieldError(path, "expected a number");
  const double x = v.get<double>();
  if (!std::isfinite(x)) return FieldError(path, "not finite");
  return x;
}

absl::StatusOr<double> GetDouble(const json& obj, const std::string& path, const char* name) {
  ASSIGN_OR_RETURN(const json* v, Field(obj, path, name));
  return AsDouble(*v, absl::StrCat(path, ".", name));
}

absl::StatusOr<bool> GetBool(const json& obj, const std::string& path, const char* name) {
  ASSIGN_OR_RETURN(const json* v, Field(obj, path, name));
  if (!v->is_boolean()) return FieldError(absl::StrCat(path, ".", name), "expected a boolean");
  return v->get<bool>();
}

absl::StatusOr<std::string> GetString(const json& obj, const std::string& path, const char* name) {
  ASSIGN_OR_RETURN(const json* v, Field(obj, path, name));
  if (!v->is_string()) return FieldError(absl::StrCat(path, ".", name), "expected a string");
  return v->get<std::string>();
}

absl::StatusOr<const json*> GetArray(const json& obj, const std::string& path, const char* name) {
  ASSIGN_OR_RETURN(const json* v, Field(obj, path, name));
  if (!v->is_array()) return FieldError(absl::StrCat(path, ".", name), "expected an array");
  return v;
}

absl::StatusOr<std::vector<double>> AsDoubles(const json& v, const std::string& path) {
  if (!v.is_array()) return FieldError(path, "expected an array");
  std::vector<double> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    ASSIGN_OR_RETURN(double x, AsDouble(v[i], absl::StrCat(path, "[", i, "]")));
    out.push_back(x);
  }
  return out;
}

absl::StatusOr<std::vector<double>> GetDoubles(const json& obj, const std::string& path,
                                               const char* name) {
  ASSIGN_OR_RETURN(const json* v, Field(obj, path, name));
  return AsDoubles(*v, absl::StrCat(path, ".", name));
}

// One policy: an array of ratio indices at `p`.
absl::StatusOr<Policy> AsPolicy(const json& row, const std::string& p) {
  if (!row.is_array()) return FieldError(p, "expected an array of ratio indices");
  Policy policy;
  for (size_t k = 0; k < row.size(); ++k) {
    if (!row[k].is_number_integer() || row[k].get<int64_t>() < 0 ||
        row[k].get<int64_t>() > std::numeric_limits<int>::max()) {
      return FieldError(absl::StrCat(p, "[", k, "]"), "expected a non-negative integer");
    }
    policy.push_back(static_cast<int>(row[k].get<int64_t>()));
  }
  return policy;
}

absl::StatusOr<std::vector<Policy>> GetPolicies(const json& obj, const std::string& path,
                                                const char* name) {
  ASSIGN_OR_RETURN(const json* arr, GetArray(obj, path, name));
  std::vector<Policy> out;
  for (size_t i = 0; i < arr->size(); ++i) {
    ASSIGN_OR_RETURN(Policy policy,
                     AsPolicy((*arr)[i], absl::StrCat(path, ".", name, "[", i, "]")));
    out.push_back(std::move(policy));
  }
  return out;
}

bool IsHash(const std::string& h) {
  return h.size() == 16 && std::all_of(h.begin(), h.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

json ConfigToJson(const SearchConfig& c) {
  return json{{"strategy", std::string(StrategyName(c.strategy))},
              {"budget", c.budget},
              {"population", c.population},
              {"generations", c.generations},
              {"parents", c.parents},
              {"mutation", c.mutation},
              {"eta", c.eta.has_value() ? json(*c.eta) : json(nullptr)},
              {"projector_every", c.projector_every},
              {"num_samples", c.num_samples},
              // A decimal string: 64-bit integers do not survive every JSON reader.
              {"seed", std::to_string(c.seed)},
              // Version 2: the opt-in options.
              {"estimator", std::string(EstimatorName(c.estimator))},
              {"eta_rule", std::string(EtaRuleName(c.eta_rule))},
              {"eta_grid", c.eta_grid},
              {"seed_unit_ratios", c.seed_unit_ratios},
              {"repair_uniform_seed", c.repair_uniform_seed},
              {"mutation_step", c.mutation_step},
              {"slack_evaluations", c.slack_evaluations},
              {"race", c.race}};
}

// The version 2 keys of the config (absent from version 1 checkpoints: defaults).
absl::Status OptionsFromJson(const json& j, const std::string& path, SearchConfig& c) {
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  ASSIGN_OR_RETURN(std::string estimator, GetString(j, path, "estimator"));
  ASSIGN_OR_RETURN(c.estimator, ParseEstimator(estimator));
  ASSIGN_OR_RETURN(std::string rule, GetString(j, path, "eta_rule"));
  ASSIGN_OR_RETURN(c.eta_rule, ParseEtaRule(rule));
  ASSIGN_OR_RETURN(c.eta_grid, GetDoubles(j, path, "eta_grid"));
  ASSIGN_OR_RETURN(const json* seeds, GetArray(j, path, "seed_unit_ratios"));
  c.seed_unit_ratios.clear();
  for (size_t i = 0; i < seeds->size(); ++i) {
    ASSIGN_OR_RETURN(std::vector<double> ratios,
                     AsDoubles((*seeds)[i], absl::StrCat(path, ".seed_unit_ratios[", i, "]")));
    c.seed_unit_ratios.push_back(std::move(ratios));
  }
  ASSIGN_OR_RETURN(c.repair_uniform_seed, GetBool(j, path, "repair_uniform_seed"));
  ASSIGN_OR_RETURN(c.mutation_step, GetDouble(j, path, "mutation_step"));
  ASSIGN_OR_RETURN(c.slack_evaluations, GetInt(j, path, "slack_evaluations", 0, kMaxInt));
  // Written since issue 20; a checkpoint from before it was exhaustive and stays so.
  c.race = false;
  if (j.contains("race")) {
    ASSIGN_OR_RETURN(c.race, GetBool(j, path, "race"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SearchConfig> ConfigFromJson(const json& j, const std::string& path,
                                            int state_version) {
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  SearchConfig c;
  ASSIGN_OR_RETURN(std::string strategy, GetString(j, path, "strategy"));
  ASSIGN_OR_RETURN(c.strategy, ParseStrategy(strategy));
  ASSIGN_OR_RETURN(c.budget, GetDouble(j, path, "budget"));
  ASSIGN_OR_RETURN(c.population, GetInt(j, path, "population", 0, kMaxInt));
  ASSIGN_OR_RETURN(c.generations, GetInt(j, path, "generations", 0, kMaxInt));
  ASSIGN_OR_RETURN(c.parents, GetInt(j, path, "parents", 0, kMaxInt));
  ASSIGN_OR_RETURN(c.mutation, GetDouble(j, path, "mutation"));
  ASSIGN_OR_RETURN(const json* eta, Field(j, path, "eta"));
  if (!eta->is_null()) {
    ASSIGN_OR_RETURN(double e, AsDouble(*eta, path + ".eta"));
    c.eta = e;
  }
  ASSIGN_OR_RETURN(c.projector_every, GetInt(j, path, "projector_every", 0, kMaxInt));
  ASSIGN_OR_RETURN(c.num_samples, GetInt(j, path, "num_samples", 0, kMaxInt));
  ASSIGN_OR_RETURN(std::string seed, GetString(j, path, "seed"));
  if (seed.empty() || seed.size() > 20 ||
      !std::all_of(seed.begin(), seed.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
    return FieldError(path + ".seed", "expected a decimal unsigned 64-bit integer");
  }
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(seed.c_str(), &end, 10);
  if (errno != 0 || end != seed.c_str() + seed.size()) {
    return FieldError(path + ".seed", "expected a decimal unsigned 64-bit integer");
  }
  c.seed = v;
  if (state_version >= 2) RETURN_IF_ERROR(OptionsFromJson(j, path, c));
  RETURN_IF_ERROR(c.Validate());
  return c;
}

// ---- the search ----

std::string HashOf(const PolicySpace& space, const Policy& p) {
  // Policies inside the driver were validated against the space.
  absl::StatusOr<std::string> h = space.Hash(p);
  return h.ok() ? *h : std::string();
}

// UCB and SPLIT rank by per-sample losses; CV needs them for the first population.
bool NeedsSampleLosses(const SearchConfig& c, bool eta_resolved) {
  if (c.strategy == Strategy::kRandomSearch) return false;
  return EstimatorNeedsSampleLosses(c.estimator) ||
         (!eta_resolved && !c.eta.has_value() && c.eta_rule == EtaRule::kCrossValidated);
}

// Whether an issue-14 option is in use: then GenerationStats records the estimator and η method.
bool UsesOptions(const SearchConfig& c) {
  return c.estimator != Estimator::kNorm || c.eta_rule != EtaRule::kAuto ||
         !c.seed_unit_ratios.empty() || c.repair_uniform_seed || c.mutation_step > 0 ||
         c.slack_evaluations > 0;
}

std::string EtaMethod(const SearchConfig& c) {
  if (c.strategy == Strategy::kRandomSearch) return "zero";
  if (c.eta.has_value()) return "explicit";
  switch (c.eta_rule) {
    case EtaRule::kCrossValidated:
      return "cv";
    case EtaRule::kSamples:
      return "samples";
    case EtaRule::kAuto:
      break;
  }
  return "auto";
}

// The order the estimators sum the samples in; SPLIT's halves are its two halves.
std::vector<int> SampleOrder(const SearchConfig& c) {
  if (c.estimator == Estimator::kNorm) return {};
  return SamplePermutation(c.seed, kSplitStream, c.num_samples);
}

// What the terms read beside a policy's own result: the sample order and, for PAIRED, the
// reference policy's per-sample losses under the version being ranked.
struct TermContext {
  std::vector<int> order;
  std::span<const double> reference;
};

// The reference's whole-set result under `version`, or nullptr (no reference, not scored yet, or
// raced out).
const EvalResult* ReferenceResult(const PolicySpace& space, const SearchState& s, int version) {
  if (s.reference.empty()) return nullptr;
  auto it = s.cache.find({HashOf(space, s.reference), version});
  if (it == s.cache.end() || it->second.raced_out) return nullptr;
  return &it->second;
}

TermContext ContextOf(const PolicySpace& space, const SearchState& s, int version) {
  TermContext ctx{.order = SampleOrder(s.config), .reference = {}};
  if (const EvalResult* ref = ReferenceResult(space, s, version)) {
    ctx.reference = ref->sample_losses;
  }
  return ctx;
}

TermInputs InputsOf(const PolicySpace& space, const SearchConfig& c, const TermContext& ctx,
                    const Policy& p, const EvalResult& r) {
  TermInputs in{.omega = r.omega,
                .capacity = 0,
                .sample_losses = r.sample_losses,
                .reference_losses = ctx.reference};
  if (c.estimator == Estimator::kCapacity) {
    // Policies inside the driver were validated against the space.
    in.capacity = SquaredCapacity(space.UnitRatios(p).value_or(std::vector<double>(p.size(), 0)),
                                  space.units().params);
  }
  return in;
}

// T(π) on all n samples. Per-sample losses were checked when the result entered the cache (and
// on Resume), and the reference is scored before anything is ranked against it, so an error here
// cannot happen; it ranks the policy last rather than crash. PAIRED gives a raced-out result
// the term's lower bound b_k over its k scored losses (racing.h): its fitness is then the bound
// the evaluator cut it by, bit for bit, as racing.h says of every raced-out candidate.
double Term(const PolicySpace& space, const SearchConfig& c, const TermContext& ctx,
            const Policy& p, const EvalResult& r) {
  if (c.estimator == Estimator::kPaired && r.raced_out) {
    return PairedTermLowerBound(r.sample_losses, ctx.reference, c.num_samples);
  }
  absl::StatusOr<double> t = EstimatorTerm(c.estimator, InputsOf(space, c, ctx, p, r), ctx.order);
  return t.ok() ? *t : std::numeric_limits<double>::infinity();
}

// J = L̂ + η·T. NORM keeps the original expression (bit for bit); the others add nothing at η = 0.
double Fitness(const PolicySpace& space, const SearchConfig& c, const TermContext& ctx,
               const Policy& p, const EvalResult& r, double eta) {
  if (c.estimator == Estimator::kNorm) {
    return r.loss + eta * r.omega / std::sqrt(static_cast<double>(c.num_samples));
  }
  if (eta == 0) return r.loss;
  return r.loss + eta * Term(space, c, ctx, p, r);
}

// Population mean and standard deviation (÷ N), two-pass, in the given order.
std::pair<double, double> MeanStd(const std::vector<double>& v) {
  if (v.empty()) return {0, 0};
  double mean = 0;
  for (double x : v) mean += x;
  mean /= v.size();
  double ss = 0;
  for (double x : v) ss += (x - mean) * (x - mean);
  return {mean, std::sqrt(ss / v.size())};
}

absl::Status CheckResult(const EvalResult& r, const std::string& hash, const SearchState& s) {
  if (!std::isfinite(r.loss) || !std::isfinite(r.accuracy) || !std::isfinite(r.omega)) {
    return absl::InternalError(absl::StrCat("evaluator returned a non-finite result for policy ",
                                            hash, ": loss ", r.loss, ", accuracy ", r.accuracy,
                                            ", omega ", r.omega));
  }
  for (size_t i = 0; i < r.sample_losses.size(); ++i) {
    if (!std::isfinite(r.sample_losses[i])) {
      return absl::InternalError(absl::StrCat("evaluator returned a non-finite loss ",
                                              r.sample_losses[i], " for sample ", i, " of policy ",
                                              hash));
    }
  }
  const SearchConfig& c = s.config;
  // A raced-out result holds the losses of the samples it scored (PAIRED ranks it by its bound).
  if (NeedsSampleLosses(c, s.eta.has_value()) && !r.raced_out &&
      r.sample_losses.size() != static_cast<size_t>(c.num_samples)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "estimator ", EstimatorName(c.estimator), ", eta rule ", EtaRuleName(c.eta_rule),
        ": needs the evaluator's per-sample losses (one per search sample, ", c.num_samples,
        "); policy ", hash, " came with ", r.sample_losses.size()));
  }
  return absl::OkStatus();
}

// The η the fitness will use, when it is known before the generation is scored: resolved, or
// explicit, or RANDOM_SEARCH's 0, or the SAMPLES rule's (AUTO and CV resolve it from the first
// population's results).
std::optional<double> KnownEta(const SearchState& s) {
  if (s.eta.has_value()) return s.eta;
  if (s.config.strategy == Strategy::kRandomSearch) return 0.0;
  if (s.config.eta.has_value()) return s.config.eta;
  if (s.config.eta_rule == EtaRule::kSamples) return SamplesEta(s.config.num_samples);
  return std::nullopt;
}

// Evaluates the cache misses of `policies` under `version` in one batch, with `race` (inactive =
// exhaustive; its per-policy terms are filled here for the misses).
absl::Status Score(const PolicySpace& space, SearchState& s, PolicyEvaluator& evaluator,
                   const std::vector<Policy>& policies, int version, GenerationStats& stats,
                   RaceLimit race = {}) {
  std::vector<Policy> misses;
  std::vector<std::string> miss_hashes;
  std::set<std::string> pending;
  for (const Policy& p : policies) {
    const std::string h = HashOf(space, p);
    if (s.cache.count({h, version}) != 0) {
      ++stats.cache_hits;
    } else if (pending.insert(h).second) {
      misses.push_back(p);
      miss_hashes.push_back(h);
    }
  }
  if (misses.empty()) return absl::OkStatus();
  if (race.active() && s.config.estimator == Estimator::kCapacity) {
    const double eta = KnownEta(s).value_or(0.0);  // racing runs only when it is known
    const TermContext ctx{.order = SampleOrder(s.config), .reference = {}};
    for (const Policy& p : misses) {
      race.extra.push_back(eta == 0 ? 0.0 : eta * Term(space, s.config, ctx, p, EvalResult{}));
    }
  }
  ASSIGN_OR_RETURN(std::vector<EvalResult> results,
                   race.active() ? evaluator.EvaluateRaced(misses, version, race)
                                 : evaluator.Evaluate(misses, version));
  if (results.size() != misses.size()) {
    return absl::InternalError(absl::StrCat("evaluator returned ", results.size(), " results for ",
                                            misses.size(), " policies"));
  }
  for (size_t i = 0; i < results.size(); ++i) {
    RETURN_IF_ERROR(CheckResult(results[i], miss_hashes[i], s));
    if (results[i].raced_out && !race.active()) {
      return absl::InternalError(
          absl::StrCat("evaluator raced out policy ", miss_hashes[i], " without a race limit"));
    }
    stats.raced_out += results[i].raced_out;
  }
  for (size_t i = 0; i < results.size(); ++i) s.cache[{miss_hashes[i], version}] = results[i];
  stats.evaluations += static_cast<int>(misses.size());
  s.total_evaluations += static_cast<int64_t>(misses.size());
  return absl::OkStatus();
}

// Ranks policies already in the cache under `version`: fitness ascending, ties by hash. η is the
// state's (0 before it is resolved) unless `eta` is given.
// The ranking's order: fitness ascending, ties by policy hash.
bool RanksBefore(const ScoredPolicy& a, const ScoredPolicy& b) {
  if (a.fitness != b.fitness) return a.fitness < b.fitness;
  return a.hash < b.hash;
}

// `p` scored from the cache under `version`; nullopt when it is not there (callers score first).
std::optional<ScoredPolicy> ScoreCached(const PolicySpace& space, const SearchState& s,
                                        const TermContext& ctx, const Policy& p, int version,
                                        double eta) {
  ScoredPolicy sp;
  sp.hash = HashOf(space, p);
  auto it = s.cache.find({sp.hash, version});
  if (it == s.cache.end()) return std::nullopt;
  sp.policy = p;
  sp.result = it->second;
  sp.fitness = Fitness(space, s.config, ctx, p, sp.result, eta);
  sp.flops_ratio = space.FlopsRatio(p).value_or(0.0);
  return sp;
}

std::vector<ScoredPolicy> Rank(const PolicySpace& space, const SearchState& s,
                               const std::vector<Policy>& policies, int version,
                               std::optional<double> eta_given = std::nullopt) {
  std::vector<ScoredPolicy> out;
  const double eta = eta_given.has_value() ? *eta_given : s.eta.value_or(0.0);
  const TermContext ctx = ContextOf(space, s, version);
  for (const Policy& p : policies) {
    std::optional<ScoredPolicy> sp = ScoreCached(space, s, ctx, p, version, eta);
    if (sp.has_value()) out.push_back(*std::move(sp));
  }
  std::stable_sort(out.begin(), out.end(), RanksBefore);
  return out;
}

// Rank(...).front() without sorting: the first policy the ranking would put first. Hashes are
// unique, so the least by RanksBefore is the same whatever the order it is met in.
std::optional<ScoredPolicy> First(const PolicySpace& space, const SearchState& s,
                                  const std::vector<Policy>& policies, int version) {
  std::optional<ScoredPolicy> best;
  const double eta = s.eta.value_or(0.0);
  const TermContext ctx = ContextOf(space, s, version);
  for (const Policy& p : policies) {
    std::optional<ScoredPolicy> sp = ScoreCached(space, s, ctx, p, version, eta);
    if (sp.has_value() && (!best.has_value() || RanksBefore(*sp, *best))) best = std::move(sp);
  }
  return best;
}

// Whether racing may run for the search at all (racing.h: a mean loss plus a policy-only term,
// or PAIRED's, whose lower bound after k samples racing.h derives).
bool MayRace(const SearchState& s) {
  const SearchConfig& c = s.config;
  const bool sound = c.estimator == Estimator::kNorm || c.estimator == Estimator::kCapacity ||
                     c.estimator == Estimator::kPaired;
  return c.race && sound && c.parents >= 1 && KnownEta(s).has_value();
}

// The fully scored (not raced-out) policies of `policies` in the cache under `version`.
std::vector<Policy> FullyScored(const PolicySpace& space, const SearchState& s,
                                const std::vector<Policy>& policies, int version) {
  std::vector<Policy> known;
  for (const Policy& p : policies) {
    auto it = s.cache.find({HashOf(space, p), version});
    if (it != s.cache.end() && !it->second.raced_out) known.push_back(p);
  }
  return known;
}

// The racing limit for scoring `policies` under `version` (racing.h): the `parents`-th best
// fitness among the fully scored policies of `policies` already cached (the survivors);
// inactive when racing may not run or fewer than `parents` are known.
RaceLimit RaceFor(const PolicySpace& space, const SearchState& s,
                  const std::vector<Policy>& policies, int version) {
  const SearchConfig& c = s.config;
  if (!MayRace(s)) return {};
  const double eta = *KnownEta(s);
  const std::vector<ScoredPolicy> ranked =
      Rank(space, s, FullyScored(space, s, policies, version), version, eta);
  if (ranked.size() < static_cast<size_t>(c.parents)) return {};
  RaceLimit race;
  race.threshold = ranked[c.parents - 1].fitness;
  race.num_samples = c.num_samples;
  if (c.estimator == Estimator::kNorm) race.norm_eta = eta;
  if (c.estimator == Estimator::kPaired && eta != 0) {
    // Without the reference's whole-set losses the bound keeps only S_k/n: sound, looser.
    if (const EvalResult* ref = ReferenceResult(space, s, version)) {
      race.paired_eta = eta;
      race.reference_losses = ref->sample_losses;
    }
  }
  return race;
}

// PAIRED: scores the reference policy whole under `version` unless it is (one evaluation, counted;
// in the first generation it is the population's first policy, so nothing extra).
absl::Status ScoreReference(const PolicySpace& space, SearchState& s, PolicyEvaluator& evaluator,
                            int version, GenerationStats& stats) {
  if (s.reference.empty() || ReferenceResult(space, s, version) != nullptr) return absl::OkStatus();
  s.cache.erase({HashOf(space, s.reference), version});  // a raced-out bound, if any
  return Score(space, s, evaluator, {s.reference}, version, stats);
}

// Scores the population: with racing, when fewer than `parents` of it are known (the first
// population), its first uncached policies in population order are scored whole until `parents`
// are, then the rest race against them; without racing, in one batch.
absl::Status ScorePopulation(const PolicySpace& space, SearchState& s, PolicyEvaluator& evaluator,
                             GenerationStats& stats) {
  const int version = s.projector_version;
  // The first population holds the reference first, so it is scored whole there (its first
  // batch is never raced); only a population without it needs the extra evaluation.
  if (std::find(s.population.begin(), s.population.end(), s.reference) == s.population.end()) {
    RETURN_IF_ERROR(ScoreReference(space, s, evaluator, version, stats));
  }
  RaceLimit race = RaceFor(space, s, s.population, version);
  if (!race.active() && MayRace(s)) {
    const size_t known = FullyScored(space, s, s.population, version).size();
    std::vector<Policy> first;
    std::set<std::string> seen;
    for (const Policy& p : s.population) {
      if (known + first.size() >= static_cast<size_t>(s.config.parents)) break;
      const std::string h = HashOf(space, p);
      if (s.cache.count({h, version}) == 0 && seen.insert(h).second) first.push_back(p);
    }
    RETURN_IF_ERROR(Score(space, s, evaluator, first, version, stats));
    race = RaceFor(space, s, s.population, version);
  }
  if (race.active()) stats.race_threshold = race.threshold;
  return Score(space, s, evaluator, s.population, version, stats, race);
}

double AutoEta(const PolicySpace& space, const SearchConfig& c, const TermContext& ctx,
               const std::vector<ScoredPolicy>& scored) {
  const int n = c.num_samples;
  std::vector<double> losses, omegas;
  for (const ScoredPolicy& sp : scored) {
    losses.push_back(sp.result.loss);
    // NORM: Ω itself (today's expression below); the others: their term T.
    omegas.push_back(c.estimator == Estimator::kNorm ? sp.result.omega
                                                     : Term(space, c, ctx, sp.policy, sp.result));
  }
  const double std_l = MeanStd(losses).second;
  const auto [mean_o, std_o] = MeanStd(omegas);
  // Identical Ω values leave a rounding residue in the two-pass std (~1e-17), which would give
  // η ≈ 1e17; treat anything at rounding level as the std(Ω) = 0 case.
  if (!(std_o > 1e-12 * std::max(1.0, std::abs(mean_o)))) return 0;
  if (c.estimator != Estimator::kNorm) return std_l / std_o;  // std(η·T) = std(L)
  return std_l * std::sqrt(static_cast<double>(n)) / std_o;
}

// CV (estimators.h) over the first population's results under `version`.
absl::Status CrossValidatedEta(const PolicySpace& space, SearchState& s, int version,
                               GenerationStats& stats) {
  const SearchConfig& c = s.config;
  std::vector<TermInputs> inputs;
  const TermContext ctx = ContextOf(space, s, version);
  for (const Policy& p : s.population) {
    auto it = s.cache.find({HashOf(space, p), version});
    if (it != s.cache.end()) inputs.push_back(InputsOf(space, c, ctx, p, it->second));
  }
  const std::vector<int> perm = SamplePermutation(c.seed, kCvStream, c.num_samples);
  ASSIGN_OR_RETURN(CvChoice choice, CrossValidateEta(c.estimator, inputs, c.eta_grid, perm));
  s.eta = choice.eta;
  stats.eta_cv_rho = choice.rho;
  stats.eta_cv_rhos = std::move(choice.rhos);
  return absl::OkStatus();
}

// η on the first population: RANDOM_SEARCH 0, else explicit, else the rule.
absl::Status ResolveEta(const PolicySpace& space, SearchState& s, GenerationStats& stats) {
  const SearchConfig& c = s.config;
  if (c.strategy == Strategy::kRandomSearch) {
    s.eta = 0.0;
  } else if (c.eta.has_value()) {
    s.eta = *c.eta;
  } else if (c.eta_rule == EtaRule::kCrossValidated) {
    RETURN_IF_ERROR(CrossValidatedEta(space, s, s.projector_version, stats));
  } else if (c.eta_rule == EtaRule::kSamples) {
    s.eta = SamplesEta(c.num_samples);
  } else {
    s.eta = AutoEta(space, c, ContextOf(space, s, s.projector_version),
                    Rank(space, s, s.population, s.projector_version));
  }
  return absl::OkStatus();
}

// Adds random feasible policies until `pop` has `target` members or the attempts run out.
// `taken` holds hashes that must not be repeated; it is updated.
absl::Status FillRandom(const PolicySpace& space, const SearchConfig& c, Prng& prng, size_t target,
                        std::set<std::string>& taken, std::vector<Policy>& pop) {
  const int64_t bound =
      kAttemptsPerSlot * static_cast<int64_t>(target - std::min(target, pop.size()));
  for (int64_t attempt = 0; attempt < bound && pop.size() < target; ++attempt) {
    ASSIGN_OR_RETURN(Policy p, space.RandomFeasiblePolicy(c.budget, prng));
    if (taken.insert(HashOf(space, p)).second) pop.push_back(std::move(p));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Policy>> NextPopulation(const PolicySpace& space, const SearchState& s,
                                                   const std::vector<ScoredPolicy>& ranked,
                                                   Prng& prng) {
  const SearchConfig& c = s.config;
  const size_t target = static_cast<size_t>(c.population);
  const size_t k = std::min(ranked.size(), static_cast<size_t>(c.parents));
  std::vector<Policy> pop;
  std::set<std::string> taken;
  for (size_t i = 0; i < k; ++i) {
    pop.push_back(ranked[i].policy);
    taken.insert(ranked[i].hash);
  }
  if (c.strategy == Strategy::kRandomSearch) {
    // Never re-propose a policy evaluated before.
    for (const auto& [key, result] : s.cache) taken.insert(key.first);
    RETURN_IF_ERROR(FillRandom(space, c, prng, target, taken, pop));
    return pop;
  }
  const int choices = space.num_choices();
  const int64_t bound = kAttemptsPerSlot * static_cast<int64_t>(target - std::min(target, k));
  for (int64_t attempt = 0; attempt < bound && pop.size() < target && k > 0; ++attempt) {
    const size_t a = static_cast<size_t>(prng.UniformInt(k));
    size_t b = a;
    if (k > 1) {
      b = static_cast<size_t>(prng.UniformInt(k - 1));
      if (b >= a) ++b;
    }
    Policy child = CrossoverAndMutate(ranked[a].policy, ranked[b].policy, c, choices, prng);
    ASSIGN_OR_RETURN(child, space.RepairToBudget(std::move(child), c.budget, prng));
    if (taken.insert(HashOf(space, child)).second) pop.push_back(std::move(child));
  }
  RETURN_IF_ERROR(FillRandom(space, c, prng, target, taken, pop));
  return pop;
}

struct Neighbour {
  Policy policy;
  std::string hash;
  double added_flops = 0;
};

// The one-step lowerings of `x` that stay within the budget, in unit order.
std::vector<Neighbour> LoweringNeighbours(const PolicySpace& space, const SearchConfig& c,
                                          const Policy& x) {
  const double limit = c.budget * space.dense_flops();
  const double fx = space.Flops(x).value_or(0.0);
  std::vector<Neighbour> out;
  for (size_t u = 0; u < x.size(); ++u) {
    if (x[u] == 0) continue;
    Policy y = x;
    --y[u];
    const double fy = space.Flops(y).value_or(std::numeric_limits<double>::infinity());
    if (fy <= limit) out.push_back({y, HashOf(space, y), fy - fx});
  }
  return out;
}

// The final slack step (EFFICIENTLLAVA): from the best policy x, evaluate its one-step lowerings
// that fit the budget (the uncached ones cheapest in added FLOPs first, while the
// slack_evaluations budget lasts; cached ones are free), move to the best of them by fitness
// (ties by hash) if it beats x, and repeat; stop when none beats x or none is left. Returns every
// neighbour it scored, to be ranked with the population.
absl::StatusOr<std::vector<Policy>> SpendSlack(const PolicySpace& space, SearchState& s,
                                               PolicyEvaluator& evaluator, const ScoredPolicy& best,
                                               GenerationStats& stats) {
  const SearchConfig& c = s.config;
  const TermContext ctx = ContextOf(space, s, s.projector_version);
  Policy x = best.policy;
  double fx = best.fitness;
  std::vector<Policy> scored;
  while (true) {
    std::vector<Neighbour> all = LoweringNeighbours(space, c, x);
    std::vector<Neighbour> misses;
    for (const Neighbour& n : all) {
      if (s.cache.count({n.hash, s.projector_version}) == 0) misses.push_back(n);
    }
    std::stable_sort(misses.begin(), misses.end(), [](const Neighbour& a, const Neighbour& b) {
      return a.added_flops < b.added_flops;
    });
    misses.resize(std::min<size_t>(misses.size(), c.slack_evaluations - stats.slack_evaluations));
    std::vector<Policy> batch;
    for (const Neighbour& n : misses) batch.push_back(n.policy);
    const int before = stats.evaluations;
    RETURN_IF_ERROR(Score(space, s, evaluator, batch, s.projector_version, stats));
    stats.slack_evaluations += stats.evaluations - before;
    const Neighbour* pick = nullptr;
    double fpick = 0;
    for (const Neighbour& n : all) {
      auto it = s.cache.find({n.hash, s.projector_version});
      if (it == s.cache.end()) continue;  // beyond the evaluation budget
      scored.push_back(n.policy);
      const double f = Fitness(space, c, ctx, n.policy, it->second, *s.eta);
      if (pick == nullptr || f < fpick || (f == fpick && n.hash < pick->hash)) {
        pick = &n;
        fpick = f;
      }
    }
    if (pick == nullptr || !(fpick < fx)) break;
    x = pick->policy;
    fx = fpick;
    ++stats.slack_steps;
  }
  return scored;
}

// RANDOM_SEARCH's counterpart of the slack step: exactly slack_evaluations further random
// feasible policies never evaluated before (fewer only when the space runs out).
absl::StatusOr<std::vector<Policy>> RandomExtras(const PolicySpace& space, SearchState& s,
                                                 PolicyEvaluator& evaluator,
                                                 GenerationStats& stats) {
  std::set<std::string> taken;
  for (const auto& [key, result] : s.cache) taken.insert(key.first);
  ASSIGN_OR_RETURN(Prng prng, Prng::FromStateHex(s.prng_state));
  std::vector<Policy> extra;
  RETURN_IF_ERROR(FillRandom(space, s.config, prng, static_cast<size_t>(s.config.slack_evaluations),
                             taken, extra));
  s.prng_state = prng.StateHex();
  const int before = stats.evaluations;
  RETURN_IF_ERROR(Score(space, s, evaluator, extra, s.projector_version, stats));
  stats.slack_evaluations += stats.evaluations - before;
  return extra;
}

// After the last generation: the slack step's (or RANDOM_SEARCH's extra) policies join the
// ranking, which then decides the result.
absl::StatusOr<std::vector<ScoredPolicy>> FinalExtras(const PolicySpace& space, SearchState& s,
                                                      PolicyEvaluator& evaluator,
                                                      const std::vector<ScoredPolicy>& ranked,
                                                      GenerationStats& stats) {
  std::vector<Policy> extra;
  if (s.config.strategy == Strategy::kRandomSearch) {
    ASSIGN_OR_RETURN(extra, RandomExtras(space, s, evaluator, stats));
  } else {
    ASSIGN_OR_RETURN(extra, SpendSlack(space, s, evaluator, ranked.front(), stats));
  }
  std::vector<Policy> all;
  std::set<std::string> seen;
  for (const ScoredPolicy& sp : ranked) {
    seen.insert(sp.hash);
    all.push_back(sp.policy);
  }
  for (Policy& p : extra) {
    if (seen.insert(HashOf(space, p)).second) all.push_back(std::move(p));
  }
  return Rank(space, s, all, s.projector_version);
}

bool ProjectorDue(const SearchConfig& c, int generation) {
  return c.strategy == Strategy::kEfficientLlava && c.projector_every > 0 && generation >= 1 &&
         generation % c.projector_every == 0;
}

// Trains the projector on the top `parents` of `ranked`, then re-scores and re-ranks the
// population under the new version.
absl::StatusOr<std::vector<ScoredPolicy>> TrainAndRescore(const PolicySpace& space, SearchState& s,
                                                          PolicyEvaluator& evaluator,
                                                          const std::vector<ScoredPolicy>& ranked,
                                                          GenerationStats& stats) {
  std::vector<Policy> top_k;
  for (size_t i = 0; i < ranked.size() && i < static_cast<size_t>(s.config.parents); ++i) {
    top_k.push_back(ranked[i].policy);
  }
  ASSIGN_OR_RETURN(ProjectorUpdate update, evaluator.TrainProjector(top_k, s.projector_version));
  if (update.version <= s.projector_version) {
    return absl::InternalError(absl::StrCat("projector training returned version ", update.version,
                                            ", not newer than ", s.projector_version));
  }
  if (!std::isfinite(update.loss_before) || !std::isfinite(update.loss_after)) {
    return absl::InternalError("projector training returned a non-finite loss");
  }
  s.projector_version = update.version;
  stats.projector_trained = true;
  stats.projector_loss_before = update.loss_before;
  stats.projector_loss_after = update.loss_after;
  RETURN_IF_ERROR(ScoreReference(space, s, evaluator, s.projector_version, stats));
  RETURN_IF_ERROR(Score(space, s, evaluator, s.population, s.projector_version, stats));
  return Rank(space, s, s.population, s.projector_version);
}

// The generation's summary from its final ranking (best first).
void RecordBest(const std::vector<ScoredPolicy>& ranked, const SearchState& s,
                GenerationStats& stats) {
  // Over the fully scored policies (a raced-out candidate's fitness is only a bound).
  std::vector<double> fitness;
  for (const ScoredPolicy& sp : ranked) {
    if (!sp.result.raced_out) fitness.push_back(sp.fitness);
  }
  const auto [mean, sd] = MeanStd(fitness);
  const ScoredPolicy& best = ranked.front();
  stats.best_fitness = best.fitness;
  stats.best_loss = best.result.loss;
  stats.best_accuracy = best.result.accuracy;
  stats.best_omega = best.result.omega;
  stats.best_flops_ratio = best.flops_ratio;
  stats.best_hash = best.hash;
  stats.mean_fitness = mean;
  stats.std_fitness = sd;
  stats.eta = *s.eta;
  stats.projector_version = s.projector_version;
  if (UsesOptions(s.config)) {
    stats.estimator = std::string(EstimatorName(s.config.estimator));
    stats.eta_method = EtaMethod(s.config);
  }
}

}  // namespace

absl::StatusOr<Strategy> ParseStrategy(absl::string_view given) {
  const std::string name = absl::AsciiStrToUpper(given);  // case-insensitive
  if (name == "EFFICIENTLLAVA") return Strategy::kEfficientLlava;
  if (name == "UNIFORM") return Strategy::kUniform;
  if (name == "OWL") return Strategy::kOwl;
  if (name == "RANDOM_SEARCH") return Strategy::kRandomSearch;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown strategy \"", given, "\" (expected EFFICIENTLLAVA, UNIFORM, OWL or RANDOM_SEARCH)"));
}

absl::string_view StrategyName(Strategy strategy) {
  switch (strategy) {
    case Strategy::kEfficientLlava:
      return "EFFICIENTLLAVA";
    case Strategy::kUniform:
      return "UNIFORM";
    case Strategy::kOwl:
      return "OWL";
    case Strategy::kRandomSearch:
      return "RANDOM_SEARCH";
  }
  return "UNKNOWN";
}

namespace {

absl::Status ValidateOptions(const SearchConfig& c) {
  if (EstimatorNeedsSampleLosses(c.estimator) && c.num_samples < 2) {
    return absl::InvalidArgumentError(absl::StrCat("estimator ", EstimatorName(c.estimator),
                                                   " needs num_samples ≥ 2, got ", c.num_samples));
  }
  if (c.eta_rule == EtaRule::kCrossValidated) {
    if (c.num_samples < 4) {
      return absl::InvalidArgumentError(
          absl::StrCat("eta rule CV needs num_samples ≥ 4, got ", c.num_samples));
    }
    if (c.eta_grid.empty()) return absl::InvalidArgumentError("eta_grid must not be empty");
  }
  for (double eta : c.eta_grid) {
    if (!(std::isfinite(eta) && eta >= 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("eta_grid values must be finite and ≥ 0, got ", eta));
    }
  }
  for (size_t i = 0; i < c.seed_unit_ratios.size(); ++i) {
    for (double r : c.seed_unit_ratios[i]) {
      if (!(r >= 0 && r <= 1)) {
        return absl::InvalidArgumentError(
            absl::StrCat("seed_unit_ratios[", i, "] has ratio ", r, ", outside [0, 1]"));
      }
    }
  }
  if (!(c.mutation_step >= 0 && c.mutation_step <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("mutation_step must be in [0, 1], got ", c.mutation_step));
  }
  if (c.slack_evaluations < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slack_evaluations must be ≥ 0, got ", c.slack_evaluations));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SearchConfig::Validate() const {
  if (strategy != Strategy::kEfficientLlava && strategy != Strategy::kRandomSearch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "strategy ", StrategyName(strategy),
        " does not search (it solves continuous ratios); use EFFICIENTLLAVA or RANDOM_SEARCH"));
  }
  if (population < 2) {
    return absl::InvalidArgumentError(absl::StrCat("population must be ≥ 2, got ", population));
  }
  if (parents < 1 || parents >= population) {
    return absl::InvalidArgumentError(
        absl::StrCat("parents must be in [1, population) = [1, ", population, "), got ", parents));
  }
  if (generations < 0) {
    return absl::InvalidArgumentError(absl::StrCat("generations must be ≥ 0, got ", generations));
  }
  if (!(mutation >= 0 && mutation <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("mutation must be in [0, 1], got ", mutation));
  }
  if (eta.has_value() && !(std::isfinite(*eta) && *eta >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("eta must be finite and ≥ 0, got ", *eta));
  }
  if (projector_every < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("projector_every must be ≥ 0, got ", projector_every));
  }
  if (num_samples < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_samples must be ≥ 1, got ", num_samples));
  }
  if (!(std::isfinite(budget) && budget > 0 && budget <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("budget must be in (0, 1], got ", budget));
  }
  return ValidateOptions(*this);
}

namespace {

// One grid step: the only neighbour at either end of R, else up or down by Bernoulli(0.5).
int StepMutation(int index, int choices, Prng& prng) {
  if (index == 0) return 1;
  if (index == choices - 1) return index - 1;
  return prng.Bernoulli(0.5) ? index + 1 : index - 1;
}

}  // namespace

Policy CrossoverAndMutate(const Policy& a, const Policy& b, const SearchConfig& c, int choices,
                          Prng& prng) {
  Policy child(a.size());
  for (size_t u = 0; u < child.size(); ++u) {
    child[u] = prng.Bernoulli(0.5) ? a[u] : b[u];
    if (prng.Bernoulli(c.mutation) && choices > 1) {
      // The extra draw only when the option is on, so the default stream is unchanged.
      if (c.mutation_step > 0 && prng.Bernoulli(c.mutation_step)) {
        child[u] = StepMutation(child[u], choices, prng);
      } else {
        const int v = static_cast<int>(prng.UniformInt(choices - 1));
        child[u] = v >= child[u] ? v + 1 : v;
      }
    }
  }
  return child;
}

absl::StatusOr<double> FitnessOfUnitRatios(const PolicySpace& space, const SearchConfig& c,
                                           std::span<const double> unit_ratios, const EvalResult& r,
                                           double eta, std::span<const double> reference_losses) {
  if (unit_ratios.size() != static_cast<size_t>(space.num_units())) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", space.num_units(), " unit ratios, got ", unit_ratios.size()));
  }
  if (c.estimator == Estimator::kNorm) {  // Fitness()'s expression, bit for bit
    return r.loss + eta * r.omega / std::sqrt(static_cast<double>(c.num_samples));
  }
  if (eta == 0) return r.loss;
  const TermInputs in{.omega = r.omega,
                      .capacity = SquaredCapacity(unit_ratios, space.units().params),
                      .sample_losses = r.sample_losses,
                      .reference_losses = reference_losses};
  ASSIGN_OR_RETURN(double term, EstimatorTerm(c.estimator, in, SampleOrder(c)));
  return r.loss + eta * term;
}

int64_t NominalEvaluations(const SearchConfig& c) {
  return c.population + static_cast<int64_t>(c.generations) * (c.population - c.parents) +
         c.slack_evaluations;
}

json EvaluatedJson(const std::string& hash, int projector_version, const EvalResult& result,
                   double flops_ratio) {
  json j{{"hash", hash},
         {"projector_version", projector_version},
         {"loss", result.loss},
         {"accuracy", result.accuracy},
         {"flops_ratio", flops_ratio}};
  if (result.raced_out) {  // racing.h: loss is a lower bound after samples_scored samples
    j["raced_out"] = true;
    j["samples_scored"] = result.samples_scored;
  }
  return j;
}

json GenerationStats::ToJson() const {
  json j{{"generation", generation},
         {"population_size", population_size},
         {"best_fitness", best_fitness},
         {"best_loss", best_loss},
         {"best_accuracy", best_accuracy},
         {"best_omega", best_omega},
         {"best_flops_ratio", best_flops_ratio},
         {"best_hash", best_hash},
         {"mean_fitness", mean_fitness},
         {"std_fitness", std_fitness},
         {"evaluations", evaluations},
         {"cache_hits", cache_hits},
         {"eta", eta},
         {"projector_version", projector_version},
         {"projector_trained", projector_trained},
         {"projector_loss_before", projector_loss_before},
         {"projector_loss_after", projector_loss_after}};
  // Only when set, so that default histories stay byte-identical to version 1's.
  if (!estimator.empty()) j["estimator"] = estimator;
  if (!eta_method.empty()) j["eta_method"] = eta_method;
  if (eta_cv_rho.has_value()) j["eta_cv_rho"] = *eta_cv_rho;
  if (!eta_cv_rhos.empty()) {
    json rhos = json::array();
    for (const std::optional<double>& r : eta_cv_rhos) rhos.push_back(r ? json(*r) : json());
    j["eta_cv_rhos"] = std::move(rhos);
  }
  if (slack_evaluations != 0) j["slack_evaluations"] = slack_evaluations;
  if (slack_steps != 0) j["slack_steps"] = slack_steps;
  if (raced_out != 0) j["raced_out"] = raced_out;
  if (race_threshold.has_value()) j["race_threshold"] = *race_threshold;
  return j;
}

namespace {

// The keys GenerationStats::ToJson writes only when set.
absl::Status OptionalStatsFromJson(const json& j, const std::string& path, GenerationStats& g) {
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  if (j.contains("estimator")) {
    ASSIGN_OR_RETURN(g.estimator, GetString(j, path, "estimator"));
    RETURN_IF_ERROR(ParseEstimator(g.estimator).status());
  }
  if (j.contains("eta_method")) {
    ASSIGN_OR_RETURN(g.eta_method, GetString(j, path, "eta_method"));
    if (g.eta_method != "explicit" && g.eta_method != "zero" && g.eta_method != "auto" &&
        g.eta_method != "cv" && g.eta_method != "samples") {
      return FieldError(path + ".eta_method", "expected explicit, zero, auto, cv or samples");
    }
  }
  if (j.contains("eta_cv_rho")) {
    ASSIGN_OR_RETURN(g.eta_cv_rho, GetDouble(j, path, "eta_cv_rho"));
  }
  if (j.contains("eta_cv_rhos")) {
    ASSIGN_OR_RETURN(const json* rhos, GetArray(j, path, "eta_cv_rhos"));
    for (size_t i = 0; i < rhos->size(); ++i) {
      if ((*rhos)[i].is_null()) {
        g.eta_cv_rhos.push_back(std::nullopt);
        continue;
      }
      ASSIGN_OR_RETURN(double r, AsDouble((*rhos)[i], absl::StrCat(path, ".eta_cv_rhos[", i, "]")));
      g.eta_cv_rhos.push_back(r);
    }
  }
  if (j.contains("slack_evaluations")) {
    ASSIGN_OR_RETURN(g.slack_evaluations, GetInt(j, path, "slack_evaluations", 0, kMaxInt));
  }
  if (j.contains("slack_steps")) {
    ASSIGN_OR_RETURN(g.slack_steps, GetInt(j, path, "slack_steps", 0, kMaxInt));
  }
  if (j.contains("raced_out")) {
    ASSIGN_OR_RETURN(g.raced_out, GetInt(j, path, "raced_out", 0, kMaxInt));
  }
  if (j.contains("race_threshold")) {
    ASSIGN_OR_RETURN(g.race_threshold, GetDouble(j, path, "race_threshold"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GenerationStats> GenerationStats::FromJson(const json& j) {
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  const std::string path = "history[]";
  GenerationStats g;
  ASSIGN_OR_RETURN(g.generation, GetInt(j, path, "generation", 0, kMaxInt));
  ASSIGN_OR_RETURN(g.population_size, GetInt(j, path, "population_size", 0, kMaxInt));
  ASSIGN_OR_RETURN(g.best_fitness, GetDouble(j, path, "best_fitness"));
  ASSIGN_OR_RETURN(g.best_loss, GetDouble(j, path, "best_loss"));
  ASSIGN_OR_RETURN(g.best_accuracy, GetDouble(j, path, "best_accuracy"));
  ASSIGN_OR_RETURN(g.best_omega, GetDouble(j, path, "best_omega"));
  ASSIGN_OR_RETURN(g.best_flops_ratio, GetDouble(j, path, "best_flops_ratio"));
  ASSIGN_OR_RETURN(g.best_hash, GetString(j, path, "best_hash"));
  ASSIGN_OR_RETURN(g.mean_fitness, GetDouble(j, path, "mean_fitness"));
  ASSIGN_OR_RETURN(g.std_fitness, GetDouble(j, path, "std_fitness"));
  ASSIGN_OR_RETURN(g.evaluations, GetInt(j, path, "evaluations", 0, kMaxInt));
  ASSIGN_OR_RETURN(g.cache_hits, GetInt(j, path, "cache_hits", 0, kMaxInt));
  ASSIGN_OR_RETURN(g.eta, GetDouble(j, path, "eta"));
  ASSIGN_OR_RETURN(g.projector_version, GetInt(j, path, "projector_version", 0, kMaxInt));
  ASSIGN_OR_RETURN(g.projector_trained, GetBool(j, path, "projector_trained"));
  ASSIGN_OR_RETURN(g.projector_loss_before, GetDouble(j, path, "projector_loss_before"));
  ASSIGN_OR_RETURN(g.projector_loss_after, GetDouble(j, path, "projector_loss_after"));
  RETURN_IF_ERROR(OptionalStatsFromJson(j, path, g));
  return g;
}

json SearchState::CacheEntryJson(const std::pair<std::string, int>& key, const EvalResult& r) {
  json e{{"hash", key.first},      {"version", key.second}, {"loss", r.loss},
         {"accuracy", r.accuracy}, {"omega", r.omega},      {"sample_losses", r.sample_losses}};
  if (r.raced_out) e["samples_scored"] = r.samples_scored;  // racing.h: a lower bound
  return e;
}

json SearchState::ToJson() const {
  json j = ToJsonWithoutCache();
  json& cache_json = j["cache"];
  for (const auto& [key, r] : cache) cache_json.push_back(CacheEntryJson(key, r));
  return j;
}

json SearchState::ToJsonWithoutCache() const {
  json history_json = json::array();
  for (const GenerationStats& g : history) history_json.push_back(g.ToJson());
  json j{{"format", kStateFormat},
         {"version", kSearchStateVersion},
         {"config", ConfigToJson(config)},
         {"unit_kind", std::string(UnitKindName(unit_kind))},
         {"num_units", num_units},
         {"ratio_choices", ratio_choices},
         {"generation", generation},
         {"done", done},
         {"prng_state", prng_state},
         {"projector_version", projector_version},
         {"eta", eta.has_value() ? json(*eta) : json(nullptr)},
         {"population", population},
         {"ranked", ranked},
         {"cache", json::array()},
         {"history", std::move(history_json)},
         {"total_evaluations", total_evaluations}};
  if (!reference.empty()) j["reference"] = reference;
  return j;
}

namespace {

// state.cache: version 2 entries carry "sample_losses", version 1 entries must not.
absl::Status CacheFromJson(const json& j, int state_version, SearchState& s) {
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  const std::string root = "state";
  ASSIGN_OR_RETURN(const json* cache, GetArray(j, root, "cache"));
  for (size_t i = 0; i < cache->size(); ++i) {
    const std::string p = absl::StrCat("state.cache[", i, "]");
    const json& e = (*cache)[i];
    ASSIGN_OR_RETURN(std::string hash, GetString(e, p, "hash"));
    if (!IsHash(hash)) return FieldError(p + ".hash", "expected 16 lowercase hex digits");
    ASSIGN_OR_RETURN(int version, GetInt(e, p, "version", 0, kMaxInt));
    EvalResult r;
    ASSIGN_OR_RETURN(r.loss, GetDouble(e, p, "loss"));
    ASSIGN_OR_RETURN(r.accuracy, GetDouble(e, p, "accuracy"));
    ASSIGN_OR_RETURN(r.omega, GetDouble(e, p, "omega"));
    if (state_version >= 2) {
      ASSIGN_OR_RETURN(r.sample_losses, GetDoubles(e, p, "sample_losses"));
    } else if (e.contains("sample_losses")) {
      return FieldError(p + ".sample_losses", "not part of a version 1 checkpoint");
    }
    if (e.contains("samples_scored")) {
      ASSIGN_OR_RETURN(r.samples_scored, GetInt(e, p, "samples_scored", 1, kMaxInt));
      r.raced_out = true;
    }
    if (!s.cache.emplace(std::make_pair(hash, version), r).second) {
      return FieldError(p, "duplicate (hash, version)");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SearchState> SearchState::FromJson(const json& j) {
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  const std::string root = "state";
  SearchState s;
  ASSIGN_OR_RETURN(std::string format, GetString(j, root, "format"));
  if (format != kStateFormat) {
    return FieldError("state.format", absl::StrCat("\"", format, "\" is not ", kStateFormat));
  }
  // Version 1 checkpoints (before per-sample losses) have no "version" key.
  int state_version = 1;
  if (j.contains("version")) {
    ASSIGN_OR_RETURN(state_version, GetInt(j, root, "version", 1, kSearchStateVersion));
  }
  ASSIGN_OR_RETURN(const json* config, Field(j, root, "config"));
  ASSIGN_OR_RETURN(s.config, ConfigFromJson(*config, "state.config", state_version));
  ASSIGN_OR_RETURN(std::string kind, GetString(j, root, "unit_kind"));
  ASSIGN_OR_RETURN(s.unit_kind, ParseUnitKind(kind));
  ASSIGN_OR_RETURN(s.num_units, GetInt(j, root, "num_units", 1, kMaxInt));
  ASSIGN_OR_RETURN(const json* ratios, GetArray(j, root, "ratio_choices"));
  for (size_t i = 0; i < ratios->size(); ++i) {
    ASSIGN_OR_RETURN(double r,
                     AsDouble((*ratios)[i], absl::StrCat("state.ratio_choices[", i, "]")));
    s.ratio_choices.push_back(r);
  }
  RETURN_IF_ERROR(ValidateRatioChoices(s.ratio_choices));
  ASSIGN_OR_RETURN(s.generation, GetInt(j, root, "generation", 0, s.config.generations));
  ASSIGN_OR_RETURN(s.done, GetBool(j, root, "done"));
  ASSIGN_OR_RETURN(s.prng_state, GetString(j, root, "prng_state"));
  RETURN_IF_ERROR(Prng::FromStateHex(s.prng_state).status());
  ASSIGN_OR_RETURN(s.projector_version, GetInt(j, root, "projector_version", 0, kMaxInt));
  ASSIGN_OR_RETURN(const json* eta, Field(j, root, "eta"));
  if (!eta->is_null()) {
    ASSIGN_OR_RETURN(double e, AsDouble(*eta, "state.eta"));
    if (e < 0) return FieldError("state.eta", "negative");
    s.eta = e;
  }
  ASSIGN_OR_RETURN(s.population, GetPolicies(j, root, "population"));
  ASSIGN_OR_RETURN(s.ranked, GetPolicies(j, root, "ranked"));
  if (j.contains("reference")) {
    ASSIGN_OR_RETURN(s.reference, AsPolicy(j["reference"], "state.reference"));
  }
  if (s.config.estimator == Estimator::kPaired && s.config.strategy == Strategy::kEfficientLlava &&
      s.reference.empty()) {
    return FieldError("state.reference", "estimator PAIRED needs its reference policy");
  }
  RETURN_IF_ERROR(CacheFromJson(j, state_version, s));
  ASSIGN_OR_RETURN(const json* history, GetArray(j, root, "history"));
  for (size_t i = 0; i < history->size(); ++i) {
    absl::StatusOr<GenerationStats> g = GenerationStats::FromJson((*history)[i]);
    if (!g.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(g.status().message(), " (state.history[", i, "])"));
    }
    s.history.push_back(*std::move(g));
  }
  ASSIGN_OR_RETURN(s.total_evaluations,
                   GetInt(j, root, "total_evaluations", 0, std::numeric_limits<int64_t>::max()));
  // Shape of the schedule: `generation` generations are recorded, plus the last one when done.
  const size_t expected_history = s.done ? s.config.generations + 1 : s.generation;
  if (s.history.size() != expected_history) {
    return FieldError("state.history", absl::StrCat("has ", s.history.size(),
                                                    " generations, expected ", expected_history));
  }
  if (s.done != s.population.empty()) {
    return FieldError("state.population", s.done ? "must be empty once done"
                                                 : "must not be empty before the search is done");
  }
  if (s.done && s.generation != s.config.generations) {
    return FieldError("state.generation", "a finished search ends at the last generation");
  }
  if (!s.history.empty() && !s.eta.has_value()) {
    return FieldError("state.eta", "must be set after the first generation");
  }
  if (s.history.empty() != s.ranked.empty()) {
    return FieldError("state.ranked", "must be present exactly when a generation was scored");
  }
  return s;
}

absl::StatusOr<std::unique_ptr<EvolutionarySearch>> EvolutionarySearch::Create(
    const PolicySpace* space, SearchConfig config) {
  if (space == nullptr) return absl::InvalidArgumentError("search: no policy space");
  RETURN_IF_ERROR(config.Validate());
  RETURN_IF_ERROR(space->CheckBudget(config.budget));
  SearchState s;
  s.config = config;
  s.unit_kind = space->units().kind;
  s.num_units = space->num_units();
  s.ratio_choices = space->ratio_choices();
  Prng prng(config.seed);
  std::set<std::string> taken;
  if (config.strategy == Strategy::kEfficientLlava) {
    ASSIGN_OR_RETURN(Policy uniform, space->UniformPolicyForBudget(config.budget));
    if (config.repair_uniform_seed) {
      ASSIGN_OR_RETURN(uniform, space->RepairToBudget(std::move(uniform), config.budget, prng));
    }
    taken.insert(HashOf(*space, uniform));
    if (config.estimator == Estimator::kPaired) s.reference = uniform;
    s.population.push_back(std::move(uniform));
    for (size_t i = 0; i < config.seed_unit_ratios.size(); ++i) {
      absl::StatusOr<Policy> snapped = space->SnapToGrid(config.seed_unit_ratios[i]);
      if (!snapped.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("seed_unit_ratios[", i, "]: ", snapped.status().message()));
      }
      ASSIGN_OR_RETURN(Policy seed,
                       space->RepairToBudget(*std::move(snapped), config.budget, prng));
      if (s.population.size() < static_cast<size_t>(config.population) &&
          taken.insert(HashOf(*space, seed)).second) {
        s.population.push_back(std::move(seed));
      }
    }
  }
  RETURN_IF_ERROR(FillRandom(*space, config, prng, static_cast<size_t>(config.population), taken,
                             s.population));
  s.prng_state = prng.StateHex();
  return std::unique_ptr<EvolutionarySearch>(new EvolutionarySearch(space, std::move(s)));
}

absl::StatusOr<std::unique_ptr<EvolutionarySearch>> EvolutionarySearch::Resume(
    const PolicySpace* space, SearchState state) {
  if (space == nullptr) return absl::InvalidArgumentError("search: no policy space");
  RETURN_IF_ERROR(state.config.Validate());
  RETURN_IF_ERROR(space->CheckBudget(state.config.budget));
  if (state.unit_kind != space->units().kind || state.num_units != space->num_units() ||
      state.ratio_choices != space->ratio_choices()) {
    return absl::FailedPreconditionError(
        absl::StrCat("search state belongs to another search space: ", state.num_units, " ",
                     UnitKindName(state.unit_kind), " units with ", state.ratio_choices.size(),
                     " ratio choices, the model has ", space->num_units(), " ",
                     UnitKindName(space->units().kind), " units with ", space->num_choices()));
  }
  RETURN_IF_ERROR(Prng::FromStateHex(state.prng_state).status());
  std::set<std::string> seen;
  for (const Policy& p : state.population) {
    RETURN_IF_ERROR(space->Validate(p));
    if (!seen.insert(HashOf(*space, p)).second) {
      return absl::InvalidArgumentError("search state: the population repeats a policy");
    }
  }
  if (NeedsSampleLosses(state.config, /*eta_resolved=*/true)) {
    for (const auto& [key, r] : state.cache) {
      if (!r.raced_out && r.sample_losses.size() != static_cast<size_t>(state.config.num_samples)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "search state: cache entry ", key.first, " v", key.second, " has ",
            r.sample_losses.size(), " per-sample losses; estimator ",
            EstimatorName(state.config.estimator), " needs ", state.config.num_samples));
      }
    }
  }
  if (!state.reference.empty()) RETURN_IF_ERROR(space->Validate(state.reference));
  for (const Policy& p : state.ranked) {
    RETURN_IF_ERROR(space->Validate(p));
    if (state.cache.count({HashOf(*space, p), state.projector_version}) == 0) {
      return absl::InvalidArgumentError(
          "search state: a ranked policy has no cached result under the current projector");
    }
  }
  return std::unique_ptr<EvolutionarySearch>(new EvolutionarySearch(space, std::move(state)));
}

absl::Status EvolutionarySearch::Step(PolicyEvaluator& evaluator,
                                      const std::function<void()>& before_update) {
  if (state_.done) return absl::FailedPreconditionError("search: already done");
  // Work on a copy so that a failing evaluator leaves the state as it was (retry-safe).
  SearchState s = state_;
  const SearchConfig& c = s.config;
  GenerationStats stats;
  stats.generation = s.generation;
  RETURN_IF_ERROR(ScorePopulation(*space_, s, evaluator, stats));
  if (!s.eta.has_value()) RETURN_IF_ERROR(ResolveEta(*space_, s, stats));
  std::vector<ScoredPolicy> ranked = Rank(*space_, s, s.population, s.projector_version);
  if (ProjectorDue(c, s.generation)) {
    ASSIGN_OR_RETURN(ranked, TrainAndRescore(*space_, s, evaluator, ranked, stats));
  }
  if (ranked.empty()) return absl::InternalError("search: empty population");
  stats.population_size = static_cast<int>(ranked.size());
  if (s.generation >= c.generations && c.slack_evaluations > 0) {
    ASSIGN_OR_RETURN(ranked, FinalExtras(*space_, s, evaluator, ranked, stats));
  }
  RecordBest(ranked, s, stats);
  s.history.push_back(stats);
  s.ranked.clear();
  for (const ScoredPolicy& sp : ranked) s.ranked.push_back(sp.policy);
  if (s.generation >= c.generations) {
    s.done = true;
    s.population.clear();
  } else {
    ASSIGN_OR_RETURN(Prng prng, Prng::FromStateHex(s.prng_state));
    ASSIGN_OR_RETURN(s.population, NextPopulation(*space_, s, ranked, prng));
    s.prng_state = prng.StateHex();
    ++s.generation;
  }
  if (before_update) before_update();
  state_ = std::move(s);
  return absl::OkStatus();
}

absl::Status EvolutionarySearch::Run(PolicyEvaluator& evaluator) {
  while (!state_.done) RETURN_IF_ERROR(Step(evaluator));
  return absl::OkStatus();
}

std::span<const double> EvolutionarySearch::ReferenceLosses() const {
  const EvalResult* ref = ReferenceResult(*space_, state_, state_.projector_version);
  return ref != nullptr ? std::span<const double>(ref->sample_losses) : std::span<const double>();
}

std::vector<ScoredPolicy> EvolutionarySearch::Ranking() const {
  return Rank(*space_, state_, state_.ranked, state_.projector_version);
}

absl::StatusOr<ScoredPolicy> EvolutionarySearch::Best() const {
  std::optional<ScoredPolicy> best =
      First(*space_, state_, state_.ranked, state_.projector_version);
  if (!best.has_value()) return absl::FailedPreconditionError("search: no generation scored yet");
  return *std::move(best);
}

}  // namespace prunesvc::search

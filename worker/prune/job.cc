#include "worker/prune/job.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
// Versions for the report only (header macros); absent in a torch-only build (docs/gpu.md).
#if __has_include(<grpcpp/version_info.h>)
#include <google/protobuf/stubs/common.h>
#include <grpcpp/version_info.h>
#define PRUNESVC_HAVE_GRPC_HEADERS 1
#endif
#include <sys/stat.h>
#include <time.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/flops.h"
#include "common/nm_sparsity.h"
#include "common/owl.h"
#include "common/rank_stats.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/model/checkpoint.h"
#include "worker/model/device.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/llava_eval.h"
#include "worker/model/samples.h"
#include "worker/model/scoring.h"
#include "worker/model/torch_guard.h"
#include "worker/prune/evaluator.h"
#include "worker/prune/local_policy_evaluator.h"
#include "worker/prune/owl.h"
#include "worker/prune/projector_training.h"
#include "worker/prune/sparsegpt.h"
#include "worker/prune/structured.h"

namespace prunesvc::prune {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

absl::StatusOr<std::string> Sha256OfFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    const std::streamsize got = in.gcount();
    if (got > 0) h.Update(std::string_view(buf.data(), size_t(got)));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return DigestHex(h.Final());
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

bool IsWeightFile(const std::string& name) {
  for (const char* suffix : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                             ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf"}) {
    if (absl::EndsWith(name, suffix)) return true;
  }
  return false;
}

// The input's weight files (what model_sha256 covers), sorted by name.
std::vector<std::string> WeightFiles(const std::string& model_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(model_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() &&
        (absl::EndsWith(name, ".safetensors") || name == "model.safetensors.index.json")) {
      out.push_back(name);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// sha256 over "HEX  NAME\n" lines of the weight files (sha256sum's format, sorted by name), plus
// the per-file digests.
absl::StatusOr<std::pair<std::string, json>> ModelSha256(const std::string& model_dir) {
  std::string lines;
  json files = json::object();
  for (const std::string& name : WeightFiles(model_dir)) {
    ASSIGN_OR_RETURN(std::string hex, Sha256OfFile(model_dir + "/" + name));
    absl::StrAppend(&lines, hex, "  ", name, "\n");
    files[name] = hex;
  }
  return std::make_pair(Sha256Hex(lines), files);
}

json CpuInfo() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model, flags;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    std::string value = colon + 1 < line.size() ? line.substr(colon + 2) : "";
    if (model.empty() && (key == "model name" || key == "Model" || key == "cpu model")) {
      model = value;
    }
    if (flags.empty() && (key == "flags" || key == "Features")) flags = value;
  }
  return {{"model", model},
          {"flags", flags},
          {"cores", std::max(1u, std::thread::hardware_concurrency())}};
}

json LibraryVersions() {
  json v = {{"libtorch", TORCH_VERSION}, {"compiler", __VERSION__}};
#ifdef PRUNESVC_HAVE_GRPC_HEADERS
  v["grpc"] = GRPC_CPP_VERSION_STRING;
  v["protobuf"] =
      absl::StrFormat("%d.%d.%d", GOOGLE_PROTOBUF_VERSION / 1000000,
                      GOOGLE_PROTOBUF_VERSION / 1000 % 1000, GOOGLE_PROTOBUF_VERSION % 1000);
#endif
  return v;
}

// OUT.partial-<pid>: created up front, removed unless committed (renamed to OUT).
class PartialDir {
 public:
  static absl::StatusOr<std::unique_ptr<PartialDir>> Create(const std::string& out) {
    const std::string path = absl::StrCat(out, ".partial-", getpid());
    std::error_code ec;
    fs::remove_all(path, ec);
    if (!fs::create_directories(path, ec) || ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("--out ", out, ": cannot create ", path, ": ", ec.message()));
    }
    return std::unique_ptr<PartialDir>(new PartialDir(out, path));
  }
  ~PartialDir() {
    if (committed_) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

  absl::Status Commit() {
    std::error_code ec;
    // An empty OUT (checked up front) is replaced: rename(2) onto an empty directory works.
    fs::rename(path_, out_, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot rename ", path_, " to ", out_, ": ", ec.message()));
    }
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  PartialDir(std::string out, std::string path) : out_(std::move(out)), path_(std::move(path)) {}
  const std::string out_, path_;
  bool committed_ = false;
};

std::string NormalizeOutDir(std::string out) {
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

absl::Status CheckOutDir(const std::string& out) {
  std::error_code ec;
  const fs::file_status st = fs::status(out, ec);
  if (!fs::exists(st)) return absl::OkStatus();
  if (!fs::is_directory(st)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--out ", out, " exists and is not a directory"));
  }
  if (!fs::is_empty(out, ec) || ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--out ", out, " exists and is not empty; choose a new directory or remove it first"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// N:M granularity (common/nm_sparsity.h): the policy space's choices are {dense, N:M}.

bool IsNm(const LocalJobSpec& spec) { return spec.granularity == search::Granularity::kNM; }

std::vector<double> EffectiveRatioChoices(const LocalJobSpec& spec) {
  return IsNm(spec) ? NmRatioChoices(spec.nm) : spec.ratio_choices;
}

json NmJson(const LocalJobSpec& spec) {
  return IsNm(spec) ? json(NmPatternName(spec.nm)) : json(nullptr);
}

// ---------------------------------------------------------------------------------------------
// Loading and pre-flight.

struct Loaded {
  std::unique_ptr<model::LlavaBundle> bundle;
  model::SampleSet search_set;
  std::vector<model::PreparedSample> search_prepared;  // with pixels
  model::SampleSet eval_set;
  bool has_eval = false;
  FlopsBreakdown dense;
  TokenStats token_stats;  // of the search samples
  std::unique_ptr<search::PolicySpace> space;
  model::DeviceInfo device;  // the opened --device; device.threads = torch threads in effect
};

absl::StatusOr<Loaded> Load(const LocalJobSpec& spec) {
  Loaded l;
  ASSIGN_OR_RETURN(l.device, model::OpenDevice(spec.device, spec.threads));
  ASSIGN_OR_RETURN(l.bundle, model::LoadLlavaBundle(spec.model_dir, l.device.device()));
  const model::LlavaConfig& c = l.bundle->config;
  if (c.text.hidden_act != "silu") {
    return absl::InvalidArgumentError(
        absl::StrCat(spec.model_dir, "/config.json: text_config.hidden_act \"", c.text.hidden_act,
                     "\" is not supported (LLaVA-1.5's LLaMA uses silu)"));
  }
  ASSIGN_OR_RETURN(l.search_set, model::LoadSampleSet(spec.samples_path));
  l.search_prepared.reserve(l.search_set.samples.size());
  for (const model::Sample& s : l.search_set.samples) {
    ASSIGN_OR_RETURN(model::PreparedSample p, model::PrepareSample(*l.bundle, s));
    l.search_prepared.push_back(std::move(p));
  }
  if (!spec.eval_samples_path.empty()) {
    ASSIGN_OR_RETURN(l.eval_set, model::LoadSampleSet(spec.eval_samples_path));
    l.has_eval = true;
    // Validate the held-out set now, not after a long search.
    for (const model::Sample& s : l.eval_set.samples) {
      RETURN_IF_ERROR(model::PrepareSample(*l.bundle, s).status());
    }
  }
  std::vector<model::ScoringSample> scoring;
  for (const auto& p : l.search_prepared) scoring.push_back(p.scoring);
  const model::LlavaModel& m = *l.bundle->model;
  l.token_stats = model::ComputeTokenStats(m, scoring);
  ASSIGN_OR_RETURN(l.dense, ComputeDenseFlops(m.FlopsDims(), l.token_stats));
  if (IsNm(spec)) RETURN_IF_ERROR(CheckNmDivisible(l.dense, spec.nm));
  if (spec.granularity == search::Granularity::kStructured) {
    // F(π) = the FLOPs of the shrunk shapes (common/policy.h CreateStructured).
    ASSIGN_OR_RETURN(search::PolicySpace space,
                     search::PolicySpace::CreateStructured(m.FlopsDims(), l.token_stats,
                                                           LayerHeadsOf(m), spec.ratio_choices));
    l.space = std::make_unique<search::PolicySpace>(std::move(space));
    return l;
  }
  ASSIGN_OR_RETURN(search::PruningUnits units,
                   search::PruningUnits::Build(m.FlopsDims(), l.dense, spec.unit));
  ASSIGN_OR_RETURN(
      search::PolicySpace space,
      search::PolicySpace::Create(l.dense, std::move(units), EffectiveRatioChoices(spec)));
  l.space = std::make_unique<search::PolicySpace>(std::move(space));
  return l;
}

absl::Status BudgetError(const LocalJobSpec& spec, const search::PolicySpace& space,
                         const absl::Status& s) {
  if (IsNm(spec) && s.code() == absl::StatusCode::kFailedPrecondition) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "--flops-budget %g is unreachable with --granularity N_M --nm %s: N:M alone cannot go "
        "below every unit at %s, which costs %.4f of the dense FLOPs (the smallest reachable "
        "ratio; use --flops-budget ≥ %.4f)",
        spec.flops_budget, NmPatternName(spec.nm), NmPatternName(spec.nm),
        space.MinReachableRatio(), std::ceil(space.MinReachableRatio() * 1e4) / 1e4));
  }
  return absl::Status(
      s.code(),
      absl::StrFormat("--flops-budget %g is unreachable: the smallest reachable ratio is "
                      "%.4f (%s)",
                      spec.flops_budget, space.MinReachableRatio(), std::string(s.message())));
}

// ---------------------------------------------------------------------------------------------
// Scoring a sample set in-process (per batch: images decoded, projected, scored, dropped).

absl::StatusOr<ModelMetrics> ScoreSampleSet(const model::LlavaBundle& bundle,
                                            const model::SampleSet& set, int batch_size) {
  const model::LlavaModel& m = *bundle.model;
  const int total = int(set.samples.size());
  double loss = 0;
  int mc = 0, correct = 0;
  for (int start = 0; start < total; start += batch_size) {
    const int end = std::min(total, start + batch_size);
    std::vector<model::PreparedSample> chunk;
    for (int i = start; i < end; ++i) {
      ASSIGN_OR_RETURN(chunk.emplace_back(), model::PrepareSample(bundle, set.samples[i]));
    }
    RETURN_IF_ERROR(model::AttachImageFeatures(m, absl::MakeSpan(chunk), batch_size));
    std::vector<model::ScoringSample> batch;
    for (const auto& p : chunk) batch.push_back(p.scoring);
    ASSIGN_OR_RETURN(std::vector<model::SampleScore> scores,
                     model::ScoreSamples(m, batch, {.batch_size = batch_size}));
    for (const auto& s : scores) {
      loss += s.loss;
      if (s.multiple_choice) {
        ++mc;
        correct += s.correct ? 1 : 0;
      }
    }
  }
  ModelMetrics out;
  out.num_samples = total;
  out.loss = total > 0 ? loss / total : 0;
  if (mc > 0) out.accuracy = double(correct) / mc;
  return out;
}

json MetricsJson(const ModelMetrics& m) {
  return {{"accuracy", m.accuracy ? json(*m.accuracy) : json(nullptr)},
          {"loss", m.loss},
          {"num_samples", m.num_samples}};
}

// Median wall time (ms) of `repeats` full forwards (vision tower + projector + decoder scoring)
// of the same batch, after one untimed warm-up.
absl::StatusOr<double> MedianLatencyMs(const model::LlavaModel& m,
                                       std::vector<model::PreparedSample> batch, int repeats) {
  std::vector<double> times;
  for (int r = 0; r <= repeats; ++r) {
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(model::AttachImageFeatures(m, absl::MakeSpan(batch), int(batch.size())));
    std::vector<model::ScoringSample> scoring;
    for (const auto& p : batch) scoring.push_back(p.scoring);
    RETURN_IF_ERROR(model::ScoreSamples(m, scoring, {.batch_size = int(batch.size())}).status());
    if (r > 0) times.push_back(SecondsSince(t0) * 1e3);
  }
  std::sort(times.begin(), times.end());
  const size_t n = times.size();
  return n % 2 == 1 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
}

// MedianLatencyMs of two models on the same batch, their forwards alternated (a, b, a, b, …;
// the first pair untimed) so that load changes on a shared machine hit both alike.
absl::StatusOr<std::pair<double, double>> InterleavedLatencyMs(
    const model::LlavaModel& a, const model::LlavaModel& b,
    std::vector<model::PreparedSample> batch, int repeats) {
  auto timed = [&](const model::LlavaModel& m) -> absl::StatusOr<double> {
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(model::AttachImageFeatures(m, absl::MakeSpan(batch), int(batch.size())));
    std::vector<model::ScoringSample> scoring;
    for (const auto& p : batch) scoring.push_back(p.scoring);
    RETURN_IF_ERROR(model::ScoreSamples(m, scoring, {.batch_size = int(batch.size())}).status());
    return SecondsSince(t0) * 1e3;
  };
  std::vector<double> ta, tb;
  for (int r = 0; r <= repeats; ++r) {
    ASSIGN_OR_RETURN(double x, timed(a));
    ASSIGN_OR_RETURN(double y, timed(b));
    if (r > 0) {
      ta.push_back(x);
      tb.push_back(y);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  return std::make_pair(median(ta), median(tb));
}

// ---------------------------------------------------------------------------------------------
// The search, with progress, cancellation and a record of every evaluated policy.

struct JobContext {
  ProgressSink* sink = nullptr;
  JobProgress progress;
  Clock::time_point start;
  std::vector<std::string> warnings;

  bool Stop() { return sink != nullptr && sink->StopRequested(); }
  absl::Status CheckStop() {
    if (Stop()) return absl::CancelledError("stopped on request (signal)");
    return absl::OkStatus();
  }
  void Phase(JobPhase phase) {
    progress.phase = phase;
    progress.elapsed_seconds = SecondsSince(start);
    spdlog::info("phase: {}", JobPhaseName(phase));
    if (sink != nullptr) sink->OnProgress(progress);
  }
  void Warn(const std::string& message) {
    warnings.push_back(message);
    if (sink != nullptr) {
      sink->OnWarning(message);
    } else {
      spdlog::warn("{}", message);
    }
  }
};

class TrackingEvaluator : public search::PolicyEvaluator {
 public:
  TrackingEvaluator(LocalPolicyEvaluator* inner, const search::PolicySpace* space, JobContext* ctx)
      : inner_(inner), space_(space), ctx_(ctx) {}

  absl::StatusOr<std::vector<search::EvalResult>> Evaluate(
      const std::vector<search::Policy>& policies, int projector_version) override {
    std::vector<search::EvalResult> out;
    for (const search::Policy& p : policies) {
      RETURN_IF_ERROR(ctx_->CheckStop());
      ASSIGN_OR_RETURN(std::vector<search::EvalResult> r, inner_->Evaluate({p}, projector_version));
      out.push_back(r.at(0));
      ASSIGN_OR_RETURN(std::string hash, space_->Hash(p));
      evaluated_.push_back({{"hash", hash}, {"projector_version", projector_version}});
      if (seen_.insert(hash).second) distinct_.push_back(p);
      ++ctx_->progress.evaluations;
      ctx_->progress.elapsed_seconds = SecondsSince(ctx_->start);
      if (ctx_->sink != nullptr) ctx_->sink->OnProgress(ctx_->progress);
    }
    return out;
  }

  absl::StatusOr<search::ProjectorUpdate> TrainProjector(const std::vector<search::Policy>& top_k,
                                                         int from_version) override {
    RETURN_IF_ERROR(ctx_->CheckStop());
    return inner_->TrainProjector(top_k, from_version);
  }

  // The evaluated sequence, in order. (A failed Step fails the job, so no partial batch is
  // ever left to roll back.)
  const json& evaluated() const { return evaluated_; }
  // Every distinct policy evaluated, in first-evaluation order.
  const std::vector<search::Policy>& distinct() const { return distinct_; }

 private:
  LocalPolicyEvaluator* const inner_;
  const search::PolicySpace* const space_;
  JobContext* const ctx_;
  json evaluated_ = json::array();
  std::set<std::string> seen_;
  std::vector<search::Policy> distinct_;
};

// ---------------------------------------------------------------------------------------------
// Finalize: the policy's per-linear ratios as whole pruned weights per row.

struct LinearPlan {
  std::string name;  // canonical weight name
  int layer = 0;
  DecoderLinear kind = DecoderLinear::kQ;
  int64_t out = 0, in = 0;
  double ratio = 0;  // the policy's ratio
  int64_t k = 0;     // pruned weights per row: PrunedPerRow(ratio, in), what the mask prunes
};

// The tensor as the artifact's dtype will store it (so in-process numbers match the reload).
at::Tensor RoundToDType(const at::Tensor& t, model::DType dtype) {
  if (!t.defined()) return t;
  switch (dtype) {
    case model::DType::kF16:
      return t.to(at::kHalf).to(at::kFloat);
    case model::DType::kBF16:
      return t.to(at::kBFloat16).to(at::kFloat);
    default:
      return t;
  }
}

// N:M: every group of M consecutive columns of every row of the written weight holds at most N
// non-zeros (exactly N unless a kept weight is itself zero). A violation is a bug: fail loudly.
absl::Status CheckNmWritten(const LinearPlan& p, const at::Tensor& w, const NmPattern& nm) {
  const at::Tensor per_group = (w != 0).reshape({p.out, p.in / nm.m, nm.m}).sum(2);
  if (per_group.gt(nm.n).any().item<bool>()) {
    return absl::InternalError(absl::StrCat("the written ", p.name, " is not ", NmPatternName(nm),
                                            " sparse; refusing to finish"));
  }
  return absl::OkStatus();
}

// OWL (common/owl.h, worker/prune/owl.h): the dense model's outlier ratios per layer, then
// UNSTRUCTURED continuous ratios shifted to the budget, or under N:M the most-outlier layers kept
// dense while the budget allows. Returns report.json's "owl" object.
absl::StatusOr<json> OwlStrategy(const LocalJobSpec& spec, const search::PolicySpace& space,
                                 const CandidateEvaluator& evaluator,
                                 std::vector<double>* unit_ratios) {
  std::vector<at::Tensor> weights;
  for (int i = 0; i < evaluator.num_linears(); ++i) weights.push_back(evaluator.dense_weight(i));
  ASSIGN_OR_RETURN(std::vector<double> outliers,
                   OwlOutlierRatios(weights, evaluator.calibration(), evaluator.unit_of_linear(),
                                    space.num_units()));
  ASSIGN_OR_RETURN(std::vector<double> deviations, search::OwlDeviations(outliers));
  if (IsNm(spec)) {
    ASSIGN_OR_RETURN(*unit_ratios, search::OwlNmRatios(space, outliers, spec.flops_budget));
  } else {
    ASSIGN_OR_RETURN(*unit_ratios, space.ShiftToBudget(deviations, spec.flops_budget));
  }
  double mean = 0;
  for (double r : *unit_ratios) mean += r / double(unit_ratios->size());
  return json{{"outlier_multiple", search::kOwlOutlierMultiple},
              {"lambda", search::kOwlLambda},
              {"units", space.units().names},
              {"outlier_ratios", outliers},
              {"deviations", deviations},
              {"ratios", *unit_ratios},
              {"mean_ratio", mean},
              {"rule", IsNm(spec) ? "N:M: units made dense in decreasing outlier ratio while the "
                                    "budget holds (stop at the first that does not fit)"
                                  : "ratio = clamp(deviation + t, 0, max ratio), smallest t "
                                    "meeting the budget"}};
}

// ---------------------------------------------------------------------------------------------
// STRUCTURED finalize helpers (worker/prune/structured.h does the tensor work).

json StructuredPolicyJson(const LocalJobSpec& spec, const search::PolicySpace& space,
                          const std::vector<double>& unit_ratios,
                          const std::vector<StructuredLayerPlan>& splan,
                          const std::string& policy_hash, double nominal_flops) {
  json units = json::array();
  for (int u = 0; u < space.num_units(); ++u) {
    json unit = StructuredLayerJson(splan.at(u));
    unit["name"] = space.units().names[u];
    unit["ratio"] = unit_ratios[u];
    unit["flops_share"] = space.units().flops_share[u];
    units.push_back(std::move(unit));
  }
  return {{"format", "prunesvc.policy.v1"},
          {"granularity", "STRUCTURED"},
          {"unit", std::string(search::UnitKindName(spec.unit))},
          {"strategy", std::string(search::StrategyName(spec.strategy))},
          {"budget", spec.flops_budget},
          {"ratio_choices", spec.ratio_choices},
          {"hash", policy_hash},
          {"flops_ratio_nominal", nominal_flops / space.dense_flops()},
          {"final_mask_method", std::string(MaskMethodName(spec.mask_method))},
          {"structured_score",
           spec.mask_method == MaskMethod::kWanda
               ? "channel: |X_j|*|W_down[:,j]|; kv group: sqrt(sum_j |X_j|^2*|W_o[:,j]|^2)"
               : "channel: |W_down[:,j]|; kv group: |W_o[:,group]|_F"},
          {"rounding", "floor(ratio*n + 1e-9) of the n channels / kv groups of a layer"},
          {"units", std::move(units)}};
}

struct StructuredVerification {
  double flops = 0;  // F(written shapes) per sample
  int64_t params = 0, linear_weights = 0, linear_nonzero = 0;
};

// Reloads the written weights and checks they kept the input's dtype and weight-name layout.
absl::StatusOr<model::Checkpoint> LoadWrittenCheckpoint(const std::string& model_out,
                                                        model::DType dtype,
                                                        model::WeightLayout layout) {
  ASSIGN_OR_RETURN(model::Checkpoint written, model::LoadCheckpoint(model_out));
  if (written.source_dtype != dtype || written.layout != layout) {
    return absl::InternalError(absl::StrCat(
        "the artifact's weights are ", std::string(model::DTypeName(written.source_dtype)), "/",
        std::string(model::WeightLayoutName(written.layout)), ", the input's ",
        std::string(model::DTypeName(dtype)), "/", std::string(model::WeightLayoutName(layout))));
  }
  return written;
}

// Reloads the written checkpoint + config.json and counts its FLOPs from the shapes (the model's
// own FlopsDims, the search samples' token statistics).
absl::StatusOr<StructuredVerification> VerifyStructured(const std::string& model_out,
                                                        const TokenStats& stats, model::DType dtype,
                                                        model::WeightLayout layout) {
  ASSIGN_OR_RETURN(model::Checkpoint written, LoadWrittenCheckpoint(model_out, dtype, layout));
  ASSIGN_OR_RETURN(model::LlavaConfig config, model::LoadLlavaConfig(model_out));
  ASSIGN_OR_RETURN(std::unique_ptr<model::LlavaModel> shrunk,
                   model::LlavaModel::CreateFromTensors(config, written.tensors));
  ASSIGN_OR_RETURN(FlopsBreakdown f, ComputeDenseFlops(shrunk->FlopsDims(), stats));
  StructuredVerification v;
  v.flops = f.Total();
  for (const auto& [name, t] : written.tensors) v.params += t.numel();
  for (const model::NamedLinear& nl : shrunk->DecoderLinears()) {
    v.linear_weights += nl.linear->weight.numel();
    v.linear_nonzero += at::count_nonzero(nl.linear->weight).item<int64_t>();
  }
  return v;
}

// ---------------------------------------------------------------------------------------------

std::string ModelCard(const LocalJobSpec& spec, const json& report, const json& policy) {
  auto num = [](const json& j) -> std::string {
    return j.is_null() ? "n/a" : absl::StrFormat("%.4f", j.get<double>());
  };
  const json& d = report["dense"];
  const json& p = report["pruned"];
  const bool structured = report["granularity"] == "STRUCTURED";
  std::string out;
  absl::StrAppend(&out, "# Pruned LLaVA model (prunesvc)\n\n");
  absl::StrAppend(
      &out, "Pruned from `", spec.model_dir, "` with **", report["strategy"].get<std::string>(),
      "** (", report["search"]["mask_method"].get<std::string>(), " search masks, ",
      report["final_mask_method"].get<std::string>(), " final masks), ",
      structured ? "STRUCTURED pruning (whole MLP channels and attention KV groups removed) of "
                   "the LLaMA decoder"
      : spec.granularity == search::Granularity::kNM
          ? absl::StrCat(NmPatternName(spec.nm),
                         " (N:M) sparsity in the LLaMA decoder's linear layers")
          : std::string("UNSTRUCTURED sparsity in the LLaMA decoder's linear layers"),
      ", unit = ", report["search"]["unit"].get<std::string>(), ", FLOPs budget ",
      absl::StrFormat("%.4g", spec.flops_budget),
      ". The vision tower, the projector's shape, embeddings, norms and lm_head are not pruned; "
      "the projector ",
      report["projector"]["trained"].get<bool>() ? "was fine-tuned during the search (its latest "
                                                   "version is included)."
                                                 : "is the original one.",
      "\n\n");
  absl::StrAppend(&out, "| | dense | pruned |\n|---|---|---|\n");
  absl::StrAppend(&out, "| accuracy (", report["accuracy_set"].get<std::string>(), " set) | ",
                  num(d["accuracy"]), " | ", num(p["accuracy"]), " |\n");
  absl::StrAppend(&out, "| answer loss | ", num(d["loss"]), " | ", num(p["loss"]), " |\n");
  absl::StrAppend(
      &out, absl::StrFormat("| GFLOPs / sample | %.4f | %.4f |\n", d["flops"].get<double>() / 1e9,
                            p["flops"].get<double>() / 1e9));
  absl::StrAppend(&out, absl::StrFormat("| non-zero parameters | %d | %d |\n",
                                        d["params"].get<int64_t>(), p["params"].get<int64_t>()));
  absl::StrAppend(&out,
                  absl::StrFormat("| latency (ms, batch of %d, this machine) | %.2f | %.2f |\n",
                                  report["latency_batch"].get<int>(), d["latency_ms"].get<double>(),
                                  p["latency_ms"].get<double>()));
  absl::StrAppend(&out, absl::StrFormat("\nFLOPs ratio F(pruned)/F(dense) = %.4f (budget %.4g), "
                                        "counted from the %s of these files.\n",
                                        report["flops_ratio"].get<double>(), spec.flops_budget,
                                        structured ? "tensor shapes" : "non-zero weights"));
  if (report["accuracy_set"] == "search") {
    absl::StrAppend(&out,
                    "\n**Accuracy was measured on the search samples**, which the search "
                    "optimised: it overstates held-out accuracy. Evaluate on held-out data "
                    "(`llava-eval --model model --samples HELD_OUT`).\n");
  }
  if (structured) {
    absl::StrAppend(
        &out,
        "\n## What structured pruning saves\n\nThe removed channels and heads are gone from the "
        "tensors: every decoder layer's sizes are in config.json (`text_config."
        "prunesvc_intermediate_sizes`, `prunesvc_num_heads`; prunesvc's runtime reads them, "
        "stock transformers does not), so the model is **smaller on disk and faster with "
        "ordinary dense kernels** on any hardware; the latency row above measures it.\n");
  } else {
    absl::StrAppend(
        &out,
        "\n## What unstructured pruning saves\n\nThe pruned weights are stored as zeros in dense "
        "tensors of the original shapes and dtype. The FLOPs ratio counts the multiply-adds a "
        "sparse kernel would execute. With ordinary dense kernels (what PyTorch, transformers and "
        "this project run) the model is **neither smaller on disk nor faster**: the latency row "
        "above shows it. The savings need sparse storage and sparse kernels; structured pruning "
        "(--granularity STRUCTURED) saves both disk and latency on any hardware.\n");
  }
  if (spec.granularity == search::Granularity::kNM) {
    absl::StrAppend(&out, "\nN:M (", NmPatternName(spec.nm), "): every group of ", spec.nm.m,
                    " consecutive input weights of a pruned row keeps ", spec.nm.n,
                    ". Hardware with N:M sparse kernels (2:4 on NVIDIA Ampere and later sparse "
                    "tensor cores) can execute it faster after conversion; the files here are "
                    "still dense tensors.\n");
  }
  absl::StrAppend(&out, "\n## Policy\n\n| unit | ratio |\n|---|---|\n");
  for (const json& u : policy["units"]) {
    absl::StrAppend(&out, "| ", u["name"].get<std::string>(), " | ",
                    absl::StrFormat("%.4f", u["ratio"].get<double>()), " |\n");
  }
  absl::StrAppend(&out, "\nPolicy hash `", policy["hash"].get<std::string>(),
                  "`. Full details, history and provenance: `report.json`, `policy.json`. "
                  "Verify the files with `sha256sum -c MANIFEST.sha256`.\n");
  return out;
}

// sha256sum -c format, every file under `dir` except the manifest itself, sorted.
absl::Status WriteManifest(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) files.push_back(fs::relative(e.path(), dir).string());
  }
  std::sort(files.begin(), files.end());
  std::string text;
  for (const std::string& f : files) {
    if (f == "MANIFEST.sha256") continue;
    ASSIGN_OR_RETURN(std::string hex, Sha256OfFile(dir + "/" + f));
    absl::StrAppend(&text, hex, "  ", f, "\n");
  }
  return WriteTextFile(dir + "/MANIFEST.sha256", text);
}

absl::StatusOr<JobResult> RunLocalJobImpl(const LocalJobSpec& spec_in, ProgressSink* sink) {
  LocalJobSpec spec = spec_in;
  spec.out_dir = NormalizeOutDir(spec.out_dir);
  RETURN_IF_ERROR(spec.Validate(/*dry_run=*/false));
  RETURN_IF_ERROR(CheckOutDir(spec.out_dir));

  JobContext ctx;
  ctx.sink = sink;
  ctx.start = Clock::now();
  const std::string started_at = UtcNow();
  const bool searching = spec.strategy == search::Strategy::kEfficientLlava ||
                         spec.strategy == search::Strategy::kRandomSearch;
  // STRUCTURED: the search's orders also cut the artifact; final_mask_method does not apply.
  const bool structured = spec.granularity == search::Granularity::kStructured;
  const MaskMethod final_method =
      structured                                              ? spec.mask_method
      : spec.final_mask_method == FinalMaskMethod::kMagnitude ? MaskMethod::kMagnitude
      : spec.final_mask_method == FinalMaskMethod::kWanda     ? MaskMethod::kWanda
                                                              : spec.mask_method;
  // SPARSEGPT replaces the weights (mask + OBS compensation) instead of masking them.
  const bool sparsegpt = !structured && spec.final_mask_method == FinalMaskMethod::kSparseGpt;
  const std::string final_method_name =
      sparsegpt ? "SPARSEGPT" : std::string(MaskMethodName(final_method));

  // --- load + pre-flight ---
  ctx.Phase(JobPhase::kLoad);
  ASSIGN_OR_RETURN(Loaded l, Load(spec));
  search::PolicySpace& space = *l.space;
  if (absl::Status s = space.CheckBudget(spec.flops_budget); !s.ok())
    return BudgetError(spec, space, s);
  ASSIGN_OR_RETURN(auto partial, PartialDir::Create(spec.out_dir));
  model::LlavaModel& m = *l.bundle->model;
  const int num_layers = m.config().text.num_hidden_layers;
  const int n = int(l.search_prepared.size());
  if (!l.has_eval) {
    ctx.Warn(
        "no --eval-samples: accuracy is measured on the search samples, which the search "
        "optimised; it overstates held-out accuracy");
  }
  if (spec.strategy == search::Strategy::kRandomSearch && spec.eta.has_value()) {
    ctx.Warn("--eta is ignored by RANDOM_SEARCH (η = 0 by definition)");
  }
  RETURN_IF_ERROR(ctx.CheckStop());

  // --- dense baseline (original projector) ---
  ctx.Phase(JobPhase::kBaseline);
  ASSIGN_OR_RETURN(ModelMetrics dense_search,
                   ScoreSampleSet(*l.bundle, l.search_set, spec.batch_size));
  std::optional<ModelMetrics> dense_eval;
  if (l.has_eval) {
    RETURN_IF_ERROR(ctx.CheckStop());
    ASSIGN_OR_RETURN(dense_eval, ScoreSampleSet(*l.bundle, l.eval_set, spec.batch_size));
  }
  RETURN_IF_ERROR(ctx.CheckStop());

  // --- calibration + mask bank ---
  ctx.Phase(JobPhase::kCalibration);
  const int latency_n = std::max(1, std::min(spec.latency_batch, n));
  std::vector<model::PreparedSample> latency_batch(l.search_prepared.begin(),
                                                   l.search_prepared.begin() + latency_n);
  ASSIGN_OR_RETURN(std::vector<EvalSample> eval_samples, ToEvalSamples(l.search_prepared));
  for (auto& p : l.search_prepared) p.pixels = model::PixelValues();
  ASSIGN_OR_RETURN(std::vector<int> unit_of_linear, UnitOfLinear(space.units(), num_layers));
  EvaluatorOptions eopt;
  eopt.method = spec.mask_method;
  eopt.granularity = spec.granularity;
  eopt.batch_size = spec.batch_size;
  eopt.unit_of_linear = unit_of_linear;
  eopt.collect_gram = sparsegpt;      // SPARSEGPT's H = (2/N)·XᵀX at finalize
  if (IsNm(spec)) eopt.nm = spec.nm;  // the bank's orders become N:M orders
  ASSIGN_OR_RETURN(std::unique_ptr<CandidateEvaluator> evaluator,
                   CandidateEvaluator::Create(&m, std::move(eval_samples), eopt));
  ProjectorTrainingOptions topt;
  topt.learning_rate = spec.projector_lr;
  topt.steps = spec.projector_steps;
  topt.mu = spec.projector_decay;
  topt.seed = spec.seed;
  ASSIGN_OR_RETURN(std::unique_ptr<LocalPolicyEvaluator> local,
                   LocalPolicyEvaluator::Create(evaluator.get(), &space, topt));
  RETURN_IF_ERROR(ctx.CheckStop());

  // --- the strategy ---
  ctx.Phase(JobPhase::kSearch);
  std::vector<double> unit_ratios;
  json history = json::array();
  json evaluated = json::array();
  json search_best = nullptr;
  json eta_json = nullptr;
  json audit_json = nullptr;
  json owl_json = nullptr;
  std::optional<double> uniform_ratio;
  if (searching) {
    search::SearchConfig config;
    config.strategy = spec.strategy;
    config.budget = spec.flops_budget;
    config.population = spec.population;
    config.generations = spec.generations;
    config.parents = spec.parents;
    config.mutation = spec.mutation;
    config.eta = spec.eta;
    config.projector_every = spec.projector_every;
    config.num_samples = n;
    config.seed = spec.seed;
    ASSIGN_OR_RETURN(auto search, search::EvolutionarySearch::Create(&space, config));
    TrackingEvaluator tracker(local.get(), &space, &ctx);
    ctx.progress.generations = spec.generations + 1;
    ctx.progress.planned_evaluations = search::NominalEvaluations(config);
    const auto search_start = Clock::now();
    while (!search->done()) {
      RETURN_IF_ERROR(ctx.CheckStop());
      RETURN_IF_ERROR(search->Step(tracker));
      const search::GenerationStats& g = search->history().back();
      ctx.progress.generation = g.generation;
      ctx.progress.latest = g;
      ctx.progress.elapsed_seconds = SecondsSince(ctx.start);
      const double per_gen = SecondsSince(search_start) / (g.generation + 1);
      ctx.progress.eta_seconds = per_gen * (ctx.progress.generations - g.generation - 1);
      spdlog::debug(
          "generation {}/{}: best J {:.5f} loss {:.5f} acc {:.4f} flops {:.4f} ({} evaluations, "
          "{} cache hits, projector v{})",
          g.generation, spec.generations, g.best_fitness, g.best_loss, g.best_accuracy,
          g.best_flops_ratio, g.evaluations, g.cache_hits, g.projector_version);
      if (sink != nullptr) sink->OnGeneration(ctx.progress);
    }
    ASSIGN_OR_RETURN(search::ScoredPolicy best, search->Best());
    ASSIGN_OR_RETURN(unit_ratios, space.UnitRatios(best.policy));
    for (const auto& g : search->history()) history.push_back(g.ToJson());
    evaluated = tracker.evaluated();
    search_best = {{"hash", best.hash},
                   {"fitness", best.fitness},
                   {"loss", best.result.loss},
                   {"accuracy", best.result.accuracy},
                   {"omega", best.result.omega},
                   {"flops_ratio_nominal", best.flops_ratio},
                   {"projector_version", search->state().projector_version}};
    const double eta = search->state().eta.value_or(0.0);
    const char* how = spec.strategy == search::Strategy::kRandomSearch ? "zero (RANDOM_SEARCH)"
                      : spec.eta.has_value()                           ? "explicit"
                                                                       : "auto";
    eta_json = {{"value", eta},
                {"mode", how},
                {"rule",
                 "auto: chosen on the first population so that std(eta*omega/sqrt(n)) = "
                 "std(loss) (population standard deviations)"}};
    if (local->latest_version() != evaluator->projector_version()) {
      RETURN_IF_ERROR(evaluator->SetProjector(local->latest_version(),
                                              *local->projector(local->latest_version())));
    }
    if (spec.audit > 0) {
      // Each audited policy: search-set loss/accuracy/Ω under the final projector (so every
      // fitness is comparable) and held-out metrics of the same masked model.
      std::vector<search::Policy> audit;
      for (size_t i : EvenlySpacedIndices(tracker.distinct().size(), size_t(spec.audit))) {
        audit.push_back(tracker.distinct()[i]);
      }
      if (std::find(audit.begin(), audit.end(), best.policy) == audit.end()) {
        audit.push_back(best.policy);
      }
      const int version = local->latest_version();
      json rows = json::array();
      std::vector<double> neg_fitness, neg_loss, held_acc;
      spdlog::info("audit: {} policies on the search and eval sets", audit.size());
      for (size_t i = 0; i < audit.size(); ++i) {
        RETURN_IF_ERROR(ctx.CheckStop());
        ASSIGN_OR_RETURN(std::vector<search::EvalResult> r, local->Evaluate({audit[i]}, version));
        // The evaluator leaves the policy's weights in the model: score the eval set with them.
        ASSIGN_OR_RETURN(ModelMetrics held, ScoreSampleSet(*l.bundle, l.eval_set, spec.batch_size));
        const double fitness = r[0].loss + eta * r[0].omega / std::sqrt(double(n));
        ASSIGN_OR_RETURN(std::string hash, space.Hash(audit[i]));
        ASSIGN_OR_RETURN(double fr, space.FlopsRatio(audit[i]));
        ASSIGN_OR_RETURN(std::vector<double> ratios, space.UnitRatios(audit[i]));
        rows.push_back(
            {{"hash", hash},
             {"chosen", audit[i] == best.policy},
             {"unit_ratios", ratios},
             {"flops_ratio", fr},
             {"search_loss", r[0].loss},
             {"search_accuracy", r[0].accuracy},
             {"omega", r[0].omega},
             {"fitness", fitness},
             {"heldout_loss", held.loss},
             {"heldout_accuracy", held.accuracy ? json(*held.accuracy) : json(nullptr)}});
        neg_fitness.push_back(-fitness);
        neg_loss.push_back(-r[0].loss);
        held_acc.push_back(held.accuracy.value_or(0));
        if ((i + 1) % 8 == 0 || i + 1 == audit.size()) {
          spdlog::info("audit: {}/{} policies", i + 1, audit.size());
        }
      }
      auto opt = [](std::optional<double> v) { return v ? json(*v) : json(nullptr); };
      audit_json = {
          {"projector_version", version},
          {"eta", eta},
          {"num_samples", n},
          {"num_eval_samples", l.eval_set.samples.size()},
          {"distinct_policies_evaluated", tracker.distinct().size()},
          {"policies", std::move(rows)},
          {"spearman_neg_fitness_vs_heldout_accuracy", opt(SpearmanRho(neg_fitness, held_acc))},
          {"spearman_neg_search_loss_vs_heldout_accuracy", opt(SpearmanRho(neg_loss, held_acc))}};
    }
  } else if (spec.strategy == search::Strategy::kOwl) {
    // OWL: layerwise ratios from the dense model's outlier ratios; no search, no projector
    // training.
    ASSIGN_OR_RETURN(owl_json, OwlStrategy(spec, space, *evaluator, &unit_ratios));
    eta_json = {{"value", nullptr}, {"mode", "unused (OWL has no fitness)"}};
  } else {
    // UNIFORM: one continuous ratio meeting the budget (N:M: every unit N:M, the budget having
    // passed the N:M floor); no search, no projector training.
    double r = space.max_ratio();
    if (!IsNm(spec)) {
      ASSIGN_OR_RETURN(r, space.UniformContinuousRatio(spec.flops_budget));
    }
    uniform_ratio = r;
    unit_ratios.assign(space.num_units(), r);
    eta_json = {{"value", nullptr}, {"mode", "unused (UNIFORM has no fitness)"}};
  }
  RETURN_IF_ERROR(ctx.CheckStop());

  // --- finalize ---
  ctx.Phase(JobPhase::kFinalize);
  // STRUCTURED: each layer's cut from the current orders; `plan` (per-linear masks) stays empty.
  std::vector<StructuredLayerPlan> splan;
  if (structured) {
    ASSIGN_OR_RETURN(splan, PlanStructured(evaluator->structured_bank(), unit_ratios));
  }
  ASSIGN_OR_RETURN(std::vector<double> linear_ratios, local->LinearRatios(unit_ratios));
  std::vector<LinearPlan> plan;
  for (int i = 0; !structured && i < evaluator->num_linears(); ++i) {
    const model::NamedLinear& nl = evaluator->linears()[i];
    LinearPlan p;
    p.name = nl.name;
    p.layer = nl.layer;
    p.kind = nl.kind;
    p.out = evaluator->bank().out_features(i);
    p.in = evaluator->bank().in_features(i);
    p.ratio = linear_ratios[i];
    // The search's FLOPs model counts exactly these whole weights (common/flops.h KeptFraction),
    // so the policy that met the budget there meets it here without any adjustment.
    p.k = PrunedPerRow(p.ratio, p.in);
    plan.push_back(p);
  }
  std::unique_ptr<MaskBank> final_bank;
  const MaskBank* bank = structured ? nullptr : &evaluator->bank();
  if (!structured && final_method != spec.mask_method) {
    std::vector<at::Tensor> dense_weights;
    for (int i = 0; i < evaluator->num_linears(); ++i) {
      dense_weights.push_back(evaluator->dense_weight(i));
    }
    ASSIGN_OR_RETURN(final_bank, MaskBank::Build(dense_weights, final_method,
                                                 &evaluator->calibration(), eopt.nm));
    bank = final_bank.get();
  }
  std::vector<at::Tensor> masks;
  // SPARSEGPT: the compensated weights, rounded to the artifact's dtype so the model measured
  // here is the one written. Same count of pruned weights as the masks (out·k per linear).
  std::vector<at::Tensor> sparsegpt_weights;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (sparsegpt) {
      RETURN_IF_ERROR(ctx.CheckStop());
      const LinearInputStats& stats = *evaluator->calibration().linears[i];
      SparseGptOptions sopt;
      sopt.ratio = plan[i].ratio;
      if (IsNm(spec) && plan[i].k > 0) {  // N:M: keep N of every M (k = in·(M − N)/M)
        sopt.nm_n = spec.nm.n;
        sopt.nm_m = spec.nm.m;
      }
      ASSIGN_OR_RETURN(SparseGptResult pruned, SparseGptPrune(evaluator->dense_weight(int(i)),
                                                              stats.gram, stats.rows, sopt));
      sparsegpt_weights.push_back(RoundToDType(pruned.weight, l.bundle->source_dtype));
      masks.push_back(std::move(pruned.keep));
      continue;
    }
    ASSIGN_OR_RETURN(at::Tensor mask, bank->KeepMask(int(i), plan[i].ratio));
    masks.push_back(std::move(mask));
  }
  const int projector_version = evaluator->projector_version();
  ProjectorWeights projector = evaluator->projector();
  final_bank.reset();
  local.reset();
  evaluator.reset();  // restores the dense decoder weights; the projector stays at the latest
  // The projector as the artifact stores it.
  projector.linear_1_weight = RoundToDType(projector.linear_1_weight, l.bundle->source_dtype);
  projector.linear_1_bias = RoundToDType(projector.linear_1_bias, l.bundle->source_dtype);
  projector.linear_2_weight = RoundToDType(projector.linear_2_weight, l.bundle->source_dtype);
  projector.linear_2_bias = RoundToDType(projector.linear_2_bias, l.bundle->source_dtype);
  RETURN_IF_ERROR(LoadProjector(projector, m));
  RETURN_IF_ERROR(ctx.CheckStop());
  double dense_latency = 0, pruned_latency = 0;
  if (!structured) {
    ASSIGN_OR_RETURN(dense_latency, MedianLatencyMs(m, latency_batch, spec.latency_repeats));
  }
  std::vector<model::NamedLinear> linears = m.DecoderLinears();
  for (size_t i = 0; i < masks.size(); ++i) {
    at::Tensor& w = linears[i].linear->weight;
    if (sparsegpt) {
      w.copy_(sparsegpt_weights[i].to(w.device(), w.scalar_type()));
    } else {
      w.mul_(masks[i].to(w.device()));
    }
  }
  if (structured) {
    // Both models exist here: time them interleaved, so load changes hit both alike. Then the
    // physically shrunk model replaces the dense one (m dangles from here on).
    ASSIGN_OR_RETURN(std::unique_ptr<model::LlavaModel> shrunk, ShrinkModel(m, splan));
    ASSIGN_OR_RETURN(const auto latencies,
                     InterleavedLatencyMs(m, *shrunk, latency_batch, spec.latency_repeats));
    dense_latency = latencies.first;
    pruned_latency = latencies.second;
    linears.clear();
    l.bundle->model = std::move(shrunk);
  } else {
    ASSIGN_OR_RETURN(pruned_latency, MedianLatencyMs(m, latency_batch, spec.latency_repeats));
  }
  RETURN_IF_ERROR(ctx.CheckStop());
  ASSIGN_OR_RETURN(ModelMetrics pruned_search,
                   ScoreSampleSet(*l.bundle, l.search_set, spec.batch_size));
  const model::DType dtype = l.bundle->source_dtype;
  const model::WeightLayout layout = l.bundle->layout;
  l.bundle->model.reset();  // frees the working model before the checkpoint is loaded
  latency_batch.clear();
  RETURN_IF_ERROR(ctx.CheckStop());

  // --- the artifact ---
  ctx.Phase(JobPhase::kWrite);
  const std::string model_out = partial->path() + "/model";
  fs::create_directories(model_out);
  json copied = json::array();
  {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(spec.model_dir)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || name.empty() || name[0] == '.' || IsWeightFile(name)) continue;
      files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      std::error_code ec;
      fs::copy_file(f, fs::path(model_out) / f.filename(), ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("copying ", f.string(), " into the artifact: ", ec.message()));
      }
      copied.push_back(f.filename().string());
    }
  }
  if (structured) {  // the per-layer sizes (the copy above is the input's config.json)
    RETURN_IF_ERROR(WriteTextFile(model_out + "/config.json",
                                  StructuredConfig(l.bundle->config, splan).raw.dump(2) + "\n"));
  }
  int64_t input_max_shard = 0;
  std::vector<std::string> weight_files = WeightFiles(spec.model_dir);
  const bool sharded = std::find(weight_files.begin(), weight_files.end(), "model.safetensors") ==
                       weight_files.end();
  if (sharded) {
    for (const auto& f : weight_files) {
      std::error_code ec;
      input_max_shard =
          std::max<int64_t>(input_max_shard, int64_t(fs::file_size(spec.model_dir + "/" + f, ec)));
    }
  }
  std::string policy_hash;
  json policy;
  int64_t input_params = 0;  // STRUCTURED: the input checkpoint's parameters
  {
    ASSIGN_OR_RETURN(model::Checkpoint ckpt, model::LoadCheckpoint(spec.model_dir));
    if (structured) {
      for (const auto& [name, t] : ckpt.tensors) input_params += t.numel();
      RETURN_IF_ERROR(ShrinkDecoderTensors(splan, ckpt.tensors));
    }
    for (size_t i = 0; i < plan.size(); ++i) {
      auto it = ckpt.tensors.find(plan[i].name);
      if (it == ckpt.tensors.end()) {
        return absl::InternalError(absl::StrCat("the checkpoint has no ", plan[i].name));
      }
      it->second = sparsegpt ? sparsegpt_weights[i]
                                   .to(at::kCPU, it->second.scalar_type())
                                   .mul(masks[i])
                                   .contiguous()
                             : it->second.mul(masks[i]);
    }
    const std::pair<const char*, const at::Tensor*> proj[] = {
        {"multi_modal_projector.linear_1.weight", &projector.linear_1_weight},
        {"multi_modal_projector.linear_1.bias", &projector.linear_1_bias},
        {"multi_modal_projector.linear_2.weight", &projector.linear_2_weight},
        {"multi_modal_projector.linear_2.bias", &projector.linear_2_bias}};
    for (const auto& [name, t] : proj) {
      if (!t->defined()) continue;
      auto it = ckpt.tensors.find(name);
      if (it == ckpt.tensors.end()) {
        return absl::InternalError(absl::StrCat("the checkpoint has no ", name));
      }
      it->second = t->to(at::kCPU).contiguous();
    }
    policy_hash = search::PolicyHashOfRatios(unit_ratios);
    std::map<std::string, std::string> metadata = ckpt.metadata;
    metadata["prunesvc_policy_hash"] = policy_hash;
    metadata["prunesvc_strategy"] = std::string(search::StrategyName(spec.strategy));
    RETURN_IF_ERROR(model::SaveCheckpoint(model_out, ckpt.tensors, dtype,
                                          sharded ? size_t(input_max_shard) : 0, layout, metadata));
  }
  masks.clear();
  sparsegpt_weights.clear();

  // policy.json
  if (structured) {
    ASSIGN_OR_RETURN(double nominal, space.FlopsOfRatios(unit_ratios));
    policy = StructuredPolicyJson(spec, space, unit_ratios, splan, policy_hash, nominal);
    RETURN_IF_ERROR(WriteTextFile(partial->path() + "/policy.json", policy.dump(1) + "\n"));
  } else {
    json units = json::array();
    for (int u = 0; u < space.num_units(); ++u) {
      json lins = json::array();
      for (size_t i = 0; i < plan.size(); ++i) {
        if (unit_of_linear[i] != u) continue;
        lins.push_back({{"name", model::LayoutWeightName(plan[i].name, layout)},
                        {"out_features", plan[i].out},
                        {"in_features", plan[i].in},
                        {"pruned_per_row", plan[i].k},
                        {"ratio_realized", double(plan[i].k) / double(plan[i].in)}});
      }
      units.push_back({{"name", space.units().names[u]},
                       {"ratio", unit_ratios[u]},
                       {"flops_share", space.units().flops_share[u]},
                       {"linears", std::move(lins)}});
    }
    ASSIGN_OR_RETURN(double nominal, space.FlopsOfRatios(unit_ratios));
    policy = {{"format", "prunesvc.policy.v1"},
              {"granularity", std::string(search::GranularityName(spec.granularity))},
              {"nm", NmJson(spec)},
              {"unit", std::string(search::UnitKindName(spec.unit))},
              {"strategy", std::string(search::StrategyName(spec.strategy))},
              {"budget", spec.flops_budget},
              {"ratio_choices", space.ratio_choices()},
              {"hash", policy_hash},
              {"flops_ratio_nominal", nominal / space.dense_flops()},
              {"final_mask_method", final_method_name},
              {"units", std::move(units)}};
    RETURN_IF_ERROR(WriteTextFile(partial->path() + "/policy.json", policy.dump(1) + "\n"));
  }
  RETURN_IF_ERROR(ctx.CheckStop());

  // --- verify: reload the written artifact ---
  ctx.Phase(JobPhase::kVerify);
  int64_t dense_params = 0, pruned_params = 0, linear_weights = 0, linear_nonzero = 0;
  double flops_ratio = 0;
  if (structured) {
    ASSIGN_OR_RETURN(StructuredVerification v,
                     VerifyStructured(model_out, l.token_stats, dtype, layout));
    ASSIGN_OR_RETURN(double nominal, space.FlopsOfRatios(unit_ratios));
    flops_ratio = v.flops / space.dense_flops();
    dense_params = input_params;
    pruned_params = v.params;
    linear_weights = v.linear_weights;
    linear_nonzero = v.linear_nonzero;
    // Same dims, same statistics, same function: anything but equality is a bug.
    if (v.flops != nominal || !(v.flops <= spec.flops_budget * space.dense_flops())) {
      return absl::InternalError(absl::StrFormat(
          "the written artifact's FLOPs ratio %.9f (counted from its shapes) differs from the "
          "search's %.9f or exceeds the budget %.6f; refusing to finish",
          flops_ratio, nominal / space.dense_flops(), spec.flops_budget));
    }
  } else {
    ASSIGN_OR_RETURN(model::Checkpoint written, LoadWrittenCheckpoint(model_out, dtype, layout));
    KeptFractions keep;
    keep.decoder.assign(num_layers, {});
    for (auto& row : keep.decoder) row.fill(1.0);
    std::set<std::string> linear_names;
    for (const LinearPlan& p : plan) {
      auto it = written.tensors.find(p.name);
      if (it == written.tensors.end()) {
        return absl::InternalError(absl::StrCat("the artifact has no ", p.name));
      }
      const int64_t nnz = at::count_nonzero(it->second).item<int64_t>();
      keep.decoder[p.layer][int(p.kind)] = double(nnz) / double(it->second.numel());
      if (IsNm(spec) && p.k > 0) RETURN_IF_ERROR(CheckNmWritten(p, it->second, spec.nm));
      linear_weights += it->second.numel();
      linear_nonzero += nnz;
      linear_names.insert(p.name);
    }
    for (const auto& [name, t] : written.tensors) dense_params += t.numel();
    pruned_params = dense_params - (linear_weights - linear_nonzero);
    ASSIGN_OR_RETURN(double f, PolicyFlops(space.dense(), keep));
    flops_ratio = f / space.dense_flops();
    // The budget convention of common/policy.h (F ≤ b·F_dense), so this check and the search's
    // agree to the last bit. The search counts the masks' whole weights, so this only fires on a
    // bug (a mask or the FLOPs model out of step); it must stay loud rather than write a report
    // that lies.
    if (!(f <= spec.flops_budget * space.dense_flops())) {
      return absl::InternalError(absl::StrFormat(
          "the written artifact's FLOPs ratio %.6f exceeds the budget %.6f (counted from its "
          "non-zero weights); refusing to finish",
          flops_ratio, spec.flops_budget));
    }
  }
  RETURN_IF_ERROR(ctx.CheckStop());
  model::EvalOptions eo;
  eo.model_dir = model_out;
  eo.samples_path = l.has_eval ? spec.eval_samples_path : spec.samples_path;
  eo.batch_size = spec.eval_batch_size;
  eo.threads = l.device.threads;
  eo.device = spec.device;
  ASSIGN_OR_RETURN(model::EvalReport reloaded, model::RunEval(eo));

  JobResult result;
  result.out_dir = spec.out_dir;
  result.accuracy_set = l.has_eval ? "eval" : "search";
  result.accuracy = reloaded.overall.accuracy;
  result.flops_ratio = flops_ratio;
  result.dense = l.has_eval ? *dense_eval : dense_search;
  result.pruned.accuracy = reloaded.overall.accuracy;
  result.pruned.loss = reloaded.overall.mean_loss;
  result.pruned.num_samples = reloaded.overall.num_samples;
  result.dense_latency_ms = dense_latency;
  result.pruned_latency_ms = pruned_latency;
  result.unit_names = space.units().names;
  result.unit_ratios = unit_ratios;
  if (!result.accuracy.has_value()) {
    ctx.Warn("the accuracy set has no multiple-choice samples: accuracy is undefined (null)");
  }

  // --- report.json ---
  ASSIGN_OR_RETURN(auto model_hash, ModelSha256(spec.model_dir));
  json report;
  report["format"] = "prunesvc.report.v1";
  report["flops_ratio"] = flops_ratio;
  report["flops_budget"] = spec.flops_budget;
  report["accuracy"] = result.accuracy ? json(*result.accuracy) : json(nullptr);
  report["accuracy_set"] = result.accuracy_set;
  report["strategy"] = std::string(search::StrategyName(spec.strategy));
  report["granularity"] = std::string(search::GranularityName(spec.granularity));
  report["nm"] = NmJson(spec);
  if (!owl_json.is_null()) report["owl"] = owl_json;
  report["final_mask_method"] = final_method_name;
  report["latency_batch"] = latency_n;
  report["latency_repeats"] = spec.latency_repeats;
  json dense_j = MetricsJson(result.dense);
  dense_j["flops"] = space.dense_flops();
  dense_j["params"] = dense_params;
  dense_j["latency_ms"] = dense_latency;
  dense_j["search"] = MetricsJson(dense_search);
  if (dense_eval) dense_j["eval"] = MetricsJson(*dense_eval);
  json pruned_j = MetricsJson(result.pruned);
  pruned_j["flops"] = flops_ratio * space.dense_flops();
  pruned_j["params"] = pruned_params;
  pruned_j["latency_ms"] = pruned_latency;
  pruned_j["search"] = MetricsJson(pruned_search);
  if (l.has_eval) pruned_j["eval"] = MetricsJson(result.pruned);
  pruned_j["decoder_linear_weights"] = linear_weights;
  pruned_j["decoder_linear_nonzero"] = linear_nonzero;
  report["dense"] = std::move(dense_j);
  report["pruned"] = std::move(pruned_j);
  report["latency_ratio"] = dense_latency > 0 ? pruned_latency / dense_latency : 0.0;
  report["policy"] = policy;
  report["uniform_ratio"] = uniform_ratio ? json(*uniform_ratio) : json(nullptr);
  report["search"] = {{"unit", std::string(search::UnitKindName(spec.unit))},
                      {"mask_method", std::string(MaskMethodName(spec.mask_method))},
                      {"seed", spec.seed},
                      {"generations", spec.generations},
                      {"population", spec.population},
                      {"parents", spec.parents},
                      {"mutation", spec.mutation},
                      {"ratio_choices", space.ratio_choices()},
                      {"projector_every", spec.projector_every},
                      {"projector_steps", spec.projector_steps},
                      {"projector_lr", spec.projector_lr},
                      {"projector_decay", spec.projector_decay},
                      {"num_samples", n},
                      {"evaluations", ctx.progress.evaluations},
                      {"best", search_best}};
  report["eta"] = eta_json;
  report["history"] = history;
  report["evaluated"] = evaluated;
  if (!audit_json.is_null()) report["audit"] = std::move(audit_json);
  report["projector"] = {{"trained", projector_version > 0}, {"version", projector_version}};
  report["warnings"] = ctx.warnings;
  report["provenance"] = {
      {"model_dir", spec.model_dir},
      {"model_sha256", model_hash.first},
      {"model_files_sha256", model_hash.second},
      {"model_dtype", std::string(model::DTypeName(dtype))},
      {"model_layout", std::string(model::WeightLayoutName(layout))},
      {"dataset", spec.samples_path},
      {"dataset_sha256", l.search_set.sha256},
      {"eval_dataset", l.has_eval ? json(spec.eval_samples_path) : json(nullptr)},
      {"eval_dataset_sha256", l.has_eval ? json(l.eval_set.sha256) : json(nullptr)},
      {"seed", spec.seed},
      {"threads", l.device.threads},
      {"device", l.device.spec.ToString()},
      {"device_name", l.device.name},
      {"libraries", LibraryVersions()},
      {"cpu", CpuInfo()},
      {"copied_files", copied},
      {"started_at", started_at},
      {"finished_at", UtcNow()},
      {"wall_seconds", SecondsSince(ctx.start)}};
  RETURN_IF_ERROR(WriteTextFile(partial->path() + "/report.json", report.dump(1) + "\n"));
  RETURN_IF_ERROR(WriteTextFile(partial->path() + "/README.md", ModelCard(spec, report, policy)));
  RETURN_IF_ERROR(WriteManifest(partial->path()));
  RETURN_IF_ERROR(ctx.CheckStop());
  RETURN_IF_ERROR(partial->Commit());
  result.report = std::move(report);
  result.policy = std::move(policy);
  result.warnings = ctx.warnings;
  ctx.Phase(JobPhase::kDone);
  return result;
}

absl::StatusOr<PreflightReport> RunPreflightImpl(const LocalJobSpec& spec_in) {
  LocalJobSpec spec = spec_in;
  spec.out_dir = NormalizeOutDir(spec.out_dir);
  RETURN_IF_ERROR(spec.Validate(/*dry_run=*/true));
  if (!spec.out_dir.empty()) RETURN_IF_ERROR(CheckOutDir(spec.out_dir));
  ASSIGN_OR_RETURN(Loaded l, Load(spec));
  const search::PolicySpace& space = *l.space;
  const model::LlavaModel& m = *l.bundle->model;
  PreflightReport r;
  r.min_reachable_ratio = space.MinReachableRatio();
  r.dense_flops_per_sample = space.dense_flops();
  r.prunable_fraction = l.dense.DecoderLinearTotal() / l.dense.Total();
  r.unit_names = space.units().names;
  r.unit_flops_share = space.units().flops_share;
  r.num_search_samples = int(l.search_prepared.size());
  r.num_eval_samples = l.has_eval ? int(l.eval_set.samples.size()) : 0;
  if (absl::Status s = space.CheckBudget(spec.flops_budget); !s.ok()) {
    r.budget_error = std::string(BudgetError(spec, space, s).message());
  } else {
    r.budget_reachable = true;
  }
  int64_t decoder_weights = 0, max_linear = 0;
  for (const auto& [name, t] : m.NamedTensors()) r.parameters += t.numel();
  for (const auto& layer : const_cast<model::LlavaModel&>(m).decoder_layers()) {
    for (const model::Linear* lin :
         {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down}) {
      decoder_weights += lin->weight.numel();
      max_linear = std::max<int64_t>(max_linear, lin->weight.numel());
    }
  }
  // One timed dense forward of a batch (after a warm-up).
  const int b = std::max(1, std::min(spec.batch_size, r.num_search_samples));
  std::vector<model::PreparedSample> batch(l.search_prepared.begin(),
                                           l.search_prepared.begin() + b);
  ASSIGN_OR_RETURN(double ms, MedianLatencyMs(m, batch, 1));
  r.forward_seconds_per_sample = ms / 1e3 / b;
  const double n = r.num_search_samples, t = r.forward_seconds_per_sample;
  search::SearchConfig config;
  config.strategy = spec.strategy;
  config.population = spec.population;
  config.generations = spec.generations;
  config.parents = spec.parents;
  const bool searching = spec.strategy == search::Strategy::kEfficientLlava ||
                         spec.strategy == search::Strategy::kRandomSearch;
  int trainings = 0;
  if (spec.strategy == search::Strategy::kEfficientLlava && spec.projector_every > 0) {
    trainings = spec.generations / spec.projector_every;
  }
  r.planned_evaluations = searching ? search::NominalEvaluations(config) : 0;
  const int64_t rescored = int64_t(trainings) * spec.population;
  double seconds = 2 * n * t + r.num_eval_samples * t * 2;  // baselines + reload check
  seconds += (1 + trainings) * 2 * n * t;                   // calibration + bank per version
  seconds += double(r.planned_evaluations + rescored) * n * t;
  seconds += double(trainings) * spec.projector_steps * 3 * n * t;
  seconds += 2.0 * (1 + spec.latency_repeats) * std::min(spec.latency_batch, int(n)) * t + n * t;
  r.estimated_seconds = seconds;
  const model::LlavaConfig& c = m.config();
  std::vector<model::ScoringSample> scoring;
  for (const auto& p : l.search_prepared) scoring.push_back(p.scoring);
  const TokenStats ts = model::ComputeTokenStats(m, scoring);
  const double mean_t = ts.mean_tokens;
  const int64_t bank_bytes_per = decoder_weights > 0 ? 2 : 0;
  const double activations = 4.0 * spec.batch_size *
                             (mean_t * (4.0 * c.text.hidden_size + 3.0 * c.text.intermediate_size) +
                              c.text.num_attention_heads * mean_t * mean_t);
  const double features =
      4.0 * n * c.image_seq_length * (c.vision.hidden_size + c.text.hidden_size);
  const double search_peak = 4.0 * r.parameters + 4.0 * decoder_weights +
                             double(bank_bytes_per) * decoder_weights + 8.0 * max_linear +
                             features + activations;
  const double finalize_peak = 4.0 * r.parameters + 1.0 * decoder_weights +
                               double(model::DTypeSize(l.bundle->source_dtype)) * r.parameters;
  r.estimated_peak_bytes = int64_t(std::max(search_peak, finalize_peak));
  if (!l.has_eval) {
    r.warnings.push_back(
        "no --eval-samples: accuracy will be measured on the search samples and overstate "
        "held-out accuracy");
  }
  return r;
}

}  // namespace

absl::StatusOr<FinalMaskMethod> ParseFinalMaskMethod(std::string_view name) {
  if (name == "MAGNITUDE") return FinalMaskMethod::kMagnitude;
  if (name == "WANDA") return FinalMaskMethod::kWanda;
  if (name == "SPARSEGPT") return FinalMaskMethod::kSparseGpt;
  return absl::InvalidArgumentError(absl::StrCat("--final-mask-method: unknown method \"",
                                                 std::string(name),
                                                 "\" (MAGNITUDE, WANDA or SPARSEGPT)"));
}

std::string_view FinalMaskMethodName(FinalMaskMethod method) {
  switch (method) {
    case FinalMaskMethod::kMagnitude:
      return "MAGNITUDE";
    case FinalMaskMethod::kWanda:
      return "WANDA";
    case FinalMaskMethod::kSparseGpt:
      return "SPARSEGPT";
  }
  return "UNKNOWN";
}

std::string_view JobPhaseName(JobPhase phase) {
  switch (phase) {
    case JobPhase::kLoad:
      return "load";
    case JobPhase::kBaseline:
      return "baseline";
    case JobPhase::kCalibration:
      return "calibration";
    case JobPhase::kSearch:
      return "search";
    case JobPhase::kFinalize:
      return "finalize";
    case JobPhase::kWrite:
      return "write";
    case JobPhase::kVerify:
      return "verify";
    case JobPhase::kDone:
      return "done";
  }
  return "unknown";
}

absl::Status LocalJobSpec::Validate(bool dry_run) const {
  if (model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (samples_path.empty()) return absl::InvalidArgumentError("--samples is required");
  if (out_dir.empty() && !dry_run) return absl::InvalidArgumentError("--out is required");
  if (!(std::isfinite(flops_budget) && flops_budget > 0 && flops_budget <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--flops-budget must be in (0, 1], got ", flops_budget));
  }
  if (strategy == search::Strategy::kOwl && unit != search::UnitKind::kLayer) {
    return absl::InvalidArgumentError(
        "--strategy OWL needs --unit layer: OWL's outlier ratios and ratios are per decoder "
        "layer (Yin et al. 2023)");
  }
  if (granularity == search::Granularity::kNM) {
    if (absl::Status s = ParseNmPattern(NmPatternName(nm)).status(); !s.ok()) return s;
    if (ratio_choices != search::DefaultRatioChoices()) {
      return absl::InvalidArgumentError(
          "--ratio-choices does not apply to --granularity N_M: its unit choices are {dense, "
          "N:M}");
    }
  }
  RETURN_IF_ERROR(search::ValidateRatioChoices(ratio_choices));
  if (granularity == search::Granularity::kStructured && unit != search::UnitKind::kLayer) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--unit ", search::UnitKindName(unit),
        " is not supported with --granularity STRUCTURED (a layer's heads and channels share "
        "its ratio); use --unit layer"));
  }
  if (strategy == search::Strategy::kEfficientLlava ||
      strategy == search::Strategy::kRandomSearch) {
    search::SearchConfig c;
    c.strategy = strategy;
    c.budget = flops_budget;
    c.population = population;
    c.generations = generations;
    c.parents = parents;
    c.mutation = mutation;
    c.eta = eta;
    c.projector_every = projector_every;
    c.num_samples = 1;
    if (absl::Status s = c.Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("search parameters: ", s.message()));
    }
  }
  if (projector_steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--projector-steps must be ≥ 0, got ", projector_steps));
  }
  if (!(std::isfinite(projector_lr) && projector_lr >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--projector-lr must be finite and ≥ 0, got ", projector_lr));
  }
  if (!(std::isfinite(projector_decay) && projector_decay >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--projector-decay must be finite and ≥ 0, got ", projector_decay));
  }
  if (threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--threads must be ≥ 0, got ", threads));
  }
  RETURN_IF_ERROR(model::ParseDeviceSpec(device).status());
  if (audit < 0)
    return absl::InvalidArgumentError(absl::StrCat("--audit must be ≥ 0, got ", audit));
  if (audit > 0 && eval_samples_path.empty()) {
    return absl::InvalidArgumentError("--audit needs --eval-samples (it scores held-out data)");
  }
  if (audit > 0 && strategy != search::Strategy::kEfficientLlava &&
      strategy != search::Strategy::kRandomSearch) {
    return absl::InvalidArgumentError(
        absl::StrCat("--audit needs a searching strategy (EFFICIENTLLAVA or RANDOM_SEARCH): ",
                     search::StrategyName(strategy), " evaluates a single policy"));
  }
  if (batch_size < 1 || eval_batch_size < 1 || latency_batch < 1 || latency_repeats < 1) {
    return absl::InvalidArgumentError("batch sizes and latency repeats must be ≥ 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<JobResult> RunLocalJob(const LocalJobSpec& spec, ProgressSink* sink) {
  return model::TorchGuarded("pruning job", [&] { return RunLocalJobImpl(spec, sink); });
}

absl::StatusOr<PreflightReport> RunPreflight(const LocalJobSpec& spec) {
  return model::TorchGuarded("pre-flight", [&] { return RunPreflightImpl(spec); });
}

std::string PreflightText(const LocalJobSpec& spec, const PreflightReport& r) {
  std::string out;
  absl::StrAppend(&out, "prune-local dry run (nothing written)\n");
  absl::StrAppend(&out, absl::StrFormat("  model              %s (%d parameters)\n", spec.model_dir,
                                        r.parameters));
  absl::StrAppend(&out, absl::StrFormat("  search samples     %d\n", r.num_search_samples));
  absl::StrAppend(&out, absl::StrFormat("  eval samples       %d%s\n", r.num_eval_samples,
                                        r.num_eval_samples == 0 ? " (none)" : ""));
  absl::StrAppend(&out, absl::StrFormat("  dense FLOPs/sample %.6g (%.4f GFLOPs)\n",
                                        r.dense_flops_per_sample, r.dense_flops_per_sample / 1e9));
  absl::StrAppend(&out,
                  absl::StrFormat("  reachable budget   [%.4f, 1]  (prunable decoder linears: "
                                  "%.1f%% of dense FLOPs; largest ratio %.2f)\n",
                                  r.min_reachable_ratio, 100 * r.prunable_fraction,
                                  EffectiveRatioChoices(spec).back()));
  if (IsNm(spec)) {
    absl::StrAppend(&out, absl::StrFormat("  granularity        N_M %s: unit choices {dense, %s}; "
                                          "every unit %s is the floor %.4f\n",
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
  absl::StrAppend(&out, absl::StrFormat("  forward            %.4f s/sample (one timed batch)\n",
                                        r.forward_seconds_per_sample));
  absl::StrAppend(&out,
                  absl::StrFormat("  estimated time     %.0f s (rough)\n", r.estimated_seconds));
  absl::StrAppend(&out, absl::StrFormat("  estimated memory   %.1f MiB peak (rough)\n",
                                        double(r.estimated_peak_bytes) / (1 << 20)));
  for (const std::string& w : r.warnings) absl::StrAppend(&out, "  warning: ", w, "\n");
  return out;
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

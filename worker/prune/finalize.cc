// PreparedJob::Finalize (steps.h): the chosen policy pruned with the final mask method, the dense
// and pruned model measured, the artifact written atomically and verified by reloading it.
//
// The budget is a hard limit on the ARTIFACT: a ratio r prunes PrunedPerRow(r, in) =
// floor(r·in + 1e-9) whole weights per row (common/flops.h), and the search's FLOPs model counts
// exactly those (KeptFraction), so the policy found within the budget is written as is, with its
// per-linear `pruned_per_row` in policy.json. The report's flops_ratio is recounted from the
// written weights' non-zeros (STRUCTURED: from the written shapes, which must equal the search's
// figure to the last bit); a count above the budget fails the step (Internal) instead of writing
// a report that lies.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flops.h"
#include "common/nm_sparsity.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/model/checkpoint.h"
#include "worker/model/llava_eval.h"
#include "worker/model/torch_guard.h"
#include "worker/prune/artifact.h"
#include "worker/prune/report.h"
#include "worker/prune/report_html.h"
#include "worker/prune/sparsegpt.h"
#include "worker/prune/steps.h"
#include "worker/prune/structured.h"

namespace prunesvc::prune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The policy's ratio of one decoder linear as whole pruned weights per row.
struct LinearPlan {
  std::string name;  // canonical weight name
  int layer = 0;
  DecoderLinear kind = DecoderLinear::kQ;
  int64_t out = 0, in = 0;
  double ratio = 0;  // the policy's ratio
  int64_t k = 0;     // pruned weights per row: PrunedPerRow(ratio, in), what the mask prunes
};

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
absl::Status CheckNmWritten(const LinearPlan& p, const at::Tensor& w, const NmPattern& nm) {
  const at::Tensor per_group = (w != 0).reshape({p.out, p.in / nm.m, nm.m}).sum(2);
  if (per_group.gt(nm.n).any().item<bool>()) {
    return absl::InternalError(absl::StrCat("the written ", p.name, " is not ", NmPatternName(nm),
                                            " sparse; refusing to finish"));
  }
  return absl::OkStatus();
}
struct StructuredVerification {
  double flops = 0;  // F(written shapes) per sample
  int64_t params = 0, linear_weights = 0, linear_nonzero = 0;
};
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

// `path` made absolute (lexically normal), so a report names the exact set it measured.
std::string AbsolutePath(const std::string& path) {
  std::error_code ec;
  const std::filesystem::path abs = std::filesystem::absolute(path, ec);
  return ec ? path : abs.lexically_normal().string();
}

// Mean chance accuracy of the multiple-choice samples of `set` (1 / options each); nullopt when
// there are none.
std::optional<double> ChanceAccuracy(const model::SampleSet& set) {
  double sum = 0;
  int n = 0;
  for (const model::Sample& s : set.samples) {
    if (!s.multiple_choice()) continue;
    sum += 1.0 / double(s.options.size());
    ++n;
  }
  if (n == 0) return std::nullopt;
  return sum / n;
}

}  // namespace

// Finalize's state, one method per phase (a friend of PreparedJob: it consumes its model).
class Finalizer {
 public:
  Finalizer(PreparedJob& job, FinalizeOptions& options, StepContext& ctx)
      : job_(job), spec_(job.spec()), options_(options), ctx_(ctx), space_(*job.space_) {}

  absl::StatusOr<FinalizeResult> Run();

 private:
  bool structured() const { return spec_.granularity == search::Granularity::kStructured; }
  bool nm() const { return spec_.granularity == search::Granularity::kNM; }
  bool sparsegpt() const { return spec_.final_mask_method == MaskMethod::kSparseGpt; }
  model::LlavaModel& model() { return *job_.bundle_->model; }

  absl::Status PlanLinears();
  absl::Status ComputeFinalMasks();
  absl::Status InstallFinalModel();
  absl::Status MeasurePruned();
  // UNIFORM's continuous policy at the budget, scored as the candidates were (search samples,
  // the final projector): report.html's reference point beside the evaluated policies.
  absl::Status MeasureUniformPoint();
  absl::Status WriteModelFiles(const std::string& model_out);
  absl::Status WriteCheckpoint(const std::string& model_out);
  absl::StatusOr<json> UnstructuredPolicyJson();
  absl::Status Verify(const std::string& model_out);
  absl::Status VerifyUnstructured(const std::string& model_out);
  void WarnAboutAccuracy(const FinalizeResult& result);
  // The strategy's name, or GIVEN_POLICY for prune-local --policy.
  std::string StrategyLabel() const {
    return options_.given_policy.is_null() ? std::string(search::StrategyName(spec_.strategy))
                                           : "GIVEN_POLICY";
  }
  absl::StatusOr<json> BuildReport(const FinalizeResult& result);

  PreparedJob& job_;
  const JobSpec& spec_;
  FinalizeOptions& options_;
  StepContext& ctx_;
  const search::PolicySpace& space_;

  std::vector<LinearPlan> plan_;               // UNSTRUCTURED / N_M
  std::vector<StructuredLayerPlan> splan_;     // STRUCTURED
  std::vector<at::Tensor> masks_;              // per linear (UNSTRUCTURED / N_M)
  std::vector<at::Tensor> sparsegpt_weights_;  // SPARSEGPT: compensated, in the artifact dtype
  ProjectorWeights projector_;                 // the final projector, in the artifact dtype
  std::optional<ModelMetrics> dense_eval_;
  ModelMetrics pruned_search_;
  double dense_latency_ = 0, pruned_latency_ = 0;
  model::DType dtype_ = model::DType::kF32;
  model::WeightLayout layout_ = model::WeightLayout::kLegacy;
  json copied_ = json::array();
  std::string policy_hash_;
  json policy_;
  json uniform_point_;        // {ratio, accuracy, loss, flops_ratio} on the search samples
  int64_t input_params_ = 0;  // STRUCTURED: the input checkpoint's parameters
  int64_t dense_params_ = 0, pruned_params_ = 0, linear_weights_ = 0, linear_nonzero_ = 0;
  double flops_ratio_ = 0;
};

absl::Status Finalizer::PlanLinears() {
  CandidateEvaluator& evaluator = *job_.evaluator_;
  if (structured()) {
    ASSIGN_OR_RETURN(splan_, PlanStructured(evaluator.structured_bank(), options_.unit_ratios));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::vector<double> linear_ratios,
                   job_.local_->LinearRatios(options_.unit_ratios));
  for (int i = 0; i < evaluator.num_linears(); ++i) {
    const model::NamedLinear& nl = evaluator.linears()[i];
    LinearPlan p;
    p.name = nl.name;
    p.layer = nl.layer;
    p.kind = nl.kind;
    p.out = evaluator.bank().out_features(i);
    p.in = evaluator.bank().in_features(i);
    p.ratio = linear_ratios[i];
    // The search's FLOPs model counts exactly these whole weights (common/flops.h KeptFraction),
    // so the policy that met the budget there meets it here without any adjustment.
    p.k = PrunedPerRow(p.ratio, p.in);
    plan_.push_back(p);
  }
  return absl::OkStatus();
}

absl::Status Finalizer::ComputeFinalMasks() {
  CandidateEvaluator& evaluator = *job_.evaluator_;
  const MaskMethod final_method = spec_.EffectiveFinalMaskMethod();
  std::unique_ptr<MaskBank> final_bank;
  const MaskBank* bank = structured() ? nullptr : &evaluator.bank();
  if (!structured() && !sparsegpt() && final_method != spec_.mask_method) {
    std::vector<at::Tensor> dense_weights;
    for (int i = 0; i < evaluator.num_linears(); ++i) {
      dense_weights.push_back(evaluator.dense_weight(i));
    }
    std::optional<NmPattern> pattern;
    if (nm()) pattern = spec_.nm;
    ASSIGN_OR_RETURN(final_bank, MaskBank::Build(dense_weights, final_method,
                                                 &evaluator.calibration(), pattern));
    bank = final_bank.get();
  }
  for (size_t i = 0; i < plan_.size(); ++i) {
    if (sparsegpt()) {
      // The compensated weights, rounded to the artifact's dtype so the model measured here is
      // the one written. Same count of pruned weights as the masks (out·k per linear).
      RETURN_IF_ERROR(ctx_.CheckStop());
      const LinearInputStats& stats = *evaluator.calibration().linears[i];
      SparseGptOptions sopt;
      sopt.ratio = plan_[i].ratio;
      if (nm() && plan_[i].k > 0) {  // N:M: keep N of every M (k = in·(M − N)/M)
        sopt.nm_n = spec_.nm.n;
        sopt.nm_m = spec_.nm.m;
      }
      ASSIGN_OR_RETURN(SparseGptResult pruned, SparseGptPrune(evaluator.dense_weight(int(i)),
                                                              stats.gram, stats.rows, sopt));
      sparsegpt_weights_.push_back(RoundToDType(pruned.weight, job_.bundle_->source_dtype));
      masks_.push_back(std::move(pruned.keep));
      continue;
    }
    ASSIGN_OR_RETURN(at::Tensor mask, bank->KeepMask(int(i), plan_[i].ratio));
    masks_.push_back(std::move(mask));
  }
  return absl::OkStatus();
}

// Releases the evaluators (dense decoder weights restored), scores the held-out set on the dense
// model with the original projector, installs the final projector, times the dense model, then
// prunes the model in place (STRUCTURED: replaces it by the physically shrunk one).
absl::Status Finalizer::InstallFinalModel() {
  const ProjectorWeights* chosen = job_.local_->projector(options_.projector_version);
  if (chosen == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "projector version ", options_.projector_version, " is not registered on this worker"));
  }
  projector_ = *chosen;
  const ProjectorWeights original = *job_.local_->projector(0);
  job_.local_.reset();
  job_.evaluator_.reset();  // restores the dense decoder weights
  model::LlavaModel& m = model();
  const model::DType source = job_.bundle_->source_dtype;
  if (job_.has_eval_) {
    RETURN_IF_ERROR(LoadProjector(original, m));
    ASSIGN_OR_RETURN(dense_eval_,
                     ScoreSampleSet(*job_.bundle_, job_.eval_set_, job_.options_.batch_size));
    RETURN_IF_ERROR(ctx_.CheckStop());
  }
  // The projector as the artifact stores it.
  for (at::Tensor* t : {&projector_.linear_1_weight, &projector_.linear_1_bias,
                        &projector_.linear_2_weight, &projector_.linear_2_bias}) {
    *t = RoundToDType(*t, source);
  }
  RETURN_IF_ERROR(LoadProjector(projector_, m));
  RETURN_IF_ERROR(ctx_.CheckStop());
  if (!structured()) {
    ASSIGN_OR_RETURN(dense_latency_,
                     MedianLatencyMs(m, job_.latency_batch_, options_.latency_repeats));
  }
  std::vector<model::NamedLinear> linears = m.DecoderLinears();
  for (size_t i = 0; i < masks_.size(); ++i) {
    at::Tensor& w = linears[i].linear->weight;
    if (sparsegpt()) {
      w.copy_(sparsegpt_weights_[i].to(w.device(), w.scalar_type()));
    } else {
      w.mul_(masks_[i].to(w.device()));
    }
  }
  if (structured()) {
    // Both models exist here: time them interleaved, so load changes hit both alike. Then the
    // physically shrunk model replaces the dense one.
    ASSIGN_OR_RETURN(std::unique_ptr<model::LlavaModel> shrunk, ShrinkModel(m, splan_));
    ASSIGN_OR_RETURN(const auto latencies, InterleavedLatencyMs(m, *shrunk, job_.latency_batch_,
                                                                options_.latency_repeats));
    dense_latency_ = latencies.first;
    pruned_latency_ = latencies.second;
    linears.clear();
    job_.bundle_->model = std::move(shrunk);
  } else {
    ASSIGN_OR_RETURN(pruned_latency_,
                     MedianLatencyMs(m, job_.latency_batch_, options_.latency_repeats));
  }
  return ctx_.CheckStop();
}

absl::Status Finalizer::MeasureUniformPoint() {
  double r = space_.max_ratio();  // N:M: every unit N:M
  if (spec_.granularity != search::Granularity::kNM) {
    ASSIGN_OR_RETURN(r, space_.UniformContinuousRatio(spec_.flops_budget));
  }
  const std::vector<double> ratios(size_t(space_.num_units()), r);
  ASSIGN_OR_RETURN(CandidateResult c, job_.local_->EvaluateUnitRatios(ratios));
  ASSIGN_OR_RETURN(double flops, space_.FlopsOfRatios(ratios));
  uniform_point_ = {{"ratio", r},
                    {"accuracy", c.accuracy},
                    {"loss", c.loss},
                    {"flops_ratio", flops / space_.dense_flops()},
                    {"samples", "search"}};
  return absl::OkStatus();
}

absl::Status Finalizer::MeasurePruned() {
  ASSIGN_OR_RETURN(pruned_search_,
                   ScoreSampleSet(*job_.bundle_, job_.search_set_, job_.options_.batch_size));
  dtype_ = job_.bundle_->source_dtype;
  layout_ = job_.bundle_->layout;
  job_.bundle_->model.reset();  // frees the working model before the checkpoint is loaded
  job_.latency_batch_.clear();
  return ctx_.CheckStop();
}

absl::Status Finalizer::WriteModelFiles(const std::string& model_out) {
  const std::string& model_dir = job_.options_.model_dir;
  fs::create_directories(model_out);
  ASSIGN_OR_RETURN(copied_, CopyModelSideFiles(model_dir, model_out));
  if (structured()) {  // the per-layer sizes (the copy above is the input's config.json)
    RETURN_IF_ERROR(
        WriteTextFile(model_out + "/config.json",
                      StructuredConfig(job_.bundle_->config, splan_).raw.dump(2) + "\n"));
  }
  RETURN_IF_ERROR(WriteCheckpoint(model_out));
  masks_.clear();
  sparsegpt_weights_.clear();
  return absl::OkStatus();
}

absl::Status Finalizer::WriteCheckpoint(const std::string& model_out) {
  const std::string& model_dir = job_.options_.model_dir;
  int64_t input_max_shard = 0;
  const std::vector<std::string> weight_files = WeightFiles(model_dir);
  const bool sharded = std::find(weight_files.begin(), weight_files.end(), "model.safetensors") ==
                       weight_files.end();
  if (sharded) {
    for (const auto& f : weight_files) {
      std::error_code ec;
      input_max_shard =
          std::max<int64_t>(input_max_shard, int64_t(fs::file_size(model_dir + "/" + f, ec)));
    }
  }
  ASSIGN_OR_RETURN(model::Checkpoint ckpt, model::LoadCheckpoint(model_dir));
  if (structured()) {
    for (const auto& [name, t] : ckpt.tensors) input_params_ += t.numel();
    RETURN_IF_ERROR(ShrinkDecoderTensors(splan_, ckpt.tensors));
  }
  for (size_t i = 0; i < plan_.size(); ++i) {
    auto it = ckpt.tensors.find(plan_[i].name);
    if (it == ckpt.tensors.end()) {
      return absl::InternalError(absl::StrCat("the checkpoint has no ", plan_[i].name));
    }
    it->second = sparsegpt() ? sparsegpt_weights_[i]
                                   .to(at::kCPU, it->second.scalar_type())
                                   .mul(masks_[i])
                                   .contiguous()
                             : it->second.mul(masks_[i]);
  }
  const std::pair<const char*, const at::Tensor*> proj[] = {
      {"multi_modal_projector.linear_1.weight", &projector_.linear_1_weight},
      {"multi_modal_projector.linear_1.bias", &projector_.linear_1_bias},
      {"multi_modal_projector.linear_2.weight", &projector_.linear_2_weight},
      {"multi_modal_projector.linear_2.bias", &projector_.linear_2_bias}};
  for (const auto& [name, t] : proj) {
    if (!t->defined()) continue;
    auto it = ckpt.tensors.find(name);
    if (it == ckpt.tensors.end()) {
      return absl::InternalError(absl::StrCat("the checkpoint has no ", name));
    }
    it->second = t->to(at::kCPU).contiguous();
  }
  policy_hash_ = search::PolicyHashOfRatios(options_.unit_ratios);
  std::map<std::string, std::string> metadata = ckpt.metadata;
  metadata["prunesvc_policy_hash"] = policy_hash_;
  metadata["prunesvc_strategy"] = std::string(search::StrategyName(spec_.strategy));
  return model::SaveCheckpoint(model_out, ckpt.tensors, dtype_,
                               sharded ? size_t(input_max_shard) : 0, layout_, metadata);
}

absl::StatusOr<json> Finalizer::UnstructuredPolicyJson() {
  json units = json::array();
  for (int u = 0; u < space_.num_units(); ++u) {
    json lins = json::array();
    for (size_t i = 0; i < plan_.size(); ++i) {
      if (job_.unit_of_linear_[i] != u) continue;
      lins.push_back({{"name", model::LayoutWeightName(plan_[i].name, layout_)},
                      {"out_features", plan_[i].out},
                      {"in_features", plan_[i].in},
                      {"pruned_per_row", plan_[i].k},
                      {"ratio_realized", double(plan_[i].k) / double(plan_[i].in)}});
    }
    units.push_back({{"name", space_.units().names[u]},
                     {"ratio", options_.unit_ratios[u]},
                     {"flops_share", space_.units().flops_share[u]},
                     {"linears", std::move(lins)}});
  }
  ASSIGN_OR_RETURN(double nominal, space_.FlopsOfRatios(options_.unit_ratios));
  return json{{"format", "prunesvc.policy.v1"},
              {"granularity", std::string(search::GranularityName(spec_.granularity))},
              {"nm", NmJson(spec_)},
              {"unit", std::string(search::UnitKindName(spec_.unit))},
              {"strategy", StrategyLabel()},
              {"budget", spec_.flops_budget},
              {"ratio_choices", space_.ratio_choices()},
              {"hash", policy_hash_},
              {"flops_ratio_nominal", nominal / space_.dense_flops()},
              {"final_mask_method", std::string(MaskMethodName(spec_.EffectiveFinalMaskMethod()))},
              {"units", std::move(units)}};
}

absl::Status Finalizer::Verify(const std::string& model_out) {
  if (!structured()) return VerifyUnstructured(model_out);
  ASSIGN_OR_RETURN(StructuredVerification v,
                   VerifyStructured(model_out, job_.summary_.token_stats, dtype_, layout_));
  ASSIGN_OR_RETURN(double nominal, space_.FlopsOfRatios(options_.unit_ratios));
  flops_ratio_ = v.flops / space_.dense_flops();
  dense_params_ = input_params_;
  pruned_params_ = v.params;
  linear_weights_ = v.linear_weights;
  linear_nonzero_ = v.linear_nonzero;
  // Same dims, same statistics, same function: anything but equality is a bug.
  if (v.flops != nominal || !(v.flops <= spec_.flops_budget * space_.dense_flops())) {
    return absl::InternalError(absl::StrFormat(
        "the written artifact's FLOPs ratio %.9f (counted from its shapes) differs from the "
        "search's %.9f or exceeds the budget %.6f; refusing to finish",
        flops_ratio_, nominal / space_.dense_flops(), spec_.flops_budget));
  }
  return absl::OkStatus();
}

absl::Status Finalizer::VerifyUnstructured(const std::string& model_out) {
  ASSIGN_OR_RETURN(model::Checkpoint written, LoadWrittenCheckpoint(model_out, dtype_, layout_));
  KeptFractions keep;
  keep.decoder.assign(job_.summary_.dims.decoder.size(), {});
  for (auto& row : keep.decoder) row.fill(1.0);
  for (const LinearPlan& p : plan_) {
    auto it = written.tensors.find(p.name);
    if (it == written.tensors.end()) {
      return absl::InternalError(absl::StrCat("the artifact has no ", p.name));
    }
    const int64_t nnz = at::count_nonzero(it->second).item<int64_t>();
    keep.decoder[p.layer][int(p.kind)] = double(nnz) / double(it->second.numel());
    if (nm() && p.k > 0) RETURN_IF_ERROR(CheckNmWritten(p, it->second, spec_.nm));
    linear_weights_ += it->second.numel();
    linear_nonzero_ += nnz;
  }
  for (const auto& [name, t] : written.tensors) dense_params_ += t.numel();
  pruned_params_ = dense_params_ - (linear_weights_ - linear_nonzero_);
  ASSIGN_OR_RETURN(double f, PolicyFlops(space_.dense(), keep));
  flops_ratio_ = f / space_.dense_flops();
  // The budget convention of common/policy.h (F ≤ b·F_dense), so this check and the search's
  // agree to the last bit. The search counts the masks' whole weights, so this only fires on a
  // bug (a mask or the FLOPs model out of step); it must stay loud rather than write a report
  // that lies.
  if (!(f <= spec_.flops_budget * space_.dense_flops())) {
    return absl::InternalError(absl::StrFormat(
        "the written artifact's FLOPs ratio %.6f exceeds the budget %.6f (counted from its "
        "non-zero weights); refusing to finish",
        flops_ratio_, spec_.flops_budget));
  }
  return absl::OkStatus();
}

absl::StatusOr<json> Finalizer::BuildReport(const FinalizeResult& result) {
  const PrepareOptions& po = job_.options_;
  const PrepareSummary& summary = job_.summary_;
  ASSIGN_OR_RETURN(auto model_hash, ModelSha256(po.model_dir));
  json report;
  report["format"] = "prunesvc.report.v1";
  report["flops_ratio"] = flops_ratio_;
  report["flops_budget"] = spec_.flops_budget;
  report["accuracy"] = result.accuracy ? json(*result.accuracy) : json(nullptr);
  report["accuracy_set"] = result.accuracy_set;
  report["strategy"] = StrategyLabel();
  if (!options_.given_policy.is_null()) report["given_policy"] = options_.given_policy;
  report["granularity"] = std::string(search::GranularityName(spec_.granularity));
  report["nm"] = NmJson(spec_);
  if (!options_.owl.is_null()) report["owl"] = options_.owl;
  report["final_mask_method"] = std::string(MaskMethodName(spec_.EffectiveFinalMaskMethod()));
  report["latency_batch"] = int(std::max(1, std::min(po.latency_batch, summary.num_samples)));
  report["latency_repeats"] = options_.latency_repeats;
  json dense_j = MetricsJson(result.dense);
  dense_j["flops"] = space_.dense_flops();
  dense_j["params"] = dense_params_;
  dense_j["latency_ms"] = dense_latency_;
  dense_j["search"] = MetricsJson(summary.dense_search);
  if (dense_eval_) dense_j["eval"] = MetricsJson(*dense_eval_);
  json pruned_j = MetricsJson(result.pruned);
  pruned_j["flops"] = flops_ratio_ * space_.dense_flops();
  pruned_j["params"] = pruned_params_;
  pruned_j["latency_ms"] = pruned_latency_;
  pruned_j["search"] = MetricsJson(pruned_search_);
  if (job_.has_eval_) pruned_j["eval"] = MetricsJson(result.pruned);
  pruned_j["decoder_linear_weights"] = linear_weights_;
  pruned_j["decoder_linear_nonzero"] = linear_nonzero_;
  report["dense"] = std::move(dense_j);
  report["pruned"] = std::move(pruned_j);
  report["latency_ratio"] = dense_latency_ > 0 ? pruned_latency_ / dense_latency_ : 0.0;
  report["policy"] = policy_;
  report["uniform_ratio"] = options_.uniform_ratio ? json(*options_.uniform_ratio) : json(nullptr);
  report["uniform_point"] = uniform_point_;
  report["search"] = {{"unit", std::string(search::UnitKindName(spec_.unit))},
                      {"mask_method", std::string(MaskMethodName(spec_.mask_method))},
                      {"seed", spec_.seed},
                      {"generations", spec_.generations},
                      {"population", spec_.population},
                      {"parents", spec_.parents},
                      {"mutation", spec_.mutation},
                      {"ratio_choices", space_.ratio_choices()},
                      {"projector_every", spec_.projector_every},
                      {"projector_steps", spec_.projector_steps},
                      {"projector_lr", spec_.projector_lr},
                      {"projector_decay", spec_.projector_decay},
                      {"num_samples", summary.num_samples},
                      {"evaluations", options_.evaluations},
                      {"best", options_.search_best}};
  if (options_.search_options.is_object()) report["search"].update(options_.search_options);
  report["eta"] = options_.eta;
  if (!options_.guard.is_null()) report["guard"] = options_.guard;
  report["history"] = options_.history;
  report["evaluated"] = options_.evaluated;
  if (!options_.audit.is_null()) report["audit"] = options_.audit;
  report["projector"] = {{"trained", options_.projector_version > 0},
                         {"version", options_.projector_version}};
  report["warnings"] = result.warnings;
  report["provenance"] = {
      {"model_dir", po.model_dir},
      {"model_sha256", model_hash.first},
      {"model_files_sha256", model_hash.second},
      {"model_dtype", std::string(model::DTypeName(dtype_))},
      {"model_layout", std::string(model::WeightLayoutName(layout_))},
      {"dataset", AbsolutePath(po.samples_path)},
      {"dataset_sha256", summary.dataset_sha256},
      {"eval_dataset", job_.has_eval_ ? json(AbsolutePath(po.eval_samples_path)) : json(nullptr)},
      {"eval_dataset_sha256", job_.has_eval_ ? json(summary.eval_dataset_sha256) : json(nullptr)},
      {"seed", spec_.seed},
      {"threads", summary.threads},
      {"device", job_.device_.spec.ToString()},
      {"device_name", job_.device_.name},
      {"libraries", LibraryVersions()},
      {"cpu", CpuInfo()},
      {"copied_files", copied_},
      {"started_at", options_.started_at.empty() ? UtcNow() : options_.started_at},
      {"finished_at", UtcNow()},
      {"wall_seconds", options_.started_seconds_ago + ctx_.ElapsedSeconds()}};
  if (!options_.command_line.empty()) report["provenance"]["command_line"] = options_.command_line;
  if (!spec_.model_uri.empty()) report["provenance"]["model_uri"] = spec_.model_uri;
  if (!spec_.dataset_id.empty()) report["provenance"]["dataset_id"] = spec_.dataset_id;
  if (spec_.eval_dataset_id) report["provenance"]["eval_dataset_id"] = *spec_.eval_dataset_id;
  return report;
}

absl::StatusOr<FinalizeResult> Finalizer::Run() {
  const std::string out_dir = NormalizeOutDir(options_.out_dir);
  RETURN_IF_ERROR(CheckOutDir(out_dir, options_.replace_out));
  if (options_.unit_ratios.size() != size_t(space_.num_units())) {
    return absl::InvalidArgumentError(absl::StrCat("finalize: ", options_.unit_ratios.size(),
                                                   " ratios for ", space_.num_units(), " units"));
  }
  std::unique_ptr<PartialDir> partial = std::move(options_.partial);
  if (partial == nullptr) {
    ASSIGN_OR_RETURN(partial, PartialDir::Create(out_dir, options_.replace_out));
  }
  ctx_.Phase(JobPhase::kFinalize);
  // The final projector's calibration and mask bank cut the artifact.
  RETURN_IF_ERROR(job_.local_->SwitchTo(options_.projector_version));
  RETURN_IF_ERROR(MeasureUniformPoint());
  RETURN_IF_ERROR(PlanLinears());
  RETURN_IF_ERROR(ComputeFinalMasks());
  job_.spent_ = true;  // from here on the model is modified
  RETURN_IF_ERROR(InstallFinalModel());
  RETURN_IF_ERROR(MeasurePruned());

  ctx_.Phase(JobPhase::kWrite);
  const std::string model_out = partial->path() + "/model";
  RETURN_IF_ERROR(WriteModelFiles(model_out));
  if (structured()) {
    ASSIGN_OR_RETURN(double nominal, space_.FlopsOfRatios(options_.unit_ratios));
    policy_ =
        StructuredPolicyJson(spec_, space_, options_.unit_ratios, splan_, policy_hash_, nominal);
    policy_["strategy"] = StrategyLabel();
  } else {
    ASSIGN_OR_RETURN(policy_, UnstructuredPolicyJson());
  }
  RETURN_IF_ERROR(WriteTextFile(partial->path() + "/policy.json", policy_.dump(1) + "\n"));
  RETURN_IF_ERROR(ctx_.CheckStop());

  ctx_.Phase(JobPhase::kVerify);
  RETURN_IF_ERROR(Verify(model_out));
  RETURN_IF_ERROR(ctx_.CheckStop());
  model::EvalOptions eo;
  eo.model_dir = model_out;
  eo.samples_path = job_.has_eval_ ? job_.options_.eval_samples_path : job_.options_.samples_path;
  eo.batch_size = options_.eval_batch_size;
  eo.threads = job_.device_.threads;
  eo.device = job_.options_.device;
  ASSIGN_OR_RETURN(model::EvalReport reloaded, model::RunEval(eo));

  FinalizeResult result;
  result.out_dir = out_dir;
  result.accuracy_set = job_.has_eval_ ? "eval" : "search";
  result.accuracy = reloaded.overall.accuracy;
  result.flops_ratio = flops_ratio_;
  result.dense = dense_eval_ ? *dense_eval_ : job_.summary_.dense_search;
  result.pruned.accuracy = reloaded.overall.accuracy;
  result.pruned.loss = reloaded.overall.mean_loss;
  result.pruned.num_samples = reloaded.overall.num_samples;
  for (const auto& [type, g] : reloaded.per_type) {
    result.pruned.per_type[type] = {g.accuracy, g.mean_loss, g.num_samples};
  }
  result.dense_latency_ms = dense_latency_;
  result.pruned_latency_ms = pruned_latency_;
  result.unit_names = space_.units().names;
  result.unit_ratios = options_.unit_ratios;
  if (!result.accuracy.has_value()) {
    ctx_.Warn("the accuracy set has no multiple-choice samples: accuracy is undefined (null)");
  }
  WarnAboutAccuracy(result);
  result.warnings = options_.warnings;
  for (const std::string& w : ctx_.warnings()) result.warnings.push_back(w);
  ASSIGN_OR_RETURN(json report, BuildReport(result));
  RETURN_IF_ERROR(WriteTextFile(partial->path() + "/report.json", report.dump(1) + "\n"));
  RETURN_IF_ERROR(WriteTextFile(partial->path() + "/README.md",
                                ModelCard(spec_, job_.options_.model_dir, report, policy_)));
  RETURN_IF_ERROR(WriteTextFile(partial->path() + "/report.html", ReportHtml(report)));
  RETURN_IF_ERROR(WriteManifest(partial->path()));
  RETURN_IF_ERROR(ctx_.CheckStop());
  RETURN_IF_ERROR(partial->Commit());
  result.report = std::move(report);
  result.policy = policy_;
  return result;
}

// A result near chance, or far below dense, must not pass as an ordinary one: warn on the CLI,
// in report.json and in the model card (issue 15).
void Finalizer::WarnAboutAccuracy(const FinalizeResult& result) {
  if (!result.pruned.accuracy.has_value()) return;
  std::optional<std::string> warning = AccuracyWarning(
      *result.pruned.accuracy, result.dense.accuracy,
      ChanceAccuracy(job_.has_eval_ ? job_.eval_set_ : job_.search_set_), result.accuracy_set);
  if (warning.has_value()) ctx_.Warn(*warning);
}

absl::StatusOr<FinalizeResult> PreparedJob::Finalize(FinalizeOptions options, StepContext& ctx) {
  RETURN_IF_ERROR(CheckUsable());
  return model::TorchGuarded("finalize", [&]() -> absl::StatusOr<FinalizeResult> {
    Finalizer finalizer(*this, options, ctx);
    return finalizer.Run();
  });
}

}  // namespace prunesvc::prune

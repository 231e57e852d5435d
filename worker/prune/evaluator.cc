#include "worker/prune/evaluator.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/model/torch_guard.h"

namespace prunesvc::prune {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Row-parallel raw-pointer kernels of the CPU path: zero order[r, lo:hi) of every row, or copy
// the dense values back there. Rows are disjoint, so threads never write the same element.
template <typename Idx>
void ZeroColumns(float* w, const Idx* order, int64_t out, int64_t in, int64_t lo, int64_t hi) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, hi - lo));
  at::parallel_for(0, out, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = w + r * in;
      const Idx* o = order + r * in;
      for (int64_t t = lo; t < hi; ++t) row[o[t]] = 0.0f;
    }
  });
}
template <typename Idx>
void RestoreColumns(float* w, const float* dense, const Idx* order, int64_t out, int64_t in,
                    int64_t lo, int64_t hi) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, hi - lo));
  at::parallel_for(0, out, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = w + r * in;
      const float* d = dense + r * in;
      const Idx* o = order + r * in;
      for (int64_t t = lo; t < hi; ++t) row[o[t]] = d[o[t]];
    }
  });
}

absl::Status CheckShape(const at::Tensor& have, const at::Tensor& want, const char* what) {
  if (have.defined() != want.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("projector ", what, ": ", want.defined() ? "missing" : "unexpected"));
  }
  if (have.defined() && have.sizes() != want.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat("projector ", what, ": shape mismatch"));
  }
  return absl::OkStatus();
}

// Ω from per-unit kept and dense squared masses: Σ_u P_u·ω_u / Σ_u P_u with ω_u = sqrt(kept/dense)
// (1 for a unit with no mass). Prefix sums can leave a tiny negative kept mass when everything is
// pruned; it counts as 0.
double WeightedOmega(const std::vector<double>& kept, const std::vector<double>& dense,
                     const std::vector<double>& unit_params) {
  double num = 0, den = 0;
  for (size_t u = 0; u < kept.size(); ++u) {
    const double omega_u = dense[u] > 0 ? std::sqrt(std::max(0.0, kept[u]) / dense[u]) : 1.0;
    num += unit_params[u] * omega_u;
    den += unit_params[u];
  }
  return den > 0 ? num / den : 1.0;
}

}  // namespace

absl::StatusOr<std::vector<EvalSample>> ToEvalSamples(
    absl::Span<const model::PreparedSample> samples) {
  std::vector<EvalSample> out;
  out.reserve(samples.size());
  for (const model::PreparedSample& p : samples) {
    EvalSample e;
    e.scoring = p.scoring;
    e.scoring.image_features = at::Tensor();
    ASSIGN_OR_RETURN(e.pixels, model::StackPixels({&p.pixels, 1}));
    out.push_back(std::move(e));
  }
  return out;
}

absl::StatusOr<ProjectorWeights> CopyProjector(model::LlavaModel& model) {
  return model::TorchGuarded("copying the projector", [&]() -> absl::StatusOr<ProjectorWeights> {
    auto copy = [](const at::Tensor& t) { return t.defined() ? t.detach().clone() : at::Tensor(); };
    ProjectorWeights p;
    p.linear_1_weight = copy(model.projector_linear_1().weight);
    p.linear_1_bias = copy(model.projector_linear_1().bias);
    p.linear_2_weight = copy(model.projector_linear_2().weight);
    p.linear_2_bias = copy(model.projector_linear_2().bias);
    return p;
  });
}

absl::Status LoadProjector(const ProjectorWeights& weights, model::LlavaModel& model) {
  model::Linear& l1 = model.projector_linear_1();
  model::Linear& l2 = model.projector_linear_2();
  RETURN_IF_ERROR(CheckShape(weights.linear_1_weight, l1.weight, "linear_1.weight"));
  RETURN_IF_ERROR(CheckShape(weights.linear_1_bias, l1.bias, "linear_1.bias"));
  RETURN_IF_ERROR(CheckShape(weights.linear_2_weight, l2.weight, "linear_2.weight"));
  RETURN_IF_ERROR(CheckShape(weights.linear_2_bias, l2.bias, "linear_2.bias"));
  return model::TorchGuarded("loading the projector", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    l1.weight.copy_(weights.linear_1_weight);
    if (l1.bias.defined()) l1.bias.copy_(weights.linear_1_bias);
    l2.weight.copy_(weights.linear_2_weight);
    if (l2.bias.defined()) l2.bias.copy_(weights.linear_2_bias);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::unique_ptr<CandidateEvaluator>> CandidateEvaluator::Create(
    model::LlavaModel* model, std::vector<EvalSample> samples, const EvaluatorOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("evaluator: null model");
  if (samples.empty()) return absl::InvalidArgumentError("evaluator: no samples");
  if (options.batch_size < 1 || options.calibration_batch_size < 1) {
    return absl::InvalidArgumentError("evaluator: batch sizes must be at least 1");
  }
  auto ev = std::unique_ptr<CandidateEvaluator>(new CandidateEvaluator(model, options));
  RETURN_IF_ERROR(ev->Init(std::move(samples)));
  return ev;
}

CandidateEvaluator::~CandidateEvaluator() {
  if (bank_ != nullptr || sbank_ != nullptr) {
    absl::Status s = RestoreDense();
    if (!s.ok()) spdlog::warn("evaluator: restoring the dense weights failed: {}", s.ToString());
  }
}

absl::Status CandidateEvaluator::Init(std::vector<EvalSample> samples) {
  linears_ = model_->DecoderLinears();
  const int n = num_linears();
  if (options_.unit_of_linear.empty()) {
    for (const model::NamedLinear& l : linears_) unit_of_linear_.push_back(l.layer);
  } else {
    if (int(options_.unit_of_linear.size()) != n) {
      return absl::InvalidArgumentError(absl::StrCat("evaluator: unit_of_linear has ",
                                                     options_.unit_of_linear.size(),
                                                     " entries for ", n, " decoder linears"));
    }
    unit_of_linear_ = options_.unit_of_linear;
  }
  for (int u : unit_of_linear_) {
    if (u < 0 || u >= n) {
      return absl::InvalidArgumentError(absl::StrCat("evaluator: unit index ", u, " out of range"));
    }
    num_units_ = std::max(num_units_, u + 1);
  }
  if (structured()) {
    // Ω and the masks work per layer: a layer's linears must share one unit.
    for (int i = 0; i < n; ++i) {
      if (unit_of_linear_[i] != unit_of_linear_[i - i % kNumDecoderLinears]) {
        return absl::InvalidArgumentError(
            absl::StrCat("evaluator: STRUCTURED needs one unit per decoder layer; ",
                         linears_[i].name, " is in another unit than its layer's q_proj"));
      }
    }
    heads_ = LayerHeadsOf(*model_);
    applied_cut_.assign(heads_.size(), StructuredCut{});
  }
  unit_params_.assign(num_units_, 0.0);
  for (int i = 0; i < n; ++i) {
    unit_params_[unit_of_linear_[i]] += double(linears_[i].linear->weight.numel());
  }
  for (size_t i = 0; i < samples.size(); ++i) {
    const model::ScoringSample& s = samples[i].scoring;
    if (!(0 < s.answer_begin && s.answer_begin < s.answer_end &&
          s.answer_end <= int(s.token_ids.size()))) {
      return absl::InvalidArgumentError(
          absl::StrCat("evaluator: sample ", i, ": answer range [", s.answer_begin, ", ",
                       s.answer_end, ") is not inside its ", s.token_ids.size(), " tokens"));
    }
  }
  RETURN_IF_ERROR(model::TorchGuarded("evaluator setup", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    for (int i = 0; i < n; ++i) {
      at::Tensor& w = linears_[i].linear->weight;
      if (w.scalar_type() != at::kFloat) {
        return absl::InvalidArgumentError(
            absl::StrCat("evaluator: ", linears_[i].name, " is not float32"));
      }
      // The raw-pointer path needs row-major weights; a one-time O(1)-per-step swap.
      if (!w.is_contiguous()) w = w.contiguous();
      dense_.push_back(w.detach().clone());
    }
    applied_k_.assign(n, 0);
    if (options_.prepared != nullptr) {  // another job's, same inputs (preparation_cache.h)
      if (options_.prepared->vision_features.size() != samples.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "evaluator: the shared preparation has vision features of ",
            options_.prepared->vision_features.size(), " samples, not ", samples.size()));
      }
      vision_features_ = options_.prepared->vision_features;
      return absl::OkStatus();
    }
    // The vision tower output never changes (only the projector is trained): computed once.
    vision_features_.resize(samples.size());
    const int bs = options_.calibration_batch_size;
    for (size_t start = 0; start < samples.size(); start += bs) {
      const size_t end = std::min(samples.size(), start + size_t(bs));
      std::vector<at::Tensor> pix;
      std::vector<int64_t> counts;
      for (size_t i = start; i < end; ++i) {
        const at::Tensor& p = samples[i].pixels;
        const int64_t c = p.defined() ? p.size(0) : 0;
        counts.push_back(c);
        if (c > 0) pix.push_back(p.to(model_->device(), at::kFloat));
      }
      if (pix.empty()) continue;
      ASSIGN_OR_RETURN(at::Tensor feats, model_->VisionFeatures(at::cat(pix, 0)));
      int64_t off = 0;
      for (size_t i = start; i < end; ++i) {
        const int64_t c = counts[i - start];
        if (c > 0) vision_features_[i] = feats.narrow(0, off, c).clone();
        off += c;
      }
    }
    return absl::OkStatus();
  }));
  samples_.reserve(samples.size());
  for (EvalSample& s : samples) samples_.push_back(std::move(s.scoring));
  order_.resize(samples_.size());
  std::iota(order_.begin(), order_.end(), 0);
  ASSIGN_OR_RETURN(projector_, CopyProjector(*model_));
  projector_version_ = 0;
  return RebuildForProjector();
}

absl::Status CandidateEvaluator::SetProjector(int version, const ProjectorWeights& weights) {
  RETURN_IF_ERROR(RestoreDense());
  RETURN_IF_ERROR(LoadProjector(weights, *model_));
  ProjectorWeights copy;
  RETURN_IF_ERROR(model::TorchGuarded("copying the projector", [&]() -> absl::Status {
    auto c = [](const at::Tensor& t) { return t.defined() ? t.detach().clone() : at::Tensor(); };
    copy = {c(weights.linear_1_weight), c(weights.linear_1_bias), c(weights.linear_2_weight),
            c(weights.linear_2_bias)};
    return absl::OkStatus();
  }));
  projector_ = std::move(copy);
  projector_version_ = version;
  return RebuildForProjector();
}

absl::StatusOr<std::shared_ptr<const Preparation>> CandidateEvaluator::SharedPreparation(
    const ModelMetrics& dense_search, std::vector<int> sample_order, double probe_ratio) const {
  if (projector_version_ != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "evaluator: only projector version 0 is shared; this one is at ", projector_version_));
  }
  auto p = std::make_shared<Preparation>();
  p->dense_search = dense_search;
  p->vision_features = vision_features_;
  p->calibration = calibration_;
  p->bank = bank_;
  p->sbank = sbank_;
  p->sample_order = std::move(sample_order);
  p->sample_order_probe = probe_ratio;
  return std::shared_ptr<const Preparation>(std::move(p));
}

absl::Status CandidateEvaluator::SetSampleOrder(std::vector<int> order) {
  const size_t n = samples_.size();
  if (order.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("sample order: ", order.size(), " positions for ", n, " search samples"));
  }
  std::vector<bool> seen(n, false);
  for (size_t j = 0; j < n; ++j) {
    if (order[j] < 0 || size_t(order[j]) >= n || seen[order[j]]) {
      return absl::InvalidArgumentError(absl::StrCat("sample order: position ", j, " holds ",
                                                     order[j], ", not a permutation of [0, ", n,
                                                     ")"));
    }
    seen[order[j]] = true;
  }
  order_ = std::move(order);
  RebuildScoringOrder();
  return absl::OkStatus();
}

void CandidateEvaluator::RebuildScoringOrder() {
  activations_.Clear();  // they were computed from the old batches' inputs
  scoring_.clear();
  scoring_.reserve(order_.size());
  for (int i : order_) scoring_.push_back(samples_[i]);
}

absl::Status CandidateEvaluator::RebuildForProjector() {
  // Image features of this version, from the cached vision features.
  RETURN_IF_ERROR(model::TorchGuarded("projecting image features", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    const int bs = options_.calibration_batch_size;
    for (size_t start = 0; start < samples_.size(); start += bs) {
      const size_t end = std::min(samples_.size(), start + size_t(bs));
      std::vector<at::Tensor> vis;
      for (size_t i = start; i < end; ++i) {
        if (vision_features_[i].defined()) vis.push_back(vision_features_[i]);
      }
      if (vis.empty()) continue;
      ASSIGN_OR_RETURN(at::Tensor proj, model_->Project(at::cat(vis, 0)));
      int64_t off = 0;
      for (size_t i = start; i < end; ++i) {
        if (!vision_features_[i].defined()) continue;
        const int64_t c = vision_features_[i].size(0);
        samples_[i].image_features = proj.narrow(0, off, c).clone();
        off += c;
      }
    }
    return absl::OkStatus();
  }));
  RebuildScoringOrder();  // the scoring view holds the new image features
  if (projector_version_ == 0 && options_.prepared != nullptr) {
    const Preparation& p = *options_.prepared;
    if (p.calibration.linears.size() != linears_.size() ||
        (structured() ? p.sbank == nullptr : p.bank == nullptr)) {
      return absl::InvalidArgumentError(
          "evaluator: the shared preparation does not match this evaluator's linears and "
          "granularity");
    }
    calibration_ = p.calibration;
    bank_ = p.bank;
    sbank_ = p.sbank;
    return absl::OkStatus();
  }
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(calibration_, Calibrate(*model_, samples_,
                                           {.batch_size = options_.calibration_batch_size,
                                            .collect_gram = options_.collect_gram}));
  if (structured()) {
    ASSIGN_OR_RETURN(sbank_, StructuredBank::Build(dense_, heads_, options_.method, &calibration_));
    spdlog::debug("evaluator: projector v{}: calibration + structured {} orders in {:.2f} s",
                  projector_version_, MaskMethodName(options_.method), Seconds(t0));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(bank_, MaskBank::Build(dense_, options_.method, &calibration_, options_.nm));
  spdlog::debug("evaluator: projector v{}: calibration + {} bank in {:.2f} s ({:.1f} MB)",
                projector_version_, MaskMethodName(options_.method), Seconds(t0),
                bank_->MemoryBytes() / 1e6);
  return absl::OkStatus();
}

absl::Status CandidateEvaluator::ValidateRatios(absl::Span<const double> ratios) const {
  if (int(ratios.size()) != num_linears()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", num_linears(), " per-linear ratios, got ", ratios.size()));
  }
  for (size_t i = 0; i < ratios.size(); ++i) {
    if (!(ratios[i] >= 0 && ratios[i] <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("ratio of ", linears_[i].name, " is ", ratios[i], ", outside [0, 1]"));
    }
  }
  return absl::OkStatus();
}

void CandidateEvaluator::MoveMask(int i, int64_t k) {
  const int64_t from = applied_k_[i];
  if (k == from) return;
  at::Tensor& w = linears_[i].linear->weight;
  const at::Tensor& order = bank_->order(i);
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t lo = std::min(from, k), hi = std::max(from, k);
  const bool prune = k > from;
  if (w.is_cpu() && !options_.generic_mask_path) {
    float* wp = w.data_ptr<float>();
    if (order.scalar_type() == at::kShort) {
      const int16_t* o = order.data_ptr<int16_t>();
      prune ? ZeroColumns(wp, o, out, in, lo, hi)
            : RestoreColumns(wp, dense_[i].data_ptr<float>(), o, out, in, lo, hi);
    } else {
      const int32_t* o = order.data_ptr<int32_t>();
      prune ? ZeroColumns(wp, o, out, in, lo, hi)
            : RestoreColumns(wp, dense_[i].data_ptr<float>(), o, out, in, lo, hi);
    }
  } else {
    at::NoGradGuard no_grad;
    at::Tensor idx = order.narrow(1, lo, hi - lo).to(at::kLong).to(w.device());
    if (prune) {
      w.scatter_(1, idx, 0.0);
    } else {
      w.scatter_(1, idx, dense_[i].gather(1, idx));
    }
  }
  applied_k_[i] = k;
  timing_.linears_changed += 1;
  timing_.weights_written += out * (hi - lo);
}

absl::Status CandidateEvaluator::ApplyRatios(absl::Span<const double> linear_ratios) {
  if (structured()) return ApplyStructured(linear_ratios);
  RETURN_IF_ERROR(ValidateRatios(linear_ratios));
  const auto t0 = Clock::now();
  timing_ = EvalTiming{};
  RETURN_IF_ERROR(model::TorchGuarded("applying masks", [&]() -> absl::Status {
    for (int i = 0; i < num_linears(); ++i) {
      MoveMask(i, PrunedPerRow(linear_ratios[i], bank_->in_features(i)));
    }
    return absl::OkStatus();
  }));
  timing_.apply_seconds = Seconds(t0);
  return absl::OkStatus();
}

absl::Status CandidateEvaluator::RestoreDense() {
  return ApplyRatios(std::vector<double>(num_linears(), 0.0));
}

absl::StatusOr<double> CandidateEvaluator::Omega(absl::Span<const double> linear_ratios) const {
  if (structured()) return StructuredOmega(linear_ratios);
  RETURN_IF_ERROR(ValidateRatios(linear_ratios));
  std::vector<double> kept(num_units_, 0.0), dense(num_units_, 0.0);
  for (int i = 0; i < num_linears(); ++i) {
    const int64_t k = PrunedPerRow(linear_ratios[i], bank_->in_features(i));
    const double d = bank_->DenseSquaredMass(i);
    kept[unit_of_linear_[i]] += d - bank_->PrunedSquaredMass(i, k);
    dense[unit_of_linear_[i]] += d;
  }
  return WeightedOmega(kept, dense, unit_params_);
}

absl::StatusOr<CandidateResult> CandidateEvaluator::Evaluate(absl::Span<const double> linear_ratios,
                                                             SampleRange range) {
  const int n = int(samples_.size());
  if (range.end < 0) range.end = n;
  if (range.begin < 0 || range.begin >= range.end || range.end > n) {
    return absl::InvalidArgumentError(absl::StrCat("sample range [", range.begin, ", ", range.end,
                                                   ") is empty or outside the ", n,
                                                   " search samples"));
  }
  RETURN_IF_ERROR(ApplyRatios(linear_ratios));
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(
      std::vector<model::SampleScore> scores,
      model::ScoreSamples(
          *model_, absl::MakeConstSpan(scoring_).subspan(range.begin, range.end - range.begin),
          {.batch_size = options_.batch_size}));
  timing_.forward_seconds = Seconds(t0);
  const model::ScoreSummary sum = model::Summarize(scores);
  CandidateResult r;
  r.loss = sum.mean_loss;
  r.accuracy = sum.accuracy;
  r.num_samples = sum.num_samples;
  r.num_multiple_choice = sum.num_multiple_choice;
  r.sample_losses.reserve(scores.size());
  for (const model::SampleScore& s : scores) {
    r.sample_losses.push_back(s.loss);
    r.num_correct += s.multiple_choice && s.correct;
  }
  ASSIGN_OR_RETURN(r.omega, Omega(linear_ratios));
  return r;
}

search::EvalResult ToEvalResult(CandidateResult r) {
  return {.loss = r.loss,
          .accuracy = r.accuracy,
          .omega = r.omega,
          .sample_losses = std::move(r.sample_losses),
          .raced_out = r.raced_out,
          .samples_scored = r.samples_scored};
}

namespace {

// Leading decoder layers on which two per-linear ratio vectors agree.
int CommonLayers(absl::Span<const double> a, absl::Span<const double> b, int num_layers) {
  for (int l = 0; l < num_layers; ++l) {
    for (int i = l * kNumDecoderLinears; i < (l + 1) * kNumDecoderLinears; ++i) {
      if (a[i] != b[i]) return l;
    }
  }
  return num_layers;
}

}  // namespace

absl::StatusOr<std::vector<CandidateResult>> CandidateEvaluator::EvaluateMany(
    const std::vector<std::vector<double>>& candidates, const search::RaceLimit& race,
    const std::function<absl::Status()>& poll) {
  const auto t0 = Clock::now();
  many_timing_ = ManyTiming{};
  const int n = int(samples_.size());
  const int num_layers = model_->config().text.num_hidden_layers;
  const int c = int(candidates.size());
  std::vector<CandidateResult> out(c);
  for (int i = 0; i < c; ++i) {
    RETURN_IF_ERROR(ValidateRatios(candidates[i]));
    ASSIGN_OR_RETURN(out[i].omega, Omega(candidates[i]));
    out[i].num_samples = n;
  }
  const int vocab = model_->config().text.vocab_size;
  RETURN_IF_ERROR(model::CheckScoringSamples(samples_, vocab));
  // Lexicographic order of the ratio vectors = a depth-first walk of the prefix tree.
  std::vector<int> order(c);
  for (int i = 0; i < c; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return candidates[a] < candidates[b]; });
  std::vector<bool> alive(c, true);
  std::vector<double> partial(c, 0.0);
  const int bs = options_.batch_size;
  for (int start = 0; start < n; start += bs) {
    const int end = std::min(n, start + bs);
    if (poll) RETURN_IF_ERROR(poll());
    const auto part = absl::MakeConstSpan(scoring_).subspan(start, end - start);
    ASSIGN_OR_RETURN(model::DecoderPass pass, model_->StartPass(model::ScoringInputs(part)));
    std::vector<at::Tensor> after(num_layers + 1);  // after[l]: the input of layer l
    // valid[l]: after[l] is the previous candidate's (a cache hit leaves gaps below it).
    std::vector<bool> valid(num_layers + 1, false);
    after[0] = pass.input();
    valid[0] = true;
    int prev = -1;
    for (int i : order) {
      if (!alive[i]) continue;
      int shared = prev < 0 || !prefix_sharing_
                       ? 0
                       : CommonLayers(candidates[i], candidates[prev], num_layers);
      while (!valid[shared]) --shared;
      for (int l = shared + 1; l <= num_layers; ++l) valid[l] = false;  // not this candidate's
      if (prefix_sharing_) {
        // A deeper prefix an earlier call ran (same batch, same projector and order).
        auto [kept, input] = activations_.Deepest(start, candidates[i], num_layers - 1);
        if (kept > shared) {
          many_timing_.layers_from_cache += kept - shared;
          after[kept] = std::move(input);
          valid[kept] = true;
          shared = kept;
        }
      }
      RETURN_IF_ERROR(ApplyRatios(candidates[i]));
      const auto tl = Clock::now();
      for (int l = shared; l < num_layers; ++l) {
        ASSIGN_OR_RETURN(after[l + 1], model_->RunLayer(pass, l, after[l]));
        valid[l + 1] = true;
        ++many_timing_.layer_runs;
        if (prefix_sharing_ && l + 1 < num_layers) {
          activations_.Insert(start, candidates[i], l + 1, after[l + 1]);
        }
      }
      const auto ts = Clock::now();
      many_timing_.layer_seconds += std::chrono::duration<double>(ts - tl).count();
      ASSIGN_OR_RETURN(std::vector<at::Tensor> logits, model_->FinishPass(pass, after[num_layers]));
      std::vector<model::SampleScore> scores(part.size());
      RETURN_IF_ERROR(model::ScoresFromLogits(part, logits, vocab, false, absl::MakeSpan(scores),
                                              size_t(start)));
      many_timing_.scoring_seconds += Seconds(ts);
      CandidateResult& r = out[i];
      for (const model::SampleScore& sc : scores) {
        partial[i] += sc.loss;
        r.sample_losses.push_back(sc.loss);
        if (sc.multiple_choice) {
          ++r.num_multiple_choice;
          r.num_correct += sc.correct;
        }
      }
      many_timing_.layer_runs_exhaustive += num_layers;
      prev = i;
    }
    // Candidates raced out now stop (also counted as exhaustive work that was skipped).
    for (int i = 0; i < c; ++i) {
      if (!alive[i]) {
        many_timing_.layer_runs_exhaustive += num_layers;
        continue;
      }
      if (race.active() &&
          search::RacedOut(partial[i], end, n,
                           race.BoundTerm(size_t(i), out[i].omega, out[i].sample_losses),
                           race.threshold)) {
        alive[i] = false;
        out[i].raced_out = true;
        out[i].samples_scored = end;
        ++many_timing_.raced_out;
      }
    }
  }
  for (int i = 0; i < c; ++i) {
    CandidateResult& r = out[i];
    // Summarize's mean: the in-order sum over the n samples (or the bound over those scored).
    r.loss = partial[i] / n;
    if (r.raced_out) {
      r.num_multiple_choice = 0;
      r.num_correct = 0;
    }
    r.accuracy = r.num_multiple_choice > 0 ? double(r.num_correct) / r.num_multiple_choice : 0.0;
  }
  many_timing_.seconds = Seconds(t0);
  ManyTiming& t = total_many_timing_;
  t.layer_runs += many_timing_.layer_runs;
  t.layers_from_cache += many_timing_.layers_from_cache;
  t.layer_runs_exhaustive += many_timing_.layer_runs_exhaustive;
  t.raced_out += many_timing_.raced_out;
  t.seconds += many_timing_.seconds;
  t.layer_seconds += many_timing_.layer_seconds;
  t.scoring_seconds += many_timing_.scoring_seconds;
  return out;
}

// ---------------------------------------------------------------------------------------------
// STRUCTURED

absl::StatusOr<std::vector<StructuredCut>> CandidateEvaluator::StructuredCuts(
    absl::Span<const double> linear_ratios) const {
  RETURN_IF_ERROR(ValidateRatios(linear_ratios));
  std::vector<StructuredCut> cuts;
  for (int l = 0; l < sbank_->num_layers(); ++l) {
    const double* r = linear_ratios.data() + l * kNumDecoderLinears;
    const int kAttn[] = {int(DecoderLinear::kK), int(DecoderLinear::kV), int(DecoderLinear::kO)};
    const int kMlp[] = {int(DecoderLinear::kUp), int(DecoderLinear::kDown)};
    for (int i : kAttn) {
      if (r[i] != r[int(DecoderLinear::kQ)]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "STRUCTURED: layer ", l, "'s attention linears have different ratios (",
            linears_[l * kNumDecoderLinears + i].name, " ", r[i], " vs q_proj ",
            r[int(DecoderLinear::kQ)], "); heads are removed from q, k, v and o together"));
      }
    }
    for (int i : kMlp) {
      if (r[i] != r[int(DecoderLinear::kGate)]) {
        return absl::InvalidArgumentError(
            absl::StrCat("STRUCTURED: layer ", l, "'s MLP linears have different ratios (",
                         linears_[l * kNumDecoderLinears + i].name, " ", r[i], " vs gate_proj ",
                         r[int(DecoderLinear::kGate)],
                         "); channels are removed from gate, up and down together"));
      }
    }
    StructuredCut cut;
    cut.kv_groups = sbank_->Cut(l, r[int(DecoderLinear::kQ)]).kv_groups;
    cut.channels = sbank_->Cut(l, r[int(DecoderLinear::kGate)]).channels;
    cuts.push_back(cut);
  }
  return cuts;
}

void CandidateEvaluator::MoveChannels(int layer, int64_t to) {
  const int64_t from = applied_cut_[layer].channels;
  if (to == from) return;
  const int64_t lo = std::min(from, to), hi = std::max(from, to);
  const std::vector<int64_t>& order = sbank_->layer(layer).channel_order;
  at::NoGradGuard no_grad;
  const int base = layer * kNumDecoderLinears;
  at::Tensor idx =
      at::tensor(std::vector<int64_t>(order.begin() + lo, order.begin() + hi), at::kLong);
  const std::pair<int, int> parts[] = {{base + int(DecoderLinear::kGate), 0},
                                       {base + int(DecoderLinear::kUp), 0},
                                       {base + int(DecoderLinear::kDown), 1}};
  for (const auto& [i, dim] : parts) {
    at::Tensor& w = linears_[i].linear->weight;
    const at::Tensor d_idx = idx.to(w.device());
    if (to > from) {
      w.index_fill_(dim, d_idx, 0.0);
    } else {
      w.index_copy_(dim, d_idx, dense_[i].index_select(dim, d_idx));
    }
    timing_.linears_changed += 1;
    timing_.weights_written += (hi - lo) * w.size(1 - dim);
  }
  applied_cut_[layer].channels = to;
}

void CandidateEvaluator::MoveGroups(int layer, int to) {
  const int from = applied_cut_[layer].kv_groups;
  if (to == from) return;
  const int lo = std::min(from, to), hi = std::max(from, to);
  const std::vector<int64_t>& order = sbank_->layer(layer).group_order;
  const DecoderLayerHeads& h = heads_[layer];
  const int64_t kv_width = h.head_dim, q_width = int64_t(h.num_heads / h.num_kv_heads) * h.head_dim;
  std::vector<int64_t> q_rows, kv_rows;
  for (int t = lo; t < hi; ++t) {
    for (int64_t j = 0; j < q_width; ++j) q_rows.push_back(order[t] * q_width + j);
    for (int64_t j = 0; j < kv_width; ++j) kv_rows.push_back(order[t] * kv_width + j);
  }
  at::NoGradGuard no_grad;
  const at::Tensor q_idx = at::tensor(q_rows, at::kLong), kv_idx = at::tensor(kv_rows, at::kLong);
  const int base = layer * kNumDecoderLinears;
  const std::tuple<int, int, const at::Tensor*> parts[] = {
      {base + int(DecoderLinear::kQ), 0, &q_idx},
      {base + int(DecoderLinear::kK), 0, &kv_idx},
      {base + int(DecoderLinear::kV), 0, &kv_idx},
      {base + int(DecoderLinear::kO), 1, &q_idx}};
  for (const auto& [i, dim, idx] : parts) {
    at::Tensor& w = linears_[i].linear->weight;
    const at::Tensor d_idx = idx->to(w.device());
    if (to > from) {
      w.index_fill_(dim, d_idx, 0.0);
    } else {
      w.index_copy_(dim, d_idx, dense_[i].index_select(dim, d_idx));
    }
    timing_.linears_changed += 1;
    timing_.weights_written += d_idx.numel() * w.size(1 - dim);
  }
  applied_cut_[layer].kv_groups = to;
}

absl::Status CandidateEvaluator::ApplyStructured(absl::Span<const double> linear_ratios) {
  ASSIGN_OR_RETURN(std::vector<StructuredCut> cuts, StructuredCuts(linear_ratios));
  const auto t0 = Clock::now();
  timing_ = EvalTiming{};
  RETURN_IF_ERROR(model::TorchGuarded("applying structured masks", [&]() -> absl::Status {
    for (int l = 0; l < int(cuts.size()); ++l) {
      MoveChannels(l, cuts[l].channels);
      MoveGroups(l, cuts[l].kv_groups);
    }
    return absl::OkStatus();
  }));
  timing_.apply_seconds = Seconds(t0);
  return absl::OkStatus();
}

absl::StatusOr<double> CandidateEvaluator::StructuredOmega(
    absl::Span<const double> linear_ratios) const {
  ASSIGN_OR_RETURN(std::vector<StructuredCut> cuts, StructuredCuts(linear_ratios));
  std::vector<double> kept(num_units_, 0.0), dense(num_units_, 0.0);
  for (int l = 0; l < int(cuts.size()); ++l) {
    const int u = unit_of_linear_[l * kNumDecoderLinears];
    const double d = sbank_->layer(l).dense_mass;
    kept[u] += d - sbank_->RemovedSquaredMass(l, cuts[l]);
    dense[u] += d;
  }
  return WeightedOmega(kept, dense, unit_params_);
}

}  // namespace prunesvc::prune

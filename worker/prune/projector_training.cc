#include "worker/prune/projector_training.h"

#include <ATen/core/grad_mode.h>
#include <torch/optim/adam.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/prng.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/model/torch_guard.h"

namespace prunesvc::prune {
namespace {

// The projector tensors in a fixed order (undefined biases skipped).
std::vector<at::Tensor> ProjectorParams(model::LlavaModel& m) {
  std::vector<at::Tensor> p;
  for (model::Linear* l : {&m.projector_linear_1(), &m.projector_linear_2()}) {
    p.push_back(l->weight);
    if (l->bias.defined()) p.push_back(l->bias);
  }
  return p;
}
std::vector<at::Tensor> ProjectorParams(const ProjectorWeights& w) {
  std::vector<at::Tensor> p = {w.linear_1_weight};
  if (w.linear_1_bias.defined()) p.push_back(w.linear_1_bias);
  p.push_back(w.linear_2_weight);
  if (w.linear_2_bias.defined()) p.push_back(w.linear_2_bias);
  return p;
}

// Σ over samples [start, end) of each sample's mean answer CE, through the model's current
// projector (grad flows to it when grad mode is on and it requires grad).
absl::StatusOr<at::Tensor> BatchLossSum(CandidateEvaluator& ev, size_t start, size_t end,
                                        bool grad) {
  model::LlavaModel& m = ev.model();
  const auto& samples = ev.scoring_samples();
  const auto& vision = ev.vision_features();
  std::vector<at::Tensor> vis;
  for (size_t i = start; i < end; ++i) {
    if (vision[i].defined()) vis.push_back(vision[i]);
  }
  at::Tensor proj;
  if (!vis.empty()) {
    ASSIGN_OR_RETURN(proj, m.Project(at::cat(vis, 0)));
  }
  std::vector<model::SequenceInput> batch;
  int64_t off = 0;
  for (size_t i = start; i < end; ++i) {
    const model::ScoringSample& s = samples[i];
    model::SequenceInput in;
    in.token_ids.assign(s.token_ids.begin(), s.token_ids.begin() + s.answer_end - 1);
    if (vision[i].defined()) {
      const int64_t c = vision[i].size(0);
      in.image_features = proj.narrow(0, off, c);
      off += c;
    }
    for (int p = s.answer_begin - 1; p < s.answer_end - 1; ++p) in.logit_positions.push_back(p);
    batch.push_back(std::move(in));
  }
  ASSIGN_OR_RETURN(std::vector<at::Tensor> logits, m.Forward(batch, {.enable_grad = grad}));
  at::Tensor total;
  for (size_t i = start; i < end; ++i) {
    const model::ScoringSample& s = samples[i];
    at::Tensor targets = at::tensor(std::vector<int64_t>(s.token_ids.begin() + s.answer_begin,
                                                         s.token_ids.begin() + s.answer_end),
                                    at::kLong)
                             .to(m.device());
    at::Tensor logp = at::log_softmax(logits[i - start], -1);
    at::Tensor ce = -logp.gather(1, targets.view({-1, 1})).mean();
    total = total.defined() ? total + ce : ce;
  }
  return total;
}

absl::Status CheckOptions(const ProjectorTrainingOptions& o) {
  if (o.steps < 0) return absl::InvalidArgumentError("projector training: steps must be >= 0");
  if (!(o.learning_rate >= 0) || !std::isfinite(o.learning_rate)) {
    return absl::InvalidArgumentError("projector training: learning rate must be finite, >= 0");
  }
  if (!(o.mu >= 0) || !std::isfinite(o.mu)) {
    return absl::InvalidArgumentError("projector training: mu must be finite and >= 0");
  }
  if (o.batch_size < 1) {
    return absl::InvalidArgumentError("projector training: batch size must be at least 1");
  }
  return absl::OkStatus();
}

// Mean over `top_k` of L̂ with the model's current projector (no grad).
absl::StatusOr<double> MeanLoss(CandidateEvaluator& ev,
                                const std::vector<std::vector<double>>& top_k, int batch_size) {
  double sum = 0;
  for (const auto& ratios : top_k) {
    RETURN_IF_ERROR(ev.ApplyRatios(ratios));
    ASSIGN_OR_RETURN(double l, AnswerLoss(ev, ev.projector(), batch_size));
    sum += l;
  }
  return sum / double(top_k.size());
}

}  // namespace

absl::StatusOr<double> AnswerLoss(CandidateEvaluator& ev, const ProjectorWeights& projector,
                                  int batch_size) {
  if (batch_size < 1) return absl::InvalidArgumentError("batch size must be at least 1");
  model::LlavaModel& m = ev.model();
  // Swap `projector` in for the duration (a copy of the current one restores it).
  ASSIGN_OR_RETURN(ProjectorWeights saved, CopyProjector(m));
  RETURN_IF_ERROR(LoadProjector(projector, m));
  const size_t n = ev.scoring_samples().size();
  auto result = model::TorchGuarded("answer loss", [&]() -> absl::StatusOr<double> {
    at::NoGradGuard no_grad;
    double sum = 0;
    for (size_t start = 0; start < n; start += batch_size) {
      ASSIGN_OR_RETURN(at::Tensor s,
                       BatchLossSum(ev, start, std::min(n, start + batch_size), false));
      sum += s.item<double>();
    }
    return sum / double(n);
  });
  RETURN_IF_ERROR(LoadProjector(saved, m));
  return result;
}

absl::StatusOr<ProjectorTrainingResult> TrainProjector(
    CandidateEvaluator& ev, const std::vector<std::vector<double>>& top_k,
    const ProjectorWeights& theta0, const ProjectorTrainingOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  if (top_k.empty()) return absl::InvalidArgumentError("projector training: no policies");
  model::LlavaModel& m = ev.model();
  {
    // θ₀ must fit the projector (LoadProjector checks every shape).
    ASSIGN_OR_RETURN(ProjectorWeights current, CopyProjector(m));
    RETURN_IF_ERROR(LoadProjector(theta0, m));
    RETURN_IF_ERROR(LoadProjector(current, m));
  }
  ProjectorTrainingResult result;
  ASSIGN_OR_RETURN(result.loss_before, MeanLoss(ev, top_k, options.batch_size));
  const ProjectorWeights start = ev.projector();
  const size_t n = ev.scoring_samples().size();
  const size_t k = top_k.size();

  std::vector<at::Tensor> params = ProjectorParams(m);
  const std::vector<at::Tensor> anchors = ProjectorParams(theta0);
  auto status = model::TorchGuarded("projector training", [&]() -> absl::Status {
    for (at::Tensor& p : params) p.set_requires_grad(true);
    torch::optim::Adam adam(params, torch::optim::AdamOptions(options.learning_rate));
    Prng prng(options.seed);
    std::vector<size_t> order(k);
    std::iota(order.begin(), order.end(), 0);
    for (int step = 0; step < options.steps; ++step) {
      std::vector<size_t> chosen;
      if (options.schedule == ProjectorSchedule::kAllPolicies) {
        chosen = order;
      } else {
        if (step % k == 0) prng.Shuffle(order);  // a fresh visiting order every cycle
        chosen = {order[step % k]};
      }
      adam.zero_grad();
      double step_loss = 0;
      // d/dθ of the mean over the chosen policies of the mean over samples.
      const double scale = 1.0 / (double(n) * double(chosen.size()));
      for (size_t pi : chosen) {
        RETURN_IF_ERROR(ev.ApplyRatios(top_k[pi]));
        for (size_t s0 = 0; s0 < n; s0 += options.batch_size) {
          ASSIGN_OR_RETURN(at::Tensor sum,
                           BatchLossSum(ev, s0, std::min(n, s0 + options.batch_size), true));
          const double v = sum.item<double>();
          if (!std::isfinite(v)) {
            return absl::InternalError(
                absl::StrCat("projector training: non-finite loss at step ", step));
          }
          step_loss += v * scale;
          (sum * scale).backward();
        }
      }
      at::Tensor penalty = at::zeros({}, params[0].options());
      for (size_t i = 0; i < params.size(); ++i) {
        penalty = penalty + (params[i] - anchors[i]).square().sum();
      }
      penalty = penalty * options.mu;
      if (options.mu > 0) penalty.backward();
      result.step_losses.push_back(step_loss);
      result.step_penalties.push_back(penalty.item<double>());
      adam.step();
    }
    return absl::OkStatus();
  });
  // Whatever happened, the projector stops requiring grad.
  for (at::Tensor& p : params) {
    p.set_requires_grad(false);
    p.mutable_grad() = at::Tensor();
  }
  if (!status.ok()) {
    (void)LoadProjector(start, m);
    return status;
  }
  ASSIGN_OR_RETURN(result.projector, CopyProjector(m));
  RETURN_IF_ERROR(LoadProjector(start, m));  // the evaluator stays at its version
  double after = 0;
  for (const auto& ratios : top_k) {
    RETURN_IF_ERROR(ev.ApplyRatios(ratios));
    ASSIGN_OR_RETURN(double l, AnswerLoss(ev, result.projector, options.batch_size));
    after += l;
  }
  result.loss_after = after / double(k);
  spdlog::debug("projector training: {} steps, loss {:.5f} -> {:.5f}", options.steps,
                result.loss_before, result.loss_after);
  return result;
}

}  // namespace prunesvc::prune

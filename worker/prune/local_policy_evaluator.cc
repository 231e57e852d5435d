#include "worker/prune/local_policy_evaluator.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/prng.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace prunesvc::prune {

absl::StatusOr<std::vector<int>> UnitOfLinear(const search::PruningUnits& units, int num_layers) {
  std::vector<int> out(size_t(num_layers) * kNumDecoderLinears, -1);
  for (size_t u = 0; u < units.members.size(); ++u) {
    for (const search::UnitMember& m : units.members[u]) {
      const int64_t i = int64_t(m.layer) * kNumDecoderLinears + int(m.linear);
      if (m.layer < 0 || m.layer >= num_layers || out[i] != -1) {
        return absl::InvalidArgumentError(
            absl::StrCat("unit ", units.names[u], ": member layer ", m.layer, " linear ",
                         int(m.linear), " is outside the model or already in another unit"));
      }
      out[i] = int(u);
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      return absl::InvalidArgumentError(absl::StrCat("decoder linear ", i, " (layer ",
                                                     i / kNumDecoderLinears, ") is in no unit"));
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<LocalPolicyEvaluator>> LocalPolicyEvaluator::Create(
    CandidateEvaluator* evaluator, const search::PolicySpace* space,
    const ProjectorTrainingOptions& training) {
  if (evaluator == nullptr || space == nullptr) {
    return absl::InvalidArgumentError("LocalPolicyEvaluator: null evaluator or policy space");
  }
  if (evaluator->projector_version() != 0) {
    return absl::FailedPreconditionError(
        "LocalPolicyEvaluator: the evaluator must start at projector version 0");
  }
  const int layers = evaluator->model().config().text.num_hidden_layers;
  ASSIGN_OR_RETURN(std::vector<int> units, UnitOfLinear(space->units(), layers));
  if (units != evaluator->unit_of_linear()) {
    return absl::InvalidArgumentError(
        "LocalPolicyEvaluator: the evaluator's Ω units differ from the policy space's units");
  }
  auto out =
      std::unique_ptr<LocalPolicyEvaluator>(new LocalPolicyEvaluator(evaluator, space, training));
  out->unit_of_linear_ = std::move(units);
  out->projectors_[0] = evaluator->projector();
  return out;
}

absl::StatusOr<std::vector<double>> LocalPolicyEvaluator::LinearRatios(
    std::span<const double> unit_ratios) const {
  if (unit_ratios.size() != space_->units().size()) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", space_->units().size(),
                                                   " unit ratios, got ", unit_ratios.size()));
  }
  std::vector<double> out(unit_of_linear_.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = unit_ratios[unit_of_linear_[i]];
  return out;
}

const ProjectorWeights* LocalPolicyEvaluator::projector(int version) const {
  auto it = projectors_.find(version);
  return it == projectors_.end() ? nullptr : &it->second;
}

absl::Status LocalPolicyEvaluator::SwitchTo(int version) {
  if (evaluator_->projector_version() == version) return absl::OkStatus();
  const ProjectorWeights* w = projector(version);
  if (w == nullptr) {
    return absl::NotFoundError(absl::StrCat("projector version ", version, " is unknown"));
  }
  return evaluator_->SetProjector(version, *w);
}

absl::StatusOr<std::vector<search::EvalResult>> LocalPolicyEvaluator::Evaluate(
    const std::vector<search::Policy>& policies, int projector_version) {
  RETURN_IF_ERROR(SwitchTo(projector_version));
  std::vector<search::EvalResult> out;
  out.reserve(policies.size());
  for (const search::Policy& p : policies) {
    ASSIGN_OR_RETURN(std::vector<double> unit_ratios, space_->UnitRatios(p));
    ASSIGN_OR_RETURN(std::vector<double> ratios, LinearRatios(unit_ratios));
    ASSIGN_OR_RETURN(CandidateResult r, evaluator_->Evaluate(ratios));
    ++evaluations_;
    if (!std::isfinite(r.loss) || !std::isfinite(r.omega)) {
      return absl::InternalError(
          absl::StrCat("non-finite loss ", r.loss, " for policy ", space_->Hash(p).value_or("?")));
    }
    out.push_back({.loss = r.loss,
                   .accuracy = r.accuracy,
                   .omega = r.omega,
                   .sample_losses = std::move(r.sample_losses)});
  }
  return out;
}

absl::StatusOr<CandidateResult> LocalPolicyEvaluator::EvaluateUnitRatios(
    std::span<const double> unit_ratios) {
  ASSIGN_OR_RETURN(std::vector<double> ratios, LinearRatios(unit_ratios));
  ++evaluations_;
  return evaluator_->Evaluate(ratios);
}

absl::StatusOr<search::ProjectorUpdate> LocalPolicyEvaluator::TrainProjector(
    const std::vector<search::Policy>& top_k, int from_version) {
  RETURN_IF_ERROR(SwitchTo(from_version));
  std::vector<std::vector<double>> ratios;
  for (const search::Policy& p : top_k) {
    ASSIGN_OR_RETURN(std::vector<double> unit_ratios, space_->UnitRatios(p));
    ASSIGN_OR_RETURN(ratios.emplace_back(), LinearRatios(unit_ratios));
  }
  ProjectorTrainingOptions opt = training_;
  opt.seed = Mix64(training_.seed + uint64_t(from_version));
  ASSIGN_OR_RETURN(ProjectorTrainingResult trained,
                   prune::TrainProjector(*evaluator_, ratios, projectors_.at(0), opt));
  const int version = latest_version() + 1;
  projectors_[version] = trained.projector;
  RETURN_IF_ERROR(evaluator_->SetProjector(version, trained.projector));
  spdlog::info("projector v{} (from v{}, top-{}): loss {:.4f} -> {:.4f}", version, from_version,
               top_k.size(), trained.loss_before, trained.loss_after);
  return search::ProjectorUpdate{
      .version = version, .loss_before = trained.loss_before, .loss_after = trained.loss_after};
}

}  // namespace prunesvc::prune

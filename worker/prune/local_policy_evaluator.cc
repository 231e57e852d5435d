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
  return EvaluateRaced(policies, projector_version, {});
}

absl::StatusOr<std::vector<search::EvalResult>> LocalPolicyEvaluator::EvaluateRaced(
    const std::vector<search::Policy>& policies, int projector_version,
    const search::RaceLimit& race) {
  ASSIGN_OR_RETURN(std::vector<CandidateResult> results,
                   EvaluateCandidates(policies, projector_version, race));
  std::vector<search::EvalResult> out;
  out.reserve(results.size());
  for (CandidateResult& r : results) out.push_back(ToEvalResult(std::move(r)));
  return out;
}

absl::StatusOr<std::vector<CandidateResult>> LocalPolicyEvaluator::EvaluateCandidates(
    const std::vector<search::Policy>& policies, int projector_version,
    const search::RaceLimit& race, const std::function<absl::Status()>& poll) {
  RETURN_IF_ERROR(SwitchTo(projector_version));
  std::vector<std::vector<double>> ratios;
  ratios.reserve(policies.size());
  for (const search::Policy& p : policies) {
    ASSIGN_OR_RETURN(std::vector<double> unit_ratios, space_->UnitRatios(p));
    ASSIGN_OR_RETURN(ratios.emplace_back(), LinearRatios(unit_ratios));
  }
  ASSIGN_OR_RETURN(std::vector<CandidateResult> results,
                   evaluator_->EvaluateMany(ratios, race, poll));
  evaluations_ += int64_t(policies.size());
  for (size_t i = 0; i < results.size(); ++i) {
    if (!std::isfinite(results[i].loss) || !std::isfinite(results[i].omega)) {
      return absl::InternalError(absl::StrCat("non-finite loss ", results[i].loss, " for policy ",
                                              space_->Hash(policies[i]).value_or("?")));
    }
  }
  return results;
}

absl::StatusOr<CandidateResult> LocalPolicyEvaluator::EvaluateSlice(const search::Policy& policy,
                                                                    int projector_version,
                                                                    SampleRange range) {
  RETURN_IF_ERROR(SwitchTo(projector_version));
  ASSIGN_OR_RETURN(std::vector<double> unit_ratios, space_->UnitRatios(policy));
  ASSIGN_OR_RETURN(std::vector<double> ratios, LinearRatios(unit_ratios));
  ASSIGN_OR_RETURN(CandidateResult r, evaluator_->Evaluate(ratios, range));
  ++evaluations_;
  if (!std::isfinite(r.loss) || !std::isfinite(r.omega)) {
    return absl::InternalError(absl::StrCat("non-finite loss ", r.loss, " for policy ",
                                            space_->Hash(policy).value_or("?")));
  }
  return r;
}

absl::StatusOr<CandidateResult> LocalPolicyEvaluator::EvaluateUnitRatios(
    std::span<const double> unit_ratios) {
  ASSIGN_OR_RETURN(std::vector<double> ratios, LinearRatios(unit_ratios));
  ++evaluations_;
  return evaluator_->Evaluate(ratios);
}

absl::StatusOr<search::ProjectorUpdate> LocalPolicyEvaluator::TrainProjector(
    const std::vector<search::Policy>& top_k, int from_version) {
  return TrainProjectorAs(top_k, from_version, latest_version() + 1);
}

namespace {

bool SameTensor(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  return !a.defined() || (a.sizes() == b.sizes() && a.cpu().equal(b.cpu()));
}

}  // namespace

absl::Status LocalPolicyEvaluator::RegisterProjector(int version, const ProjectorWeights& weights) {
  const ProjectorWeights& v0 = projectors_.at(0);
  const std::pair<const at::Tensor*, const at::Tensor*> pairs[] = {
      {&weights.linear_1_weight, &v0.linear_1_weight},
      {&weights.linear_1_bias, &v0.linear_1_bias},
      {&weights.linear_2_weight, &v0.linear_2_weight},
      {&weights.linear_2_bias, &v0.linear_2_bias}};
  for (const auto& [w, ref] : pairs) {
    if (w->defined() != ref->defined() || (w->defined() && w->sizes() != ref->sizes())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "projector version ", version, ": tensor shapes differ from the model's projector"));
    }
  }
  if (const ProjectorWeights* known = projector(version); known != nullptr) {
    for (const auto& [a, b] : {std::pair{&weights.linear_1_weight, &known->linear_1_weight},
                               std::pair{&weights.linear_1_bias, &known->linear_1_bias},
                               std::pair{&weights.linear_2_weight, &known->linear_2_weight},
                               std::pair{&weights.linear_2_bias, &known->linear_2_bias}}) {
      if (!SameTensor(*a, *b)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "projector version ", version, " is registered already with other weights"));
      }
    }
    return absl::OkStatus();
  }
  if (version <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("projector version ", version, ": trained versions are ≥ 1"));
  }
  ProjectorWeights copy;
  const at::Device device = v0.linear_1_weight.device();
  for (const auto& [dst, src] : {std::pair{&copy.linear_1_weight, &weights.linear_1_weight},
                                 std::pair{&copy.linear_1_bias, &weights.linear_1_bias},
                                 std::pair{&copy.linear_2_weight, &weights.linear_2_weight},
                                 std::pair{&copy.linear_2_bias, &weights.linear_2_bias}}) {
    if (src->defined()) *dst = src->to(device, at::kFloat).clone();
  }
  projectors_[version] = std::move(copy);
  return absl::OkStatus();
}

absl::StatusOr<search::ProjectorUpdate> LocalPolicyEvaluator::TrainProjectorAs(
    const std::vector<search::Policy>& top_k, int from_version, int new_version) {
  if (new_version <= latest_version()) {
    return absl::InvalidArgumentError(absl::StrCat("new projector version ", new_version,
                                                   " must exceed the latest registered (",
                                                   latest_version(), ")"));
  }
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
  const int version = new_version;
  projectors_[version] = trained.projector;
  RETURN_IF_ERROR(evaluator_->SetProjector(version, trained.projector));
  spdlog::info("projector v{} (from v{}, top-{}): loss {:.4f} -> {:.4f}", version, from_version,
               top_k.size(), trained.loss_before, trained.loss_after);
  return search::ProjectorUpdate{
      .version = version, .loss_before = trained.loss_before, .loss_after = trained.loss_after};
}

}  // namespace prunesvc::prune

#include "server/evaluation_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "prune/v1/worker.pb.h"

namespace prunesvc::server {
namespace {

int Batches(int num_samples, int batch) {
  if (batch <= 0 || num_samples <= 0) return 1;
  return (num_samples + batch - 1) / batch;
}

}  // namespace

int MaxUsefulChunks(int num_policies, int num_samples, int batch) {
  return std::max(num_policies, 0) * Batches(num_samples, batch);
}

std::vector<EvalChunk> PlanChunks(int num_policies, int num_workers, int num_samples, int batch) {
  std::vector<EvalChunk> chunks;
  if (num_policies <= 0) return chunks;
  const int k = std::clamp(num_workers, 1, MaxUsefulChunks(num_policies, num_samples, batch));
  if (k <= num_policies) {
    for (int c = 0; c < k; ++c) {
      chunks.push_back({.policy_begin = int(int64_t(num_policies) * c / k),
                        .policy_end = int(int64_t(num_policies) * (c + 1) / k)});
    }
    return chunks;
  }
  const int nb = Batches(num_samples, batch);
  for (int p = 0; p < num_policies; ++p) {
    const int pieces = std::min(nb, k / num_policies + (p < k % num_policies ? 1 : 0));
    if (pieces == 1) {
      chunks.push_back({.policy_begin = p, .policy_end = p + 1});
      continue;
    }
    for (int j = 0; j < pieces; ++j) {
      const int b0 = nb * j / pieces, b1 = nb * (j + 1) / pieces;
      chunks.push_back({.policy_begin = p,
                        .policy_end = p + 1,
                        .sample_begin = b0 * batch,
                        .sample_end = std::min(num_samples, b1 * batch)});
    }
  }
  return chunks;
}

absl::StatusOr<search::EvalResult> CombineSlices(absl::Span<const SliceResult> slices,
                                                 int num_samples) {
  if (slices.empty()) return absl::InternalError("no slices to combine");
  if (slices.size() == 1) return slices[0].result;
  search::EvalResult out;
  out.omega = slices[0].result.omega;
  int correct = 0, multiple_choice = 0;
  for (const SliceResult& s : slices) {
    out.sample_losses.insert(out.sample_losses.end(), s.result.sample_losses.begin(),
                             s.result.sample_losses.end());
    correct += s.num_correct;
    multiple_choice += s.num_multiple_choice;
  }
  if (int(out.sample_losses.size()) != num_samples || num_samples == 0) {
    return absl::InternalError(absl::StrCat("the slices hold ", out.sample_losses.size(),
                                            " sample losses for ", num_samples, " samples"));
  }
  // The order and association of model::Summarize's sum, so the mean is bitwise the same.
  double sum = 0;
  for (double l : out.sample_losses) sum += l;
  out.loss = sum / num_samples;
  if (multiple_choice > 0) out.accuracy = double(correct) / multiple_choice;
  return out;
}

search::EvalResult RacedOutResult(search::EvalResult whole, int scored, int num_samples) {
  whole.sample_losses.resize(size_t(scored));
  double sum = 0;
  for (double x : whole.sample_losses) sum += x;
  whole.loss = sum / num_samples;
  whole.accuracy = 0;
  whole.raced_out = true;
  whole.samples_scored = scored;
  return whole;
}

std::optional<search::EvalResult> RaceAsWorker(search::EvalResult r, int num_samples, int batch,
                                               const search::RaceLimit& race, size_t i) {
  if (race.active()) {
    const std::optional<int> k =
        search::ReplayRacePrefix(r.sample_losses, num_samples, batch, race, i, r.omega);
    if (k.has_value()) return RacedOutResult(std::move(r), *k, num_samples);
  }
  if (int(r.sample_losses.size()) != num_samples) return std::nullopt;  // the rest is unknown
  return r;
}

search::EvalResult EvalResultFromProto(const ::prune::v1::PolicyEvaluation& e) {
  return {.loss = e.loss(),
          .accuracy = e.accuracy(),
          .omega = e.omega(),
          .sample_losses = {e.sample_losses().begin(), e.sample_losses().end()},
          .raced_out = e.raced_out(),
          .samples_scored = e.samples_scored()};
}

std::string CachedEvaluationValue(const search::EvalResult& r) {
  ::prune::v1::PolicyEvaluation e;
  e.set_loss(r.loss);
  e.set_accuracy(r.accuracy);
  e.set_omega(r.omega);
  e.mutable_sample_losses()->Assign(r.sample_losses.begin(), r.sample_losses.end());
  e.set_raced_out(r.raced_out);
  e.set_samples_scored(r.samples_scored);
  return e.SerializeAsString();
}

bool CachedEvaluationStorable(const search::EvalResult& r, int num_samples) {
  return r.raced_out ? r.samples_scored > 0 && r.samples_scored < num_samples &&
                           int(r.sample_losses.size()) == r.samples_scored
                     : int(r.sample_losses.size()) == num_samples;
}

std::optional<search::EvalResult> CachedEvaluationResult(const std::string& value, int num_samples,
                                                         int batch, const search::RaceLimit& race,
                                                         size_t i) {
  ::prune::v1::PolicyEvaluation e;
  if (!e.ParseFromString(value)) return std::nullopt;
  search::EvalResult r = EvalResultFromProto(e);
  if (!CachedEvaluationStorable(r, num_samples)) return std::nullopt;
  return RaceAsWorker(std::move(r), num_samples, batch, race, i);
}

}  // namespace prunesvc::server

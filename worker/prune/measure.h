// Measurements of a whole model in process: the loss and accuracy of a sample set (scored batch
// by batch, images decoded and dropped per batch) and forward latency (median of repeated full
// forwards, or two models alternated so load changes on a shared machine hit both alike).
//
// Not thread-safe with respect to the model (libtorch's intra-op threads do the parallel work).
#ifndef PRUNESVC_WORKER_PRUNE_MEASURE_H_
#define PRUNESVC_WORKER_PRUNE_MEASURE_H_

#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/model/llava_bundle.h"
#include "worker/model/samples.h"
#include "worker/model/scoring.h"

namespace prunesvc::prune {

struct TypeMetrics {
  std::optional<double> accuracy;  // nullopt when the group has no multiple-choice samples
  double loss = 0;
  int num_samples = 0;
};
struct ModelMetrics : TypeMetrics {
  // Per question type (samples with a non-empty `type` only), by type.
  std::map<std::string, TypeMetrics> per_type;
};
// {accuracy (or null), loss, num_samples} and, when some sample has a type, per_type: {type:
// {accuracy, loss, num_samples}}.
nlohmann::json MetricsJson(const ModelMetrics& m);

absl::StatusOr<ModelMetrics> ScoreSampleSet(const model::LlavaBundle& bundle,
                                            const model::SampleSet& set, int batch_size);

// Median wall time (ms) of `repeats` full forwards (vision tower + projector + decoder scoring)
// of the same batch, after one untimed warm-up.
absl::StatusOr<double> MedianLatencyMs(const model::LlavaModel& m,
                                       std::vector<model::PreparedSample> batch, int repeats);

// MedianLatencyMs of two models on the same batch, their forwards alternated (a, b, a, b, …; the
// first pair untimed).
absl::StatusOr<std::pair<double, double>> InterleavedLatencyMs(
    const model::LlavaModel& a, const model::LlavaModel& b,
    std::vector<model::PreparedSample> batch, int repeats);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_MEASURE_H_

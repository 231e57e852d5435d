#include "worker/prune/measure.h"

#include <algorithm>
#include <chrono>

#include "absl/types/span.h"
#include "common/status_macros.h"

namespace prunesvc::prune {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One full forward of the batch; its wall time in ms.
absl::StatusOr<double> TimedForwardMs(const model::LlavaModel& m,
                                      std::vector<model::PreparedSample>& batch) {
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(model::AttachImageFeatures(m, absl::MakeSpan(batch), int(batch.size())));
  std::vector<model::ScoringSample> scoring;
  for (const auto& p : batch) scoring.push_back(p.scoring);
  RETURN_IF_ERROR(model::ScoreSamples(m, scoring, {.batch_size = int(batch.size())}).status());
  return SecondsSince(t0) * 1e3;
}

json TypeJson(const TypeMetrics& m) {
  return {{"accuracy", m.accuracy ? json(*m.accuracy) : json(nullptr)},
          {"loss", m.loss},
          {"num_samples", m.num_samples}};
}

}  // namespace

absl::StatusOr<ModelMetrics> ScoreSampleSet(const model::LlavaBundle& bundle,
                                            const model::SampleSet& set, int batch_size) {
  const model::LlavaModel& m = *bundle.model;
  const int total = int(set.samples.size());
  struct Sums {
    double loss = 0;
    int n = 0, mc = 0, correct = 0;
    void Add(const model::SampleScore& s) {
      loss += s.loss;
      ++n;
      if (s.multiple_choice) {
        ++mc;
        correct += s.correct ? 1 : 0;
      }
    }
    TypeMetrics Metrics() const {
      TypeMetrics t;
      t.num_samples = n;
      t.loss = n > 0 ? loss / n : 0;
      if (mc > 0) t.accuracy = double(correct) / mc;
      return t;
    }
  };
  Sums all;
  std::map<std::string, Sums> types;
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
    for (size_t k = 0; k < scores.size(); ++k) {
      all.Add(scores[k]);
      const std::string& type = set.samples[start + k].type;
      if (!type.empty()) types[type].Add(scores[k]);
    }
  }
  ModelMetrics out;
  static_cast<TypeMetrics&>(out) = all.Metrics();
  out.num_samples = total;
  for (const auto& [type, sums] : types) out.per_type[type] = sums.Metrics();
  return out;
}

json MetricsJson(const ModelMetrics& m) {
  json j = TypeJson(m);
  if (!m.per_type.empty()) {
    json types = json::object();
    for (const auto& [type, t] : m.per_type) types[type] = TypeJson(t);
    j["per_type"] = std::move(types);
  }
  return j;
}

absl::StatusOr<double> MedianLatencyMs(const model::LlavaModel& m,
                                       std::vector<model::PreparedSample> batch, int repeats) {
  std::vector<double> times;
  for (int r = 0; r <= repeats; ++r) {
    ASSIGN_OR_RETURN(double ms, TimedForwardMs(m, batch));
    if (r > 0) times.push_back(ms);
  }
  return Median(std::move(times));
}

absl::StatusOr<std::pair<double, double>> InterleavedLatencyMs(
    const model::LlavaModel& a, const model::LlavaModel& b,
    std::vector<model::PreparedSample> batch, int repeats) {
  std::vector<double> ta, tb;
  for (int r = 0; r <= repeats; ++r) {
    ASSIGN_OR_RETURN(double x, TimedForwardMs(a, batch));
    ASSIGN_OR_RETURN(double y, TimedForwardMs(b, batch));
    if (r > 0) {
      ta.push_back(x);
      tb.push_back(y);
    }
  }
  return std::make_pair(Median(std::move(ta)), Median(std::move(tb)));
}

}  // namespace prunesvc::prune

// magnitude-curve: the "uniform magnitude pruning" reference curve of models/README.md (issue 4).
// For each sparsity s, every decoder linear (q k v o gate up down of every LLaMA layer) keeps its
// largest-|w| (1 − s) fraction of weights (exactly ⌊s·numel⌋ zeroed per matrix; ties by index);
// the vision tower, projector, embeddings and lm_head stay dense. The pruned model is scored on a
// sample set with the runtime's own path (LoadLlavaBundle → PrepareSample → ScoreSamples), so the
// numbers are what llava-eval would print for the same weights.
// Output: one JSON object on stdout {"model", "samples", "curve": [{sparsity, accuracy,
// mean_loss, per_type}]}; progress on stderr.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/samples.h"
#include "worker/model/scoring.h"

ABSL_FLAG(std::string, model, "", "Model directory (HF LLaVA layout). Required.");
ABSL_FLAG(std::string, samples, "", "Sample set (directory or tar). Required.");
ABSL_FLAG(std::string, sparsities, "0,0.3,0.5,0.7,0.9", "Comma-separated sparsities in [0, 1).");
ABSL_FLAG(int, threads, 2, "libtorch intra-op threads.");
ABSL_FLAG(int, batch, 64, "Scoring batch size.");

namespace {

using prunesvc::model::LlavaBundle;

int Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  const std::string samples_path = absl::GetFlag(FLAGS_samples);
  if (model_dir.empty() || samples_path.empty()) {
    spdlog::critical("--model and --samples are required");
    return 2;
  }
  std::vector<double> sparsities;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_sparsities), ',')) {
    double s = 0;
    if (!absl::SimpleAtod(part, &s) || s < 0 || s >= 1) {
      spdlog::critical("--sparsities: \"{}\" is not a number in [0, 1)", std::string(part));
      return 2;
    }
    sparsities.push_back(s);
  }
  at::set_num_threads(std::max(1, absl::GetFlag(FLAGS_threads)));
  auto bundle = prunesvc::model::LoadLlavaBundle(model_dir);
  if (!bundle.ok()) {
    spdlog::critical("{}", bundle.status().ToString());
    return 1;
  }
  auto set = prunesvc::model::LoadSampleSet(samples_path);
  if (!set.ok()) {
    spdlog::critical("{}", set.status().ToString());
    return 1;
  }
  std::vector<prunesvc::model::PreparedSample> prepared;
  for (const auto& s : set->samples) {
    auto p = prunesvc::model::PrepareSample(**bundle, s);
    if (!p.ok()) {
      spdlog::critical("{}", p.status().ToString());
      return 1;
    }
    prepared.push_back(std::move(*p));
  }
  // Vision tower and projector are not pruned: their features are computed once.
  if (auto st = prunesvc::model::AttachImageFeatures(*(*bundle)->model, absl::MakeSpan(prepared),
                                                     absl::GetFlag(FLAGS_batch));
      !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  std::vector<prunesvc::model::ScoringSample> scoring;
  for (const auto& p : prepared) scoring.push_back(p.scoring);

  auto linears = (*bundle)->model->DecoderLinears();
  std::vector<at::Tensor> dense;
  for (const auto& l : linears) dense.push_back(l.linear->weight.clone());

  nlohmann::json curve = nlohmann::json::array();
  for (double s : sparsities) {
    try {
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < linears.size(); ++i) {
        at::Tensor w = dense[i].clone();
        const int64_t k = int64_t(s * double(w.numel()));
        if (k > 0) {
          at::Tensor order = std::get<1>(at::sort(w.abs().flatten(), /*stable=*/true, 0, false));
          w.view({-1}).index_fill_(0, order.narrow(0, 0, k), 0.0);
        }
        linears[i].linear->weight = w;
      }
    } catch (const std::exception& e) {
      spdlog::critical("pruning at {}: {}", s, e.what());
      return 1;
    }
    prunesvc::model::ScoreOptions so;
    so.batch_size = absl::GetFlag(FLAGS_batch);
    auto scores = prunesvc::model::ScoreSamples(*(*bundle)->model, scoring, so);
    if (!scores.ok()) {
      spdlog::critical("{}", scores.status().ToString());
      return 1;
    }
    const auto sum = prunesvc::model::Summarize(*scores);
    std::map<std::string, std::pair<int, int>> per_type;  // correct, total
    for (size_t i = 0; i < prepared.size(); ++i) {
      auto& t = per_type[prepared[i].type];
      t.first += (*scores)[i].correct ? 1 : 0;
      ++t.second;
    }
    nlohmann::json types = nlohmann::json::object();
    for (const auto& [name, t] : per_type) types[name] = double(t.first) / t.second;
    curve.push_back({{"sparsity", s},
                     {"accuracy", sum.accuracy},
                     {"mean_loss", sum.mean_loss},
                     {"per_type", types}});
    spdlog::info("sparsity {:.2f}: accuracy {:.1f} % loss {:.4f}", s, 100 * sum.accuracy,
                 sum.mean_loss);
  }
  nlohmann::json out = {{"model", model_dir},
                        {"samples", samples_path},
                        {"samples_sha256", set->sha256},
                        {"num_samples", int(prepared.size())},
                        {"curve", curve}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  prunesvc::ParseFlags(argc, argv,
                       "magnitude-curve: accuracy of a LLaVA model under uniform per-matrix "
                       "magnitude pruning of its decoder linears.\nUsage: magnitude-curve "
                       "--model=DIR --samples=DIR [--sparsities=0,0.3,0.5,0.7,0.9]");
  prunesvc::InitLogging("magnitude-curve", "info");
  return Run();
}

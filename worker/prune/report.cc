#include "worker/prune/report.h"

// Versions for the report only (header macros); absent in a torch-only build (docs/gpu.md).
#if __has_include(<grpcpp/version_info.h>)
#include <google/protobuf/stubs/common.h>
#include <grpcpp/version_info.h>
#define PRUNESVC_HAVE_GRPC_HEADERS 1
#endif
#include <time.h>
#include <torch/version.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace prunesvc::prune {

using nlohmann::json;

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
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

json NmJson(const JobSpec& spec) {
  return spec.granularity == search::Granularity::kNM ? json(NmPatternName(spec.nm))
                                                      : json(nullptr);
}

json StructuredPolicyJson(const JobSpec& spec, const search::PolicySpace& space,
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

std::optional<std::string> AccuracyWarning(double pruned, std::optional<double> dense,
                                           std::optional<double> chance, const std::string& set) {
  if (chance.has_value() && pruned <= *chance + 0.10) {
    return absl::StrFormat(
        "the pruned model is near chance: accuracy %.3f against %.3f for guessing (1 / options) "
        "on the %s set; it has lost the task at this budget. Try a larger --flops-budget, or "
        "UNSTRUCTURED instead of STRUCTURED",
        pruned, *chance, set);
  }
  if (dense.has_value() && pruned < *dense - 0.10) {
    return absl::StrFormat(
        "the pruned model lost %.1f accuracy points (%.3f against the dense %.3f on the %s set)",
        100 * (*dense - pruned), pruned, *dense, set);
  }
  return std::nullopt;
}

std::string ModelCard(const JobSpec& spec, const std::string& model_dir, const json& report,
                      const json& policy) {
  auto num = [](const json& j) -> std::string {
    return j.is_null() ? "n/a" : absl::StrFormat("%.4f", j.get<double>());
  };
  const json& d = report["dense"];
  const json& p = report["pruned"];
  const bool structured = report["granularity"] == "STRUCTURED";
  // UNIFORM and OWL compute their ratios in closed form: no search ran, no search masks.
  const bool given = report.contains("given_policy");
  const bool searched = !given && (spec.strategy == search::Strategy::kEfficientLlava ||
                                   spec.strategy == search::Strategy::kRandomSearch);
  std::string out;
  absl::StrAppend(&out, "# Pruned LLaVA model (prunesvc)\n\n");
  absl::StrAppend(
      &out, "Pruned from `", model_dir, "` with **", report["strategy"].get<std::string>(), "** (",
      searched
          ? absl::StrCat(report["search"]["mask_method"].get<std::string>(), " search masks, ",
                         report["final_mask_method"].get<std::string>(), " final masks")
          : absl::StrCat("no search; ", report["final_mask_method"].get<std::string>(), " masks"),
      "), ",
      structured ? "STRUCTURED pruning (whole MLP channels and attention KV groups removed) of "
                   "the LLaMA decoder"
      : spec.granularity == search::Granularity::kNM
          ? absl::StrCat(NmPatternName(spec.nm),
                         " (N:M) sparsity in the LLaMA decoder's linear layers")
          : std::string("UNSTRUCTURED sparsity in the LLaMA decoder's linear layers"),
      ", unit = ", report["search"]["unit"].get<std::string>(), ", FLOPs budget ",
      absl::StrFormat("%.4g", spec.flops_budget),
      given ? absl::StrCat(", the per-unit ratios of `",
                           report["given_policy"]["path"].get<std::string>(), "` (--policy)")
            : std::string(),
      ". The vision tower, the projector's shape, embeddings, norms and lm_head are not pruned; "
      "the projector ",
      report["projector"]["trained"].get<bool>() ? "was fine-tuned during the search (its latest "
                                                   "version is included)."
                                                 : "is the original one.",
      "\n\n");
  absl::StrAppend(&out, "| | dense | pruned |\n|---|---|---|\n");
  absl::StrAppend(&out, "| accuracy (", report["accuracy_set"].get<std::string>(), " set) | ",
                  num(d["accuracy"]), " | ", num(p["accuracy"]), " |\n");
  if (d.contains("per_type") && p.contains("per_type")) {
    for (const auto& [type, dt] : d["per_type"].items()) {
      const json pt = p["per_type"].value(type, json::object());
      absl::StrAppend(&out, "| accuracy, ", type, " (", dt["num_samples"].get<int>(),
                      " samples) | ", num(dt["accuracy"]), " | ", num(pt.value("accuracy", json())),
                      " |\n");
    }
  }
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
    absl::StrAppend(&out, "\n**Accuracy was measured on the search samples**, which ",
                    searched ? "the search optimised" : "calibrated the masks",
                    ": it overstates held-out accuracy. Evaluate on held-out data "
                    "(`llava-eval --model model --samples HELD_OUT`).\n");
  }
  if (report.contains("warnings") && !report["warnings"].empty()) {
    absl::StrAppend(&out, "\n## Warnings\n\n");
    for (const json& w : report["warnings"]) {
      absl::StrAppend(&out, "- **", w.get<std::string>(), "**\n");
    }
  }
  if (structured) {
    absl::StrAppend(
        &out,
        "\n## What structured pruning saves\n\nThe removed channels and heads are gone from the "
        "tensors: every decoder layer's sizes are in config.json (`text_config."
        "prunesvc_intermediate_sizes`, `prunesvc_num_heads`; prunesvc's runtime reads them, "
        "stock transformers does not), so the model is **smaller on disk and faster with "
        "ordinary dense kernels** on any hardware; the latency row above measures it.\n\n"
        "**Loading**: HuggingFace transformers' LLaVA classes cannot load this checkpoint — "
        "their config has one `intermediate_size` and one head count for every layer, so the "
        "shrunk tensors fail the shape check. prunesvc's runtime loads it (`llava-eval`, "
        "`llava-generate`, `prune-worker`, `prune-local --eval-samples`). UNSTRUCTURED and N:M "
        "artifacts keep the original shapes and load in transformers as they are.\n");
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

}  // namespace prunesvc::prune

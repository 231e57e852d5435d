"""Independent reference for OWL's layerwise ratios (nm_owl_test.cc).

Transcribes luuyin/OWL lib/prune_all.py (prune_wanda_outlier, the first pass over the layers and
the ratio formula) and check_outlier_mean, in float64:
  W_metric = |W| * sqrt(scaler_row) per linear; a layer's metrics flattened and concatenated;
  outlier ratio (percent) = 100 * #(metric > mean(metric) * Hyper_m) / numel;
  all = (r - min r) * (1 / (max r - min r) * Lamda * 2); all = all - mean(all) + (1 - S);
  layer sparsity = 1 - all.

Usage: owl_reference.py DIR. DIR/case.json: {"linears": [[layer, out, in], ...], "layers",
"multiple", "lambda", "sparsity"}; DIR/w{i}.f64 (row-major [out, in]), DIR/n{i}.f64 ([in],
‖X_j‖²). Writes DIR/result.json: {"outlier_percent": [...], "sparsity": [...]}.
"""
import json
import sys

import numpy as np
import torch


def check_outlier_mean(mask, threshold):
    W = mask
    count = 0
    total_params = 0
    max_shred = torch.mean(W) * threshold
    count += (W > max_shred).sum().item()
    total_params += W.numel()
    return float(count) / total_params * 100


def main():
    d = sys.argv[1]
    case = json.load(open(d + "/case.json"))
    per_layer = [[] for _ in range(case["layers"])]
    for i, (layer, out, inn) in enumerate(case["linears"]):
        w = torch.from_numpy(np.fromfile(f"{d}/w{i}.f64", dtype=np.float64).reshape(out, inn))
        scaler_row = torch.from_numpy(np.fromfile(f"{d}/n{i}.f64", dtype=np.float64))
        per_layer[layer].append(torch.abs(w) * torch.sqrt(scaler_row.reshape((1, -1))))
    all_layer_ratio = []
    for metrics in per_layer:
        layer_wmetric = torch.cat([torch.flatten(x) for x in metrics])
        all_layer_ratio.append(check_outlier_mean(layer_wmetric, case["multiple"]))
    outlier_percent = list(all_layer_ratio)
    all_layer_ratio = np.array(all_layer_ratio)
    lamda = case["lambda"]
    all_layer_ratio = (all_layer_ratio - all_layer_ratio.min()) * (
        1 / (all_layer_ratio.max() - all_layer_ratio.min()) * lamda * 2)
    all_layer_ratio = all_layer_ratio - np.mean(all_layer_ratio) + (1 - case["sparsity"])
    sparsity = [1 - x for x in all_layer_ratio]
    json.dump({"outlier_percent": outlier_percent, "sparsity": sparsity},
              open(d + "/result.json", "w"))


if __name__ == "__main__":
    main()

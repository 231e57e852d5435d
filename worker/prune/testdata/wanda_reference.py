"""Independent reference for the WANDA / MAGNITUDE unstructured masks (mask_bank_test.cc).

Follows locuslab/wanda lib/prune.py (prune_wanda, unstructured branch): W_metric = |W| *
sqrt(scaler_row), per-output-row stable ascending sort, prune the first int(in * ratio) columns —
in float64 here so the order is not subject to float32 rounding. MAGNITUDE uses |W| with the same
per-row grouping (prunesvc's convention; Wanda's own magnitude baseline thresholds per matrix).

Usage: wanda_reference.py DIR. DIR/case.json: {"out", "in", "ratios", "method"}; DIR/weight.f32
(row-major float32), DIR/norms.f64 (float64 [in], ‖X_j‖²). Writes DIR/masks.u8: for each ratio,
out*in bytes, 1 = pruned.
"""
import json
import sys

import numpy as np
import torch


def main():
    d = sys.argv[1]
    case = json.load(open(d + "/case.json"))
    out, inn = case["out"], case["in"]
    w = torch.from_numpy(np.fromfile(d + "/weight.f32", dtype=np.float32).reshape(out, inn))
    metric = w.double().abs()
    if case["method"] == "WANDA":
        norms = torch.from_numpy(np.fromfile(d + "/norms.f64", dtype=np.float64))
        metric = metric * torch.sqrt(norms.reshape(1, -1))
    sort_res = torch.sort(metric, dim=-1, stable=True)
    chunks = []
    for ratio in case["ratios"]:
        mask = torch.zeros_like(metric, dtype=torch.bool)
        indices = sort_res[1][:, : int(inn * ratio)]
        mask.scatter_(1, indices, True)
        chunks.append(mask.numpy().astype(np.uint8).tobytes())
    open(d + "/masks.u8", "wb").write(b"".join(chunks))


if __name__ == "__main__":
    main()

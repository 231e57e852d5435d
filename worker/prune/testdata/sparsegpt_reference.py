"""Independent SparseGPT (OBS) reference for sparsegpt_test.cc, written from the rules in
docs/architecture.md §5 ("Masks").

Deliberately structured differently from the C++ (sparsegpt.cc): numpy, H⁻¹ by a plain inverse
(not Cholesky), U from numpy's lower Cholesky factor transposed, and every column's error applied
at once to all columns to its right (no lazy per-block batching). The mask is still chosen at the
start of each block (UNSTRUCTURED: the block's share ⌊K·end/in⌋ − ⌊K·begin/in⌋ of
K = out·floor(r·in + 1e-9) lowest w²/U_jj² of the block, stable order) or of each group of M (N:M: per row, the M − N lowest), from the weights as
compensated so far. Float64 throughout.

Usage: sparsegpt_reference.py DIR — reads DIR/case.json, DIR/weight.f64 [out, in] and
DIR/gram.f64 [in, in]; writes DIR/weight_out.f64 and DIR/keep.u8 (1 = kept).
"""
import json
import math
import sys

import numpy as np


def main(d):
    case = json.load(open(f"{d}/case.json"))
    out, inp, n = case["out"], case["in"], case["num_rows"]
    ratio, nm_n, nm_m, block = case["ratio"], case["nm_n"], case["nm_m"], case["block"]
    w = np.fromfile(f"{d}/weight.f64", dtype=np.float64).reshape(out, inp).copy()
    h = np.fromfile(f"{d}/gram.f64", dtype=np.float64).reshape(inp, inp) * (2.0 / n)
    for j in range(inp):
        if h[j, j] == 0:
            h[j, j] = 1.0
            w[:, j] = 0.0
    h = h + 0.01 * np.mean(np.diag(h)) * np.eye(inp)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper, H⁻¹ = UᵀU
    pruned = np.zeros((out, inp), dtype=bool)
    total = out * math.floor(ratio * inp + 1e-9)  # out · PrunedPerRow(ratio, in)
    for b in range(0, inp, block):
        e = min(b + block, inp)
        if nm_m == 0:
            k = total * e // inp - total * b // inp
            scores = (w[:, b:e] ** 2 / np.diag(u)[b:e][None, :] ** 2).reshape(-1)
            idx = np.argsort(scores, kind="stable")[:k]
            blk = np.zeros(out * (e - b), dtype=bool)
            blk[idx] = True
            pruned[:, b:e] = blk.reshape(out, e - b)
        for i in range(b, e):
            if nm_m > 0 and (i - b) % nm_m == 0:
                g = w[:, i:i + nm_m] ** 2 / np.diag(u)[i:i + nm_m][None, :] ** 2
                order = np.argsort(g, axis=1, kind="stable")[:, :nm_m - nm_n]
                for r in range(out):
                    pruned[r, i + order[r]] = True
            err = np.where(pruned[:, i], w[:, i], 0.0) / u[i, i]
            w[:, i:] -= np.outer(err, u[i, i:])
            w[pruned[:, i], i] = 0.0  # exactly zero, as the C++ stores q
    w.tofile(f"{d}/weight_out.f64")
    (~pruned).astype(np.uint8).tofile(f"{d}/keep.u8")


if __name__ == "__main__":
    main(sys.argv[1])

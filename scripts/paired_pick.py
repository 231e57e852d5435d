#!/usr/bin/python3
"""Compares a finished search's pick with UNIFORM's policy, sample by sample (issue 14).

Usage: paired_pick.py OUT.search-state.json [...]

Reads prune-local's search state (kept after success with --keep-search-state) and prints, per
file: the reference policy's mean search loss (UNIFORM's own policy: the state's PAIRED
`reference`, else the first policy evaluated, which is the initial population's uniform seed),
the pick's, the mean paired improvement D = L_ref - L_pick, its standard error SE_D =
sd(l_ref - l_pick) / sqrt(n) (sample sd, n - 1) and t = D / SE_D; then how many fully scored
policies improve on the reference by more than z = 1, 2, 3 paired standard errors. A pick with
t below the default's z (1) could not have won under the PAIRED default.
"""
import json
import math
import sys


def paired(reference, losses):
    n = len(reference)
    diffs = [a - b for a, b in zip(reference, losses)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    return mean, sd / math.sqrt(n)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        try:
            saved = json.load(open(path))
            state = saved["search"]
            # Distinct policies in first-evaluation order, and their hashes in the same order.
            hashes = []
            for e in saved["evaluated"]:
                if e["hash"] not in hashes:
                    hashes.append(e["hash"])
            hash_of = {tuple(p): h for p, h in zip(saved["distinct"], hashes)}
            version = state["projector_version"]
            cache = {c["hash"]: c for c in state["cache"] if c["version"] == version}
            n = state["config"]["num_samples"]
            ref_hash = hash_of[tuple(state["reference"])] if state.get("reference") else hashes[0]
            ref = cache[ref_hash]["sample_losses"]
            pick = cache[hash_of[tuple(state["ranked"][0])]]["sample_losses"]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            sys.exit(f"{path}: not a finished prune-local search state ({type(e).__name__}: {e})")
        if len(ref) != n or len(pick) != n:
            sys.exit(f"{path}: the reference or the pick lacks per-sample losses")
        d, se = paired(ref, pick)
        t = d / se if se > 0 else (math.inf if d > 0 else 0.0)
        whole = [c["sample_losses"] for c in cache.values() if len(c["sample_losses"]) == n]
        stats = [paired(ref, l) for l in whole]
        beat = {z: sum(1 for m, s in stats if m - z * s > 0) for z in (1, 2, 3)}
        print(f"{path}: reference L {sum(ref) / n:.4f}, pick L {sum(pick) / n:.4f}, "
              f"D {d:+.4f}, SE_D {se:.4f}, t = {t:.2f}; of {len(whole)} fully scored policies "
              f"{beat[1]} / {beat[2]} / {beat[3]} beat the reference by z = 1 / 2 / 3")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""How much racing would save if samples were scored hardest-first (issue 20, figure 2).

Racing (common/racing.h) checks a candidate's bound after each scoring batch, in sample order:
    J >= S_k/n + eta * b_k   (PAIRED; b_k from the first k loss differences against the reference)
and cuts it once the bound exceeds the generation's threshold. Per-sample losses are skewed (a
few hard samples carry most of a candidate's loss), so the order the samples are scored in
decides how soon the bound grows. This script replays the race offline, on every candidate's
whole-set losses, in two orders: the sample index order the evaluator uses today, and the
reference policy's losses descending (hardest first). The bound is the same sound bound in both
(it holds for any fixed order), so the survivors would be the same.

Inputs: two `prune-local --keep-search-state` states of the same search (same flags and seed):
one with --race=false (every candidate's whole-set losses) and one with racing on (the default:
each generation's race threshold, in its history). Only the default PAIRED fitness is replayed.

  /usr/bin/python3 scripts/race_order_sim.py EXHAUSTIVE.search-state.json RACED.search-state.json \
      [--batch 16] [--eta 1] [--order-from HASH ...]

--order-from adds a row per named candidate (its policy hash, as in the state): the samples ordered
by that candidate's losses, descending — what a fixed probe policy scored at Prepare would give.

Prints the fraction of samples scored in each order, over the candidates a race could cut (the
first generation's first `parents` candidates are always scored whole), and how many are cut.
Errors (a missing file, a state that is not of this kind) exit with status 2 and say which.
"""
import argparse
import json
import math
import sys


def fail(msg):
    print(f"race_order_sim: {msg}", file=sys.stderr)
    sys.exit(2)


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            top = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    s = top.get("search") if isinstance(top, dict) else None
    if not isinstance(s, dict) or not isinstance(top.get("evaluated"), list):
        fail(f"{path}: not a prune-local search state (no \"search\" or \"evaluated\")")
    for field in ("cache", "history", "config"):
        if field not in s:
            fail(f"{path}: search.{field} is missing")
    return top, s


def sum_of_squares(d):
    """SS_k: the differences' sum of squares about their own mean (racing.h's b_k uses it)."""
    k = len(d)
    if k < 2:
        return 0.0
    mean = sum(d) / k
    return sum((x - mean) ** 2 for x in d)


def cut_at(losses, ref, order, n, batch, eta, tau):
    """Samples scored before the race stops the candidate (n when it is never cut)."""
    s = 0.0
    diffs = []
    for j, i in enumerate(order):
        s += losses[i]
        diffs.append(losses[i] - ref[i])
        k = j + 1
        if k % batch == 0 and k < n:
            b = math.sqrt(sum_of_squares(diffs) / (n - 1)) / math.sqrt(n)
            if s / n + eta * b > tau:
                return k
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("exhaustive")
    p.add_argument("raced")
    p.add_argument("--batch", type=int, default=16, help="scoring batch (the race's checkpoints)")
    p.add_argument("--eta", type=float, default=1.0, help="PAIRED's eta")
    p.add_argument("--order-from", nargs="*", default=[], metavar="HASH",
                   help="also order by these candidates' losses (hardest first)")
    a = p.parse_args()
    if a.batch < 1:
        fail("--batch must be >= 1")
    top, s = load(a.exhaustive)
    _, raced = load(a.raced)
    thresholds = [h.get("race_threshold") for h in raced["history"]]
    counts = [h.get("evaluations", 0) for h in s["history"]]
    if len(thresholds) != len(counts):
        fail("the two states have different numbers of generations: not the same search")
    cache = {}
    for e in s["cache"]:
        cache[(e.get("hash"), e.get("version"))] = e
    evaluated = top["evaluated"]
    if not evaluated:
        fail(f"{a.exhaustive}: no evaluations")
    n = len(cache[(evaluated[0]["hash"], evaluated[0].get("projector_version", 0))]["sample_losses"])
    ref = cache[(evaluated[0]["hash"], evaluated[0].get("projector_version", 0))]["sample_losses"]
    parents = int(s["config"].get("parents", 8))
    generation_of = []
    for g, c in enumerate(counts):
        generation_of += [g] * c
    if len(generation_of) != len(evaluated):
        fail("history's evaluation counts do not add up to the evaluated list")
    def hardest_first_by(losses):
        return sorted(range(n), key=lambda i: (-losses[i], i))

    orders = [("index", "sample index order (today)", list(range(n))),
              ("hardest", "reference's losses descending", hardest_first_by(ref))]
    for h in a.order_from:
        probe = cache.get((h, 0))
        if probe is None or len(probe.get("sample_losses", [])) != n:
            fail(f"--order-from {h}: no whole-set losses of that candidate in {a.exhaustive}")
        orders.append((h, f"candidate {h}'s losses descending", hardest_first_by(probe["sample_losses"])))
    scored = {name: 0 for name, _, _ in orders}
    cut = {name: 0 for name, _, _ in orders}
    candidates = 0
    for i, e in enumerate(evaluated):
        g = generation_of[i]
        tau = thresholds[g] if g < len(thresholds) else None
        if tau is None or (g == 0 and i < parents):
            continue
        r = cache.get((e["hash"], e.get("projector_version", 0)))
        if r is None or len(r.get("sample_losses", [])) != n or "samples_scored" in r:
            fail(f"candidate {e['hash']}: no whole-set losses (is the first state --race=false?)")
        candidates += 1
        for name, _, order in orders:
            k = cut_at(r["sample_losses"], ref, order, n, a.batch, a.eta, tau)
            scored[name] += k
            cut[name] += k < n
    if candidates == 0:
        fail("no candidate a race could cut")
    print(f"candidates a race could cut: {candidates} (n = {n}, batch {a.batch}, eta {a.eta})")
    for name, label, _ in orders:
        print(f"  {label:32s} samples scored {scored[name] / (candidates * n):.3f}, "
              f"cut {cut[name]}")


if __name__ == "__main__":
    main()

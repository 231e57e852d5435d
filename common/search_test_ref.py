#!/usr/bin/python3
"""Independent reference for search_test: the PRNG transcript and policy hashes.

Written from the algorithm descriptions (xoshiro256** / splitmix64 papers, Lemire 2019, FNV-1a)
rather than from the C++, so a bug in common/prng.cc or common/policy.cc shows up as a mismatch.
Prints a transcript of `key value ...` lines; search_test builds the same transcript with the
C++ code and compares it line by line.

Usage: search_test_ref.py prng | hash | estimators
"""
import math
import struct
import sys

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Prng:
    def __init__(self, seed):
        x = seed
        self.s = []
        for _ in range(4):
            x = (x + GOLDEN) & M64
            self.s.append(mix64(x))

    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform_int(self, n):
        if n == 0:
            return 0
        m = self.next() * n
        low = m & M64
        if low < n:
            threshold = ((1 << 64) - n) % n
            while low < threshold:
                m = self.next() * n
                low = m & M64
        return m >> 64

    def uniform_double(self):
        return (self.next() >> 11) * 2.0**-53

    def bernoulli(self, p):
        return self.uniform_double() < p

    def shuffle(self, v):
        for i in range(len(v), 1, -1):
            j = self.uniform_int(i)
            v[i - 1], v[j] = v[j], v[i - 1]

    def weighted_index(self, weights):
        if not weights:
            return 0
        usable = [w if (w == w and w not in (float("inf"), float("-inf")) and w > 0) else 0.0
                  for w in weights]
        total = 0.0
        for w in usable:
            total += w
        if not total > 0:
            return self.uniform_int(len(weights))
        u = self.uniform_double() * total
        cumulative = 0.0
        last = 0
        for i, w in enumerate(usable):
            if w <= 0:
                continue
            cumulative += w
            last = i
            if u < cumulative:
                return i
        return last

    def fork(self, stream_id):
        h = mix64((stream_id + GOLDEN) & M64)
        for w in self.s:
            h = mix64(h ^ w)
        return Prng(h)


# Weights shared with search_test.cc (kWeights there).
WEIGHTS = [0.0, 1.5, 3.0, 0.0, 0.25, -1.0, float("nan")]
BIG_NS = [1, 2, 3, 7, 10, 1000003, (1 << 32) + 1, (1 << 63) + 1, M64]


def prng_transcript():
    out = []
    for x in [0, 1, 0xDEADBEEF, M64]:
        out.append(f"mix64 {x} {mix64(x)}")
    for seed in [0, 1, 42, M64]:
        p = Prng(seed)
        out.append(f"seed {seed} next " + " ".join(str(p.next()) for _ in range(6)))
        out.append("uniform_int " + " ".join(str(p.uniform_int(n)) for n in BIG_NS for _ in range(3)))
        out.append("uniform_double_x2^53 " +
                   " ".join(str(int(p.uniform_double() * 2.0**53)) for _ in range(5)))
        out.append("bernoulli_0.3 " + " ".join(str(int(p.bernoulli(0.3))) for _ in range(12)))
        v = list(range(10))
        p.shuffle(v)
        out.append("shuffle " + " ".join(map(str, v)))
        out.append("weighted " + " ".join(str(p.weighted_index(WEIGHTS)) for _ in range(12)))
        out.append("weighted_zero " + " ".join(str(p.weighted_index([0.0, 0.0, 0.0]))
                                              for _ in range(4)))
        f = p.fork(7)
        out.append("fork7 " + " ".join(str(f.next()) for _ in range(3)))
        out.append("after " + str(p.next()))
    return out


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def round_half_away(x):
    # C's llround: halves away from zero (Python's round() would round them to even).
    a = abs(x)
    n = math.floor(a)
    n += 1 if a - n >= 0.5 else 0
    return int(n) if x >= 0 else -int(n)


def policy_hash(ratios):
    # Canonical encoding (common/policy.h): u32 LE unit count, then per unit the ratio as a
    # fixed-point integer round(ratio · 1e6) in i64 LE.
    data = struct.pack("<I", len(ratios))
    for r in ratios:
        data += struct.pack("<q", round_half_away(r * 1e6))
    return f"{fnv1a64(data):016x}"


# Policies shared with search_test.cc (kHashCases there).
HASH_CASES = [
    [],
    [0.0],
    [0.1, 0.2, 0.3],
    [0.8, 0.0, 0.5, 0.5, 0.1, 0.7, 0.3],
    [0.123456789, 0.5],
    [0.0000005, 0.0000025, 0.3000005],
]


def hash_transcript():
    out = [f"fnv_empty {fnv1a64(b''):016x}", f"fnv_a {fnv1a64(b'a'):016x}"]
    for ratios in HASH_CASES:
        out.append(f"policy {len(ratios)} {policy_hash(ratios)}")
    return out


# ---- estimators (common/estimators.h), shared with estimators_test.cc ----

SPLIT_STREAM = 0x53504C4954  # "SPLIT"
CV_STREAM = 0x43562D455441  # "CV-ETA"
ETA_GRID = [0, 0.1, 0.3, 1, 3, 10, 30, 100]
PERM_CASES = [(0, SPLIT_STREAM, 10), (1234, CV_STREAM, 64), (7, SPLIT_STREAM, 1),
              (M64, CV_STREAM, 5)]
ESTIMATORS = ["NORM", "UCB", "SPLIT", "CAPACITY", "PAIRED"]
# PAIRED's reference policy: synthetic policy 5 for the terms (so no term is 0), policy 0 (one of
# the ranked ones, as the search's reference is) for cross-validation.
TERM_REFERENCE = 5
CV_REFERENCE = 0


def permutation(seed, stream, n):
    p = Prng(seed).fork(stream)
    v = list(range(n))
    p.shuffle(v)
    return v


# Synthetic evaluated policies (kSynthetic* in estimators_test.cc): exact in binary64 on both sides.
def synthetic_losses(p, n):
    return [((p * 37 + i * 11 + (p * i) % 7) % 23) / 23 + p / 50 for i in range(n)]


def synthetic_omega(p):
    return (p % 5 + 1) / 8


def synthetic_capacity(p):
    return ((p * 3) % 7) / 10


def mean_over(losses, idx):
    return sum(losses[i] for i in idx) / len(idx) if idx else 0.0


def term(estimator, p, losses, idx, reference=None):
    m = len(idx)
    if estimator == "NORM":
        return synthetic_omega(p) / math.sqrt(m)
    if estimator == "CAPACITY":
        return synthetic_capacity(p) / math.sqrt(m)
    if m < 2:
        return 0.0
    if estimator == "PAIRED":
        diffs = [losses[i] - reference[i] for i in idx]
        mu = sum(diffs) / m
        var = sum((d - mu) ** 2 for d in diffs) / (m - 1)
        return math.sqrt(var) / math.sqrt(m)
    if estimator == "UCB":
        mu = mean_over(losses, idx)
        var = sum((losses[i] - mu) ** 2 for i in idx) / (m - 1)
        return math.sqrt(var) / math.sqrt(m)
    half = m // 2
    return abs(mean_over(losses, idx[:half]) - mean_over(losses, idx[half:]))


def fractional_ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y):
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = fractional_ranks(x), fractional_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def cross_validate(estimator, num_policies, n, seed):
    perm = permutation(seed, CV_STREAM, n)
    a, b = perm[: n // 2], perm[n // 2:]
    reference = synthetic_losses(CV_REFERENCE, n)
    rhos = []
    for eta in ETA_GRID:
        fit_a, loss_b = [], []
        for p in range(num_policies):
            losses = synthetic_losses(p, n)
            fit_a.append(mean_over(losses, a) + eta * term(estimator, p, losses, a, reference))
            loss_b.append(mean_over(losses, b))
        rhos.append(spearman(fit_a, loss_b))
    # Brute force: the best defined ρ, ties to the smaller η (the grid is ascending).
    best = None
    for eta, rho in zip(ETA_GRID, rhos):
        if rho is not None and (best is None or rho > best[1]):
            best = (eta, rho)
    eta = best[0] if best else min(ETA_GRID)
    return eta, rhos


def estimators_transcript():
    out = []
    for seed, stream, n in PERM_CASES:
        out.append(f"perm {seed} {stream} {n} " + " ".join(map(str, permutation(seed, stream, n))))
    order = permutation(99, SPLIT_STREAM, 16)
    for estimator in ESTIMATORS:
        for p in range(4):
            t = term(estimator, p, synthetic_losses(p, 16), order, synthetic_losses(TERM_REFERENCE, 16))
            out.append(f"term {estimator} {p} {t!r}")
    for estimator in ESTIMATORS:
        for num_policies, n in [(12, 16), (40, 64), (2, 8)]:
            eta, rhos = cross_validate(estimator, num_policies, n, 99)
            out.append(f"cv {estimator} {num_policies} {n} {eta!r} " +
                       " ".join("null" if r is None else repr(r) for r in rhos))
    return out


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "prng":
        lines = prng_transcript()
    elif what == "hash":
        lines = hash_transcript()
    elif what == "estimators":
        lines = estimators_transcript()
    else:
        sys.exit(f"usage: {sys.argv[0]} prng|hash|estimators")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Tests scripts/results_render.py (docs/RESULTS.md's renderer) on synthetic run JSONs.

Checks: mean ± sample sd over seeds, the "(n=…)" marker for fewer than 3 runs, recorded
failures, a malformed JSON skipped with a message (not a crash), Spearman ρ against the
closed form 1 − 6Σd²/(n(n²−1)) (no ties) and a hand-computed tie case, and a well-formed SVG.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import unittest
import xml.dom.minidom

HERE = os.path.dirname(os.path.abspath(__file__))
RENDER = os.path.join(HERE, "..", "..", "scripts", "results_render.py")
sys.path.insert(0, os.path.dirname(RENDER))
import results_render  # noqa: E402


def run_json(group, gran, budget, strategy, seed, acc, **extra):
    r = {"accuracy": acc, "flops_ratio": budget - 0.01, "latency_ratio": 1.0,
         "dense": {"accuracy": 0.9}, "pruned": {"accuracy": acc, "search": {"accuracy": acc + 0.05}},
         "eta": {"value": 2.0},
         "provenance": {"cpu": {"model": "cpu", "cores": 2}, "libraries": {"libtorch": "x"},
                        "threads": 2},
         "study": {"id": f"{group}-{gran}-{budget}-{strategy}-{seed}", "group": group,
                   "granularity": gran, "budget": budget, "strategy": strategy, "seed": seed,
                   "command": "prune-local …", "wall_seconds": 10.0}}
    r.update(extra)
    return r


def dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f)


def read(path):
    with open(path) as f:
        return f.read()


class RenderTest(unittest.TestCase):
    def test_spearman(self):
        rng = random.Random(5)
        for _ in range(100):
            n = rng.randint(3, 30)
            px, py = list(range(n)), list(range(n))
            rng.shuffle(px)
            rng.shuffle(py)
            d2 = sum((a - b) ** 2 for a, b in zip(px, py))
            expected = 1 - 6 * d2 / (n * (n * n - 1))
            self.assertAlmostEqual(results_render.spearman(px, [2.0 ** v for v in py]), expected,
                                   places=12)
        self.assertAlmostEqual(results_render.spearman([1, 2, 2, 3], [1, 2, 3, 4]),
                               0.9486832980505138, places=12)
        self.assertIsNone(results_render.spearman([1, 1, 1], [1, 2, 3]))
        self.assertIsNone(results_render.spearman([1, 2], [1, 2]))

    def test_render(self):
        with tempfile.TemporaryDirectory() as d:
            runs = os.path.join(d, "runs")
            os.makedirs(runs)
            accs = [0.80, 0.84, 0.88]  # mean 84.0, sample sd 4.0
            for s, a in enumerate(accs):
                dump(run_json("main", "UNSTRUCTURED", 0.5, "UNIFORM", s, a),
                     os.path.join(runs, f"u{s}.json"))
            dump(run_json("main", "UNSTRUCTURED", 0.5, "OWL", 0, 0.7),
                 os.path.join(runs, "o0.json"))
            failed = {"study": dict(run_json("main", "STRUCTURED", 0.35, "UNIFORM", 0, 0)["study"])}
            failed["study"]["failed"] = "error: budget 0.35 is below the smallest reachable 0.4"
            dump(failed, os.path.join(runs, "f.json"))
            audit = {"policies": [{"fitness": -i, "search_loss": -i, "heldout_accuracy": i / 10}
                                  for i in range(5)]}
            dump(run_json("ablation-eta-0", "UNSTRUCTURED", 0.35, "EFFICIENTLLAVA", 0, 0.6,
                               audit=audit), os.path.join(runs, "a.json"))
            with open(os.path.join(runs, "broken.json"), "w") as f:
                f.write("{not json")
            out_md = os.path.join(d, "RESULTS.md")
            svg_dir = os.path.join(d, "results")
            p = subprocess.run([sys.executable, RENDER, runs, out_md, svg_dir],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("broken.json: skipped", p.stderr)
            md = read(out_md)
            self.assertIn("| UNIFORM | 84.0 ± 4.0 |", md)
            self.assertIn("| OWL | 70.0 (n=1) |", md)
            self.assertIn("n/a: error: budget 0.35 is below", md)
            # −fitness = i and held-out accuracy = i/10: perfectly concordant.
            self.assertIn("| η = 0 (no SRM term) | 2.00 (n=1) | 60.0 (n=1) | 65.0 (n=1) | "
                          "5.0 (n=1) | 1.00 (n=1) | 1.00 (n=1) |", md)
            xml.dom.minidom.parse(os.path.join(svg_dir, "accuracy-unstructured.svg"))
            # Usage errors exit 2.
            self.assertEqual(subprocess.run([sys.executable, RENDER], capture_output=True)
                             .returncode, 2)


if __name__ == "__main__":
    unittest.main()

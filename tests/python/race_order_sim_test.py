#!/usr/bin/python3
"""Tests scripts/race_order_sim.py (the offline race replay of docs/PERFORMANCE.md §2).

A hand-computed case: n = 4 samples, batch 2 (one checkpoint, after 2 samples), reference losses
[0, 0, 1, 3] (hardest first: samples 3, 2, 0, 1), threshold 1.0, three candidates after the
reference:
  c1 [0, 0, 2, 4]      index order: S_2 = 0, never cut; hardest first: S_2 = 6, 6/4 > 1: cut at 2.
  c2 [.1, .1, .1, .1]  never cut (hardest first with eta 1: 0.2/4 + sqrt(2/3)/2 = 0.458 < 1).
  c3 [0, 0, 1.2, 1.2]  hardest first: S_2/4 = 0.6; differences (-1.8, 0.2), SS = 2, so
                       b = sqrt(2/3)/2 = 0.408 and the bound 1.008 > 1 with eta 1 (cut at 2),
                       0.6 < 1 with eta 0 (not cut).
So with eta 1: index order 12/12 samples, 0 cut; hardest first 8/12 = 0.667, 2 cut; with eta 0
hardest first 10/12 = 0.833, 1 cut. Then malformed inputs: each exits 2 naming the problem.
"""
import json
import os
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SIM = os.path.join(HERE, "..", "..", "scripts", "race_order_sim.py")
PYTHON = "/usr/bin/python3"

LOSSES = {"ref": [0, 0, 1, 3], "c1": [0, 0, 2, 4], "c2": [0.1, 0.1, 0.1, 0.1],
          "c3": [0, 0, 1.2, 1.2]}


def state(raced):
    cache = []
    for h, losses in LOSSES.items():
        e = {"hash": h, "version": 0, "sample_losses": losses}
        if raced and h == "c1":  # what a raced run stores: a prefix and samples_scored
            e = {"hash": h, "version": 0, "sample_losses": losses[:2], "samples_scored": 2}
        cache.append(e)
    return {"evaluated": [{"hash": h, "projector_version": 0} for h in LOSSES],
            "search": {"cache": cache, "config": {"parents": 1},
                       "history": [{"evaluations": 1, "race_threshold": 5.0},
                                   {"evaluations": 3, "race_threshold": 1.0}]}}


class RaceOrderSimTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.exhaustive = self.write("exhaustive.json", state(raced=False))
        self.raced = self.write("raced.json", state(raced=True))

    def tearDown(self):
        self.dir.cleanup()

    def write(self, name, obj):
        path = os.path.join(self.dir.name, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(obj if isinstance(obj, str) else json.dumps(obj))
        return path

    def run_sim(self, *args):
        return subprocess.run([PYTHON, SIM, *args], capture_output=True, text=True, check=False)

    def test_hand_computed_case(self):
        r = self.run_sim(self.exhaustive, self.raced, "--batch", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("candidates a race could cut: 3", r.stdout)
        lines = r.stdout.splitlines()
        self.assertIn("samples scored 1.000, cut 0", lines[1])
        self.assertIn("samples scored 0.667, cut 2", lines[2])
        r = self.run_sim(self.exhaustive, self.raced, "--batch", "2", "--eta", "0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("samples scored 0.833, cut 1", r.stdout.splitlines()[2])
        # Ordered by c1's losses [0, 0, 2, 4]: the same order as the reference's (3, 2, 0, 1),
        # so the same row; by c2's (all equal: index order on ties), today's row.
        r = self.run_sim(self.exhaustive, self.raced, "--batch", "2", "--order-from", "c1", "c2")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertIn("candidate c1's losses descending", lines[3])
        self.assertIn("samples scored 0.667, cut 2", lines[3])
        self.assertIn("samples scored 1.000, cut 0", lines[4])

    def test_malformed_inputs_exit_2_and_say_why(self):
        cases = {
            "missing file": ([os.path.join(self.dir.name, "nope.json"), self.raced], "nope.json"),
            "not JSON": ([self.write("bad.json", "{not json"), self.raced], "bad.json"),
            "not a state": ([self.write("list.json", [1, 2]), self.raced], "not a prune-local"),
            "raced as exhaustive": ([self.raced, self.raced], "no whole-set losses"),
            "no history": ([self.write("nohist.json", {"evaluated": [], "search": {
                "cache": [], "config": {}}}), self.raced], "search.history is missing"),
            "other search": ([self.exhaustive, self.write("short.json", {
                "evaluated": [], "search": {"cache": [], "config": {}, "history": [
                    {"evaluations": 4, "race_threshold": 1.0}]}})], "different numbers"),
            "bad batch": ([self.exhaustive, self.raced, "--batch", "0"], "--batch"),
            "unknown probe": ([self.exhaustive, self.raced, "--order-from", "zz"], "--order-from zz"),
        }
        for name, (args, message) in cases.items():
            with self.subTest(name):
                r = self.run_sim(*args)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertIn(message, r.stderr)


if __name__ == "__main__":
    unittest.main()

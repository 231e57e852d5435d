#!/usr/bin/python3
"""The Python client (client/python, package prunesvc) against a live scheduler with a local
worker (issue 18): the example script submits, watches and fetches; the Client's calls raise typed
errors, watch resumes by sequence, fetch refuses a non-empty directory and checks what it unpacks.

Run by ctest with --bin-dir and --python-dir (build/python: the generated stubs + the package).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ARGS = None


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.python_dir)
        cls.tmp = tempfile.mkdtemp(prefix="pyclient-")
        for split, seed, count in (("search", 1000, 12), ("eval", 2000, 6)):
            subprocess.run([os.path.join(ARGS.bin_dir, "shapes-vqa"), "--seed", str(seed),
                            "--split", split, "--count", str(count), "--out",
                            os.path.join(cls.tmp, split)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ready = os.path.join(cls.tmp, "ready.json")
        cls.log = open(os.path.join(cls.tmp, "scheduler.log"), "w")
        cls.proc = subprocess.Popen(
            [os.path.join(ARGS.bin_dir, "prune-scheduler"), "--host=127.0.0.1", "--port=0",
             "--metrics-port=-1", "--state-dir=" + os.path.join(cls.tmp, "state"),
             "--local-workers=1", "--worker-threads=1", "--ready-file=" + ready,
             "--allowed-model-roots=" + os.path.join(ARGS.source_dir, "models")],
            stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not os.path.exists(ready):
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("scheduler did not start; see " + cls.log.name)
            time.sleep(0.05)
        with open(ready) as f:
            cls.addr = "127.0.0.1:%d" % json.load(f)["port"]
        import prunesvc
        cls.client = prunesvc.Client(cls.addr, timeout=10)
        deadline = time.time() + 60
        while not cls.client.workers():
            if time.time() > deadline:
                raise RuntimeError("no worker registered; see " + cls.log.name)
            time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.proc.send_signal(signal.SIGTERM)
        cls.proc.wait(timeout=60)
        cls.log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def small(self, **extra):
        fields = {"population": 4, "parents": 2, "generations": 2, "seed": 5}
        fields.update(extra)
        return ["--set=%s=%s" % (k, json.dumps(v)) for k, v in fields.items()]

    def test_example_submits_watches_and_fetches(self):
        out = os.path.join(self.tmp, "pruned")
        env = dict(os.environ, PYTHONPATH=ARGS.python_dir)
        run = subprocess.run(
            [sys.executable, os.path.join(ARGS.source_dir, "client/python/examples/prune_and_fetch.py"),
             "--addr", self.addr, "--model", os.path.join(ARGS.source_dir, "models/tiny-llava-shapes"),
             "--samples", os.path.join(self.tmp, "search"),
             "--eval-samples", os.path.join(self.tmp, "eval"), "--flops-budget", "0.5",
             "--out", out] + self.small(),
            env=env, capture_output=True, text=True, timeout=600)
        self.assertEqual(run.returncode, 0, run.stderr)
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertLessEqual(summary["flops_ratio"], 0.5 + 1e-9)
        self.assertIn("generation 3/3", run.stderr)
        self.assertIn("SUCCEEDED", run.stderr)
        for name in ("MANIFEST.sha256", "report.json", "model/config.json",
                     "model/model.safetensors"):
            self.assertTrue(os.path.exists(os.path.join(out, name)), name)
        self.assertFalse(os.path.exists(out + ".partial"))

        import prunesvc
        job = self.client.get(summary["job_id"])
        self.assertEqual(job.state, prunesvc.job_pb2.SUCCEEDED)
        self.assertIn(job.job_id, [j.job_id for j in self.client.list(states=["SUCCEEDED"])])
        # watch from a sequence replays only what follows it, and ends at the terminal event.
        events = list(self.client.watch(job.job_id, from_sequence=2))
        self.assertEqual(events[0].sequence, 3)
        self.assertEqual([e.sequence for e in events], list(range(3, 3 + len(events))))
        self.assertTrue(prunesvc.is_terminal_event(events[-1]))
        # fetch refuses a non-empty directory; a second fetch elsewhere gives the same files.
        with self.assertRaises(prunesvc.FailedPrecondition):
            self.client.fetch(job.job_id, out)
        again = self.client.fetch(job.job_id, os.path.join(self.tmp, "again"))
        with open(os.path.join(out, "MANIFEST.sha256")) as a, \
                open(os.path.join(again, "MANIFEST.sha256")) as b:
            self.assertEqual(a.read(), b.read())

    def test_errors_are_typed_and_name_the_field(self):
        import prunesvc
        with self.assertRaises(prunesvc.NotFound):
            self.client.get("j-does-not-exist")
        ds = self.client.upload_dataset(os.path.join(self.tmp, "search"))
        self.assertEqual(ds.num_samples, 12)
        self.assertTrue(self.client.upload_dataset(os.path.join(self.tmp, "search")).already_present)
        model = os.path.join(ARGS.source_dir, "models/tiny-llava-shapes")
        with self.assertRaises(prunesvc.InvalidArgument) as bad:
            self.client.submit(model_uri=model, dataset_id=ds.dataset_id, flops_budget=1.5)
        self.assertIn("flops_budget", bad.exception.details)
        with self.assertRaises(prunesvc.InvalidArgument) as unknown:
            self.client.submit(model_uri=model, dataset_id=ds.dataset_id, flops_budgett=0.5)
        self.assertIn("flops_budgett", str(unknown.exception))
        # A YAML job file, overridden by keywords; cancel is idempotent.
        job_file = os.path.join(self.tmp, "job.yaml")
        with open(job_file, "w") as f:
            f.write("model_uri: %s\ndataset_id: %s\nflops_budget: 0.7\nstrategy: uniform\n"
                    "labels: {team: vision}\n" % (model, ds.dataset_id))
        job = self.client.submit(job_file, flops_budget=0.6)
        self.assertAlmostEqual(job.spec.flops_budget, 0.6)
        self.assertEqual(job.spec.strategy, prunesvc.job_pb2.UNIFORM)
        self.assertEqual(job.spec.labels["team"], "vision")
        self.client.cancel(job.job_id, reason="test")
        final = self.client.cancel(job.job_id)
        self.assertIn(final.state, prunesvc.TERMINAL_STATES)
        with self.assertRaises(prunesvc.FailedPrecondition):
            self.client.fetch(job.job_id, os.path.join(self.tmp, "nothing"))
        # An unreachable scheduler is Unavailable, within the deadline.
        dead = prunesvc.Client("127.0.0.1:1", timeout=2)
        with self.assertRaises(prunesvc.Unavailable):
            dead.get("j-1")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--python-dir", required=True)
    ARGS, rest = ap.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest)

#!/usr/bin/python3
"""Debian's real Prometheus scrapes a live prune-scheduler and its local prune-worker.

Checks that both /metrics endpoints (prometheus-cpp's exposer on the scheduler, cpp-httplib +
TextSerializer on the worker) parse in a real Prometheus, that the metric names the alert rules
and dashboard use exist, and that the alert rules are valid (`promtool check rules`). Debian's
Prometheus is built without Kubernetes service discovery, so the scrape here uses static targets;
deploy/prometheus/prometheus.yml (kubernetes_sd) is for upstream Prometheus in a cluster.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

ARGS = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


class PrometheusScrapeTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="promtest-")
        self.procs = []
        self.logs = []

    def tearDown(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, argv, name):
        log = open(os.path.join(self.tmp, name + ".log"), "w")
        self.logs.append(log)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def query(self, prom_port, expr):
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.load(r)
        except OSError:
            return []
        return body.get("data", {}).get("result", [])

    def test_alert_rules_are_valid(self):
        rules = os.path.join(ARGS.source_dir, "deploy/prometheus/prunesvc-alerts.yml")
        subprocess.run(["promtool", "check", "rules", rules], check=True)

    def start_stack(self, extra_scheduler_args=()):
        """A scheduler with one local worker, and Debian's Prometheus scraping both every second.
        Returns (the scheduler's ready info, Prometheus' port)."""
        ready = os.path.join(self.tmp, "ready.json")
        bin_dir = ARGS.bin_dir
        self.start([os.path.join(bin_dir, "prune-scheduler"), "--host=127.0.0.1", "--port=0",
                    "--metrics-port=0", "--state-dir=" + os.path.join(self.tmp, "state"),
                    "--local-workers=1", "--worker-threads=1", "--ready-file=" + ready]
                   + list(extra_scheduler_args), "scheduler")
        wait_for(lambda: os.path.exists(ready), 30, "scheduler ready file")
        with open(ready) as f:
            info = json.load(f)

        def worker_metrics_port():
            out = subprocess.run([os.path.join(bin_dir, "prunectl"), "workers", "--json",
                                  f"--addr=127.0.0.1:{info['port']}"],
                                 capture_output=True, text=True).stdout
            workers = json.loads(out or "{}").get("workers", [])
            return workers[0].get("metricsPort") if workers else None
        wport = wait_for(worker_metrics_port, 30, "worker registration")

        prom_port = free_port()
        config = os.path.join(self.tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prunesvc
    static_configs:
      - targets: ['127.0.0.1:{info['metrics_port']}']
        labels: {{component: scheduler}}
      - targets: ['127.0.0.1:{wport}']
        labels: {{component: worker}}
""")
        subprocess.run(["promtool", "check", "config", config], check=True,
                       stdout=subprocess.DEVNULL)
        self.start(["prometheus", "--config.file=" + config,
                    "--storage.tsdb.path=" + os.path.join(self.tmp, "tsdb"),
                    f"--web.listen-address=127.0.0.1:{prom_port}"], "prometheus")

        def both_up():
            res = self.query(prom_port, 'up{job="prunesvc"} == 1')
            return len(res) == 2 and res
        wait_for(both_up, 60, "both targets up in Prometheus")
        return info, prom_port

    def prunectl(self, info, *args):
        run = subprocess.run([os.path.join(ARGS.bin_dir, "prunectl")] + list(args)
                             + [f"--addr=127.0.0.1:{info['port']}"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr)
        return run.stdout.strip()

    def test_real_prometheus_scrapes_scheduler_and_worker(self):
        info, prom_port = self.start_stack()
        idle = wait_for(lambda: self.query(prom_port, 'prunesvc_workers{state="idle"}'), 30,
                        "prunesvc_workers")
        self.assertEqual(idle[0]["value"][1], "1")
        rss = self.query(prom_port, "process_resident_memory_bytes")
        self.assertEqual(sorted(r["metric"]["component"] for r in rss), ["scheduler", "worker"])
        for r in rss:
            self.assertGreater(float(r["value"][1]), 1e6)
        scrape_errors = self.query(prom_port, "scrape_samples_post_metric_relabeling == 0")
        self.assertEqual(scrape_errors, [])


    def test_every_dashboard_panel_has_data_during_a_search(self):
        """Each expression of deploy/grafana/prunesvc-dashboard.json, queried in Prometheus while
        a search runs (after its first generation), returns at least one series."""
        with open(os.path.join(ARGS.source_dir, "deploy/grafana/prunesvc-dashboard.json")) as f:
            dashboard = json.load(f)
        exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
        self.assertGreaterEqual(len(exprs), 10)
        info, prom_port = self.start_stack(
            ["--allowed-model-roots=" + os.path.join(ARGS.source_dir, "models")])
        search = os.path.join(self.tmp, "search")
        subprocess.run([os.path.join(ARGS.bin_dir, "shapes-vqa"), "--seed=1000", "--split=search",
                        "--count=8", "--out=" + search], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ds = self.prunectl(info, "upload-dataset", search)
        # Long enough to be running through every query; cancelled at the end.
        job = self.prunectl(info, "submit", "--model=" + os.path.join(ARGS.source_dir,
                                                                      "models/tiny-llava-shapes"),
                            "--dataset=" + ds, "--flops-budget=0.5", "--population=4",
                            "--parents=2", "--generations=200", "--projector-every=0")
        best = wait_for(lambda: self.query(prom_port, "prunesvc_search_best_accuracy"), 180,
                        "the search's first generation in Prometheus")
        self.assertEqual(best[0]["metric"]["job_id"], job)
        self.assertGreater(float(best[0]["value"][1]), 0.0)
        flops = self.query(prom_port, "prunesvc_search_best_flops_ratio")
        self.assertLessEqual(float(flops[0]["value"][1]), 0.5 + 1e-6)
        for title, expr in exprs:
            result = wait_for(lambda: self.query(prom_port, expr), 60, f"{title}: {expr}")
            self.assertTrue(result, f"{title}: {expr}")
        running = self.query(prom_port, 'sum(prunesvc_jobs{state="searching"})')
        self.assertEqual(running[0]["value"][1], "1")
        self.prunectl(info, "cancel", job)
        # The per-job series goes with its search.
        wait_for(lambda: not self.query(prom_port, "prunesvc_search_best_accuracy"), 60,
                 "the cancelled search's gauge to disappear")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--source-dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)

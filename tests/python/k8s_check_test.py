#!/usr/bin/python3
"""Tests scripts/k8s_check.py, the checker of rendered deploy/k8s overlays, on synthetic renders.

A minimal valid deployment (scheduler StatefulSet + Service, worker Deployment + headless Service,
HPA, PDBs, ServiceMonitor, Secrets) passes, for the gpu and the cpu rules and with --bin-dir
(stand-in binaries whose --help lists the flags). Then each required field is removed or broken
in turn, and the named error must appear; malformed input (not YAML, a document that is not an
object, nothing at all) fails with a message; the command line exits 1 on errors, 0 when clean,
2 on bad usage. Needs no cluster, no kubectl and no build.
"""
import copy
import os
import stat
import subprocess
import sys
import tempfile
import unittest

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "scripts", "k8s_check.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import k8s_check  # noqa: E402

SCHED_LABELS = {"app": "prunesvc", "component": "scheduler"}
WORKER_LABELS = {"app": "prunesvc", "component": "worker"}
POD_SC = {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001}


def probe_exec():
    return {"exec": {"command": ["/opt/prunesvc/bin/prunectl", "health",
                                 "--addr=localhost:50051"]}}


def valid_objects():
    """A small render that passes every check (gpu rules)."""
    scheduler = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "prune-scheduler", "labels": SCHED_LABELS},
        "spec": {
            "replicas": 1, "serviceName": "prune-scheduler",
            "selector": {"matchLabels": dict(SCHED_LABELS)},
            "template": {
                "metadata": {"labels": dict(SCHED_LABELS)},
                "spec": {
                    "securityContext": dict(POD_SC),
                    "containers": [{
                        "name": "scheduler", "image": "prunesvc-scheduler:0.1.0",
                        "command": ["/opt/prunesvc/bin/prune-scheduler"],
                        "args": ["--port=50051", "--state-dir=/var/lib/prunesvc",
                                 "--auth-tokens=/etc/prunesvc/tokens/tokens"],
                        "ports": [{"name": "grpc", "containerPort": 50051},
                                  {"name": "metrics", "containerPort": 9464}],
                        "readinessProbe": probe_exec(), "livenessProbe": probe_exec(),
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                        "volumeMounts": [{"name": "state", "mountPath": "/var/lib/prunesvc"},
                                         {"name": "tokens", "mountPath": "/etc/prunesvc/tokens"}],
                    }],
                    "volumes": [{"name": "tokens",
                                 "secret": {"secretName": "prunesvc-tokens-abc"}}],
                },
            },
            "volumeClaimTemplates": [{"metadata": {"name": "state"},
                                      "spec": {"accessModes": ["ReadWriteOnce"]}}],
        },
    }
    worker = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "prune-worker", "labels": WORKER_LABELS},
        "spec": {
            "selector": {"matchLabels": dict(WORKER_LABELS)},
            "template": {
                "metadata": {"labels": dict(WORKER_LABELS)},
                "spec": {
                    "securityContext": dict(POD_SC),
                    "containers": [{
                        "name": "worker", "image": "registry.example/prunesvc-worker-cuda:0.1.0",
                        "command": ["/bin/sh", "-c"],
                        "args": ['exec /opt/prunesvc/bin/prune-worker '
                                 '--advertise-host="$$(echo "$POD_IP").x" "$@"',
                                 "prune-worker", "--port=50061", "--device=$(DEVICE)",
                                 "--scheduler=prune-scheduler:50052"],
                        "env": [{"name": "DEVICE", "value": "cuda:0"},
                                {"name": "POD_IP",
                                 "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "ports": [{"name": "grpc", "containerPort": 50061},
                                  {"name": "metrics", "containerPort": 9465}],
                        "readinessProbe": {"tcpSocket": {"port": "grpc"}},
                        "livenessProbe": {"httpGet": {"path": "/", "port": "metrics"}},
                        "resources": {"requests": {"cpu": "4", "memory": "48Gi"},
                                      "limits": {"nvidia.com/gpu": 1}},
                    }],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prunesvc-tokens-abc"},
         "data": {"tokens": "eA=="}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "prune-scheduler", "labels": SCHED_LABELS},
         "spec": {"selector": dict(SCHED_LABELS),
                  "ports": [{"name": "grpc", "port": 50051, "targetPort": "grpc"},
                            {"name": "metrics", "port": 9464, "targetPort": "metrics"}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "prune-worker", "labels": WORKER_LABELS},
         "spec": {"clusterIP": "None", "selector": dict(WORKER_LABELS),
                  "ports": [{"name": "grpc", "port": 50061, "targetPort": "grpc"},
                            {"name": "metrics", "port": 9465, "targetPort": "metrics"}]}},
        scheduler,
        worker,
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": {"name": "prune-scheduler"},
         "spec": {"maxUnavailable": 0, "selector": {"matchLabels": dict(SCHED_LABELS)}}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": {"name": "prune-worker"},
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(WORKER_LABELS)}}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
         "metadata": {"name": "prune-worker"},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "prune-worker"},
                  "minReplicas": 1, "maxReplicas": 4,
                  "metrics": [{"type": "External", "external": {
                      "metric": {"name": "prunesvc_worker_demand"},
                      "target": {"type": "AverageValue", "averageValue": "1"}}}],
                  "behavior": {"scaleDown": {"stabilizationWindowSeconds": 900}}}},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
         "metadata": {"name": "prunesvc"},
         "spec": {"selector": {"matchLabels": {"app": "prunesvc"}},
                  "endpoints": [{"port": "metrics"}]}},
    ]


ADAPTER_RULES = {"rules": {"external": [{
    "seriesQuery": "prunesvc_step_queue_depth", "name": {"as": "prunesvc_worker_demand"},
    "metricsQuery": "sum(prunesvc_step_queue_depth{<<.LabelMatchers>>})"}]}}

HELP = {
    "prune-scheduler": ["port", "state-dir", "auth-tokens", "tls-cert"],
    "prune-worker": ["advertise-host", "port", "device", "scheduler"],
    "prunectl": ["addr", "tls-ca"],
}


def find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects, kind, name):
    return find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]


class K8sCheckTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Stand-in binaries: their --help lists flags the way common/flags.cc prints them.
        cls.tmp = tempfile.TemporaryDirectory()
        cls.bin_dir = cls.tmp.name
        for binary, flags in HELP.items():
            path = os.path.join(cls.bin_dir, binary)
            lines = "".join(f"  --{f}\n      what it does (default: x)\n" for f in flags)
            with open(path, "w") as f:
                f.write(f"#!/bin/sh\ncat <<'EOF'\n{binary}: a stand-in\n\nFlags:\n{lines}EOF\n")
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def errors(self, objects, overlay="gpu", bin_dir=True, rules=None):
        return k8s_check.check(objects, overlay, self.bin_dir if bin_dir else None, rules)

    def assertError(self, objects, expected, **kw):
        errs = self.errors(objects, **kw)
        self.assertTrue(any(expected in e for e in errs),
                        f"no error containing {expected!r} in {errs}")

    def assertFieldMissing(self, objects, ident, field, **kw):
        self.assertError(objects, f"OBJECT {ident}: field {field} missing", **kw)

    # --- valid -----------------------------------------------------------------------------
    def test_valid_gpu_set_passes(self):
        self.assertEqual(self.errors(valid_objects(), rules=ADAPTER_RULES), [])

    def test_valid_cpu_set_passes(self):
        objs = valid_objects()
        c = container(objs, "Deployment", "prune-worker")
        c["image"] = "prunesvc-worker-cpu:0.1.0"
        c["env"][0]["value"] = "cpu"
        del c["resources"]["limits"]
        self.assertEqual(self.errors(objs, overlay="cpu"), [])

    def test_keda_instead_of_hpa_passes(self):
        objs = [o for o in valid_objects() if o["kind"] != "HorizontalPodAutoscaler"]
        objs.append({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                     "metadata": {"name": "prune-worker"},
                     "spec": {"scaleTargetRef": {"name": "prune-worker"}, "minReplicaCount": 1,
                              "maxReplicaCount": 4, "triggers": [{"type": "prometheus"}]}})
        self.assertEqual(self.errors(objs, overlay="gpu-keda"), [])

    # --- malformed input -------------------------------------------------------------------
    def test_malformed_input(self):
        for text, message in [("a: [b\n", "not YAML"), ("- a\n- b\n", "document 1 is a list"),
                              ("--- 42\n", "document 1 is a int"), ("", "no objects"),
                              ("---\n---\n", "no objects")]:
            with self.subTest(text=text), self.assertRaises(k8s_check.MalformedInput) as cm:
                k8s_check.load(text)
            self.assertIn(message, str(cm.exception))

    def test_malformed_adapter_rules(self):
        self.assertIn("adapter rules: no rules.external (or externalRules) list",
                      self.errors(valid_objects(), rules={"rules": {}}))
        self.assertIn("adapter rules: external rule 0: field metricsQuery missing",
                      self.errors(valid_objects(), rules={"rules": {"external": [
                          {"seriesQuery": "x", "name": {"as": "prunesvc_worker_demand"}}]}}))

    # --- every object ----------------------------------------------------------------------
    def test_object_fields(self):
        for field, ident in [("apiVersion", "Service/prune-worker"), ("kind", "?/prune-worker"),
                             ("metadata.name", "Service/?")]:
            with self.subTest(field=field):
                objs = valid_objects()
                svc = find(objs, "Service", "prune-worker")
                if field == "metadata.name":
                    del svc["metadata"]["name"]
                else:
                    del svc[field]
                self.assertFieldMissing(objs, ident, field)

    def test_leftover_patch_directive_and_duplicates(self):
        objs = valid_objects()
        find(objs, "HorizontalPodAutoscaler", "prune-worker")["$patch"] = "delete"
        self.assertError(objs, "OBJECT HorizontalPodAutoscaler/prune-worker: field $patch present")
        objs = valid_objects()
        objs.append(copy.deepcopy(find(objs, "Service", "prune-worker")))
        self.assertError(objs, "OBJECT Service/prune-worker: defined twice")

    # --- workloads -------------------------------------------------------------------------
    def test_container_fields(self):
        where = "spec.template.spec.containers[worker]"
        cases = [
            (lambda c: c.pop("image"), f"{where}.image"),
            (lambda c: c.pop("resources"), f"{where}.resources.requests"),
            (lambda c: c["resources"]["requests"].pop("memory"),
             f"{where}.resources.requests.memory"),
            (lambda c: c.pop("readinessProbe"), f"{where}.readinessProbe"),
            (lambda c: c.pop("livenessProbe"), f"{where}.livenessProbe"),
            (lambda c: c["readinessProbe"]["tcpSocket"].pop("port"),
             f"{where}.readinessProbe.tcpSocket.port"),
        ]
        for mutate, field in cases:
            with self.subTest(field=field):
                objs = valid_objects()
                mutate(container(objs, "Deployment", "prune-worker"))
                self.assertFieldMissing(objs, "Deployment/prune-worker", field)

    def test_probe_handlers_and_ports(self):
        objs = valid_objects()
        container(objs, "Deployment", "prune-worker")["livenessProbe"] = {"periodSeconds": 5}
        self.assertError(objs, "livenessProbe needs exactly one of exec, httpGet, tcpSocket, grpc")
        objs = valid_objects()
        container(objs, "Deployment", "prune-worker")["readinessProbe"] = {
            "tcpSocket": {"port": "grcp"}}
        self.assertError(objs, "probes port 'grcp', which the container does not name")

    def test_non_root(self):
        objs = valid_objects()
        del find(objs, "Deployment", "prune-worker")["spec"]["template"]["spec"]["securityContext"]
        self.assertFieldMissing(objs, "Deployment/prune-worker",
                                "spec.template.spec.containers[worker].securityContext."
                                "runAsNonRoot (true, pod or container)")
        objs = valid_objects()
        container(objs, "StatefulSet", "prune-scheduler")["securityContext"] = {"runAsUser": 0}
        self.assertError(objs, "securityContext.runAsUser (a non-zero uid, pod or container)")

    def test_selector_must_match_template(self):
        objs = valid_objects()
        selector = find(objs, "Deployment", "prune-worker")["spec"]["selector"]
        selector["matchLabels"]["component"] = "w"
        self.assertError(objs, "OBJECT Deployment/prune-worker: spec.selector")
        self.assertError(objs, "does not match the pod template's labels")
        objs = valid_objects()
        del find(objs, "Deployment", "prune-worker")["spec"]["selector"]
        self.assertFieldMissing(objs, "Deployment/prune-worker", "spec.selector")

    def test_statefulset_fields(self):
        ident = "StatefulSet/prune-scheduler"
        objs = valid_objects()
        del find(objs, "StatefulSet", "prune-scheduler")["spec"]["replicas"]
        self.assertFieldMissing(objs, ident, "spec.replicas")
        objs = valid_objects()
        find(objs, "StatefulSet", "prune-scheduler")["spec"]["replicas"] = 2
        self.assertError(objs, f"OBJECT {ident}: spec.replicas is 2, must be 1")
        objs = valid_objects()
        del find(objs, "StatefulSet", "prune-scheduler")["spec"]["serviceName"]
        self.assertFieldMissing(objs, ident, "spec.serviceName")
        objs = valid_objects()
        find(objs, "StatefulSet", "prune-scheduler")["spec"]["serviceName"] = "nope"
        self.assertError(objs, "spec.serviceName 'nope' names no Service in the render")
        objs = valid_objects()
        del find(objs, "StatefulSet", "prune-scheduler")["spec"]["volumeClaimTemplates"]
        self.assertFieldMissing(objs, ident, "spec.volumeClaimTemplates")
        self.assertError(objs, "volumeMounts names volume 'state', which the pod does not have")

    def test_secret_volume_must_be_rendered(self):
        objs = [o for o in valid_objects() if o["kind"] != "Secret"]
        self.assertError(objs, "OBJECT StatefulSet/prune-scheduler: volume tokens names Secret "
                         "'prunesvc-tokens-abc', which is not in the render")

    def test_env_references(self):
        objs = valid_objects()
        container(objs, "Deployment", "prune-worker")["env"].pop(0)
        self.assertError(objs, "uses $(DEVICE), which is not an env var of the container")

    # --- flags -----------------------------------------------------------------------------
    def test_flags_against_help(self):
        objs = valid_objects()
        container(objs, "StatefulSet", "prune-scheduler")["args"].append("--tls-crt=/x")
        self.assertError(objs, "flag --tls-crt is not a prune-scheduler flag")
        objs = valid_objects()  # inside `sh -c 'exec prune-worker ...'`
        c = container(objs, "Deployment", "prune-worker")
        c["args"][0] = c["args"][0].replace("--advertise-host", "--advertize-host")
        self.assertError(objs, "flag --advertize-host is not a prune-worker flag")
        objs = valid_objects()  # an exec probe's prunectl
        probe = container(objs, "StatefulSet", "prune-scheduler")["livenessProbe"]
        probe["exec"]["command"].append("--tls-cafile=x")
        self.assertError(objs, "livenessProbe.exec: flag --tls-cafile is not a prunectl flag")
        objs = valid_objects()
        container(objs, "StatefulSet", "prune-scheduler")["command"] = ["/opt/bin/prune-schedulr"]
        self.assertError(objs, "cannot check the flags of prune-schedulr: not in --bin-dir")
        # Without --bin-dir, flags are not checked.
        objs = valid_objects()
        container(objs, "StatefulSet", "prune-scheduler")["args"].append("--tls-crt=/x")
        self.assertEqual(self.errors(objs, bin_dir=False), [])

    # --- services, autoscalers, budgets, monitors ------------------------------------------
    def test_service(self):
        objs = valid_objects()
        find(objs, "Service", "prune-worker")["spec"]["selector"] = {"app": "other"}
        self.assertError(objs, "OBJECT Service/prune-worker: spec.selector {'app': 'other'} "
                         "matches no pod template")
        objs = valid_objects()
        del find(objs, "Service", "prune-worker")["spec"]["selector"]
        self.assertFieldMissing(objs, "Service/prune-worker", "spec.selector")
        objs = valid_objects()
        find(objs, "Service", "prune-worker")["spec"]["ports"][1]["targetPort"] = "metrix"
        self.assertError(objs, "targetPort 'metrix' is no named port of the pods it selects")

    def test_hpa(self):
        ident = "HorizontalPodAutoscaler/prune-worker"
        objs = valid_objects()
        hpa = find(objs, "HorizontalPodAutoscaler", "prune-worker")
        hpa["spec"]["scaleTargetRef"]["name"] = "x"
        self.assertError(objs, f"OBJECT {ident}: spec.scaleTargetRef names Deployment 'x', which "
                         "is not in the render")
        objs = valid_objects()
        find(objs, "HorizontalPodAutoscaler", "prune-worker")["spec"]["minReplicas"] = 5
        self.assertError(objs, f"OBJECT {ident}: spec.minReplicas 5 > spec.maxReplicas 4")
        objs = valid_objects()
        find(objs, "HorizontalPodAutoscaler", "prune-worker")["spec"]["minReplicas"] = 0
        self.assertError(objs, "spec.minReplicas is 0, must be at least 1")
        for field in ("minReplicas", "maxReplicas", "metrics", "behavior"):
            with self.subTest(field=field):
                objs = valid_objects()
                del find(objs, "HorizontalPodAutoscaler", "prune-worker")["spec"][field]
                self.assertFieldMissing(objs, ident, "spec.behavior.scaleDown."
                                        "stabilizationWindowSeconds" if field == "behavior"
                                        else f"spec.{field}")
        self.assertError(valid_objects(), "External metric 'prunesvc_worker_demand' is not defined "
                         "by the adapter rules", rules={"rules": {"external": [{
                             "seriesQuery": "x", "metricsQuery": "y",
                             "name": {"as": "prunesvc_step_queue_depth"}}]}})

    def test_autoscaler_count(self):
        objs = [o for o in valid_objects() if o["kind"] != "HorizontalPodAutoscaler"]
        self.assertError(objs, "OBJECT Deployment/prune-worker: no spec.replicas and no autoscaler")
        objs = valid_objects()
        objs.append({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                     "metadata": {"name": "prune-worker"},
                     "spec": {"scaleTargetRef": {"name": "prune-worker"}, "minReplicaCount": 2,
                              "maxReplicaCount": 1}})
        errs = self.errors(objs)
        self.assertIn("OBJECT Deployment/prune-worker: scaled by 2 autoscalers "
                      "(HorizontalPodAutoscaler/prune-worker, ScaledObject/prune-worker); they "
                      "would fight over its replicas", errs)
        self.assertIn("OBJECT ScaledObject/prune-worker: spec.minReplicaCount 2 > "
                      "spec.maxReplicaCount 1", errs)
        self.assertIn("OBJECT ScaledObject/prune-worker: field spec.triggers missing", errs)

    def test_pdb(self):
        objs = valid_objects()
        find(objs, "PodDisruptionBudget", "prune-worker")["spec"]["selector"] = {
            "matchLabels": {"component": "wrker"}}
        self.assertError(objs, "OBJECT PodDisruptionBudget/prune-worker: spec.selector")
        self.assertError(objs, "matches no workload in the render")
        objs = valid_objects()
        find(objs, "PodDisruptionBudget", "prune-worker")["spec"]["minAvailable"] = 1
        self.assertError(objs, "needs exactly one of spec.minAvailable, spec.maxUnavailable")
        objs = valid_objects()
        del find(objs, "PodDisruptionBudget", "prune-scheduler")["spec"]["selector"]
        self.assertFieldMissing(objs, "PodDisruptionBudget/prune-scheduler", "spec.selector")

    def test_service_monitor(self):
        objs = valid_objects()
        find(objs, "ServiceMonitor", "prunesvc")["spec"]["selector"] = {
            "matchLabels": {"app": "x"}}
        self.assertError(objs, "OBJECT ServiceMonitor/prunesvc: spec.selector {'matchLabels': "
                         "{'app': 'x'}} matches no Service")
        objs = valid_objects()
        find(objs, "ServiceMonitor", "prunesvc")["spec"]["endpoints"] = [{"port": "http"}]
        self.assertError(objs, "endpoint port 'http' is not a port of Service prune-scheduler")
        objs = valid_objects()
        find(objs, "ServiceMonitor", "prunesvc")["spec"]["endpoints"] = [{"targetPort": 9464}]
        self.assertFieldMissing(objs, "ServiceMonitor/prunesvc",
                                "spec.endpoints[].port (a named Service port)")

    # --- overlays --------------------------------------------------------------------------
    def test_gpu_overlay(self):
        where = "spec.template.spec.containers[worker]"
        objs = valid_objects()
        del container(objs, "Deployment", "prune-worker")["resources"]["limits"]
        self.assertFieldMissing(objs, "Deployment/prune-worker",
                                f"{where}.resources.limits.nvidia.com/gpu (1: one GPU per worker)")
        objs = valid_objects()
        container(objs, "Deployment", "prune-worker")["resources"]["limits"]["nvidia.com/gpu"] = 2
        self.assertError(objs, f"{where}.resources.limits.nvidia.com/gpu is 2, must be 1")
        objs = valid_objects()
        container(objs, "Deployment", "prune-worker")["env"][0]["value"] = "cpu"
        self.assertError(objs, "--device is 'cpu', a GPU worker needs cuda:0")
        objs = valid_objects()
        container(objs, "Deployment", "prune-worker")["image"] = "prunesvc-worker-cpu:0.1.0"
        self.assertError(objs, "GPU workers run prunesvc-worker-cuda")

    def test_cpu_overlay(self):
        objs = valid_objects()  # still the GPU worker
        errs = self.errors(objs, overlay="cpu")
        self.assertIn("OBJECT Deployment/prune-worker: spec.template.spec.containers[worker] asks "
                      "for nvidia.com/gpu in the cpu overlay", errs)
        self.assertTrue(any("--device is 'cuda:0', a CPU worker needs cpu" in e for e in errs),
                        errs)
        self.assertTrue(any("CPU workers run prunesvc-worker-cpu" in e for e in errs), errs)

    # --- command line ----------------------------------------------------------------------
    def run_cli(self, objects_or_text, *args):
        text = objects_or_text if isinstance(objects_or_text, str) else \
            yaml.safe_dump_all(objects_or_text)
        return subprocess.run([sys.executable, SCRIPT, *args], input=text, text=True,
                              capture_output=True, check=False)

    def test_cli_exit_codes(self):
        ok = self.run_cli(valid_objects(), "--overlay", "gpu", "--bin-dir", self.bin_dir)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn("k8s_check (gpu): 9 objects OK", ok.stderr)
        objs = valid_objects()
        del container(objs, "Deployment", "prune-worker")["image"]
        bad = self.run_cli(objs, "--overlay", "gpu")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("OBJECT Deployment/prune-worker: field "
                      "spec.template.spec.containers[worker].image missing", bad.stderr)
        self.assertIn("k8s_check (gpu): 1 problem(s) in 9 objects", bad.stderr)
        garbage = self.run_cli("kind: [unclosed\n")
        self.assertEqual(garbage.returncode, 1)
        self.assertIn("k8s_check: input is not YAML", garbage.stderr)
        usage = self.run_cli(valid_objects(), "--overlay", "tpu")
        self.assertEqual(usage.returncode, 2)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rules:
            rules.write("- not a mapping\n")
            rules.flush()
            r = self.run_cli(valid_objects(), "--adapter-rules", rules.name)
            self.assertEqual(r.returncode, 1)
            self.assertIn("not a YAML mapping", r.stderr)


if __name__ == "__main__":
    unittest.main()

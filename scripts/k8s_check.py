#!/usr/bin/python3
"""Checks a rendered prunesvc Kubernetes deployment (`kubectl kustomize deploy/k8s/overlays/X`).

Reads multi-document YAML (a file or stdin) and checks what kubectl would not notice before the
cluster does, or ever: fields each kind needs, names that must refer to each other, the device of
the overlay, and every --flag against the binaries' --help. Run by tests/k8s_render_test.sh.

  kubectl kustomize deploy/k8s/overlays/gpu | scripts/k8s_check.py --overlay gpu --bin-dir build/bin

What is checked (every problem is one line "OBJECT KIND/NAME: ..."; exit 1 if there is any):
- every object: apiVersion, kind, metadata.name; no two objects with one kind and name; no
  `$patch` key (kustomize v2.0.3 copies `$patch: delete` into its output instead of deleting).
- Deployment / StatefulSet / DaemonSet: spec.selector matches the pod template's labels; every
  container has image, resources.requests (cpu and memory), readinessProbe and livenessProbe
  with one handler (a named probe port must be a container port), runs as non-root (effective
  runAsNonRoot true and runAsUser > 0, pod or container level); every volumeMount names a volume
  (or a volumeClaimTemplate); every Secret, ConfigMap and PVC a volume names is in the render
  (the Secrets come from secretGenerator, so nothing is created out of band); every $(VAR) in
  command/args is an env var of the container.
- StatefulSet: replicas 1, serviceName naming a Service, volumeClaimTemplates.
  Deployment without replicas: exactly one autoscaler (HPA or KEDA ScaledObject) scales it; no
  workload is scaled by two.
- Service: its selector matches a pod template; every named targetPort is a port of those pods.
- HorizontalPodAutoscaler: scaleTargetRef names a workload of that kind; 1 <= minReplicas <=
  maxReplicas; metrics; behavior.scaleDown.stabilizationWindowSeconds. With --adapter-rules, every
  External metric is one the prometheus-adapter rules define.
- ScaledObject (keda.sh): scaleTargetRef names a Deployment; 1 <= minReplicaCount <=
  maxReplicaCount; triggers.
- PodDisruptionBudget: the selector matches a workload; exactly one of minAvailable /
  maxUnavailable.
- ServiceMonitor: the selector matches a Service, and each endpoint's port is a named port of
  every Service it selects.
- --overlay gpu*: every prune-worker container has limits nvidia.com/gpu: 1, --device=cuda[:N],
  image prunesvc-worker-cuda. --overlay cpu*: no container asks for nvidia.com/gpu; prune-worker
  runs --device=cpu with image prunesvc-worker-cpu.
- --bin-dir DIR: every --flag of a container's command/args (also inside `sh -c 'exec BIN ...'`)
  and of exec probes is listed by `DIR/BIN --help`, for BIN prune-scheduler, prune-worker,
  prunectl, ... (whatever the command names). A binary that is not in DIR is an error.
Malformed input (not YAML, a document that is not a mapping, no objects) is an error too.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys

import yaml

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
SHELLS = ("sh", "bash", "dash")
GPU_RESOURCE = "nvidia.com/gpu"
WORKER_BINARY = "prune-worker"


class MalformedInput(Exception):
    """The input is not a set of Kubernetes objects at all."""


def load(text):
    """The objects of a multi-document YAML text; MalformedInput when it cannot be read."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise MalformedInput(f"input is not YAML: {e}".replace("\n", " ")) from e
    objects = []
    for i, doc in enumerate(docs, 1):
        if doc is None:
            continue  # an empty document (a trailing ---)
        if not isinstance(doc, dict):
            raise MalformedInput(f"document {i} is a {type(doc).__name__}, not an object")
        objects.append(doc)
    if not objects:
        raise MalformedInput("no objects in the input")
    return objects


def get(obj, path, default=None):
    """obj["a"]["b"]... for path "a.b"; default when any step is missing or not a mapping."""
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def ident(obj):
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) and obj.get("kind") else "?"
    name = get(obj, "metadata.name")
    return f"{kind}/{name if isinstance(name, str) and name else '?'}"


def selector_matches(selector, labels):
    """A LabelSelector (matchLabels + matchExpressions) against a label map."""
    if not isinstance(selector, dict) or not isinstance(labels, dict):
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False  # an empty selector: refuse rather than select everything
    for k, v in match_labels.items():
        if labels.get(k) != v:
            return False
    for e in expressions:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def service_selector_matches(selector, labels):
    """A Service's plain selector map against a label map (an empty one selects nothing here)."""
    if not isinstance(selector, dict) or not selector or not isinstance(labels, dict):
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def pod_spec(workload):
    return get(workload, "spec.template.spec", {}) or {}


def pod_labels(workload):
    return get(workload, "spec.template.metadata.labels", {}) or {}


def all_containers(workload):
    spec = pod_spec(workload)
    out = []
    for field in ("initContainers", "containers"):
        for c in spec.get(field) or []:
            if isinstance(c, dict):
                out.append((field, c))
    return out


def help_flags(bin_dir, binary, cache):
    """The flag names `bin_dir/binary --help` lists; None when the binary is not there."""
    if binary in cache:
        return cache[binary]
    path = os.path.join(bin_dir, binary)
    flags = None
    if os.path.isfile(path) and os.access(path, os.X_OK):
        proc = subprocess.run([path, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60, check=False)
        flags = set(re.findall(r"^\s+--([A-Za-z0-9][A-Za-z0-9_-]*)\s*$", proc.stdout, re.M))
        flags |= {"help", "version"}  # built in (common/flags.h)
    cache[binary] = flags
    return flags


def command_line(argv):
    """(binary basename or None, [flag names], [argument strings]) of a container command line.

    `sh -c 'SCRIPT' ARG0 ARGS...` is looked through: the binary is the one SCRIPT execs, the
    flags are those in SCRIPT and in ARGS."""
    argv = [str(a) for a in argv]
    if not argv:
        return None, [], []
    binary = os.path.basename(argv[0])
    args = argv[1:]
    script_flags = []
    if binary in SHELLS and "-c" in args:
        i = args.index("-c")
        script = args[i + 1] if i + 1 < len(args) else ""
        rest = args[i + 2:]
        args = rest[1:]  # rest[0] is $0
        m = re.search(r"\bexec\s+(\S+)", script)
        try:
            words = shlex.split(script.replace("$$(", "$("))
        except ValueError:
            words = script.split()
        binary = os.path.basename(m.group(1)) if m else None
        script_flags = [w for w in words if w.startswith("--")]
    flags = []
    for a in script_flags + args:
        if a.startswith("--") and len(a) > 2:
            flags.append(a[2:].split("=", 1)[0])
    return binary, flags, script_flags + args


def flag_value(args, name):
    """The value of --name=VALUE / --name VALUE in args (the last one), or None."""
    value = None
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def expand(text, env):
    """The kubelet's $(VAR) expansion with the literal env values ($$ is an escaped $; a
    variable without a literal value stays as it is)."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        value = env.get(m.group(1))
        return value if value is not None else m.group(0)
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


def has_key(obj, key):
    """Whether a mapping anywhere inside obj has `key`."""
    if isinstance(obj, dict):
        return key in obj or any(has_key(v, key) for v in obj.values())
    if isinstance(obj, list):
        return any(has_key(v, key) for v in obj)
    return False


class Checker:
    def __init__(self, objects, overlay=None, bin_dir=None, adapter_rules=None):
        self.objects = objects
        self.overlay = overlay
        self.bin_dir = bin_dir
        self.adapter_rules = adapter_rules
        self.errors = []
        self.help_cache = {}
        self.by_kind = {}
        for o in objects:
            if isinstance(o.get("kind"), str):
                self.by_kind.setdefault(o["kind"], []).append(o)

    def err(self, obj, message):
        self.errors.append(f"OBJECT {ident(obj)}: {message}")

    def missing(self, obj, field):
        self.err(obj, f"field {field} missing")

    def names(self, kind):
        return {get(o, "metadata.name") for o in self.by_kind.get(kind, [])}

    def workloads(self):
        return [o for k in WORKLOAD_KINDS for o in self.by_kind.get(k, [])]

    # --- every object ---------------------------------------------------------------------
    def check_common(self):
        seen = set()
        for o in self.objects:
            for field in ("apiVersion", "kind", "metadata.name"):
                v = get(o, field)
                if not isinstance(v, str) or not v:
                    self.missing(o, field)
            if has_key(o, "$patch"):
                self.err(o, "field $patch present (kustomize v2.0.3 does not delete objects with "
                         "`$patch: delete`; it copies the patch into its output)")
            key = (o.get("kind"), get(o, "metadata.name"))
            if key in seen:
                self.err(o, "defined twice")
            seen.add(key)

    # --- workloads ------------------------------------------------------------------------
    def check_workload(self, w):
        kind = w.get("kind")
        selector = get(w, "spec.selector")
        labels = pod_labels(w)
        if not isinstance(selector, dict) or not selector:
            self.missing(w, "spec.selector")
        elif not labels:
            self.missing(w, "spec.template.metadata.labels")
        elif not selector_matches(selector, labels):
            self.err(w, f"spec.selector {selector} does not match the pod template's labels "
                     f"{labels}")
        spec = pod_spec(w)
        if not spec.get("containers"):
            self.missing(w, "spec.template.spec.containers")
        volumes = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
        claim_templates = {get(t, "metadata.name") for t in get(w, "spec.volumeClaimTemplates")
                           or [] if isinstance(t, dict)}
        for field, c in all_containers(w):
            self.check_container(w, field, c, spec, set(volumes) | claim_templates)
        for name, v in volumes.items():
            self.check_volume_source(w, name, v)
        if kind == "StatefulSet":
            if get(w, "spec.replicas") is None:
                self.missing(w, "spec.replicas")
            elif get(w, "spec.replicas") != 1:
                self.err(w, f"spec.replicas is {get(w, 'spec.replicas')}, must be 1 (the "
                         "scheduler's state dir is locked against a second one)")
            service = get(w, "spec.serviceName")
            if not service:
                self.missing(w, "spec.serviceName")
            elif service not in self.names("Service"):
                self.err(w, f"spec.serviceName {service!r} names no Service in the render")
            if not get(w, "spec.volumeClaimTemplates"):
                self.missing(w, "spec.volumeClaimTemplates")

    def check_volume_source(self, w, name, v):
        refs = (("secret", "secretName", "Secret"), ("configMap", "name", "ConfigMap"),
                ("persistentVolumeClaim", "claimName", "PersistentVolumeClaim"))
        for source, key, kind in refs:
            if source in v:
                ref = get(v, f"{source}.{key}")
                if not ref:
                    self.missing(w, f"spec.template.spec.volumes[{name}].{source}.{key}")
                elif ref not in self.names(kind):
                    self.err(w, f"volume {name} names {kind} {ref!r}, which is not in the render")

    def check_container(self, w, field, c, spec, volume_names):
        cname = c.get("name") or "?"
        where = f"spec.template.spec.{field}[{cname}]"
        if not c.get("name"):
            self.missing(w, f"spec.template.spec.{field}[].name")
        if not c.get("image"):
            self.missing(w, f"{where}.image")
        requests = get(c, "resources.requests")
        if not isinstance(requests, dict) or not requests:
            self.missing(w, f"{where}.resources.requests")
        else:
            for r in ("cpu", "memory"):
                if r not in requests:
                    self.missing(w, f"{where}.resources.requests.{r}")
        ports = {p.get("name") for p in c.get("ports") or [] if isinstance(p, dict)}
        if field == "containers":
            for probe in ("readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if not isinstance(p, dict):
                    self.missing(w, f"{where}.{probe}")
                    continue
                handlers = [h for h in PROBE_HANDLERS if h in p]
                if len(handlers) != 1:
                    self.err(w, f"{where}.{probe} needs exactly one of {', '.join(PROBE_HANDLERS)}"
                             f" (has {handlers or 'none'})")
                    continue
                port = get(p, f"{handlers[0]}.port")
                if handlers[0] != "exec" and port is None:
                    self.missing(w, f"{where}.{probe}.{handlers[0]}.port")
                if isinstance(port, str) and port not in ports:
                    self.err(w, f"{where}.{probe} probes port {port!r}, which the container does "
                             "not name")
                if handlers[0] == "exec":
                    self.check_flags(w, f"{where}.{probe}.exec",
                                     get(p, "exec.command") or [], {})
        # Effective security context: the container's fields override the pod's.
        pod_sc = spec.get("securityContext") or {}
        sc = dict(pod_sc)
        sc.update({k: v for k, v in (c.get("securityContext") or {}).items()
                   if k in ("runAsNonRoot", "runAsUser")})
        if sc.get("runAsNonRoot") is not True:
            self.missing(w, f"{where}.securityContext.runAsNonRoot (true, pod or container)")
        if not isinstance(sc.get("runAsUser"), int) or sc.get("runAsUser") <= 0:
            self.missing(w, f"{where}.securityContext.runAsUser (a non-zero uid, pod or container)")
        for m in c.get("volumeMounts") or []:
            if isinstance(m, dict) and m.get("name") not in volume_names:
                self.err(w, f"{where}.volumeMounts names volume {m.get('name')!r}, which the pod "
                         "does not have")
        env = {}
        for e in c.get("env") or []:
            if isinstance(e, dict) and e.get("name"):
                env[e["name"]] = str(e["value"]) if "value" in e else None
        argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        for a in argv:
            for var in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                if var not in env:
                    self.err(w, f"{where} uses $({var}), which is not an env var of the container "
                             "(the kubelet would pass it literally)")
        self.check_flags(w, where, argv, env)
        self.check_device(w, where, c, argv, env)

    def check_flags(self, w, where, argv, env):
        if not self.bin_dir or not argv:
            return
        binary, flags, _ = command_line(argv)
        if binary is None:
            return
        known = help_flags(self.bin_dir, binary, self.help_cache)
        if known is None:
            if binary.startswith("prune"):
                self.err(w, f"{where}: cannot check the flags of {binary}: not in --bin-dir "
                         f"{self.bin_dir}")
            return
        for f in flags:
            if f in known or (f.startswith("no") and f[2:] in known):
                continue
            self.err(w, f"{where}: flag --{f} is not a {binary} flag ({binary} --help lists no "
                     "such flag)")

    def check_device(self, w, where, c, argv, env):
        if not self.overlay:
            return
        binary, _, args = command_line(argv)
        limits = get(c, "resources.limits") or {}
        requests = get(c, "resources.requests") or {}
        image = str(c.get("image") or "")
        if self.overlay.startswith("gpu"):
            if binary != WORKER_BINARY:
                return
            if GPU_RESOURCE not in limits:
                self.missing(w, f"{where}.resources.limits.{GPU_RESOURCE} (1: one GPU per worker)")
            elif str(limits[GPU_RESOURCE]) != "1":
                self.err(w, f"{where}.resources.limits.{GPU_RESOURCE} is {limits[GPU_RESOURCE]}, "
                         "must be 1 (one GPU per worker: the pod sees it as cuda:0)")
            if GPU_RESOURCE in requests and str(requests[GPU_RESOURCE]) != "1":
                self.err(w, f"{where}.resources.requests.{GPU_RESOURCE} must equal the limit, 1")
            device = flag_value([expand(a, env) for a in args], "device")
            if device is None or not re.fullmatch(r"cuda(:\d+)?", device):
                self.err(w, f"{where}: --device is {device!r}, a GPU worker needs cuda:0")
            if image and not re.search(r"(^|/)prunesvc-worker-cuda(:|@|$)", image):
                self.err(w, f"{where}.image is {image!r}, GPU workers run prunesvc-worker-cuda")
        elif self.overlay.startswith("cpu"):
            if GPU_RESOURCE in limits or GPU_RESOURCE in requests:
                self.err(w, f"{where} asks for {GPU_RESOURCE} in the cpu overlay")
            if binary != WORKER_BINARY:
                return
            device = flag_value([expand(a, env) for a in args], "device")
            if device not in (None, "cpu"):
                self.err(w, f"{where}: --device is {device!r}, a CPU worker needs cpu")
            if image and not re.search(r"(^|/)prunesvc-worker-cpu(:|@|$)", image):
                self.err(w, f"{where}.image is {image!r}, CPU workers run prunesvc-worker-cpu")

    # --- services, autoscalers, budgets, monitors ----------------------------------------
    def check_service(self, s):
        selector = get(s, "spec.selector")
        if not isinstance(selector, dict) or not selector:
            self.missing(s, "spec.selector")
            return
        pods = [w for w in self.workloads() if service_selector_matches(selector, pod_labels(w))]
        if not pods:
            self.err(s, f"spec.selector {selector} matches no pod template in the render")
            return
        ports = get(s, "spec.ports")
        if not ports:
            self.missing(s, "spec.ports")
            return
        container_ports = set()
        for w in pods:
            for _, c in all_containers(w):
                container_ports |= {p.get("name") for p in c.get("ports") or []
                                    if isinstance(p, dict)}
        for p in ports:
            if not isinstance(p, dict) or "port" not in p:
                self.missing(s, "spec.ports[].port")
                continue
            if not p.get("name"):
                self.missing(s, f"spec.ports[{p.get('port')}].name")
            target = p.get("targetPort")
            if isinstance(target, str) and target not in container_ports:
                self.err(s, f"port {p.get('name')}: targetPort {target!r} is no named port of the "
                         "pods it selects")

    @staticmethod
    def autoscaler_target(a):
        """(kind, name) an HPA or a ScaledObject scales (KEDA's kind defaults to Deployment)."""
        ref = get(a, "spec.scaleTargetRef") or {}
        default_kind = None if a.get("kind") == "HorizontalPodAutoscaler" else "Deployment"
        return ref.get("kind", default_kind), ref.get("name")

    def check_autoscalers(self):
        targets = {}
        for a in self.by_kind.get("HorizontalPodAutoscaler", []):
            kind, name = self.autoscaler_target(a)
            if not kind or not name:
                self.missing(a, "spec.scaleTargetRef.kind/name")
            elif name not in self.names(kind):
                self.err(a, f"spec.scaleTargetRef names {kind} {name!r}, which is not in the "
                         "render")
            else:
                targets.setdefault((kind, name), []).append(ident(a))
            self.check_min_max(a, "spec.minReplicas", "spec.maxReplicas")
            if not get(a, "spec.metrics"):
                self.missing(a, "spec.metrics")
            if get(a, "spec.behavior.scaleDown.stabilizationWindowSeconds") is None:
                self.missing(a, "spec.behavior.scaleDown.stabilizationWindowSeconds")
        for a in self.by_kind.get("ScaledObject", []):
            kind, name = self.autoscaler_target(a)
            if not name:
                self.missing(a, "spec.scaleTargetRef.name")
            elif name not in self.names(kind):
                self.err(a, f"spec.scaleTargetRef names {kind} {name!r}, which is not in the "
                         "render")
            else:
                targets.setdefault((kind, name), []).append(ident(a))
            self.check_min_max(a, "spec.minReplicaCount", "spec.maxReplicaCount")
            if not get(a, "spec.triggers"):
                self.missing(a, "spec.triggers")
        for (kind, name), scalers in targets.items():
            if len(scalers) > 1:
                self.errors.append(f"OBJECT {kind}/{name}: scaled by {len(scalers)} autoscalers "
                                   f"({', '.join(scalers)}); they would fight over its replicas")
        for d in self.by_kind.get("Deployment", []):
            if get(d, "spec.replicas") is None and ("Deployment", get(d, "metadata.name")) \
                    not in targets:
                self.err(d, "no spec.replicas and no autoscaler: it would run one pod")

    def check_min_max(self, a, min_field, max_field):
        lo, hi = get(a, min_field), get(a, max_field)
        if not isinstance(lo, int):
            self.missing(a, min_field)
        elif lo < 1:
            self.err(a, f"{min_field} is {lo}, must be at least 1")
        if not isinstance(hi, int):
            self.missing(a, max_field)
        elif isinstance(lo, int) and lo > hi:
            self.err(a, f"{min_field} {lo} > {max_field} {hi}")

    def check_pdb(self, p):
        selector = get(p, "spec.selector")
        if not isinstance(selector, dict) or not selector:
            self.missing(p, "spec.selector")
        elif not any(selector_matches(selector, pod_labels(w)) for w in self.workloads()):
            self.err(p, f"spec.selector {selector} matches no workload in the render")
        bounds = [f for f in ("minAvailable", "maxUnavailable") if get(p, f"spec.{f}") is not None]
        if len(bounds) != 1:
            self.err(p, "needs exactly one of spec.minAvailable, spec.maxUnavailable "
                     f"(has {bounds or 'none'})")

    def check_service_monitor(self, m):
        selector = get(m, "spec.selector")
        if not isinstance(selector, dict) or not selector:
            self.missing(m, "spec.selector")
            return
        services = [s for s in self.by_kind.get("Service", [])
                    if selector_matches(selector, get(s, "metadata.labels") or {})]
        if not services:
            self.err(m, f"spec.selector {selector} matches no Service in the render")
            return
        endpoints = get(m, "spec.endpoints")
        if not endpoints:
            self.missing(m, "spec.endpoints")
            return
        for e in endpoints:
            port = e.get("port") if isinstance(e, dict) else None
            if not port:
                self.missing(m, "spec.endpoints[].port (a named Service port)")
                continue
            for s in services:
                names = {p.get("name") for p in get(s, "spec.ports") or [] if isinstance(p, dict)}
                if port not in names:
                    self.err(m, f"endpoint port {port!r} is not a port of Service "
                             f"{get(s, 'metadata.name')} (it has {sorted(n for n in names if n)})")

    def check_adapter_rules(self):
        if not self.adapter_rules:
            return
        rules = self.adapter_rules
        external = get(rules, "rules.external") or rules.get("externalRules") \
            if isinstance(rules, dict) else None
        if not isinstance(external, list) or not external:
            self.errors.append("adapter rules: no rules.external (or externalRules) list")
            return
        defined = set()
        for i, r in enumerate(external):
            name = get(r, "name.as") if isinstance(r, dict) else None
            for field in ("seriesQuery", "metricsQuery"):
                if not isinstance(r, dict) or not r.get(field):
                    self.errors.append(f"adapter rules: external rule {i}: field {field} missing")
            if not name:
                self.errors.append(f"adapter rules: external rule {i}: field name.as missing")
            else:
                defined.add(name)
        for a in self.by_kind.get("HorizontalPodAutoscaler", []):
            for metric in get(a, "spec.metrics") or []:
                if metric.get("type") == "External":
                    name = get(metric, "external.metric.name")
                    if name not in defined:
                        self.err(a, f"External metric {name!r} is not defined by the adapter rules "
                                 f"(they define {sorted(defined)})")

    def run(self):
        self.check_common()
        for w in self.workloads():
            self.check_workload(w)
        for s in self.by_kind.get("Service", []):
            self.check_service(s)
        self.check_autoscalers()
        for p in self.by_kind.get("PodDisruptionBudget", []):
            self.check_pdb(p)
        for m in self.by_kind.get("ServiceMonitor", []):
            self.check_service_monitor(m)
        self.check_adapter_rules()
        return self.errors


def check(objects, overlay=None, bin_dir=None, adapter_rules=None):
    """The problems of a rendered object list (empty when it passes)."""
    return Checker(objects, overlay, bin_dir, adapter_rules).run()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", nargs="?", default="-", help="rendered YAML (default: stdin)")
    parser.add_argument("--overlay", help="cpu, gpu or gpu-keda: which device rules apply "
                        "(by prefix: cpu* or gpu*)")
    parser.add_argument("--bin-dir", help="directory with prune-scheduler, prune-worker, prunectl:"
                        " every --flag is checked against their --help")
    parser.add_argument("--adapter-rules", help="prometheus-adapter rules (Helm values or adapter "
                        "config) that must define every HPA External metric")
    args = parser.parse_args(argv)
    if args.overlay and not args.overlay.startswith(("cpu", "gpu")):
        parser.error(f"--overlay {args.overlay}: expected cpu* or gpu*")
    try:
        if args.input == "-":
            text = sys.stdin.read()
        else:
            with open(args.input) as f:
                text = f.read()
        objects = load(text)
        rules = None
        if args.adapter_rules:
            with open(args.adapter_rules) as f:
                rules = yaml.safe_load(f)
            if not isinstance(rules, dict):
                raise MalformedInput(f"{args.adapter_rules}: not a YAML mapping")
    except (OSError, MalformedInput, yaml.YAMLError) as e:
        print(f"k8s_check: {e}", file=sys.stderr)
        return 1
    errors = check(objects, args.overlay, args.bin_dir, rules)
    for e in errors:
        print(e, file=sys.stderr)
    label = f" ({args.overlay})" if args.overlay else ""
    if errors:
        print(f"k8s_check{label}: {len(errors)} problem(s) in {len(objects)} objects",
              file=sys.stderr)
        return 1
    print(f"k8s_check{label}: {len(objects)} objects OK", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

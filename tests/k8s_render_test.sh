#!/usr/bin/env bash
# deploy/k8s renders with Debian 12's only kustomize (kubectl 1.20, kustomize v2.0.3) and the
# result is a consistent deployment (scripts/k8s_check.py, flags checked against the binaries).
#
# Usage: tests/k8s_render_test.sh --bin-dir DIR [--source-dir REPO] [--python PY]
#   DIR: prune-scheduler, prune-worker and prunectl (their --help lists the valid flags).
# For each overlay (cpu, gpu, gpu-keda): `kubectl kustomize deploy/k8s/overlays/NAME` with
# Debian's kubectl (scripts/debian_kubectl.sh), piped into k8s_check.py --overlay NAME.
# Then: a site overlay replacing a generated Secret (the documented way to supply real
# credentials) renders and the workloads mount the replaced Secret; the PromQL of the
# prometheus-adapter rules and of the KEDA trigger parses (promtool); and a deliberately broken
# render fails the check with the expected messages (so a check that passes everything fails
# here). Exit 0 when all pass, 1 otherwise (with what failed), 2 on bad usage.
# Debian's kubectl missing is a failure, not a skip: run scripts/bootstrap.sh.
set -uo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir=""
python=/usr/bin/python3
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --source-dir) src=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    *) echo "usage: $0 --bin-dir DIR [--source-dir REPO] [--python PY]" >&2; exit 2 ;;
  esac
done
if [[ -z "$bin_dir" || ! -d "$bin_dir" ]]; then
  echo "usage: $0 --bin-dir DIR [--source-dir REPO] [--python PY] (DIR: the built binaries)" >&2
  exit 2
fi

failures=()
fail() {
  echo "k8s_render_test: FAIL: $*" >&2
  failures+=("$*")
}

if ! kubectl=$("$src/scripts/debian_kubectl.sh"); then
  echo "k8s_render_test: FAIL: Debian's kubectl 1.20 (package kubernetes-client) is missing;" \
    "run scripts/bootstrap.sh (it calls scripts/debian_kubectl.sh --install)" >&2
  exit 1
fi
echo "k8s_render_test: renderer $kubectl ($("$kubectl" version --client --short 2>/dev/null))" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check=("$python" "$src/scripts/k8s_check.py")
rules="$src/deploy/k8s/prometheus-adapter-rules.yaml"

for overlay in cpu gpu gpu-keda; do
  if ! "$kubectl" kustomize "$src/deploy/k8s/overlays/$overlay" >"$tmp/$overlay.yaml" \
    2>"$tmp/$overlay.err"; then
    fail "kubectl kustomize deploy/k8s/overlays/$overlay: $(cat "$tmp/$overlay.err")"
    continue
  fi
  if ! "${check[@]}" --overlay "$overlay" --bin-dir "$bin_dir" --adapter-rules "$rules" \
    "$tmp/$overlay.yaml"; then
    fail "k8s_check.py --overlay $overlay (messages above)"
  fi
done

# A site overlay with real credentials, as docs/deploy.md shows: kustomize v2.0.3 wants its base
# as a relative path and the files inside the overlay.
site="$tmp/site"
mkdir -p "$site"
printf -- '-----BEGIN CERTIFICATE-----\nsite-ca\n-----END CERTIFICATE-----\n' >"$site/ca.pem"
printf 'site-worker-token-0123456789abcdef\n' >"$site/worker-token"
cat >"$site/kustomization.yaml" <<EOF
bases:
  - $(realpath --relative-to="$site" "$src/deploy/k8s/overlays/gpu")
secretGenerator:
  - name: prunesvc-worker-token
    behavior: replace
    files: [worker-token=worker-token]
EOF
if ! "$kubectl" kustomize "$site" >"$tmp/site.yaml" 2>"$tmp/site.err"; then
  fail "a site overlay replacing prunesvc-worker-token does not render: $(cat "$tmp/site.err")"
elif ! "$python" - "$tmp/site.yaml" <<'EOF'; then
import base64, sys, yaml
objs = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
tokens = [o for o in objs if o["kind"] == "Secret"
          and o["metadata"]["name"].startswith("prunesvc-worker-token")]
assert len(tokens) == 1, f"expected one worker-token Secret, got {len(tokens)}"
name = tokens[0]["metadata"]["name"]
data = base64.b64decode(tokens[0]["data"]["worker-token"]).decode()
assert data.startswith("site-worker-token"), f"{name} holds {data!r}, not the site's token"
for o in objs:
    if o["kind"] in ("Deployment", "StatefulSet"):
        names = [v["secret"]["secretName"] for v in o["spec"]["template"]["spec"]["volumes"]
                 if "secret" in v and v["secret"]["secretName"].startswith("prunesvc-worker-token")]
        assert names == [name], f"{o['kind']}/{o['metadata']['name']} mounts {names}, not {name}"
EOF
  fail "the site overlay's Secret is not the one the workloads mount (see above)"
fi

# The PromQL the autoscalers send, with the labels prometheus-adapter fills in.
if ! command -v promtool >/dev/null; then
  fail "promtool (Debian package prometheus) is missing: run scripts/bootstrap.sh"
elif ! "$python" - "$rules" "$tmp/gpu-keda.yaml" >"$tmp/queries.yml" <<'EOF'; then
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
exprs = [r["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="prunesvc"')
         for r in rules["rules"]["external"]]
for o in yaml.safe_load_all(open(sys.argv[2])):
    if o and o["kind"] == "ScaledObject":
        exprs += [t["metadata"]["query"] for t in o["spec"]["triggers"]
                  if t["type"] == "prometheus"]
assert len(exprs) >= 3, exprs
print(yaml.safe_dump({"groups": [{"name": "autoscaling", "rules": [
    {"record": f"prunesvc:autoscaling_query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
EOF
  fail "could not collect the autoscaling queries"
elif ! promtool check rules "$tmp/queries.yml" >"$tmp/promtool.out" 2>&1; then
  fail "the autoscaling PromQL does not parse: $(cat "$tmp/promtool.out")"
fi

# The check must fail a broken render, naming each problem: a typo in a flag, a probe and a
# Secret gone, a second autoscaler on the workers.
if [[ -s "$tmp/gpu.yaml" ]]; then
  "$python" - "$tmp/gpu.yaml" >"$tmp/broken.yaml" <<'EOF'
import sys, yaml
objs = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
out = []
for o in objs:
    if o["kind"] == "StatefulSet":
        c = o["spec"]["template"]["spec"]["containers"][0]
        c["args"] = [a.replace("--tls-cert=", "--tls-crt=") for a in c["args"]]
        del c["livenessProbe"]
    if o["kind"] == "Secret" and o["metadata"]["name"].startswith("prunesvc-tokens"):
        continue
    out.append(o)
    if o["kind"] == "HorizontalPodAutoscaler":
        out.append({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                    "metadata": {"name": "extra"},
                    "spec": {"scaleTargetRef": {"name": "prune-worker"}, "minReplicaCount": 1,
                             "maxReplicaCount": 2, "triggers": [{"type": "cpu"}]}})
print(yaml.safe_dump_all(out))
EOF
  if "${check[@]}" --overlay gpu --bin-dir "$bin_dir" "$tmp/broken.yaml" 2>"$tmp/broken.err"; then
    fail "k8s_check.py passed a deliberately broken render"
  else
    for want in "flag --tls-crt is not a prune-scheduler flag" \
      "containers[scheduler].livenessProbe missing" \
      "names Secret 'prunesvc-tokens-" \
      "scaled by 2 autoscalers"; do
      grep -qF -- "$want" "$tmp/broken.err" ||
        fail "the broken render's check does not say \"$want\": $(cat "$tmp/broken.err")"
    done
  fi
fi

if ((${#failures[@]})); then
  echo "k8s_render_test: ${#failures[@]} failure(s)" >&2
  exit 1
fi
echo "k8s_render_test: OK (cpu, gpu, gpu-keda rendered by kubectl 1.20 and checked)" >&2

#!/usr/bin/env bash
# The README's first command: install what is missing, build, and run the main job end to end —
# pruning as a service:
#  1. prune-scheduler --local-workers=2 (two prune-worker processes on loopback), checked SERVING;
#  2. 64 shapes-vqa search samples and 1,000 held-out samples (disjoint splits) uploaded with
#     `prunectl upload-dataset`;
#  3. an EFFICIENTLLAVA job (the default search) and, for comparison, a UNIFORM job at the same
#     FLOPs budget submitted on the bundled tiny model (models/tiny-llava-shapes), watched to the
#     end with `prunectl watch`, fetched with `prunectl fetch` (sha256 and manifest verified);
#  4. the search's artifact evaluated with `llava-eval` on the held-out set (it must agree with
#     report.json); the summary compares dense, the search and UNIFORM.
# Options via environment: DEMO_BUDGET (0.5), DEMO_GENERATIONS (12), DEMO_KEEP=1 keeps the work dir.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

"$ROOT/scripts/bootstrap.sh"
configure_and_build prune-scheduler prune-worker prunectl shapes-vqa llava-eval prune-local
BIN="$BUILD_DIR/bin"
MODEL="${DEMO_MODEL:-$ROOT/models/tiny-llava-shapes}"
BUDGET="${DEMO_BUDGET:-0.5}"
GENERATIONS="${DEMO_GENERATIONS:-12}"
PY=/usr/bin/python3

work=$(mktemp -d /tmp/prunesvc-demo.XXXXXX)
sched_pid=""
cleanup() {
  if [[ -n "$sched_pid" ]] && kill -0 "$sched_pid" 2>/dev/null; then
    kill -TERM "$sched_pid"
    wait "$sched_pid" || true
  fi
  if [[ "${DEMO_KEEP:-0}" == 1 ]]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
json() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$@"; }

# --- 1. the service ----------------------------------------------------------------------
if [[ ! -f "$MODEL/config.json" ]]; then
  log "models/tiny-llava-shapes is missing: nothing to prune"
  exit 1
fi
log "start prune-scheduler --local-workers=2 (logs: $work/scheduler.log)"
"$BIN/prune-scheduler" --host=127.0.0.1 --port=0 --metrics-port=0 \
  --state-dir="$work/state" --local-workers=2 --allowed-model-roots="$(dirname "$MODEL")" \
  --ready-file="$work/ready.json" >"$work/scheduler.log" 2>&1 &
sched_pid=$!
for _ in $(seq 1 300); do
  [[ -s "$work/ready.json" ]] && break
  kill -0 "$sched_pid" 2>/dev/null || { cat "$work/scheduler.log"; exit 1; }
  sleep 0.1
done
addr="127.0.0.1:$(json "$work/ready.json" 'd["port"]')"
printf 'scheduler %s  ' "$addr"
"$BIN/prunectl" health --addr="$addr"
for _ in $(seq 1 300); do
  n=$("$BIN/prunectl" workers --addr="$addr" --json |
    "$PY" -c 'import json,sys; print(sum(1 for x in json.load(sys.stdin).get("workers",[]) if x.get("state")=="WORKER_IDLE"))')
  [[ "$n" -ge 2 ]] && break
  sleep 0.1
done
[[ "$n" -ge 2 ]] || { echo "the local workers did not register"; cat "$work/scheduler.log"; exit 1; }
echo "workers   $n idle"

# --- 2. data ------------------------------------------------------------------------------
log "shapes-vqa: 64 search samples (split search) and 1,000 held-out samples (split eval)"
"$BIN/shapes-vqa" --seed=1000 --split=search --count=64 --out="$work/search" 2>/dev/null
"$BIN/shapes-vqa" --seed=2000 --split=eval --count=1000 --out="$work/heldout" 2>/dev/null
ds=$("$BIN/prunectl" upload-dataset "$work/search" --addr="$addr")
ev=$("$BIN/prunectl" upload-dataset "$work/heldout" --addr="$addr")
echo "datasets  search $ds"
echo "          held-out $ev"

# --- 3. the jobs --------------------------------------------------------------------------
submit() {
  "$BIN/prunectl" submit --addr="$addr" --model="$MODEL" --dataset="$ds" --eval-dataset="$ev" \
    --flops-budget="$BUDGET" --seed=0 "$@"
}
job=$(submit --generations="$GENERATIONS" --label=demo=search)
uniform=$(submit --strategy=UNIFORM --label=demo=uniform)
log "job $job: EFFICIENTLLAVA search (defaults) at FLOPs budget $BUDGET; job $uniform: UNIFORM"
"$BIN/prunectl" watch "$job" --addr="$addr"
"$BIN/prunectl" watch "$uniform" --addr="$addr" >/dev/null
"$BIN/prunectl" fetch "$job" --out="$work/pruned" --addr="$addr"
"$BIN/prunectl" fetch "$uniform" --out="$work/uniform" --addr="$addr"

# --- 4. evaluation ------------------------------------------------------------------------
log "llava-eval on the held-out set: the search's artifact, as a user would check it"
"$BIN/llava-eval" --model="$work/pruned/model" --samples="$work/heldout" --json >"$work/pruned.json"

log "summary (held-out accuracy on 1,000 samples the search never saw)"
"$PY" - "$work" <<'PYEOF'
import json, sys
w = sys.argv[1]
load = lambda n: json.load(open(f"{w}/{n}"))
pruned = load("pruned.json")
rep, urep = load("pruned/report.json"), load("uniform/report.json")
# Dense and UNIFORM accuracies as the workers measured them (each Finalize reloads its artifact
# and scores the held-out set); the search's artifact is also re-scored here with llava-eval.
print(f"{'':26}{'dense':>10}{'search':>10}{'UNIFORM':>10}")
print(f"{'held-out accuracy':26}{rep['dense']['accuracy']:>10.3f}{pruned['accuracy']:>10.3f}"
      f"{urep['accuracy']:>10.3f}")
print(f"{'FLOPs ratio':26}{1.0:>10.3f}{rep['flops_ratio']:>10.3f}{urep['flops_ratio']:>10.3f}")
d, p = rep["dense"], rep["pruned"]
print(f"{'latency ratio (worker)':26}{1.0:>10.3f}{p['latency_ms'] / d['latency_ms']:>10.3f}"
      f"{urep['pruned']['latency_ms'] / urep['dense']['latency_ms']:>10.3f}"
      "   (unstructured zeros: no dense-kernel speed-up)")
assert abs(pruned["accuracy"] - rep["accuracy"]) < 1e-9, "llava-eval disagrees with report.json"
print("policy (ratio per unit):", " ".join(f"{u['name']}={u['ratio']:.2f}" for u in rep["policy"]["units"]))
print("artifact: pruned model, policy.json, report.json, report.html (open it in a browser),"
      " MANIFEST.sha256, README.md (model card)")
PYEOF

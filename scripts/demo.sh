#!/usr/bin/env bash
# The README's first command: install what is missing, build, and run the main job end to end.
#  1. the servers: a scheduler with one local worker, both checked SERVING;
#  2. the pruning job on the bundled tiny model (models/tiny-llava-shapes): 64 search samples and
#     1,000 held-out samples from disjoint shapes-vqa splits, an EFFICIENTLLAVA search at FLOPs
#     budget 0.5 (prune-local, the whole search in one process), then dense vs pruned held-out
#     accuracy, FLOPs ratio and latency ratio.
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

# --- 1. servers ---------------------------------------------------------------------------
log "start prune-scheduler --local-workers=1 (logs: $work/scheduler.log)"
"$BIN/prune-scheduler" --host=127.0.0.1 --port=0 --metrics-port=0 \
  --state-dir="$work/state" --local-workers=1 --ready-file="$work/ready.json" \
  >"$work/scheduler.log" 2>&1 &
sched_pid=$!
for _ in $(seq 1 300); do
  [[ -s "$work/ready.json" ]] && break
  kill -0 "$sched_pid" 2>/dev/null || { cat "$work/scheduler.log"; exit 1; }
  sleep 0.1
done
port=$(json "$work/ready.json" 'd["port"]')
printf 'scheduler 127.0.0.1:%s  ' "$port"
"$BIN/prunectl" health --addr="127.0.0.1:$port"
worker_addr=""
for _ in $(seq 1 200); do
  worker_addr=$("$BIN/prunectl" workers --addr="127.0.0.1:$port" --json |
    "$PY" -c 'import json,sys; w=[x for x in json.load(sys.stdin).get("workers",[]) if x.get("state")=="WORKER_IDLE"]; print(w[0]["address"] if w else "")')
  [[ -n "$worker_addr" ]] && break
  sleep 0.1
done
[[ -n "$worker_addr" ]] || { echo "no worker registered"; cat "$work/scheduler.log"; exit 1; }
printf 'worker    %s  ' "$worker_addr"
"$BIN/prunectl" health --addr="$worker_addr"
kill -TERM "$sched_pid"; wait "$sched_pid" || true; sched_pid=""

# --- 2. the pruning job -------------------------------------------------------------------
if [[ ! -f "$MODEL/config.json" ]]; then
  log "models/tiny-llava-shapes is not trained yet (issue 4): the pruning job is skipped"
  exit 0
fi
log "shapes-vqa: 64 search samples (split search) and 1,000 held-out samples (split eval)"
"$BIN/shapes-vqa" --seed=1000 --split=search --count=64 --out="$work/search" 2>/dev/null
"$BIN/shapes-vqa" --seed=2000 --split=eval --count=1000 --out="$work/heldout" 2>/dev/null

log "dense model on the held-out set"
"$BIN/llava-eval" --model="$MODEL" --samples="$work/heldout" --json >"$work/dense.json"

log "prune-local: EFFICIENTLLAVA search (WANDA masks), SPARSEGPT final masks, FLOPs budget $BUDGET"
"$BIN/prune-local" --model="$MODEL" --samples="$work/search" --eval-samples="$work/heldout" \
  --flops-budget="$BUDGET" --generations="$GENERATIONS" --seed=0 --out="$work/pruned"

log "summary (held-out accuracy on 1,000 samples the search never saw)"
"$PY" - "$work/dense.json" "$work/pruned/report.json" <<'PYEOF'
import json, sys
dense = json.load(open(sys.argv[1]))
rep = json.load(open(sys.argv[2]))
d, p = rep["dense"], rep["pruned"]
print(f"{'':22}{'dense':>10}{'pruned':>10}")
print(f"{'held-out accuracy':22}{dense['accuracy']:>10.3f}{rep['accuracy']:>10.3f}")
print(f"{'FLOPs ratio':22}{1.0:>10.3f}{rep['flops_ratio']:>10.3f}")
print(f"{'latency (ms/batch)':22}{d['latency_ms']:>10.2f}{p['latency_ms']:>10.2f}"
      f"   ratio {p['latency_ms'] / d['latency_ms']:.3f} (unstructured zeros: no dense-kernel speed-up)")
pol = rep["policy"]
print("policy (ratio per unit):", " ".join(f"{u['name']}={u['ratio']:.2f}" for u in pol["units"]))
print("artifact: pruned model, policy.json, report.json, MANIFEST.sha256, README.md (model card)")
PYEOF

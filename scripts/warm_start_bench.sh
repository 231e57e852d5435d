#!/usr/bin/env bash
# What a warm start (JobSpec.warm_start_job_id) buys on the bundled model, measured through the
# service (docs/PERFORMANCE.md "Work done once across jobs"): job A searches FLOPs budget 0.5
# with the defaults (population 32, 12 generations); then, at the hard budget 0.35, job B starts
# from A and runs 4 generations, job C starts cold with the same 4 generations, job D cold with
# 12. Each line: the search's best fitness (search samples), its evaluations, and the held-out
# accuracy the worker measured on the artifact (300 samples of shapes-vqa seed 2000).
# Usage: scripts/warm_start_bench.sh [--bin DIR] (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
BIN=build/bin
[[ "${1:-}" == "--bin" ]] && BIN="$2"
[[ "$BIN" == build/bin ]] && configure_and_build prune-scheduler prune-worker prunectl shapes-vqa
PY=/usr/bin/python3
MODEL="$PWD/models/tiny-llava-shapes"
work=$(mktemp -d /tmp/warm-start.XXXXXX)
"$BIN/prune-scheduler" --host=127.0.0.1 --port=0 --metrics-port=0 --state-dir="$work/state" \
  --local-workers=2 --allowed-model-roots="$(dirname "$MODEL")" --ready-file="$work/ready.json" \
  >"$work/scheduler.log" 2>&1 &
sched_pid=$!
trap 'kill $sched_pid 2>/dev/null; wait $sched_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do [[ -s "$work/ready.json" ]] && break; sleep 0.1; done
addr="127.0.0.1:$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' \
  "$work/ready.json")"
"$BIN/shapes-vqa" --seed=1000 --split=search --count=64 --out="$work/search" 2>/dev/null
"$BIN/shapes-vqa" --seed=2000 --split=eval --count=300 --out="$work/heldout" 2>/dev/null
ds=$("$BIN/prunectl" upload-dataset "$work/search" --addr="$addr")
ev=$("$BIN/prunectl" upload-dataset "$work/heldout" --addr="$addr")
run() {  # name budget flags...: submits, waits, fetches the artifact to $work/name
  local name=$1 budget=$2
  shift 2
  local job
  job=$("$BIN/prunectl" submit --addr="$addr" --model="$MODEL" --dataset="$ds" \
    --eval-dataset="$ev" --flops-budget="$budget" "$@")
  "$BIN/prunectl" watch "$job" --addr="$addr" >/dev/null 2>&1 || true
  "$BIN/prunectl" fetch "$job" --out="$work/$name" --addr="$addr" >/dev/null
  echo "$job"
}
a=$(run A 0.5 --seed=0)
run B 0.35 --seed=1 --generations=4 --warm-start="$a" >/dev/null
run C 0.35 --seed=1 --generations=4 >/dev/null
run D 0.35 --seed=1 --generations=12 >/dev/null
"$PY" - "$work" <<'PYEOF'
import json, sys
w = sys.argv[1]
print(f"{'job':44}{'best fitness':>14}{'evaluations':>13}{'held-out acc':>14}")
for name, what in [("A", "budget 0.5, 12 generations"),
                   ("B", "budget 0.35, 4 generations from A"),
                   ("C", "budget 0.35, 4 generations, cold"),
                   ("D", "budget 0.35, 12 generations, cold")]:
    r = json.load(open(f"{w}/{name}/report.json"))
    s = r["search"]
    print(f"{name + ': ' + what:44}{s['best']['fitness']:>14.4f}{s['evaluations']:>13}"
          f"{r['pruned']['eval']['accuracy']:>14.3f}")
PYEOF

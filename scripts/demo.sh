#!/usr/bin/env bash
# The README's first command: install what is missing, build, and run the main job end to end.
# Today (issue 2) the system's skeleton: a scheduler with one local worker, both checked
# SERVING, the worker listed; no job is submitted yet because the pruning pipeline does not
# exist yet. Later issues turn this into the full pruning demo on the bundled tiny model.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

"$ROOT/scripts/bootstrap.sh"
configure_and_build prune-scheduler prune-worker prunectl
BIN="$BUILD_DIR/bin"

work=$(mktemp -d /tmp/prunesvc-demo.XXXXXX)
sched_pid=""
cleanup() {
  if [[ -n "$sched_pid" ]] && kill -0 "$sched_pid" 2>/dev/null; then
    kill -TERM "$sched_pid"
    wait "$sched_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

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
port=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$work/ready.json")
mport=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics_port"])' "$work/ready.json")

printf 'scheduler 127.0.0.1:%s  ' "$port"
"$BIN/prunectl" health --addr="127.0.0.1:$port"

worker_addr=""
for _ in $(seq 1 200); do
  worker_addr=$("$BIN/prunectl" workers --addr="127.0.0.1:$port" --json |
    /usr/bin/python3 -c 'import json,sys; w=[x for x in json.load(sys.stdin).get("workers",[]) if x.get("state")=="WORKER_IDLE"]; print(w[0]["address"] if w else "")')
  [[ -n "$worker_addr" ]] && break
  sleep 0.1
done
[[ -n "$worker_addr" ]] || { echo "no worker registered"; cat "$work/scheduler.log"; exit 1; }
printf 'worker    %s  ' "$worker_addr"
"$BIN/prunectl" health --addr="$worker_addr"
echo
"$BIN/prunectl" workers --addr="127.0.0.1:$port"
echo
echo "metrics: http://127.0.0.1:$mport/metrics ($(curl -s "127.0.0.1:$mport/metrics" | grep -c '^prunesvc_') prunesvc series)"
echo
log "no job submitted: the pruning pipeline (issues 3-5) is not built yet; both servers are SERVING"

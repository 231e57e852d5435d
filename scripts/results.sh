#!/usr/bin/env bash
# The results study of docs/RESULTS.md (issue 7): does the EfficientLLaVA search beat uniform
# pruning on data it never saw? Runs prune-local on the tiny model for every (granularity,
# budget, strategy, seed) and the η / projector ablations, one JSON per run, then renders
# docs/RESULTS.md (+ docs/results/*.svg) from whatever runs exist.
#
# Resumable and background-friendly: a run whose JSON exists is skipped, a run is written to
# RUNS/<id>.json only when it finished (atomic rename), the artifacts are deleted after each run
# (only the report is kept), and the renderer can be called at any time (--render-only).
#
# Usage: scripts/results.sh [--runs DIR] [--render-only] [--bin DIR]
#                           [--phase main|b10|ablation|methods|select|all] [--seeds "0 1 2"]
#                           [--threads N]
#   --phase methods runs the issue-14 search options as named configurations (METHOD_CONFIGS
#   below; docs/pruning-engine.md "Search options"); `all` does not include it.
#   --phase select chooses defaults (issue 14): SELECT_CONFIGS below, judged on the SELECTION
#   set (shapes-vqa seed 3000, split eval, 1,000 samples), never on the held-out set; RUNS
#   defaults to results/select and the summary goes to docs/results/SELECTION.md.
#   --bin DIR uses the prune-local / shapes-vqa in DIR instead of building (a long study keeps
#   its binaries while the tree is rebuilt: copy build/bin somewhere first).
#   RUNS defaults to results/runs. Its run JSONs are committed (~30 KB each), so the study
#   resumes on any machine and docs/RESULTS.md re-renders from them; RUNS/data (regenerated) and
#   RUNS/tmp (artifacts, logs) are not. Typical: `nohup scripts/results.sh > /tmp/r.log 2>&1 &`.
#
# What one seed s means: the search samples are shapes-vqa seed 1000+s (split search, 64
# samples: the calibration and the search both see them) and prune-local --seed s; the held-out
# set is always seed 2000 split eval, 1,000 samples (never used in training or search).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RUNS="$ROOT/results/runs"
PHASE=all
RENDER_ONLY=0
BIN_DIR=""
RUNS_SET=0
SEEDS="0 1 2"
THREADS=2
while (($#)); do
  case "$1" in
    --runs) RUNS="$2"; RUNS_SET=1; shift 2 ;;
    --bin) BIN_DIR="$2"; shift 2 ;;
    --render-only) RENDER_ONLY=1; shift ;;
    --phase) PHASE="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "results.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$PHASE" in main | b10 | ablation | methods | select | all) ;; *)
  echo "results.sh: --phase must be main, b10, ablation, methods, select or all, got '$PHASE'" >&2
  exit 2 ;;
esac
if [[ "$PHASE" == select ]] && ((!RUNS_SET)); then RUNS="$ROOT/results/select"; fi

PY=/usr/bin/python3
MODEL="$ROOT/models/tiny-llava-shapes"
BIN="${BIN_DIR:-$BUILD_DIR/bin}"
render() {
  if [[ "$PHASE" == select ]]; then
    "$PY" "$ROOT/scripts/select_summary.py" "$RUNS" "$ROOT/docs/results/SELECTION.md"
  else
    "$PY" "$ROOT/scripts/results_render.py" "$RUNS" "$ROOT/docs/RESULTS.md" "$ROOT/docs/results"
  fi
}
if ((RENDER_ONLY)); then render; exit 0; fi

if [[ -z "$BIN_DIR" ]]; then
  "$ROOT/scripts/bootstrap.sh"
  configure_and_build shapes-vqa prune-local llava-eval
fi
mkdir -p "$RUNS/data" "$RUNS/tmp"

# --- data ------------------------------------------------------------------------------------
# The held-out set judges; the select phase judges on the selection set instead (defaults are
# chosen there and only then measured on the held-out set).
HELDOUT_SEED=2000
[[ "$PHASE" == select ]] && HELDOUT_SEED=3000
heldout="$RUNS/data/heldout-$HELDOUT_SEED"
[[ -f "$heldout/samples.jsonl" ]] ||
  "$BIN/shapes-vqa" --seed=$HELDOUT_SEED --split=eval --count=1000 --out="$heldout" --force \
    2>/dev/null
for s in $SEEDS; do
  d="$RUNS/data/search-$((1000 + s))"
  [[ -f "$d/samples.jsonl" ]] ||
    "$BIN/shapes-vqa" --seed=$((1000 + s)) --split=search --count=64 --out="$d" --force 2>/dev/null
done

# Study-wide search settings (docs/RESULTS.md states them): a smaller search than the DESIGN
# defaults (population 32, 12 generations: ~3 min a run here) so that the whole study fits in a
# few hours on 2 cores — population 16, 4 parents, 8 generations, projector training every 4.
SEARCH_FLAGS=(--mask-method=WANDA --population=16 --parents=4 --generations=8
  --projector-every=4)
AUDIT=32

# run ID GROUP GRANULARITY BUDGET STRATEGY SEED [extra prune-local flags...]
run() {
  local id="$1" group="$2" gran="$3" budget="$4" strategy="$5" seed="$6"
  shift 6
  local out="$RUNS/$id.json"
  [[ -f "$out" ]] && return 0
  local art="$RUNS/tmp/$id"
  rm -rf "$art"
  # EFFICIENTLLAVA_ETA0: the EfficientLLaVA search without the SRM term (--eta=0), as a strategy
  # of its own in the tables.
  local strategy_flags=(--strategy="$strategy")
  [[ "$strategy" == EFFICIENTLLAVA_ETA0 ]] && strategy_flags=(--strategy=EFFICIENTLLAVA --eta=0)
  local cmd=("$BIN/prune-local" --model="$MODEL" --samples="$RUNS/data/search-$((1000 + seed))"
    --eval-samples="$heldout" --flops-budget="$budget" "${strategy_flags[@]}"
    --granularity="$gran" --seed="$seed" --threads="$THREADS" "${SEARCH_FLAGS[@]}" "$@"
    --out="$art")
  log "$id: ${cmd[*]#"$BIN/"}"
  local t0 rc=0
  t0=$(date +%s.%N)
  "${cmd[@]}" >"$RUNS/tmp/$id.log" 2>&1 || rc=$?
  if ((rc != 0)); then
    echo "  failed (exit $rc); last lines of $RUNS/tmp/$id.log:" >&2
    tail -5 "$RUNS/tmp/$id.log" >&2
    # An unreachable budget (exit 2) is a result too: recorded so it is not retried.
    if ((rc == 2)); then
      "$PY" - "$out" "$id" "$group" "$gran" "$budget" "$strategy" "$seed" "$RUNS/tmp/$id.log" <<'EOF'
import json, os, sys
out, id_, group, gran, budget, strategy, seed, logf = sys.argv[1:]
err = open(logf).read().strip().splitlines()[-1:] or [""]
rec = {"study": {"id": id_, "group": group, "granularity": gran, "budget": float(budget),
                 "strategy": strategy, "seed": int(seed), "failed": err[0]}}
json.dump(rec, open(out + ".tmp", "w"), indent=1); os.replace(out + ".tmp", out)
EOF
    fi
    return 0
  fi
  "$PY" - "$art/report.json" "$out" "$id" "$group" "$gran" "$budget" "$strategy" "$seed" \
    "$t0" "${cmd[*]#"$BIN/"}" <<'EOF'
import json, os, sys, time
rep_path, out, id_, group, gran, budget, strategy, seed, t0, cmd = sys.argv[1:]
rep = json.load(open(rep_path))
rep["study"] = {"id": id_, "group": group, "granularity": gran, "budget": float(budget),
                "strategy": strategy, "seed": int(seed), "command": cmd,
                "wall_seconds": time.time() - float(t0)}
json.dump(rep, open(out + ".tmp", "w"), indent=1)
os.replace(out + ".tmp", out)
EOF
  rm -rf "$art"
  render >/dev/null 2>&1 || true
}

GRANS="UNSTRUCTURED STRUCTURED"
STRATEGIES="UNIFORM OWL EFFICIENTLLAVA RANDOM_SEARCH EFFICIENTLLAVA_ETA0"
gran_flags() { [[ "$1" == UNSTRUCTURED ]] && echo "--final-mask-method=SPARSEGPT" || true; }

# Seeds outermost, so that a partial study has every kind of run for the first seed(s).
main_runs() {
  local s="$1"
  for g in $GRANS; do
    for b in 0.7 0.5 0.35; do
      for st in $STRATEGIES; do
        # shellcheck disable=SC2046
        run "main-$g-b$b-$st-s$s" main "$g" "$b" "$st" "$s" $(gran_flags "$g")
      done
    done
  done
}

# The budget where UNIFORM loses ≥ 10 points: a seed-0 sweep (0.65 down to 0.1 in steps of 0.05,
# then 0.12/0.1) picks the largest such budget per granularity, then every strategy runs there. Prints nothing; sets B10_<granularity>.
find_b10() {
  local g="$1" b drop
  for b in 0.65 0.6 0.55 0.5 0.45 0.4 0.35 0.3 0.25 0.2 0.15 0.1; do
    # shellcheck disable=SC2046
    run "sweep-$g-b$b-UNIFORM-s0" sweep "$g" "$b" UNIFORM 0 $(gran_flags "$g")
    drop=$("$PY" -c 'import json,sys
r=json.load(open(sys.argv[1]))
print(-1 if "pruned" not in r else round(100*(r["dense"]["accuracy"]-r["pruned"]["accuracy"]),1))' \
      "$RUNS/sweep-$g-b$b-UNIFORM-s0.json")
    if "$PY" -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= 10 else 1)' "$drop"; then
      printf -v "B10_$g" '%s' "$b"
      return 0
    fi
  done
  log "$g: UNIFORM never lost 10 points down to budget 0.1; no b10 runs"
  printf -v "B10_$g" '%s' ""
}

b10_runs() {
  local s="$1" g var
  for g in $GRANS; do
    var="B10_$g"
    [[ -n "${!var+set}" ]] || find_b10 "$g"
    [[ -n "${!var}" ]] || continue
    for st in $STRATEGIES; do
      # shellcheck disable=SC2046
      run "b10-$g-b${!var}-$st-s$s" b10 "$g" "${!var}" "$st" "$s" $(gran_flags "$g")
    done
  done
}

# Ablations: η (0, 1, 10, 100, 300 and auto ≈ 600–700 here) and projector training off (with
# η = auto and with η = 0), with the audit of every search's policies.
AB_BUDGET="${AB_BUDGET:-0.35}"
ablation_runs() {
  local s="$1" v name flags
  for v in "eta-auto:" "eta-0:--eta=0" "eta-1:--eta=1" "eta-10:--eta=10" "eta-100:--eta=100" \
    "eta-300:--eta=300" "proj-off:--projector-every=0" "eta0-proj-off:--eta=0 --projector-every=0"; do
    name="${v%%:*}"
    flags="${v#*:}"
    # shellcheck disable=SC2086
    run "ablation-$name-b$AB_BUDGET-s$s" "ablation-$name" UNSTRUCTURED "$AB_BUDGET" \
      EFFICIENTLLAVA "$s" --final-mask-method=SPARSEGPT --audit=$AUDIT $flags
  done
}

# The search options of issue 14 as named configurations, "NAME:STRATEGY:prune-local flags".
# Each run's study.strategy is NAME (its group method-NAME), so tables can put the configurations
# beside UNIFORM / RANDOM_SEARCH / EFFICIENTLLAVA_ETA0 of the main phase at the same budgets and
# seeds. Equal evaluations: the *-slack configurations spend up to 8 more evaluations, which
# random-slack8 gives RANDOM_SEARCH exactly; the guard spends one.
METHOD_CONFIGS=(
  "cv:EFFICIENTLLAVA:--eta-rule=CV"
  "ucb-cv:EFFICIENTLLAVA:--estimator=UCB --eta-rule=CV"
  "split-cv:EFFICIENTLLAVA:--estimator=SPLIT --eta-rule=CV"
  "capacity-cv:EFFICIENTLLAVA:--estimator=CAPACITY --eta-rule=CV"
  "capacity-auto:EFFICIENTLLAVA:--estimator=CAPACITY"
  "eta0-seeds:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --seed-with-owl --repair-uniform-seed"
  "eta0-step:EFFICIENTLLAVA:--eta=0 --mutation-step=0.5"
  "eta0-slack:EFFICIENTLLAVA:--eta=0 --slack-evaluations=8"
  "eta0-guard:EFFICIENTLLAVA:--eta=0 --uniform-guard"
  "eta0-all:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --seed-with-owl --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --uniform-guard"
  "cv-all:EFFICIENTLLAVA:--eta-rule=CV --seed-with-uniform --seed-with-owl --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --uniform-guard"
  "random-slack8:RANDOM_SEARCH:--slack-evaluations=8"
)
# Budgets per granularity: the main ones and the hard ones (0.35 UNSTRUCTURED, 0.6 STRUCTURED).
METHOD_BUDGETS_UNSTRUCTURED="${METHOD_BUDGETS_UNSTRUCTURED:-0.7 0.5 0.35}"
METHOD_BUDGETS_STRUCTURED="${METHOD_BUDGETS_STRUCTURED:-0.7 0.6 0.5}"
method_runs() {
  local s="$1" g b v name strategy flags var
  for g in $GRANS; do
    var="METHOD_BUDGETS_$g"
    for b in ${!var}; do
      for v in "${METHOD_CONFIGS[@]}"; do
        name="${v%%:*}"
        strategy="${v#*:}"
        flags="${strategy#*:}"
        strategy="${strategy%%:*}"
        # shellcheck disable=SC2046,SC2086
        run "method-$name-$g-b$b-s$s" "method-$name" "$g" "$b" "$strategy" "$s" \
          $(gran_flags "$g") $flags
        # The table names the configuration, not the strategy it runs.
        "$PY" - "$RUNS/method-$name-$g-b$b-s$s.json" "$name" <<'EOF2'
import json, os, sys
path, name = sys.argv[1:]
if os.path.exists(path):
    rep = json.load(open(path))
    if rep["study"].get("strategy") != name:
        rep["study"]["strategy"] = name
        json.dump(rep, open(path + ".tmp", "w"), indent=1)
        os.replace(path + ".tmp", path)
EOF2
      done
    done
  done
}

# Default selection (issue 14): the candidates for the new default beside UNIFORM and
# RANDOM_SEARCH, at the main and hard budgets of both granularities, judged on the selection set.
# "NAME:STRATEGY:flags"; projector training is off unless a name says "proj" (FINDINGS 5: it
# did not pay, and it is most of a search's time). Equal evaluations: every *-all search spends
# up to 8 slack evaluations, random gets exactly 8 more.
SELECT_CONFIGS=(
  "uniform:UNIFORM:"
  "random:RANDOM_SEARCH:--slack-evaluations=8"
  "eta0:EFFICIENTLLAVA:--eta=0 --projector-every=0"
  "eta0-all:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --projector-every=0"
  "cv-all:EFFICIENTLLAVA:--eta-rule=CV --seed-with-uniform --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --projector-every=0"
  "ucb-cv-all:EFFICIENTLLAVA:--estimator=UCB --eta-rule=CV --seed-with-uniform --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --projector-every=0"
  "eta0-grid:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --repair-uniform-seed --uniform-ratio-choice --projector-every=0"
)
# SELECT_ONLY="name ..." runs only those configurations (the others' runs stay as they are).
SELECT_ONLY="${SELECT_ONLY:-}"
SELECT_BUDGETS_UNSTRUCTURED="${SELECT_BUDGETS_UNSTRUCTURED:-0.35 0.5 0.7}"
SELECT_BUDGETS_STRUCTURED="${SELECT_BUDGETS_STRUCTURED:-0.6 0.7}"
select_runs() {
  local s="$1" g b v name strategy flags var
  for g in $GRANS; do
    var="SELECT_BUDGETS_$g"
    for b in ${!var}; do
      for v in "${SELECT_CONFIGS[@]}"; do
        name="${v%%:*}"
        [[ -z "$SELECT_ONLY" || " $SELECT_ONLY " == *" $name "* ]] || continue
        strategy="${v#*:}"
        flags="${strategy#*:}"
        strategy="${strategy%%:*}"
        # shellcheck disable=SC2046,SC2086
        run "select-$name-$g-b$b-s$s" "select-$name" "$g" "$b" "$strategy" "$s" \
          $(gran_flags "$g") $flags
      done
    done
  done
}

for s in $SEEDS; do
  [[ "$PHASE" == select ]] && select_runs "$s"
  [[ "$PHASE" == methods ]] && method_runs "$s"
  [[ "$PHASE" == main || "$PHASE" == all ]] && main_runs "$s"
  [[ "$PHASE" == ablation || "$PHASE" == all ]] && ablation_runs "$s"
  [[ "$PHASE" == b10 || "$PHASE" == all ]] && b10_runs "$s"
done

render
summary=docs/RESULTS.md
[[ "$PHASE" == select ]] && summary=docs/results/SELECTION.md
log "rendered $summary from $(ls "$RUNS"/*.json 2>/dev/null | wc -l) runs in $RUNS"

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
#                           [--phase main|b10|ablation|methods|select|study|all]
#                           [--seeds "0 1 2"] [--threads N]
#   --phase methods runs the issue-14 search options as named configurations (METHOD_CONFIGS
#   below; docs/pruning-engine.md "Search options"); `all` does not include it.
#   --phase select chooses defaults (issue 14): SELECT_CONFIGS below, judged on the SELECTION
#   set (shapes-vqa seed 3000, split eval, 1,000 samples), never on the held-out set; RUNS
#   defaults to results/select and the summary goes to docs/results/SELECTION.md;
#   SELECT_STAGES="n16 n32" compares PAIRED's z with 16 and 32 search samples instead.
#   --phase study is issue 14's held-out study at full size: the prune-local defaults
#   (population 32, 8 parents, 12 generations, projector off) judged on the held-out set, seeds
#   0-4, in stages of falling priority (STUDY_STAGES below); RUNS defaults to results/study and
#   the summary goes to docs/results/STUDY.md.
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
    -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "results.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$PHASE" in main | b10 | ablation | methods | select | study | all) ;; *)
  echo "results.sh: --phase must be main, b10, ablation, methods, select, study or all," \
    "got '$PHASE'" >&2
  exit 2 ;;
esac
if [[ "$PHASE" == select || "$PHASE" == study ]] && ((!RUNS_SET)); then
  RUNS="$ROOT/results/$PHASE"
fi
if [[ "$PHASE" == study ]] && [[ "$SEEDS" == "0 1 2" ]]; then SEEDS="0 1 2 3 4"; fi

PY=/usr/bin/python3
MODEL="$ROOT/models/tiny-llava-shapes"
BIN="${BIN_DIR:-$BUILD_DIR/bin}"
render() {
  if [[ "$PHASE" == select ]]; then
    "$PY" "$ROOT/scripts/select_summary.py" "$RUNS" "$ROOT/docs/results/SELECTION.md"
  elif [[ "$PHASE" == study ]]; then
    "$PY" "$ROOT/scripts/select_summary.py" --study "$RUNS" "$ROOT/docs/results/STUDY.md"
    # docs/RESULTS.md leads with the held-out study.
    "$PY" "$ROOT/scripts/results_render.py" "$ROOT/results/runs" "$ROOT/docs/RESULTS.md" \
      "$ROOT/docs/results" "$RUNS"
  else
    "$PY" "$ROOT/scripts/results_render.py" "$RUNS" "$ROOT/docs/RESULTS.md" "$ROOT/docs/results" \
      "$ROOT/results/study"
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
# The search set of seed s with SEARCH_N samples (64 unless a study stage says otherwise):
# shapes-vqa seed 1000+s, split search; made on first use.
SEARCH_N=64
search_set() {
  local s="$1" d
  d="$RUNS/data/search-$((1000 + s))"
  ((SEARCH_N == 64)) || d="$RUNS/data/search$SEARCH_N-$((1000 + s))"
  [[ -f "$d/samples.jsonl" ]] ||
    "$BIN/shapes-vqa" --seed=$((1000 + s)) --split=search --count="$SEARCH_N" --out="$d" \
      --force 2>/dev/null
  echo "$d"
}

# Study-wide search settings (docs/RESULTS.md states them): a smaller search than the default
# sizes (docs/architecture.md §5: population 32, 12 generations: ~3 min a run here) so that the whole study fits in a
# few hours on 2 cores — population 16, 4 parents, 8 generations, projector training every 4.
SEARCH_FLAGS=(--mask-method=WANDA --population=16 --parents=4 --generations=8
  --projector-every=4)
# The study phase runs prune-local's defaults: the default is what it measures.
[[ "$PHASE" == study ]] && SEARCH_FLAGS=()
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
  local samples
  samples=$(search_set "$seed")
  local cmd=("$BIN/prune-local" --model="$MODEL" --samples="$samples"
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

# Since UNIFORM moved into the search by default (issue 14: SELECTION.md's eta0-grid became
# prune-local's default), the configurations below that were measured without it spell out
# --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false (whichever
# they do not set), so that re-running one measures what its rows already hold. The main,
# ablation and b10 phases run the current defaults.

# The search options of issue 14 as named configurations, "NAME:STRATEGY:prune-local flags".
# Each run's study.strategy is NAME (its group method-NAME), so tables can put the configurations
# beside UNIFORM / RANDOM_SEARCH / EFFICIENTLLAVA_ETA0 of the main phase at the same budgets and
# seeds. Equal evaluations: the *-slack configurations spend up to 8 more evaluations, which
# random-slack8 gives RANDOM_SEARCH exactly; the guard spends one.
# shellcheck disable=SC2034  # read through config_runs' ${!arr}
METHOD_CONFIGS=(
  "cv:EFFICIENTLLAVA:--eta-rule=CV --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "ucb-cv:EFFICIENTLLAVA:--estimator=UCB --eta-rule=CV --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "split-cv:EFFICIENTLLAVA:--estimator=SPLIT --eta-rule=CV --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "capacity-cv:EFFICIENTLLAVA:--estimator=CAPACITY --eta-rule=CV --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "capacity-auto:EFFICIENTLLAVA:--estimator=CAPACITY --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "eta0-seeds:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --seed-with-owl --repair-uniform-seed --uniform-ratio-choice=false"
  "eta0-step:EFFICIENTLLAVA:--eta=0 --mutation-step=0.5 --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "eta0-slack:EFFICIENTLLAVA:--eta=0 --slack-evaluations=8 --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "eta0-guard:EFFICIENTLLAVA:--eta=0 --uniform-guard --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "eta0-all:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --seed-with-owl --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --uniform-guard --uniform-ratio-choice=false"
  "cv-all:EFFICIENTLLAVA:--eta-rule=CV --seed-with-uniform --seed-with-owl --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --uniform-guard --uniform-ratio-choice=false"
  "random-slack8:RANDOM_SEARCH:--slack-evaluations=8"
)
# Budgets per granularity: the main ones and the hard ones (0.35 UNSTRUCTURED, 0.6 STRUCTURED).
METHOD_BUDGETS_UNSTRUCTURED="${METHOD_BUDGETS_UNSTRUCTURED:-0.7 0.5 0.35}"
METHOD_BUDGETS_STRUCTURED="${METHOD_BUDGETS_STRUCTURED:-0.7 0.6 0.5}"

# config_runs PREFIX CONFIGS_ARRAY BUDGETS_PREFIX SEED [REGIME [FLAGS...]]: every configuration
# of the named "NAME:STRATEGY:flags" array at the budgets ${BUDGETS_PREFIX}_<granularity> (either
# may be empty) for one seed, with the regime's FLAGS added to each. Run IDs are PREFIX-[REGIME-]NAME-GRAN-bB-sS, the group
# PREFIX-[REGIME/]NAME, and study.strategy is NAME: tables name the configuration, not the
# strategy it runs. ONLY="name ..." restricts the run to those configurations.
config_runs() {
  local prefix="$1" arr="$2[@]" budgets="$3" s="$4" regime="${5:-}"
  shift $(($# < 5 ? $# : 5))
  local g b v name strategy flags var id group
  for g in $GRANS; do
    var="${budgets}_$g"
    for b in ${!var:-}; do
      for v in "${!arr}"; do
        name="${v%%:*}"
        [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || continue
        strategy="${v#*:}"
        flags="${strategy#*:}"
        strategy="${strategy%%:*}"
        id="$prefix-${regime:+$regime-}$name-$g-b$b-s$s"
        group="$prefix-${regime:+$regime/}$name"
        # shellcheck disable=SC2046,SC2086
        run "$id" "$group" "$g" "$b" "$strategy" "$s" $(gran_flags "$g") $flags "$@"
        "$PY" - "$RUNS/$id.json" "$name" <<'EOF2'
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
method_runs() { config_runs method METHOD_CONFIGS METHOD_BUDGETS "$1"; }

# Default selection (issue 14): the candidates for the new default beside UNIFORM and
# RANDOM_SEARCH, at the main and hard budgets of both granularities, judged on the selection set.
# "NAME:STRATEGY:flags"; projector training is off unless a name says "proj" (FINDINGS 5: it
# did not pay, and it is most of a search's time). Equal evaluations: every *-all search spends
# up to 8 slack evaluations, random gets exactly 8 more.
# shellcheck disable=SC2034  # read through config_runs' ${!arr}
SELECT_CONFIGS=(
  "uniform:UNIFORM:"
  "random:RANDOM_SEARCH:--slack-evaluations=8"
  "eta0:EFFICIENTLLAVA:--eta=0 --projector-every=0 --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "eta0-all:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --projector-every=0 --uniform-ratio-choice=false"
  "cv-all:EFFICIENTLLAVA:--eta-rule=CV --seed-with-uniform --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --projector-every=0 --uniform-ratio-choice=false"
  "ucb-cv-all:EFFICIENTLLAVA:--estimator=UCB --eta-rule=CV --seed-with-uniform --repair-uniform-seed --mutation-step=0.5 --slack-evaluations=8 --projector-every=0 --uniform-ratio-choice=false"
  "eta0-grid:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --repair-uniform-seed --uniform-ratio-choice --projector-every=0"
  "eta0-seed:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --repair-uniform-seed --uniform-ratio-choice=false --projector-every=0"
  "eta0-ratio:EFFICIENTLLAVA:--eta=0 --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice --projector-every=0"
  "paired2:EFFICIENTLLAVA:--estimator=PAIRED --eta=2 --seed-with-uniform --repair-uniform-seed --uniform-ratio-choice --projector-every=0"
  "paired1:EFFICIENTLLAVA:--estimator=PAIRED --eta=1 --seed-with-uniform --repair-uniform-seed --uniform-ratio-choice --projector-every=0"
)
# SELECT_ONLY="name ..." runs only those configurations (the others' runs stay as they are).
SELECT_BUDGETS_UNSTRUCTURED="${SELECT_BUDGETS_UNSTRUCTURED:-0.35 0.5 0.7}"
SELECT_BUDGETS_STRUCTURED="${SELECT_BUDGETS_STRUCTURED:-0.6 0.7}"
# Few samples (issue 14's 16-sample item): PAIRED's z at 16 and 32 search samples, the hard
# budget, with the default's other options; eta0 (no UNIFORM seed) is the η = 0 search the item
# compares with.
# shellcheck disable=SC2034  # read through config_runs' ${!arr}
SELECT_FEW=(
  "uniform:UNIFORM:"
  "eta0:EFFICIENTLLAVA:--eta=0 --projector-every=0 --seed-with-uniform=false --repair-uniform-seed=false --uniform-ratio-choice=false"
  "eta0-grid:EFFICIENTLLAVA:--eta=0 --seed-with-uniform --repair-uniform-seed --uniform-ratio-choice --projector-every=0"
  "paired-half:EFFICIENTLLAVA:--estimator=PAIRED --eta=0.5 --seed-with-uniform --repair-uniform-seed --uniform-ratio-choice --projector-every=0"
  "paired1:EFFICIENTLLAVA:--estimator=PAIRED --eta=1 --seed-with-uniform --repair-uniform-seed --uniform-ratio-choice --projector-every=0"
)
# SELECT_STAGES: "main" (SELECT_CONFIGS at SELECT_BUDGETS, 64 samples), "n16" and/or "n32".
SELECT_STAGES="${SELECT_STAGES:-main}"
select_runs() {
  local stage
  for stage in $SELECT_STAGES; do
    case "$stage" in
      main) ONLY="${SELECT_ONLY:-}" config_runs select SELECT_CONFIGS SELECT_BUDGETS "$1" ;;
      n16) SEARCH_N=16 ONLY="${SELECT_ONLY:-}" config_runs select SELECT_FEW FEW "$1" n16 ;;
      n32) SEARCH_N=32 ONLY="${SELECT_ONLY:-uniform eta0-grid paired-half paired1}" \
        config_runs select SELECT_FEW FEW "$1" n32 ;;
      *) echo "results.sh: unknown select stage '$stage'" >&2; exit 2 ;;
    esac
  done
}

# The held-out study of issue 14 at full size (prune-local's defaults: population 32, 8 parents,
# 12 generations, η = 0, projector off), in stages of falling priority; each stage runs every
# seed before the next starts, so a partial study is balanced. "default" is prune-local with no
# tuning flags. Equal evaluations: the default and RANDOM_SEARCH both spend population +
# generations × (population − parents) evaluations.
# shellcheck disable=SC2034  # read through config_runs' ${!arr}
STUDY_BASE=("uniform:UNIFORM:" "default:EFFICIENTLLAVA:" "random:RANDOM_SEARCH:")
# shellcheck disable=SC2034  # read through config_runs' ${!arr}
STUDY_MORE=("owl:OWL:" "random:RANDOM_SEARCH:")
# Generalization terms at 16 search samples, where a gap between search and held-out loss can
# show: the default (η = 0) against η by cross-validation with Ω, UCB, SPLIT and CAPACITY.
# shellcheck disable=SC2034  # read through config_runs' ${!arr}
STUDY_TERMS=("uniform:UNIFORM:" "default:EFFICIENTLLAVA:" "cv:EFFICIENTLLAVA:--eta-rule=CV"
  "ucb-cv:EFFICIENTLLAVA:--estimator=UCB --eta-rule=CV"
  "split-cv:EFFICIENTLLAVA:--estimator=SPLIT --eta-rule=CV"
  "capacity-cv:EFFICIENTLLAVA:--estimator=CAPACITY --eta-rule=CV"
  "auto:EFFICIENTLLAVA:--eta=auto")
# Stage `grid` ran the selection's candidate (docs/results/SELECTION.md "eta0-grid") with its flags
# spelled out, before it became prune-local's default on 2026-12-05; its rows were then relabelled
# `default`, and the rows of the η = 0 default before it `eta0` (results/study). Not in the
# default stage list: the `default` configuration of the other stages now runs it.
# shellcheck disable=SC2034  # read through config_runs' ${!arr}
STUDY_GRID=("grid:EFFICIENTLLAVA:--seed-with-uniform --repair-uniform-seed --uniform-ratio-choice")
# Budgets per stage, ${NAME}_<granularity>; "" skips the granularity.
# shellcheck disable=SC2034  # read through config_runs' ${!var}
{
  HARD_UNSTRUCTURED=0.35 HARD_STRUCTURED=0.6
  MAIN_UNSTRUCTURED="0.7 0.5" MAIN_STRUCTURED="0.7 0.5"
  FEW_UNSTRUCTURED=0.35 FEW_STRUCTURED=""
  LINEAR_UNSTRUCTURED=0.35 LINEAR_STRUCTURED=""
  LOW_UNSTRUCTURED="" LOW_STRUCTURED=0.35
}
STUDY_STAGES="${STUDY_STAGES:-hard linear n16 main more n32}"
study_stage() {
  local stage="$1" s
  for s in $SEEDS; do
    case "$stage" in
      hard) config_runs study STUDY_BASE HARD "$s" ;;
      main) ONLY="uniform default" config_runs study STUDY_BASE MAIN "$s" ;;
      n16) SEARCH_N=16 config_runs study STUDY_TERMS FEW "$s" n16 ;;
      n32) SEARCH_N=32 ONLY="uniform default cv ucb-cv" \
        config_runs study STUDY_TERMS FEW "$s" n32 ;;
      linear) config_runs study STUDY_BASE LINEAR "$s" linear --unit=linear ;;
      grid)
        config_runs study STUDY_GRID HARD "$s"
        config_runs study STUDY_GRID MAIN "$s" ;;
      more)
        config_runs study STUDY_MORE MAIN "$s"
        ONLY=owl config_runs study STUDY_MORE HARD "$s"
        config_runs study STUDY_BASE LOW "$s" ;;
      *) echo "results.sh: unknown study stage '$stage'" >&2; exit 2 ;;
    esac
  done
}

for s in $SEEDS; do
  [[ "$PHASE" == study ]] && break
  [[ "$PHASE" == select ]] && select_runs "$s"
  [[ "$PHASE" == methods ]] && method_runs "$s"
  [[ "$PHASE" == main || "$PHASE" == all ]] && main_runs "$s"
  [[ "$PHASE" == ablation || "$PHASE" == all ]] && ablation_runs "$s"
  [[ "$PHASE" == b10 || "$PHASE" == all ]] && b10_runs "$s"
done

if [[ "$PHASE" == study ]]; then
  for stage in $STUDY_STAGES; do study_stage "$stage"; done
fi

render
summary=docs/RESULTS.md
[[ "$PHASE" == select ]] && summary=docs/results/SELECTION.md
[[ "$PHASE" == study ]] && summary=docs/results/STUDY.md
log "rendered $summary from $(ls "$RUNS"/*.json 2>/dev/null | wc -l) runs in $RUNS"

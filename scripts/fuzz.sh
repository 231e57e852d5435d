#!/usr/bin/env bash
# Builds every libFuzzer target (clang, -DPRUNESVC_FUZZ=ON, in build-fuzz/) and runs each one for a
# bounded time from its committed seed corpus. Prints, per target, the runs, the seconds and whether
# it found something; exits non-zero on any finding (a crash, leak, timeout or out-of-memory input:
# libFuzzer's artifact is kept under BUILD_DIR/fuzz-artifacts/TARGET/) or when a target cannot run.
#
# Usage: scripts/fuzz.sh [--seconds N] [--update-corpus] [--no-build] [TARGET...]
#   --seconds N       fuzzing time per target (default 60); README's figures are 60 s runs
#   --update-corpus   add the inputs that reach new edges to the committed corpus (libFuzzer
#                     -set_cover_merge=1 -use_counters=0; check its size before committing);
#                     without it the seeds are copied to a scratch dir, so the repository is
#                     never written to
#   --no-build        use the binaries already built
#   TARGET...         a subset (default: all of TARGETS below)
# Environment: PRUNESVC_FUZZ_BUILD_DIR (default ROOT/build-fuzz), PRUNESVC_JOBS (build jobs),
#   PRUNESVC_FUZZ_RSS_MB (default 2048), PRUNESVC_FUZZ_TIMEOUT_S (one input, default 10).
#
# Inputs: each target's source comment gives its format (several pick a parser by the first byte).
# Every target has a committed corpus directory (CORPUS below). derive_seeds is how the seeds of
# safetensors, config, image and job_file were made (from the bundled model's JSON files, the
# dataset corpus's images and samples.jsonl, small inline documents); it is used only when such
# a directory is missing.
# scripts/test.sh's sanitizer stage runs this with --seconds 10: ~2 min with a warm ccache (8 x 11 s
# of fuzzing, the build from ccache), ~12 min cold.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SECONDS_PER_TARGET=60
UPDATE_CORPUS=0
BUILD=1
SELECTED=()
while (($#)); do
  case "$1" in
    --seconds)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "fuzz.sh: --seconds needs a positive integer" >&2; exit 2; }
      SECONDS_PER_TARGET="$2"
      shift 2
      ;;
    --seconds=*)
      SECONDS_PER_TARGET="${1#--seconds=}"
      [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ && "$SECONDS_PER_TARGET" -gt 0 ]] || { echo "fuzz.sh: --seconds needs a positive integer" >&2; exit 2; }
      shift
      ;;
    --update-corpus) UPDATE_CORPUS=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) SELECTED+=("$1"); shift ;;
  esac
done

FUZZ_BUILD_DIR="${PRUNESVC_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
RSS_MB="${PRUNESVC_FUZZ_RSS_MB:-2048}"
TIMEOUT_S="${PRUNESVC_FUZZ_TIMEOUT_S:-10}"
# UBSan reports are findings too (the targets are built with recoverable -fsanitize=undefined).
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

# target → its committed corpus directory (relative to ROOT).
declare -A CORPUS=(
  [flags_fuzz]=common/testdata/flags_corpus
  [job_spec_fuzz]=common/testdata/job_spec_corpus
  [model_manifest_fuzz]=common/testdata/model_manifest_corpus
  [dataset_upload_fuzz]=server/testdata/dataset_upload_corpus
  [checkpoint_fuzz]=server/testdata/checkpoint_corpus
  [auth_tokens_fuzz]=server/testdata/auth_tokens_corpus
  [job_file_fuzz]=client/testdata/job_file_corpus
  [batch_file_fuzz]=client/testdata/batch_file_corpus
  [safetensors_fuzz]=worker/model/testdata/safetensors_corpus
  [config_fuzz]=worker/model/testdata/config_corpus
  [image_fuzz]=worker/model/testdata/image_corpus
)
TARGETS=(flags_fuzz job_spec_fuzz model_manifest_fuzz job_file_fuzz batch_file_fuzz dataset_upload_fuzz checkpoint_fuzz auth_tokens_fuzz
  safetensors_fuzz config_fuzz image_fuzz)
if ((${#SELECTED[@]} == 0)); then SELECTED=("${TARGETS[@]}"); fi
for t in "${SELECTED[@]}"; do
  [[ -n "${CORPUS[$t]:-}" ]] || { echo "fuzz.sh: unknown target $t (known: ${TARGETS[*]})" >&2; exit 2; }
done

if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ not found; run scripts/bootstrap.sh (clang, libclang-rt-14-dev)" >&2
  exit 2
fi

if ((BUILD)); then
  log "configure ($FUZZ_BUILD_DIR: clang, PRUNESVC_FUZZ=ON)"
  cmake -S "$ROOT" -B "$FUZZ_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DPRUNESVC_FUZZ=ON >/dev/null
  log "build (-j$JOBS, targets: ${SELECTED[*]})"
  cmake --build "$FUZZ_BUILD_DIR" -j "$JOBS" --target "${SELECTED[@]}"
fi

# put NAME BYTES... — writes a seed file from printf-style pieces (first-byte selectors).
put() {
  local file="$1"
  shift
  # shellcheck disable=SC2059  # the format is the seed
  printf "$@" >"$file"
}

# safetensors_seed FILE HEADER DATA — a safetensors file: the u64 little-endian header length
# (< 256 here), the JSON header, then DATA (printf %b escapes).
safetensors_seed() {
  local len
  len=$(printf '\\x%02x' "${#2}")
  { printf '%b\0\0\0\0\0\0\0' "$len"; printf '%s' "$2"; printf '%b' "$3"; } >"$1"
}

# derive_seeds TARGET DIR — seeds for a target without a committed corpus, from committed files.
derive_seeds() {
  local target="$1" dir="$2" tar member i=0
  local dataset="$ROOT/server/testdata/dataset_upload_corpus"
  case "$target" in
    config_fuzz)  # 0x00 + config.json, 0x01 + samples.jsonl
      { printf '\x00'; cat "$ROOT/models/tiny-llava-shapes/config.json"; } >"$dir/config"
      for tar in "$dataset"/valid_*.tar; do
        { printf '\x01'; tar -xOf "$tar" --wildcards '*samples.jsonl'; } >"$dir/samples_$((i++))"
      done
      ;;
    image_fuzz)  # 0x00 + an image, 0x01 + preprocessor_config.json
      { printf '\x01'; cat "$ROOT/models/tiny-llava-shapes/preprocessor_config.json"; } \
        >"$dir/preprocessor_config"
      for tar in "$dataset"/valid_*.tar; do
        while IFS= read -r member; do
          case "$member" in
            *.png | *.jpg | *.jpeg) { printf '\x00'; tar -xOf "$tar" "$member"; } >"$dir/image_$((i++))" ;;
          esac
        done < <(tar -tf "$tar")
      done
      ;;
    safetensors_fuzz)
      safetensors_seed "$dir/two_tensors" \
        '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,1],"data_offsets":[8,12]}}' \
        '\x00\x00\x80\x3f\x00\x00\x00\xc0\x80\x3f\x00\x40'
      safetensors_seed "$dir/scalar_f16" '{"w":{"dtype":"F16","shape":[],"data_offsets":[0,2]}}' \
        '\x00\x3c'
      ;;
    job_file_fuzz)  # even first byte + JSON job file, odd + YAML job file
      put "$dir/json" '\x00{"model_uri": "/models/tiny", "dataset_id": "sha256:%064d", "flops_budget": 0.5,\n "strategy": "efficientllava", "ratio_choices": [0, 0.2, 0.4], "labels": {"team": "a"},\n "eta": "auto", "nm_pattern": "2:4", "population": 16}\n' 0
      put "$dir/yaml" '\x01model_uri: file:///models/tiny\ndataset_id: "sha256:%064d"\nflops_budget: 0.6\ngranularity: N_M\nnm_pattern: "4:8"\nlabels:\n  team: b\nratio_choices: [0.0, 0.5]\nseedWithUniform: true\n' 0
      ;;
  esac
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/prunesvc-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ARTIFACTS="$FUZZ_BUILD_DIR/fuzz-artifacts"
failures=()
summary=()
for t in "${SELECTED[@]}"; do
  bin="$FUZZ_BUILD_DIR/bin/$t"
  if [[ ! -x "$bin" ]]; then
    summary+=("$(printf '%-20s not built (%s)' "$t" "$bin")")
    failures+=("$t")
    continue
  fi
  committed="$ROOT/${CORPUS[$t]}"
  seeds="$WORK/$t-seeds"
  scratch="$WORK/$t"
  mkdir -p "$seeds" "$scratch"
  if [[ -d "$committed" ]]; then
    cp -r "$committed"/. "$seeds"/
  else
    derive_seeds "$t" "$seeds"
  fi
  rm -rf "${ARTIFACTS:?}/$t"
  mkdir -p "$ARTIFACTS/$t"
  log "$t: ${SECONDS_PER_TARGET} s from $(find "$seeds" -type f | wc -l) seeds (${CORPUS[$t]}$([[ -d "$committed" ]] || echo ', derived'))"
  # The first directory collects new inputs; the seeds are read only.
  set +e
  "$bin" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT_S" \
    -print_final_stats=1 -close_fd_mask=1 -artifact_prefix="$ARTIFACTS/$t/" \
    "$scratch" "$seeds" >"$WORK/$t.log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/$t.log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$WORK/$t.log" | tail -1)
  found=$(find "$ARTIFACTS/$t" -type f | head -5)
  cp "$WORK/$t.log" "$ARTIFACTS/$t.log"
  if ((rc != 0)) || [[ -n "$found" ]]; then
    failures+=("$t")
    summary+=("$(printf '%-20s %10s runs in %3s s  FINDING (exit %d): %s; log %s' "$t" "${runs:-?}" \
      "${secs:-?}" "$rc" "${found:-no artifact}" "$ARTIFACTS/$t.log")")
    grep -m1 -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|.*invariant violated)' "$WORK/$t.log" >&2 || true
  else
    summary+=("$(printf '%-20s %10s runs in %3s s  no findings' "$t" "${runs:-?}" "${secs:-?}")")
    if ((UPDATE_CORPUS)); then
      mkdir -p "$committed"
      "$bin" -set_cover_merge=1 -use_counters=0 -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT_S" \
        -close_fd_mask=1 \
        "$committed" "$seeds" "$scratch" >"$ARTIFACTS/$t.merge.log" 2>&1 ||
        { echo "fuzz.sh: merging into ${CORPUS[$t]} failed (see $ARTIFACTS/$t.merge.log)" >&2; failures+=("$t"); }
      log "$t: ${CORPUS[$t]} now holds $(find "$committed" -type f | wc -l) files"
    fi
  fi
done

log "fuzzing summary (${SECONDS_PER_TARGET} s per target)"
printf '%s\n' "${summary[@]}"
if ((${#failures[@]})); then
  echo "fuzz.sh: FAILED: ${failures[*]} (artifacts and logs under $ARTIFACTS)" >&2
  exit 1
fi

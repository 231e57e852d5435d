# Shared by scripts/*.sh: configure and build prunesvc into build/ (Ninja + ccache).
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${PRUNESVC_BUILD_DIR:-$ROOT/build}"
JOBS="${PRUNESVC_JOBS:-$(nproc)}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

configure_and_build() {
  local targets=("$@")
  if [[ -x "$(command -v ccache)" ]]; then
    ccache --max-size=5G >/dev/null 2>&1 || true
  fi
  log "configure ($BUILD_DIR)"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  log "build (-j$JOBS${targets:+, targets: ${targets[*]}})"
  if ((${#targets[@]})); then
    cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}"
  else
    cmake --build "$BUILD_DIR" -j "$JOBS"
  fi
}

# The sanitizer stage, run by scripts/test.sh after the main tests (PRUNESVC_SKIP_SANITIZE=1 skips
# it there): the torch-free tree (common, store, scheduler, client and their tests;
# PRUNESVC_BUILD_WORKER=OFF, since the tokenizer's RTLD_DEEPBIND module cannot load under ASan)
# built with clang, AddressSanitizer and UndefinedBehaviorSanitizer (-DPRUNESVC_SANITIZE=ON) in
# build-asan/, its ctest (arguments go to ctest, as for the main tests), then a short fuzz pass over
# every libFuzzer target (scripts/fuzz.sh --seconds PRUNESVC_FUZZ_SECONDS, default 10).
# Budget: 15 min of CI's 90 with a warm ccache, 35 min cold. Measured on 2 cores shared with other
# work (load 4-6), fresh build dirs: warm ccache 11 min in all (ASan build 7.5, ctest 1.3 for 223
# tests, fuzz build 0.5 + 8 targets x 11 s); cold ccache: ASan build 21 min, fuzz build ~10 min.
# Returns non-zero if the build fails, a test fails or the fuzzers find something.
sanitizer_stage() (
  local dir="${PRUNESVC_ASAN_BUILD_DIR:-$ROOT/build-asan}"
  local fuzz_seconds="${PRUNESVC_FUZZ_SECONDS:-10}" rc=0
  if ! command -v clang++ >/dev/null; then
    echo "sanitizer stage: clang++ not found; run scripts/bootstrap.sh" >&2
    return 1
  fi
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:check_initialization_order=1:strict_init_order=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  log "sanitizers: configure ($dir: clang, ASan + UBSan, PRUNESVC_BUILD_WORKER=OFF)"
  cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DPRUNESVC_SANITIZE=ON -DPRUNESVC_BUILD_WORKER=OFF >/dev/null || return 1
  log "sanitizers: build (-j$JOBS)"
  cmake --build "$dir" -j "$JOBS" || return 1
  log "sanitizers: tests"
  ctest --test-dir "$dir" --output-on-failure --timeout 900 -j "$JOBS" "$@" || rc=1
  log "sanitizers: fuzz pass (${fuzz_seconds} s per target)"
  "$ROOT/scripts/fuzz.sh" --seconds "$fuzz_seconds" || rc=1
  return $rc
)

#!/usr/bin/env bash
# The README's second command: install what is missing, build everything, run every test, then the
# sanitizer stage (scripts/lib.sh sanitizer_stage: the torch-free tree and its tests under
# ASan + UBSan in build-asan/, and a short pass of every fuzz target; budget 15 min of CI's 90
# with a warm ccache, 35 cold).
# Exit code: non-zero when the tests or the sanitizer stage fail (the stage runs either way).
# Extra arguments go to ctest, in both stages (e.g. -R E2e, -L e2e, -LE e2e).
# PRUNESVC_SKIP_SANITIZE=1 skips the sanitizer stage (local quick runs; CI runs it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

start=$(date +%s)
"$ROOT/scripts/bootstrap.sh"
configure_and_build
built=$(date +%s)
log "tests"
cd "$BUILD_DIR"
set +e
ctest --output-on-failure --timeout 900 -j "$JOBS" "$@"
rc=$?
set -e
tested=$(date +%s)
sanitize_rc=0
if [[ "${PRUNESVC_SKIP_SANITIZE:-0}" == 1 ]]; then
  log "sanitizer stage skipped (PRUNESVC_SKIP_SANITIZE=1)"
else
  set +e
  sanitizer_stage "$@"
  sanitize_rc=$?
  set -e
fi
end=$(date +%s)
log "build $((built - start)) s, tests $((tested - built)) s (exit $rc), sanitizer stage $((end - tested)) s (exit $sanitize_rc)"
if ((rc != 0)); then exit $rc; fi
exit $sanitize_rc

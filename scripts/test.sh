#!/usr/bin/env bash
# The README's second command: install what is missing, build everything, run every test.
# Exit code = the tests'. Extra arguments go to ctest (e.g. -R E2e, -L e2e, -LE e2e).
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
end=$(date +%s)
log "build $((built - start)) s, tests $((end - built)) s, exit $rc"
exit $rc

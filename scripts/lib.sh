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

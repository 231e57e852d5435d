#!/usr/bin/env bash
# Builds the prunesvc container images on this machine and runs them end to end (docs/deploy.md,
# "Containers"). Not part of CI (.ci/run): it installs podman, needs root and takes minutes.
#
#  1. installs podman, debootstrap and friends from Debian's archive if missing;
#  2. checks docker/runtime-packages.txt against scripts/bootstrap.sh and this machine's packages;
#  3. makes a Debian 12 base image with debootstrap (mirror from this machine's apt sources;
#     cached as a tarball under $PRUNESVC_CONTAINER_CACHE, default /var/cache/prunesvc) and imports
#     it as localhost/prunesvc-base:debian12;
#  4. stages a build context (build/bin's binaries + runtime-packages.txt; models/ is not baked in)
#     and builds localhost/prunesvc-scheduler and localhost/prunesvc-worker-cpu with
#     `podman build --format docker` (the OCI format would drop HEALTHCHECK);
#  5. checks the images: uid 10001, HEALTHCHECK present, every library of every binary resolves
#     (ldd inside the image), runtime package versions vs this machine's;
#  6. runs a scheduler and a CPU worker in containers on a podman network (host networking if the
#     network is refused), waits for `podman healthcheck run` to report both healthy and for the
#     worker to register, submits a pruning job on the bundled tiny model from the host with
#     prunectl, watches it to SUCCEEDED and fetches the artifact (sha256 and manifest verified).
#
# Usage: scripts/container_test.sh [--build-only] [--keep] [--network=auto|bridge|host]
#                                  [--rebuild-base] [--no-cache]
#   --build-only    build and check the images (1-5), run no containers
#   --keep          leave the containers, network and work directory for inspection
#   --network       auto (default): a podman bridge network, host networking if it is refused
#   --rebuild-base  debootstrap the base again (e.g. after a Debian point release)
#   --no-cache      build every image layer again (the apt layers are cached otherwise, so
#                   security updates reach the images only with this flag)
# Environment: PRUNESVC_BUILD_DIR (build/), PRUNESVC_CONTAINER_CACHE (/var/cache/prunesvc),
#   PRUNESVC_IMAGE_TAG (the binaries' --version; :latest is tagged too),
#   PRUNESVC_MODEL_MODE (auto: blob if prunectl has upload-model, else mount; blob; mount),
#   PRUNESVC_PODMAN_OPTS + PRUNESVC_PODMAN_RUN_OPTS (global podman options, e.g. "--runtime=runc",
#   and options for every run and build, e.g. "--ulimit=nproc=4096:4096"; when unset, the script
#   probes a few alternatives itself and says which one it used).
# Prints a final "PASS" line; exits non-zero with the failing step otherwise.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BUILD_ONLY=0 KEEP=0 NETWORK_MODE=auto REBUILD_BASE=0 BUILD_CACHE=(--layers)
for arg in "$@"; do
  case "$arg" in
    --build-only) BUILD_ONLY=1 ;;
    --keep) KEEP=1 ;;
    --network=auto | --network=bridge | --network=host) NETWORK_MODE="${arg#--network=}" ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    --no-cache) BUILD_CACHE=(--no-cache) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "container_test.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

BIN="$BUILD_DIR/bin"
CACHE="${PRUNESVC_CONTAINER_CACHE:-/var/cache/prunesvc}"
BASE_IMAGE=localhost/prunesvc-base:debian12
SCHED_CTR=prunesvc-test-scheduler
WORKER_CTR=prunesvc-test-worker
NET=prunesvc-test
MODEL="$ROOT/models/tiny-llava-shapes"
MODELS_ROOT="$(dirname "$MODEL")"
PKG_FILE="$ROOT/docker/runtime-packages.txt"
SUITE=bookworm

STEP=0
NOTES=()   # fallbacks taken, with the refusal that caused them
step() {
  STEP=$((STEP + 1))
  if [[ -t 1 ]]; then printf '\n\033[1m=== %d. %s\033[0m\n' "$STEP" "$*"; else printf '\n=== %d. %s\n' "$STEP" "$*"; fi
}
info() { printf '    %s\n' "$*"; }
note() { NOTES+=("$*"); printf '    NOTE: %s\n' "$*"; }
fail() { printf 'FAIL (step %d): %s\n' "$STEP" "$*" >&2; exit 1; }
json() { /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

[[ $(id -u) -eq 0 ]] ||
  fail "run as root (rootful podman; rootless would need /etc/subuid ranges, not set up here)"

work=""
ctx=""
cleanup() {
  local rc=$?
  set +e
  if ((rc != 0 && ${#PODMAN[@]})); then
    for c in "$SCHED_CTR" "$WORKER_CTR"; do
      if "${PODMAN[@]}" container exists "$c" 2>/dev/null; then
        echo "--- last log lines of $c:" >&2
        "${PODMAN[@]}" logs --tail 40 "$c" >&2 2>&1
      fi
    done
  fi
  if ((KEEP)); then
    echo "kept: containers $SCHED_CTR $WORKER_CTR, network $NET, work dir ${work:-none}" >&2
  else
    if command -v podman >/dev/null && ((${#PODMAN[@]})); then
      "${PODMAN[@]}" rm -f -v -t 10 "$SCHED_CTR" "$WORKER_CTR" >/dev/null 2>&1
      "${PODMAN[@]}" network rm -f "$NET" >/dev/null 2>&1
    fi
    [[ -n "$work" ]] && rm -rf "$work"
  fi
  [[ -n "$ctx" ]] && rm -rf "$ctx"
  exit $rc
}
PODMAN=()
RUN_OPTS=()
prun() { "${PODMAN[@]}" run "${RUN_OPTS[@]}" "$@"; }
pcheck() { prun --rm --no-healthcheck "$@"; }   # one-off commands in an image
trap cleanup EXIT

# --- 1. tools ------------------------------------------------------------------------------
step "tools: podman, debootstrap (Debian packages, installed if missing)"
# crun and runc: OCI runtimes (crun is podman's default; runc where crun refuses, below);
# netavark + aardvark-dns + iptables: podman networks with container-name DNS (netavark fails
# with "No such file or directory" without iptables); catatonit: `podman run --init`. Rootful
# podman on overlay needs neither slirp4netns, uidmap nor fuse-overlayfs.
TOOLS=(podman crun runc netavark aardvark-dns iptables catatonit debootstrap)
missing=()
for p in "${TOOLS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  info "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
info "$(podman --version), $(dpkg-query -W -f='debootstrap ${Version}' debootstrap), $(crun --version | head -1)"

# --- 2. runtime packages vs bootstrap.sh -----------------------------------------------------
step "runtime packages: docker/runtime-packages.txt vs scripts/bootstrap.sh and this machine"
for f in prune-scheduler prune-worker prunectl libprunesvc_spm.so shapes-vqa; do
  [[ -x "$BIN/$f" ]] || fail "$BIN/$f is missing: build it (cmake --build build --target" \
    "prune-scheduler prune-worker prunectl shapes-vqa)"
done
# Images are tagged with the binaries' version (deploy/k8s names prunesvc-scheduler:0.1.0, ...)
# and latest.
TAG="${PRUNESVC_IMAGE_TAG:-$("$BIN/prune-scheduler" --version | awk '{print $2}')}"
SCHED_IMAGE="localhost/prunesvc-scheduler:$TAG"
WORKER_IMAGE="localhost/prunesvc-worker-cpu:$TAG"
mapfile -t BOOTSTRAP_PKGS < <(sed -n '/^PACKAGES=(/,/^)/p' "$ROOT/scripts/bootstrap.sh" |
  sed -e 's/#.*//' -e 's/PACKAGES=(//' -e 's/^)$//' | tr -s ' \t' '\n\n' | sed '/^$/d')
((${#BOOTSTRAP_PKGS[@]} > 10)) || fail "could not read PACKAGES from scripts/bootstrap.sh"
# Installed dependencies of $1, three levels deep, $1 included (e.g. libjpeg-dev ->
# libjpeg62-turbo-dev -> libjpeg62-turbo).
dep_closure() {
  local -A seen=([$1]=1)
  local frontier=("$1") next p d
  for _ in 1 2 3; do
    next=()
    for p in "${frontier[@]}"; do
      while read -r d; do
        if [[ -n "$d" && -z "${seen[$d]:-}" ]]; then seen[$d]=1; next+=("$d"); fi
      done < <(dpkg-query -W -f='${Depends}, ${Pre-Depends}' "$p" 2>/dev/null | tr ',|' '\n\n' |
        sed -e 's/([^)]*)//g' -e 's/:any//' -e 's/[[:space:]]//g')
    done
    frontier=("${next[@]}")
  done
  printf '%s\n' "${!seen[@]}"
}
# The runtime packages of one image, as the Dockerfiles select them.
image_packages() {
  awk -v img="$1" '$1 !~ /^#/ && NF >= 3 && $1 != "-" && index("," $2 ",", "," img ",") { print $1 }' \
    "$PKG_FILE"
}
errors=0
declare -A PAIRED=()
while read -r runtime _images from _; do
  [[ -z "$runtime" || "$runtime" == \#* ]] && continue
  if [[ -z "$from" ]]; then
    echo "    $PKG_FILE: line for $runtime has no third column" >&2
    errors=$((errors + 1))
    continue
  fi
  [[ "$from" == - ]] && continue
  PAIRED[$from]=1
  if ! grep -qxF -- "$from" <<<"$(printf '%s\n' "${BOOTSTRAP_PKGS[@]}")"; then
    echo "    $runtime: its bootstrap package $from is not in scripts/bootstrap.sh" >&2; errors=$((errors + 1))
  elif [[ "$runtime" != - ]]; then
    if ! dpkg-query -W -f='${Status}' "$from" 2>/dev/null | grep -q "install ok installed"; then
      echo "    $from is not installed here: run scripts/bootstrap.sh" >&2; errors=$((errors + 1))
    elif ! grep -qxF -- "$runtime" <<<"$(dep_closure "$from")"; then
      echo "    $runtime is not $from or one of its dependencies here" \
        "($from $(dpkg-query -W -f='${Version}: ${Depends}' "$from"))" >&2
      errors=$((errors + 1))
    fi
  fi
done < "$PKG_FILE"
for p in "${BOOTSTRAP_PKGS[@]}"; do
  if [[ "$p" == *-dev && -z "${PAIRED[$p]:-}" ]]; then
    echo "    bootstrap.sh's $p has no line in docker/runtime-packages.txt" \
      "(its runtime package, or '-' if build-only)" >&2
    errors=$((errors + 1))
  fi
done
((errors == 0)) || fail "$errors inconsistencies between docker/runtime-packages.txt and scripts/bootstrap.sh"
for img in scheduler worker-cpu worker-cuda; do
  info "$img: $(image_packages "$img" | tr '\n' ' ')"
done
info "consistent: every -dev package of bootstrap.sh is paired or marked build-only"

# --- 3. the Debian 12 base -------------------------------------------------------------------
step "base image $BASE_IMAGE (debootstrap --variant=minbase $SUITE, cached in $CACHE)"
# Mirrors from this machine's apt configuration (one-line and deb822 sources alike).
repo_for() {  # $1 = suite; prints the first repository URI apt uses for it
  apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | awk -v s="$1" '$2 == s { print $1; exit }'
}
MIRROR="$(repo_for "$SUITE")"
[[ -n "$MIRROR" ]] || fail "no apt source for $SUITE on this machine (apt-get indextargets)"
SECURITY="$(repo_for "$SUITE-security")"
UPDATES="$(repo_for "$SUITE-updates")"
info "mirror $MIRROR${UPDATES:+, updates $UPDATES}${SECURITY:+, security $SECURITY}"
BASE_TAR="$CACHE/debian12-minbase.tar"
BASE_STAMP="$BASE_TAR.stamp"
stamp="$SUITE minbase $MIRROR ${UPDATES:-} ${SECURITY:-}"
mkdir -p "$CACHE"
if ((REBUILD_BASE)) || [[ ! -s "$BASE_TAR" || "$(cat "$BASE_STAMP" 2>/dev/null)" != "$stamp" ]]; then
  rootfs="$CACHE/rootfs.tmp"
  rm -rf "$rootfs" "$BASE_TAR" "$BASE_STAMP"
  info "debootstrap into $rootfs (a few minutes; log $CACHE/debootstrap.log)"
  if ! nice -n 10 debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -20 "$CACHE/debootstrap.log" >&2
    fail "debootstrap failed"
  fi
  {
    echo "deb $MIRROR $SUITE main"
    [[ -n "$UPDATES" ]] && echo "deb $UPDATES $SUITE-updates main"
    [[ -n "$SECURITY" ]] && echo "deb $SECURITY $SUITE-security main"
  } >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  tar --numeric-owner -C "$rootfs" -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  echo "$stamp" >"$BASE_STAMP"
  rm -rf "$rootfs"
  info "made $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
else
  info "cached: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1), $(date -r "$BASE_TAR" +%F))"
fi

# podman itself: the default configuration first; where this machine refuses it, the usual
# alternatives in turn, each noted with the message that ruled the previous one out:
#  - explicit ulimits: podman asks the runtime for RLIMIT_NOFILE/RLIMIT_NPROC above the hard
#    limits here, which needs CAP_SYS_RESOURCE ("setrlimit `RLIMIT_NOFILE`: Operation not
#    permitted"); the values below are the hard nofile limit and at most 32768 processes (conmon
#    itself runs with RLIMIT_NPROC 32768 here: anything above is refused too);
#  - runc instead of crun: crun 1.8 refuses cgroups v1/v2 hybrid hosts whose v2 hierarchy has a
#    controller ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2");
#  - the vfs storage driver (no overlay mounts), in a separate store.
# Each candidate is "GLOBAL OPTIONS|RUN AND BUILD OPTIONS". The probe runs with --network=none:
# networking is probed on its own below.
nofile_hard=$(ulimit -Hn) nproc_hard=$(ulimit -Hu)
[[ "$nofile_hard" == unlimited ]] && nofile_hard=1048576
[[ "$nproc_hard" == unlimited || "$nproc_hard" -gt 32768 ]] && nproc_hard=32768
ULIMITS="--ulimit=nofile=$nofile_hard:$nofile_hard --ulimit=nproc=$nproc_hard:$nproc_hard"
if [[ -n "${PRUNESVC_PODMAN_OPTS:-}" ]]; then
  CANDIDATES=("$PRUNESVC_PODMAN_OPTS|${PRUNESVC_PODMAN_RUN_OPTS:-}")
else
  CANDIDATES=("|" "|$ULIMITS" "--runtime=runc|$ULIMITS"
    "--runtime=runc --storage-driver=vfs --root=$CACHE/storage-vfs|$ULIMITS")
fi
# The imported image carries the tarball's mtime as a label: a new tarball is imported again.
base_id="$(stat -c %Y "$BASE_TAR")"
RUN_OPTS=()
for cand in "${CANDIDATES[@]}"; do
  read -r -a PODMAN <<<"podman ${cand%%|*}"
  read -r -a RUN_OPTS <<<"${cand#*|}"
  g="${cand%%|*}" r="${cand#*|}"
  label="podman${g:+ $g} run${r:+ $r}"
  [[ "$cand" == "|" ]] && label="podman run (defaults)"
  out=""
  imported=$("${PODMAN[@]}" image inspect --format '{{index .Labels "prunesvc.base-tar-mtime"}}' \
    "$BASE_IMAGE" 2>/dev/null || true)
  if [[ "$imported" != "$base_id" ]]; then
    "${PODMAN[@]}" image rm -f "$BASE_IMAGE" >/dev/null 2>&1 || true
    out=$("${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' --change "LABEL prunesvc.base-tar-mtime=$base_id" \
      "$BASE_TAR" "$BASE_IMAGE" 2>&1) || {
      note "${label}: import refused: $(tail -1 <<<"$out")"; PODMAN=(); continue; }
  fi
  if out=$(pcheck --network=none "$BASE_IMAGE" /bin/true 2>&1); then break; fi
  note "${label}: refused: $(tail -1 <<<"$out")"
  PODMAN=()
done
((${#PODMAN[@]})) || fail "no podman configuration can run a container here (see the notes above)"
fmt='{{.Store.GraphDriverName}} storage, {{.Host.CgroupManager}} cgroups {{.Host.CgroupsVersion}}'
fmt+=', {{.Host.NetworkBackend}}'
info "podman: ${PODMAN[*]}, run/build options: ${RUN_OPTS[*]:-none}" \
  "($("${PODMAN[@]}" info --format "$fmt" 2>/dev/null))"
info "$BASE_IMAGE: $(pcheck "$BASE_IMAGE" sh -c \
  '. /etc/os-release; echo "$PRETTY_NAME, Debian $(cat /etc/debian_version)"')"

# Can a build's RUN step reach the mirror on podman's default network? If not, build with the
# host's network.
BUILD_NET=()
mirror_host="$(sed -E 's#^[a-z]+://([^/:]+).*#\1#' <<<"$MIRROR")"
if ! out=$(pcheck "$BASE_IMAGE" timeout 20 bash -c "exec 3<>/dev/tcp/$mirror_host/80" 2>&1); then
  note "a container on podman's default network cannot reach $mirror_host:80" \
    "($(tail -1 <<<"$out")); building with --network=host"
  BUILD_NET=(--network=host)
fi

# --- 4. build ----------------------------------------------------------------------------------
step "build $SCHED_IMAGE and $WORKER_IMAGE (podman build --format docker)"
ctx=$(mktemp -d /tmp/prunesvc-context.XXXXXX)
mkdir "$ctx/bin"
cp "$PKG_FILE" "$ctx/runtime-packages.txt"
cp "$BIN/prune-scheduler" "$BIN/prune-worker" "$BIN/prunectl" "$BIN/libprunesvc_spm.so" "$ctx/bin/"
info "context $ctx: runtime-packages.txt, bin/{prune-scheduler,prune-worker,prunectl,libprunesvc_spm.so} from $BIN"
build_image() {  # $1 = Dockerfile, $2 = tag
  local log t0=$SECONDS old new
  log="$CACHE/build-$(basename "$1" .Dockerfile).log"
  old=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$2" 2>/dev/null || true)
  if ! nice -n 10 "${PODMAN[@]}" build "${RUN_OPTS[@]}" --format docker "${BUILD_CACHE[@]}" \
      "${BUILD_NET[@]}" --build-arg BASE="$BASE_IMAGE" -f "$ROOT/docker/$1" -t "$2" -t "${2%:*}:latest" "$ctx" >"$log" 2>&1; then
    tail -30 "$log" >&2
    fail "podman build -f docker/$1 failed (log $log)"
  fi
  info "$2 (and :latest): built in $((SECONDS - t0)) s (log $log)"
  # The image this build replaced, now untagged: removed unless something still uses it.
  new=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$2")
  if [[ -n "$old" && "$old" != "$new" ]]; then "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 || true; fi
}
build_image scheduler.Dockerfile "$SCHED_IMAGE"
build_image worker-cpu.Dockerfile "$WORKER_IMAGE"

# --- 5. image checks ---------------------------------------------------------------------------
step "image checks: user, HEALTHCHECK, ldd inside the image, package versions"
check_image() {  # $1 = image, $2 = runtime-packages.txt image name
  local img="$1" name="$2" user hc missing_libs pkgs host_v img_v
  user=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$img")
  [[ "$user" == 10001:10001 ]] || fail "$img: user is '$user', not 10001:10001"
  hc=$("${PODMAN[@]}" image inspect \
    --format '{{if .Config.Healthcheck}}{{json .Config.Healthcheck.Test}}{{end}}' "$img")
  [[ "$hc" == *prunectl\ health* ]] || fail "$img: no HEALTHCHECK (built without --format docker?)"
  # Every ELF file in /opt/prunesvc/bin, and every library it needs, must resolve in the image.
  missing_libs=$(pcheck --entrypoint /bin/sh "$img" -c \
    'for f in /opt/prunesvc/bin/*; do ldd "$f" | sed -n "s|^[[:space:]]*\(.*not found\)|$f: \1|p"; done')
  [[ -z "$missing_libs" ]] || { echo "$missing_libs" >&2; fail "$img: libraries that do not resolve (ldd)"; }
  local n_libs
  n_libs=$(pcheck --entrypoint /bin/sh "$img" -c \
    'for f in /opt/prunesvc/bin/*; do ldd "$f"; done | awk "/=>/ {print \$1}" | sort -u | wc -l')
  # The libraries apt installed should be the versions the binaries were built against; Debian
  # keeps the ABI within a release, so a difference is only reported.
  mapfile -t pkgs < <(image_packages "$name")
  local differ=()
  while read -r p img_v; do
    host_v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
    [[ -n "$host_v" && "$host_v" != "$img_v" ]] && differ+=("$p $img_v (here $host_v)")
  done < <(pcheck --entrypoint dpkg-query "$img" -W -f='${Package} ${Version}\n' "${pkgs[@]}")
  ((${#differ[@]} == 0)) || note "$img: package versions differ from this machine: ${differ[*]}"
  info "$img: user $user, HEALTHCHECK $hc"
  info "$img: ldd resolves all $n_libs libraries of $(
    pcheck --entrypoint /bin/sh "$img" -c 'ls /opt/prunesvc/bin | tr "\n" " "')"
  info "$img: $(pcheck --entrypoint /bin/sh "$img" -c \
    'for b in /opt/prunesvc/bin/prune-*; do "$b" --version; done')"
}
check_image "$SCHED_IMAGE" scheduler
check_image "$WORKER_IMAGE" worker-cpu
pcheck --entrypoint /bin/sh "$SCHED_IMAGE" -c 'test ! -e /usr/lib/x86_64-linux-gnu/libtorch_cpu.so.1.13' ||
  fail "$SCHED_IMAGE contains libtorch"
info "$SCHED_IMAGE: no libtorch"
"${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
  grep -E "^localhost/prunesvc-(base|scheduler|worker-cpu):" | sed 's/^/    size: /'

if ((BUILD_ONLY)); then
  ((${#NOTES[@]})) && printf 'notes:\n' && printf '  - %s\n' "${NOTES[@]}"
  echo "PASS: images built and checked ($SCHED_IMAGE, $WORKER_IMAGE)"
  exit 0
fi

# --- 6. run ------------------------------------------------------------------------------------
step "run the scheduler and a CPU worker in containers"
work=$(mktemp -d /tmp/prunesvc-container-test.XXXXXX)
"${PODMAN[@]}" rm -f -v -t 5 "$SCHED_CTR" "$WORKER_CTR" >/dev/null 2>&1 || true   # a killed run's
"${PODMAN[@]}" network rm -f "$NET" >/dev/null 2>&1 || true

# How the worker gets the model. blob mode: `prunectl upload-model DIR` stores it in the
# scheduler's blob store and returns blob://sha256:..., which workers fetch from the scheduler:
# nothing is mounted (the default since upload-model landed). mount mode (PRUNESVC_MODEL_MODE=mount,
# or automatically with a prunectl without upload-model): models/ is bind-mounted read-only at the
# same path into both containers (the scheduler resolves file:// URIs under its
# --allowed-model-roots too) and the job names the file:// path.
MODEL_MODE="${PRUNESVC_MODEL_MODE:-auto}"
if [[ "$MODEL_MODE" == auto ]]; then
  if grep -q '^ *upload-model' <<<"$("$BIN/prunectl" --help 2>&1)"; then MODEL_MODE=blob; else MODEL_MODE=mount; fi
fi
MODEL_MOUNT=() MODEL_ROOTS=()
if [[ "$MODEL_MODE" == mount ]]; then
  # Kept for file:// deployments (docs/deploy.md "Containers"); blob mode needs no host path.
  MODEL_MOUNT=(-v "$MODELS_ROOT:$MODELS_ROOT:ro")
  MODEL_ROOTS=(--allowed-model-roots="$MODELS_ROOT")
  why="prunectl has no upload-model yet"
  [[ "${PRUNESVC_MODEL_MODE:-auto}" == mount ]] && why="PRUNESVC_MODEL_MODE=mount"
  info "model: bind mount $MODELS_ROOT (read-only) into both containers ($why)"
else
  info "model: prunectl upload-model -> blob:// URI, nothing mounted"
fi

# podman schedules the periodic healthchecks with systemd timers; without systemd as init (this
# machine) every `run` logs "unable to get systemd connection to add healthchecks" and nothing
# runs them, so the containers get --health-interval=disable and the test runs
# `podman healthcheck run` itself (the image's HEALTHCHECK command either way).
HEALTH_OPTS=()
if [[ ! -d /run/systemd/system ]]; then
  HEALTH_OPTS=(--health-interval=disable)
  note "no systemd: podman cannot schedule periodic healthchecks here; containers run with" \
    "--health-interval=disable, checked with 'podman healthcheck run'"
fi
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
start_containers() {  # $1 = bridge | host
  if [[ "$1" == bridge ]]; then
    "${PODMAN[@]}" network create "$NET" >/dev/null || return 1
    prun -d "${HEALTH_OPTS[@]}" --name "$SCHED_CTR" --network "$NET" -p 127.0.0.1::50051 "${MODEL_MOUNT[@]}" \
      "$SCHED_IMAGE" --host=0.0.0.0 --port=50051 --metrics-port=9464 \
      --state-dir=/var/lib/prunesvc "${MODEL_ROOTS[@]}" >/dev/null || return 1
    prun -d "${HEALTH_OPTS[@]}" --name "$WORKER_CTR" --network "$NET" "${MODEL_MOUNT[@]}" \
      "$WORKER_IMAGE" --scheduler="$SCHED_CTR:50051" --advertise-host="$WORKER_CTR" \
      --host=0.0.0.0 --port=50061 --metrics-port=9465 --device=cpu --threads=2 \
      --cache-dir=/var/lib/prunesvc/cache --worker-name=container-worker "${MODEL_ROOTS[@]}" >/dev/null || return 1
    local published
    published=$("${PODMAN[@]}" port "$SCHED_CTR" 50051/tcp | head -1) || return 1
    ADDR="127.0.0.1:${published##*:}"
  else
    local sp smp wp wmp
    sp=$(free_port) smp=$(free_port) wp=$(free_port) wmp=$(free_port)
    prun -d "${HEALTH_OPTS[@]}" --name "$SCHED_CTR" --network host -e PRUNESVC_HEALTH_ADDR="127.0.0.1:$sp" \
      "${MODEL_MOUNT[@]}" "$SCHED_IMAGE" --host=127.0.0.1 --port="$sp" --metrics-port="$smp" \
      --state-dir=/var/lib/prunesvc "${MODEL_ROOTS[@]}" >/dev/null || return 1
    prun -d "${HEALTH_OPTS[@]}" --name "$WORKER_CTR" --network host -e PRUNESVC_HEALTH_ADDR="127.0.0.1:$wp" \
      "${MODEL_MOUNT[@]}" "$WORKER_IMAGE" --scheduler="127.0.0.1:$sp" --advertise-host=127.0.0.1 \
      --host=127.0.0.1 --port="$wp" --metrics-port="$wmp" --device=cpu --threads=2 \
      --cache-dir=/var/lib/prunesvc/cache --worker-name=container-worker "${MODEL_ROOTS[@]}" >/dev/null || return 1
    ADDR="127.0.0.1:$sp"
  fi
}
ADDR=""
net_used=""
for mode in bridge host; do
  [[ "$NETWORK_MODE" != auto && "$NETWORK_MODE" != "$mode" ]] && continue
  if out=$(start_containers "$mode" 2>&1); then net_used=$mode; break; fi
  note "network $mode refused: $(tail -1 <<<"$out")"
  "${PODMAN[@]}" rm -f -v -t 5 "$SCHED_CTR" "$WORKER_CTR" >/dev/null 2>&1 || true
  "${PODMAN[@]}" network rm -f "$NET" >/dev/null 2>&1 || true
done
[[ -n "$net_used" ]] || fail "the containers could not be started (see the notes above)"
# start_containers ran in a subshell ($(...)): recompute the address it found.
if [[ "$net_used" == bridge ]]; then
  ADDR="127.0.0.1:$("${PODMAN[@]}" port "$SCHED_CTR" 50051/tcp | head -1 | sed 's/.*://')"
else
  ADDR="$("${PODMAN[@]}" inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$SCHED_CTR" |
    sed -n 's/^PRUNESVC_HEALTH_ADDR=//p')"
fi
if [[ "$net_used" == bridge ]]; then
  info "network: bridge ($NET; the worker dials $SCHED_CTR:50051, the scheduler dials $WORKER_CTR:50061)"
else
  info "network: host"
fi
info "scheduler: $SCHED_CTR, reached from the host at $ADDR"
for c in "$SCHED_CTR" "$WORKER_CTR"; do
  info "$c: $("${PODMAN[@]}" exec "$c" sh -c 'printf "uid=%s gid=%s, PID 1: " "$(id -u)" "$(id -g)"; tr "\0" " " </proc/1/cmdline')"
done

step "healthchecks (podman healthcheck run) and worker registration"
health_status() {  # the container's recorded health status, whatever podman 4.x calls the field
  "${PODMAN[@]}" inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null ||
    "${PODMAN[@]}" inspect --format '{{.State.Healthcheck.Status}}' "$1" 2>/dev/null || echo "?"
}
wait_healthy() {  # $1 = container
  local out rc=1
  for _ in $(seq 1 60); do
    if out=$("${PODMAN[@]}" healthcheck run "$1" 2>&1); then rc=0; break; fi
    [[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$1")" == true ]] || fail "$1 exited"
    sleep 1
  done
  ((rc == 0)) || fail "$1: podman healthcheck run: ${out:-unhealthy}"
  info "$1: podman healthcheck run -> exit 0${out:+ ($out)}, status $(health_status "$1")"
}
wait_healthy "$SCHED_CTR"
wait_healthy "$WORKER_CTR"
n=0
for _ in $(seq 1 60); do
  n=$("$BIN/prunectl" workers --addr="$ADDR" --json 2>/dev/null |
    json 'sum(1 for w in d.get("workers", []) if w.get("state") == "WORKER_IDLE")' || echo 0)
  ((n >= 1)) && break
  sleep 1
done
((n >= 1)) || fail "the worker did not register with the scheduler"
"$BIN/prunectl" workers --addr="$ADDR" | sed 's/^/    /'

# --- 7. a job ----------------------------------------------------------------------------------
step "a pruning job from the host: upload, submit, watch, fetch"
"$BIN/shapes-vqa" --seed=1000 --split=search --count=32 --out="$work/search" 2>/dev/null
"$BIN/shapes-vqa" --seed=2000 --split=eval --count=200 --out="$work/heldout" 2>/dev/null
ds=$("$BIN/prunectl" upload-dataset "$work/search" --addr="$ADDR" 2>/dev/null)
ev=$("$BIN/prunectl" upload-dataset "$work/heldout" --addr="$ADDR" 2>/dev/null)
info "datasets: search $ds (32 samples), held-out $ev (200 samples)"
if [[ "$MODEL_MODE" == blob ]]; then
  model_uri=$("$BIN/prunectl" upload-model "$MODEL" --addr="$ADDR" 2>"$work/upload-model.log") ||
    { cat "$work/upload-model.log" >&2; fail "prunectl upload-model failed"; }
  info "prunectl upload-model $MODEL: $(tail -1 "$work/upload-model.log")"
else
  model_uri="file://$MODEL"
fi
info "model: $model_uri"
t0=$SECONDS
job=$("$BIN/prunectl" submit --addr="$ADDR" --model="$model_uri" --dataset="$ds" --eval-dataset="$ev" \
  --flops-budget=0.5 --population=4 --parents=2 --generations=1 --seed=0 --label=test=container)
info "job $job submitted (EFFICIENTLLAVA, FLOPs budget 0.5, population 4, 1 generation)"
rc=0
timeout 1500 "$BIN/prunectl" watch "$job" --addr="$ADDR" >"$work/watch.log" 2>&1 || rc=$?
sed 's/^/    | /' "$work/watch.log" | tail -8
state=$("$BIN/prunectl" get "$job" --addr="$ADDR" --json | json 'd["state"]')
info "job $job: $state in $((SECONDS - t0)) s (prunectl watch exit $rc)"
[[ "$rc" == 0 && "$state" == SUCCEEDED ]] || fail "job $job ended $state (watch exit $rc)"
"$BIN/prunectl" fetch "$job" --out="$work/artifact" --addr="$ADDR" >/dev/null 2>&1 || fail "prunectl fetch $job failed"
info "artifact: $(cd "$work/artifact" && ls | tr '\n' ' ')"
info "report: $(json '"flops_ratio %.3f, held-out accuracy %.3f (dense %.3f)" % (
  d["flops_ratio"], d["accuracy"], d["dense"]["accuracy"])' <"$work/artifact/report.json")"

step "after the job: healthchecks again, images, SIGTERM"
for c in "$SCHED_CTR" "$WORKER_CTR"; do
  out=$("${PODMAN[@]}" healthcheck run "$c" 2>&1) || fail "$c: podman healthcheck run: ${out:-unhealthy}"
  info "$c: healthy (podman healthcheck run exit 0), status $(health_status "$c")"
done
"${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
  grep -E "^localhost/prunesvc-(base|scheduler|worker-cpu):" | sed 's/^/    size: /'
if ((!KEEP)); then
  # Both servers run as PID 1: `podman stop` (SIGTERM) must end them cleanly, not by SIGKILL.
  for c in "$WORKER_CTR" "$SCHED_CTR"; do
    t0=$SECONDS
    "${PODMAN[@]}" stop -t 30 "$c" >/dev/null 2>&1   # (without systemd it also logs that no timer is left to remove)
    code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$c")
    info "$c: podman stop (SIGTERM) -> exit code $code after $((SECONDS - t0)) s"
    [[ "$code" == 0 ]] || fail "$c did not exit cleanly on SIGTERM (exit code $code)"
  done
fi

((${#NOTES[@]})) && printf '\nnotes:\n' && printf '  - %s\n' "${NOTES[@]}"
echo "PASS: scheduler + CPU worker in containers ($net_used network, model by $MODEL_MODE)," \
  "job $job SUCCEEDED, both healthy"

#!/usr/bin/env bash
# Debian 12's kustomize renderer: `kubectl kustomize` of package kubernetes-client 1.20 (kustomize
# v2.0.3), the only one Debian ships. deploy/k8s is written for it (bases:, patchesStrategicMerge:)
# and tests/k8s_render_test.sh renders every overlay with it.
#
# Usage:
#   scripts/debian_kubectl.sh            print the path of Debian's kubectl 1.20; exit 1 (with
#                                        what to run) when it is not there. Never downloads.
#   scripts/debian_kubectl.sh --install  the same, fetching it first when missing (bootstrap.sh
#                                        calls this): `apt-get download kubernetes-client` once
#                                        into the cache dir, unpacked there with dpkg-deb -x.
#
# Where it looks, in order:
#   1. /usr/bin/kubectl when dpkg says it belongs to kubernetes-client (Debian's, installed).
#   2. $PRUNESVC_KUBECTL_CACHE (when set), /var/cache/prunesvc/kubernetes-client (root's cache,
#      readable by everyone) and ${XDG_CACHE_HOME:-$HOME/.cache}/prunesvc/kubernetes-client (a
#      non-root user's cache): the unpacked .deb under root/usr/bin/kubectl; a cached .deb that
#      is not unpacked yet is unpacked (no network).
# --install writes to $PRUNESVC_KUBECTL_CACHE, else to /var/cache/... as root, else to the user
# cache. The package is unpacked rather than installed because /usr/bin/kubectl may belong to
# another package (Google's `kubectl`), and dpkg refuses two packages owning one file.
# Every candidate must report v1.20 (`kubectl version --client`); anything else is skipped.
set -euo pipefail

PACKAGE=kubernetes-client
WANT_VERSION_RE='v1\.20\.'

die() {
  echo "debian_kubectl: $*" >&2
  exit 1
}

install=0
case "${1:-}" in
  "") ;;
  --install) install=1 ;;
  -h | --help)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [--install]" >&2
    exit 2
    ;;
esac

is_v120() {  # is_v120 PATH: an executable kubectl whose client version is 1.20.x
  [[ -x "$1" ]] && "$1" version --client 2>/dev/null | grep -qE "$WANT_VERSION_RE"
}

user_cache="${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/prunesvc/$PACKAGE"
caches=()
[[ -n "${PRUNESVC_KUBECTL_CACHE:-}" ]] && caches+=("$PRUNESVC_KUBECTL_CACHE")
caches+=("/var/cache/prunesvc/$PACKAGE" "$user_cache")

# Unpacks the newest cached .deb of DIR into DIR/root (atomically: a half-unpacked tree is never
# left at DIR/root). Fails quietly when DIR has no .deb or is not writable.
unpack_cached() {
  local dir=$1 deb tmp debs=()
  for deb in "$dir/$PACKAGE"_*.deb; do [[ -f "$deb" ]] && debs+=("$deb"); done
  ((${#debs[@]})) && [[ -w "$dir" ]] || return 1
  deb=$(printf '%s\n' "${debs[@]}" | sort -V | tail -n 1)
  tmp=$(mktemp -d "$dir/.unpack.XXXXXX") || return 1
  if ! dpkg-deb -x "$deb" "$tmp"; then
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$dir/root"
  mv "$tmp" "$dir/root"
}

find_kubectl() {
  if [[ -x /usr/bin/kubectl ]] && command -v dpkg >/dev/null &&
    dpkg -S /usr/bin/kubectl 2>/dev/null | grep -q "^$PACKAGE:" && is_v120 /usr/bin/kubectl; then
    echo /usr/bin/kubectl
    return 0
  fi
  local dir
  for dir in "${caches[@]}"; do
    if is_v120 "$dir/root/usr/bin/kubectl"; then
      echo "$dir/root/usr/bin/kubectl"
      return 0
    fi
  done
  for dir in "${caches[@]}"; do
    if unpack_cached "$dir" && is_v120 "$dir/root/usr/bin/kubectl"; then
      echo "$dir/root/usr/bin/kubectl"
      return 0
    fi
  done
  return 1
}

if path=$(find_kubectl); then
  echo "$path"
  exit 0
fi

if ((install == 0)); then
  die "Debian's kubectl 1.20 (package $PACKAGE) not found in /usr/bin or ${caches[*]}; run" \
    "scripts/bootstrap.sh (or scripts/debian_kubectl.sh --install)"
fi

# --install: download the .deb once (apt-get download needs no root, only apt's package lists).
if [[ -n "${PRUNESVC_KUBECTL_CACHE:-}" ]]; then
  dest=$PRUNESVC_KUBECTL_CACHE
elif [[ $(id -u) -eq 0 ]]; then
  dest=/var/cache/prunesvc/$PACKAGE
else
  dest=$user_cache
fi
mkdir -p "$dest"
apt_opts=(-q)
# As root, apt downloads as the sandbox user _apt, which cannot write to a root-owned cache dir;
# it then falls back to root with a warning. Ask for root directly (same result, no warning).
[[ $(id -u) -eq 0 ]] && apt_opts+=(-o APT::Sandbox::User=root)
download() { (cd "$dest" && apt-get "${apt_opts[@]}" download "$PACKAGE" >/dev/null); }
if ! download; then
  if [[ $(id -u) -eq 0 ]]; then
    echo "debian_kubectl: apt-get download failed; refreshing the package lists" >&2
    apt-get -qq update
    download || die "apt-get download $PACKAGE failed (is Debian's archive reachable?)"
  else
    die "apt-get download $PACKAGE failed; as root: apt-get update, then run this again"
  fi
fi
unpack_cached "$dest" || die "could not unpack the $PACKAGE .deb in $dest"
is_v120 "$dest/root/usr/bin/kubectl" ||
  die "$dest/root/usr/bin/kubectl does not report v1.20:" \
    "$("$dest/root/usr/bin/kubectl" version --client 2>&1 | head -n 1)"
echo "debian_kubectl: Debian's kubectl 1.20 in $dest/root/usr/bin/kubectl" >&2
echo "$dest/root/usr/bin/kubectl"

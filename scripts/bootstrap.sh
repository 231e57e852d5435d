#!/usr/bin/env bash
# Installs every Debian 12 package prunesvc needs, only when missing. Idempotent; run as root
# (or with sudo available). Nothing is downloaded outside Debian's archive.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git curl
  # the sanitizer stage and fuzzing (scripts/test.sh, scripts/fuzz.sh): clang 14, its ASan/UBSan/
  # libFuzzer runtimes, llvm-symbolizer for readable reports
  clang libclang-rt-14-dev llvm
  # C++ libraries (docs/architecture.md §3)
  libtorch-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev
  libsqlite3-dev nlohmann-json3-dev libyaml-cpp-dev libsentencepiece-dev
  libarchive-dev libspdlog-dev libcpp-httplib-dev libstb-dev libpng-dev libjpeg-dev
  # TLS: certificate parsing (common/tls.cc); the openssl command makes the tests' certificates
  libssl-dev openssl
  # Python reference scripts and standard-client tests (Debian's /usr/bin/python3)
  python3 python3-torch python3-numpy python3-pil python3-grpcio python3-grpc-tools
  python3-protobuf python3-sentencepiece grpc-proto sentencepiece
  # real peers used by tests (chromium renders the artifacts' report.html headless)
  prometheus chromium
)

# Debian's kubectl 1.20 (kustomize v2.0.3) for tests/k8s_render_test.sh, unpacked into a cache dir
# because it conflicts with Google's kubectl package over /usr/bin/kubectl.
"$(dirname "${BASH_SOURCE[0]}")/debian_kubectl.sh" --install >/dev/null

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "bootstrap: all ${#PACKAGES[@]} packages present" >&2
  exit 0
fi

echo "bootstrap: installing ${#missing[@]} missing packages: ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "bootstrap: done" >&2

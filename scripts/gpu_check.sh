#!/usr/bin/env bash
# The CUDA path on a GPU machine (docs/gpu.md): builds the torch side of prunesvc against the CUDA
# libtorch that ships inside a CUDA PyTorch (python3 -c 'import torch' must work and see a GPU),
# runs the CUDA-vs-CPU parity tests, then llava-eval and prune-local on the bundled tiny model on
# the GPU and on the CPU side by side, and writes what it measured to OUT_DIR.
#
# Usage: scripts/gpu_check.sh [--build-only] [OUT_DIR]   (default /tmp/prunesvc-gpu-check, or $OUT)
#   DEBS_DIR (default .devdeps): Debian 12 .debs of the C++ libraries the torch side needs
#   (absl, spdlog, fmt, nlohmann-json, libpng, libjpeg, sentencepiece, libarchive, googletest,
#   pkgconf), unpacked into a private prefix, so the machine needs nothing installed but a
#   compiler, CMake, Ninja, CUDA's headers and the CUDA PyTorch. `scripts/gpu_check.sh --fetch`
#   downloads them on a Debian 12 machine with apt (the GPU machine may have no network).
#   PY (default python3): the interpreter whose torch is linked.
#   JOBS (default nproc): build parallelism.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DEBS_DIR="${DEBS_DIR:-$ROOT/.devdeps}"
DEB_PACKAGES=(libabsl-dev libabsl20220623 nlohmann-json3-dev libspdlog-dev libspdlog1.10 libfmt-dev
  libfmt9 libpng-dev libpng16-16 libjpeg62-turbo-dev libjpeg62-turbo libsentencepiece-dev
  libsentencepiece0 libarchive-dev libarchive13 libnettle8 libxml2 libicu72 libgtest-dev
  libgmock-dev pkgconf pkgconf-bin libpkgconf3 zlib1g zlib1g-dev)
if [[ "${1:-}" == --fetch ]]; then
  mkdir -p "$DEBS_DIR"
  (cd "$DEBS_DIR" && apt-get download "${DEB_PACKAGES[@]}")
  du -sh "$DEBS_DIR"
  exit 0
fi
BUILD_ONLY=0
if [[ "${1:-}" == --build-only ]]; then BUILD_ONLY=1; shift; fi
OUT_DIR="${1:-${OUT:-/tmp/prunesvc-gpu-check}}"
PY="$(${PY:-python3} -c 'import sys; print(sys.executable)')"
JOBS="${JOBS:-$(nproc)}"
# The tests' Python references run with this interpreter too.
export PRUNESVC_PYTHON="$PY" PRUNESVC_SOURCE="$ROOT"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu-check.log"
exec > >(tee "$LOG") 2>&1
step() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
T0=$(date +%s)

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  "gpus", torch.cuda.device_count())'
g++ --version | head -1; cmake --version | head -1; nproc

step "unpack Debian 12 libraries from $DEBS_DIR"
DEPS=/tmp/prunesvc-deps
rm -rf "$DEPS" && mkdir -p "$DEPS"
for f in "$DEBS_DIR"/*.deb; do dpkg -x "$f" "$DEPS"; done
LIBDIR="$DEPS/usr/lib/x86_64-linux-gnu"
# pkg-config files name /usr; point them at the private prefix.
sed -i "s|^prefix=/usr|prefix=$DEPS/usr|" "$LIBDIR"/pkgconfig/*.pc "$DEPS"/usr/share/pkgconfig/*.pc \
  2>/dev/null || true
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig:$DEPS/usr/share/pkgconfig"
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PKG_CONFIG_BIN="$(command -v pkg-config || echo "$DEPS/usr/bin/pkgconf")"

step "configure (torch side only, CUDA libtorch from $PY's torch)"
TORCH_DIR="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}"
# A small TorchConfig for the pip wheel's libtorch: its own TorchConfig.cmake wants the CUDA
# toolkit's CMake pieces (cuDNN, NVTX, …) that a runtime image may lack; the project needs only
# headers and the shared libraries. libtorch_cuda is linked --no-as-needed: nothing references
# it directly, yet loading it is what registers the CUDA backend. The wheel's libtorch.so is
# left out on purpose: it exports its own std::filesystem symbols (64 of them in 2.11), and a
# program linked to it binds std::filesystem::remove_all there — a null jump (seen: segfault in
# sparsegpt_test; docs/gpu.md). Nothing the project uses lives in it.
SHIM=/tmp/prunesvc-torch-shim
mkdir -p "$SHIM"
cat >"$SHIM/TorchConfig.cmake" <<EOF
add_library(torch INTERFACE IMPORTED)
set_target_properties(torch PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "$TORCH_DIR/include;$TORCH_DIR/include/torch/csrc/api/include;$CUDA_HOME/include"
  INTERFACE_LINK_LIBRARIES "-Wl,--no-as-needed;$TORCH_DIR/lib/libtorch_cuda.so;$TORCH_DIR/lib/libc10_cuda.so;-Wl,--as-needed;$TORCH_DIR/lib/libtorch_cpu.so;$TORCH_DIR/lib/libc10.so;-Wl,-rpath,$TORCH_DIR/lib")
set(TORCH_LIBRARIES torch)
set(TORCH_INSTALL_PREFIX "$TORCH_DIR")
set(Torch_FOUND TRUE)
EOF
BUILD=build-gpu
# -include cstdint: Debian 12's abseil (20220623) predates GCC 13's leaner headers.
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPRUNESVC_BUILD_SERVICES=OFF -DPRUNESVC_CUDA=ON -DTorch_DIR="$SHIM" \
  -DCMAKE_CXX_FLAGS="-include cstdint" \
  -DCMAKE_PREFIX_PATH="$DEPS/usr" -DPKG_CONFIG_EXECUTABLE="$PKG_CONFIG_BIN" \
  -DPRUNESVC_PYTHON="$PY" >"$OUT_DIR/configure.log" 2>&1 ||
  { tail -40 "$OUT_DIR/configure.log"; exit 1; }

step "build (-j$JOBS)"
TARGETS=(device_test cuda_parity_test llava-eval prune-local shapes-vqa model_llava_test sparsegpt_test)
if ! cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}" -- -k 0 >"$OUT_DIR/build.log" 2>&1; then
  grep -E "error|Error" "$OUT_DIR/build.log" | head -60
  exit 1
fi
echo "built in $(($(date +%s) - T0)) s since start"
((BUILD_ONLY)) && exit 0

step "parity tests (CUDA vs CPU)"
export OMP_NUM_THREADS="$JOBS"
"$BUILD"/tests/device_test || echo "device_test FAILED (see above)"
"$BUILD"/tests/cuda_parity_test || echo "cuda_parity_test FAILED (see above)"
step "model tests on this libtorch (float64 reference, CPU)"
PRUNESVC_BIN="$BUILD/bin" "$BUILD"/tests/model_llava_test --gtest_brief=1 || echo "model_llava_test FAILED (see above)"
"$BUILD"/tests/sparsegpt_test --gtest_brief=1 || echo "sparsegpt_test FAILED (see above)"

step "data: held-out 1000 (seed 2000) and search 64 (seed 1000)"
DATA=/tmp/prunesvc-gpu-data
"$BUILD"/bin/shapes-vqa --seed=2000 --split=eval --count=1000 --out="$DATA/heldout" --force 2>/dev/null
"$BUILD"/bin/shapes-vqa --seed=1000 --split=search --count=64 --out="$DATA/search" --force 2>/dev/null
MODEL="$ROOT/models/tiny-llava-shapes"

step "llava-eval, held-out 1000: CPU ($JOBS threads) then cuda:0"
for dev in cpu cuda:0; do
  "$BUILD"/bin/llava-eval --model="$MODEL" --samples="$DATA/heldout" --batch=32 --threads="$JOBS" \
    --device="$dev" --json >"$OUT_DIR/eval-${dev%%:*}.json"
  "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], "accuracy",
    r["accuracy"], "loss %.8f" % r["mean_loss"], "samples/s %.1f" % r["samples_per_second"],
    r["device_name"])' "$OUT_DIR/eval-${dev%%:*}.json" "$dev" || true
done

step "prune-local, UNSTRUCTURED and STRUCTURED at FLOPs 0.5 (default sizes): cuda:0 then CPU"
for gran in UNSTRUCTURED STRUCTURED; do
  for dev in cuda:0 cpu; do
    tag="prune-${gran,,}-${dev%%:*}"
    rm -rf "/tmp/$tag"
    s=$(date +%s%N)
    "$BUILD"/bin/prune-local --model="$MODEL" --samples="$DATA/search" \
      --eval-samples="$DATA/heldout" --flops-budget=0.5 --granularity="$gran" --seed=0 \
      --threads="$JOBS" --device="$dev" --out="/tmp/$tag" >"$OUT_DIR/$tag.log" 2>&1 ||
      { tail -20 "$OUT_DIR/$tag.log"; continue; }
    cp "/tmp/$tag/report.json" "$OUT_DIR/$tag.json"
    "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); p=r["pruned"]; d=r["dense"]
print(sys.argv[2], "wall %.1f s" % (float(sys.argv[3]) / 1e9), "flops_ratio %.4f" % r["flops_ratio"],
  "held-out %.3f -> %.3f" % (d["accuracy"], p["accuracy"]), "latency %.2f -> %.2f ms" %
  (d["latency_ms"], p["latency_ms"]), r["provenance"]["device_name"])' "$OUT_DIR/$tag.json" \
      "$tag" "$(($(date +%s%N) - s))" || true
  done
done
step "done in $(($(date +%s) - T0)) s"

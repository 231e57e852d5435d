# prune-worker image for NVIDIA GPUs (`--device=cuda:N`). A TEMPLATE: not built by
# scripts/container_test.sh nor CI (no GPU and no CUDA libtorch on those machines). It is
# worker-cpu.Dockerfile with a CUDA libtorch instead of Debian's CPU-only one: same Debian 12 base,
# same runtime packages (the "worker-cuda" lines of runtime-packages.txt), same uid 10001, ports
# and HEALTHCHECK.
#
# Build context, staged by hand (nothing is downloaded during the build):
#   CONTEXT/runtime-packages.txt             docker/runtime-packages.txt
#   CONTEXT/bin/prune-worker                 built on Debian 12 against the CUDA libtorch below:
#                                            cmake -S . -B build-cuda -G Ninja -DPRUNESVC_CUDA=ON \
#                                              -DCMAKE_PREFIX_PATH=/path/to/libtorch-cuda
#                                            cmake --build build-cuda --target prune-worker
#                                            (docs/gpu.md)
#   CONTEXT/bin/libprunesvc_spm.so           from the same build (build-cuda/bin)
#   CONTEXT/bin/prunectl                     from any Debian 12 build (build/bin)
#   CONTEXT/libtorch-cuda/lib/               the lib/ directory of the unpacked libtorch archive
#                                            (the "shared-with-deps" cxx11-ABI build: it carries
#                                            the CUDA runtime, cuBLAS and cuDNN libraries)
# Check that archive's libtorch.so first (docs/gpu.md, "Found by the check"):
#   nm -D --defined-only libtorch-cuda/lib/libtorch.so | c++filt | grep -c std::filesystem  -> 0
# Then:
#   podman build --format docker -f docker/worker-cuda.Dockerfile -t prunesvc-worker-cuda CONTEXT
#   (docker build -f docker/worker-cuda.Dockerfile -t prunesvc-worker-cuda CONTEXT)
# The NVIDIA driver (libcuda.so) is not in the image: the NVIDIA Container Toolkit injects it at
# run time (`docker run --gpus device=0`, or with CDI `podman run --device nvidia.com/gpu=0`).
ARG BASE=localhost/prunesvc-base:debian12
FROM ${BASE}

# Runtime libraries only, from docker/runtime-packages.txt (its "worker-cuda" lines: no libtorch).
COPY runtime-packages.txt /opt/prunesvc/share/runtime-packages.txt
RUN set -eu; \
    pkgs=$(awk -v img=worker-cuda '$1 !~ /^#/ && NF >= 3 && $1 != "-" && index("," $2 ",", "," img ",") { print $1 }' \
      /opt/prunesvc/share/runtime-packages.txt); \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    apt-get upgrade -y -qq >/dev/null; \
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; \
    apt-get clean; rm -rf /var/lib/apt/lists/*

# Non-root: uid/gid 10001 in every prunesvc image (as worker-cpu.Dockerfile).
RUN groupadd --gid 10001 prunesvc \
 && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /var/lib/prunesvc \
      --shell /usr/sbin/nologin prunesvc \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/prunesvc /var/lib/prunesvc/cache

COPY libtorch-cuda/lib/ /opt/libtorch/lib/
COPY bin/prune-worker bin/libprunesvc_spm.so bin/prunectl /opt/prunesvc/bin/

USER 10001:10001
WORKDIR /var/lib/prunesvc
ENV PATH=/opt/prunesvc/bin:$PATH \
    LD_LIBRARY_PATH=/opt/libtorch/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 50061 9465

# Same probe as worker-cpu.Dockerfile.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD prunectl health --addr="${PRUNESVC_HEALTH_ADDR:-localhost:50061}" --timeout=5 || exit 1

ENTRYPOINT ["/opt/prunesvc/bin/prune-worker"]
# As worker-cpu.Dockerfile, with --device=cuda:0 (one GPU per container), e.g.
#   --scheduler=prune-scheduler:50051 --advertise-host=$(POD_IP) --device=cuda:0
#   --host=0.0.0.0 --port=50061 --metrics-port=9465 --cache-dir=/var/lib/prunesvc/cache
CMD ["--help"]

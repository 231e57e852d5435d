# prune-worker image for CPUs: Debian's libtorch 1.13 (CPU-only), plus prunectl (its HEALTHCHECK).
# For GPUs see worker-cuda.Dockerfile (same layout, user, ports and HEALTHCHECK).
#
# The binaries are not compiled here: they are built on a Debian 12 machine (scripts/bootstrap.sh,
# `cmake --build build`) and copied from a staging build context laid out as
#   CONTEXT/runtime-packages.txt            (docker/runtime-packages.txt)
#   CONTEXT/bin/prune-worker, CONTEXT/bin/libprunesvc_spm.so, CONTEXT/bin/prunectl
# (libprunesvc_spm.so is the sentencepiece module prune-worker loads from its own directory).
# `scripts/container_test.sh --build-only` stages that context from build/bin and builds this
# image; by hand (podman or buildah need `--format docker`, or HEALTHCHECK is dropped):
#   podman build --format docker -f docker/worker-cpu.Dockerfile -t prunesvc-worker-cpu CONTEXT
# BASE: see scheduler.Dockerfile.
ARG BASE=localhost/prunesvc-base:debian12
FROM ${BASE}

# Runtime libraries only, from docker/runtime-packages.txt (its "worker-cpu" lines).
COPY runtime-packages.txt /opt/prunesvc/share/runtime-packages.txt
RUN set -eu; \
    pkgs=$(awk -v img=worker-cpu '$1 !~ /^#/ && NF >= 3 && $1 != "-" && index("," $2 ",", "," img ",") { print $1 }' \
      /opt/prunesvc/share/runtime-packages.txt); \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    apt-get upgrade -y -qq >/dev/null; \
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; \
    apt-get clean; rm -rf /var/lib/apt/lists/*

# Non-root: uid/gid 10001 in every prunesvc image. /var/lib/prunesvc/cache is the --cache-dir
# (fetched datasets and projectors, scratch artifacts).
RUN groupadd --gid 10001 prunesvc \
 && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /var/lib/prunesvc \
      --shell /usr/sbin/nologin prunesvc \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/prunesvc /var/lib/prunesvc/cache

COPY bin/prune-worker bin/libprunesvc_spm.so bin/prunectl /opt/prunesvc/bin/

USER 10001:10001
WORKDIR /var/lib/prunesvc
ENV PATH=/opt/prunesvc/bin:$PATH
# gRPC (PruningWorker, grpc.health.v1, reflection) and Prometheus /metrics (with --metrics-port=9465)
EXPOSE 50061 9465

# The standard gRPC health service (grpc.health.v1), asked by prunectl: exit 0 only when
# SERVING. PRUNESVC_HEALTH_ADDR when the worker listens elsewhere than localhost:50061;
# PRUNESVC_TLS_CA with --tls-cert (certificate naming `localhost`). With --tls-ca the worker
# requires the scheduler's client certificate, which prunectl has not: replace the check there,
# e.g. `--health-cmd='bash -c "exec 3<>/dev/tcp/localhost/50061"'` (deploy/k8s uses a TCP probe).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD prunectl health --addr="${PRUNESVC_HEALTH_ADDR:-localhost:50061}" --timeout=5 || exit 1

ENTRYPOINT ["/opt/prunesvc/bin/prune-worker"]
# No working default: a worker needs --scheduler=HOST:PORT and --advertise-host=NAME_OR_IP (the
# address the scheduler dials back: container name, pod IP), e.g.
#   --scheduler=prune-scheduler:50051 --advertise-host=prune-worker-0 --host=0.0.0.0 --port=50061
#   --metrics-port=9465 --device=cpu --cache-dir=/var/lib/prunesvc/cache
CMD ["--help"]

# prune-scheduler image: the torch-free control plane, plus prunectl (its HEALTHCHECK).
#
# The binaries are not compiled here: they are built on a Debian 12 machine (scripts/bootstrap.sh,
# `cmake --build build`) and copied from a staging build context laid out as
#   CONTEXT/runtime-packages.txt            (docker/runtime-packages.txt)
#   CONTEXT/bin/prune-scheduler, CONTEXT/bin/prunectl
# `scripts/container_test.sh --build-only` stages that context from build/bin and builds this
# image; by hand (podman or buildah need `--format docker`, or HEALTHCHECK is dropped):
#   podman build --format docker -f docker/scheduler.Dockerfile -t prunesvc-scheduler CONTEXT
# BASE is any Debian 12 image with apt sources: container_test.sh makes
# localhost/prunesvc-base:debian12 with debootstrap; where Docker Hub is reachable,
# `--build-arg BASE=docker.io/library/debian:12` works as well.
ARG BASE=localhost/prunesvc-base:debian12
FROM ${BASE}

# Runtime libraries only, from docker/runtime-packages.txt (its "scheduler" lines).
COPY runtime-packages.txt /opt/prunesvc/share/runtime-packages.txt
RUN set -eu; \
    pkgs=$(awk -v img=scheduler '$1 !~ /^#/ && NF >= 3 && $1 != "-" && index("," $2 ",", "," img ",") { print $1 }' \
      /opt/prunesvc/share/runtime-packages.txt); \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    apt-get upgrade -y -qq >/dev/null; \
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; \
    apt-get clean; rm -rf /var/lib/apt/lists/*

# Non-root: uid/gid 10001 in every prunesvc image. /var/lib/prunesvc holds the state directory
# (SQLite job store, blobs); mount a volume there and keep it writable by 10001.
RUN groupadd --gid 10001 prunesvc \
 && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /var/lib/prunesvc \
      --shell /usr/sbin/nologin prunesvc \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/prunesvc

COPY bin/prune-scheduler bin/prunectl /opt/prunesvc/bin/

USER 10001:10001
WORKDIR /var/lib/prunesvc
ENV PATH=/opt/prunesvc/bin:$PATH
VOLUME /var/lib/prunesvc
# gRPC (PruningService, WorkerRegistry, grpc.health.v1, reflection) and Prometheus /metrics
EXPOSE 50051 9464

# The standard gRPC health service (grpc.health.v1, open without a token), asked by prunectl:
# exit 0 only when SERVING, so it also fails while the scheduler drains. Environment:
#   PRUNESVC_HEALTH_ADDR  when the scheduler listens elsewhere than localhost:50051 (another
#                         --port, or --host bound to one address);
#   PRUNESVC_TLS_CA       with --tls-cert: the CA file (mounted) that verifies the scheduler's
#                         certificate, which must then name `localhost` (as in deploy/k8s).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD prunectl health --addr="${PRUNESVC_HEALTH_ADDR:-localhost:50051}" --timeout=5 || exit 1

ENTRYPOINT ["/opt/prunesvc/bin/prune-scheduler"]
# Arguments given to `run` replace these: repeat --state-dir (and add --allowed-model-roots for
# file:// models).
CMD ["--host=0.0.0.0", "--port=50051", "--metrics-port=9464", "--state-dir=/var/lib/prunesvc"]

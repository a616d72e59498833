#!/usr/bin/env bash
# The GPU runner's check, for a machine with an NVIDIA GPU: install the project with the CUDA build of
# onnxruntime (onnxruntime-gpu provides the same `onnxruntime` module, so the CPU build goes first), then run
# tests/test_gpu.py, which starts a runner with `auto` providers and checks that its sessions run on CUDA.
# Prints the GPU, the providers onnxruntime offers, and the test's verdict. Needs PyPI access, or set
# WHEELS=dir to install onnxruntime-gpu from wheels already there.
set -euo pipefail
venv=${VENV:-/tmp/wasmgate-gpu}
python3 -m venv "$venv"
"$venv/bin/pip" install -q -e '.[dev]'
"$venv/bin/pip" uninstall -y -q onnxruntime
if [[ -n "${WHEELS:-}" ]]; then
    "$venv/bin/pip" install -q --no-index --find-links "$WHEELS" onnxruntime-gpu
else
    "$venv/bin/pip" install -q onnxruntime-gpu
fi
nvidia-smi -L
"$venv/bin/python" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
"$venv/bin/python" -m pytest tests/test_gpu.py -v -rs -p no:cacheprovider

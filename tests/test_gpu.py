"""A runner on a GPU: the CUDA execution provider chosen by ``auto`` and used by the function's sessions.

Skipped, with the reason, wherever onnxruntime offers no CUDA provider: machines without an NVIDIA GPU, and
the CPU build of onnxruntime that the project installs by default. ``bench/gpu_check.sh`` prepares a GPU
machine (the onnxruntime-gpu build) and runs this file there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gateway.app import create_app
from gateway.cli.demo import dense_model
from gateway.settings import Settings
from tests.support import AppClient, infer_body, push

CUDA = "CUDAExecutionProvider"

pytestmark = pytest.mark.skipif(
    CUDA not in ort.get_available_providers(),
    reason=f"onnxruntime offers no CUDA provider here ({', '.join(ort.get_available_providers())}): "
    "no NVIDIA GPU, or the CPU build of onnxruntime",
)


def test_runner_picks_cuda_and_serves_on_it(tmp_path: Path) -> None:
    model = dense_model()
    data = tmp_path / "data"
    with AppClient(create_app(Settings.from_env({}, data_dir=data, pod_scaler="none"))) as gateway:
        push(gateway, "dense", None, {"model": model})
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    with AppClient(create_app(Settings.from_env({}, data_dir=data, execution_providers="auto"), role="runner")) as r:
        meta = r.get("/v2").json()
        assert meta["execution_providers"][0] in (CUDA, "TensorrtExecutionProvider")
        response = r.post("/v2/models/dense/infer", json=infer_body(x))
        assert response.status_code == 200, response.text
        in_use = r.get("/v2").json()["execution_providers_in_use"]
        assert in_use[0] in (CUDA, "TensorrtExecutionProvider"), in_use
        got = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(4, 10)
    cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, cpu, rtol=1e-3, atol=1e-3)  # GPU kernels round differently

"""Models whose outputs leave more than one dimension open, as a transformer's ``[batch, sequence, hidden]`` does,
pushed bare and served end to end by a real ``wasm serve``: on the Wasm tier and on the pod tier (real local
runners, which run the same host and passthrough), in JSON and in the binary extension, against onnxruntime run
directly. The model is tests.support.encoder_model, shaped like a BERT encoder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import ENCODER_INPUTS, ENCODER_OUTPUTS, Encoder, Gateway, encoder_inputs, metric

pytestmark = pytest.mark.e2e

#: Two (batch, sequence) shapes: every open dimension changes between them.
SHAPES = ((2, 5), (3, 7))
TIERS = ("wasm", "pod")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    # One runner, kept up for the whole test once a hinted request has started it.
    env = {"WASMGATE_POD_MAX_REPLICAS": "1", "WASMGATE_POD_IDLE_GRACE_S": "120", "WASMGATE_POD_HOLD_TIMEOUT_S": "60"}
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    yield gw
    gw.stop()


def json_request(gateway: Gateway, tier: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    body = {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": "INT64", "data": x.ravel().tolist()}
            for name, x in inputs.items()
        ]
    }
    r = httpx.post(f"{gateway.url}/v2/models/encoder/infer", json=body, headers={"x-wasmgate-tier": tier}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-wasmgate-tier"] == tier
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}


def binary_request(gateway: Gateway, tier: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}", network_timeout=120)
    try:
        tensors = []
        for name, x in inputs.items():
            tensor = triton.InferInput(name, list(x.shape), "INT64")
            tensor.set_data_from_numpy(x)  # binary
            tensors.append(tensor)
        outputs = [triton.InferRequestedOutput(name) for name in ENCODER_OUTPUTS]  # binary too
        result = client.infer("encoder", tensors, outputs=outputs, headers={"x-wasmgate-tier": tier})
        return {name: result.as_numpy(name) for name in ENCODER_OUTPUTS}
    finally:
        client.close()


def test_a_bare_transformer_shaped_model_answers_as_onnxruntime_on_both_tiers_in_json_and_binary(
    gateway: Gateway, encoder: Encoder
) -> None:
    r = gateway.cli("push", str(encoder.path), "--name", "encoder")
    assert r.returncode == 0, r.stderr
    assert "pushed encoder version 1 (passthrough" in r.stdout
    meta = httpx.get(f"{gateway.url}/v2/models/encoder").json()
    assert [i["name"] for i in meta["inputs"]] == list(ENCODER_INPUTS)
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [
        ("last_hidden_state", [-1, -1, 16]),
        ("pooler_output", [-1, 16]),
    ]

    for tier in TIERS:
        for batch, sequence in SHAPES:
            inputs = encoder_inputs(batch, sequence, seed=batch)
            want = encoder.expected(inputs)
            for protocol, request in (("json", json_request), ("binary", binary_request)):
                got = request(gateway, tier, inputs)
                for name in ENCODER_OUTPUTS:
                    # The same onnxruntime math on the same float32 values, and JSON carries float32 exactly.
                    np.testing.assert_array_equal(got[name], want[name], err_msg=f"{tier} {protocol} {name}")
                assert got["last_hidden_state"].shape == (batch, sequence, 16)

    # Each tier served its share, binary requests included (their responses carry no tier header to check).
    text = httpx.get(f"{gateway.url}/metrics").text
    for tier in TIERS:
        served = metric(text, "wasmgate_requests_total", function="encoder", backend=tier, status="200")
        assert served == 2 * len(SHAPES), tier

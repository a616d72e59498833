"""The model zoo (tests/support.py), against one real ``wasm serve``: one small model of each kind, pushed bare
through the CLI and served on the Wasm tier and on the pod tier (a real local runner, which runs the same host
and passthrough), in the binary extension (tritonclient) and in JSON; and the kinds WASI-NN cannot carry,
refused at push through the CLI and the admin API, with a message that names the input or output and the fix.

Every answer must equal onnxruntime's, run directly on the same inputs (tests.support.onnx_answers), exactly:
the gateway runs the same onnxruntime on the same graph with the same session options, so the same floats come
out; the binary extension moves the raw bytes; and JSON carries FP32 and FP16 values exactly too (each widens
to a double without loss, is written with a double's round-trip precision, and narrows back to itself). No row
needs a tolerance.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import (
    COUNTER,
    Gateway,
    cnn_inputs,
    cnn_model,
    encoder_inputs,
    encoder_model,
    fp16_inputs,
    fp16_model,
    metric,
    onnx_answers,
    tabular_inputs,
    text_pipeline_model,
    tree_classifier_model,
    tree_regressor_model,
    zipmap_classifier_model,
)

pytestmark = pytest.mark.e2e

TIERS = ("wasm", "pod")
DATATYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64",
}
NUMPY = {datatype: dtype for dtype, datatype in DATATYPES.items()}
#: A tensor's metadata as ``GET /v2/models/NAME`` lists it: name, datatype, shape (-1: dynamic).
Meta = tuple[str, str, list[int]]


@dataclasses.dataclass(frozen=True)
class Served:
    """A zoo model a bare push serves: how to build it and its inputs (``batch`` rows from ``seed``), the
    metadata it must advertise, and the batch sizes sent in each encoding on each tier."""

    name: str
    build: Callable[[], bytes]
    inputs: Callable[[int, int], dict[str, np.ndarray]]
    inputs_meta: list[Meta]
    outputs_meta: list[Meta]
    binary_batches: tuple[int, ...] = (1, 3)
    json_batches: tuple[int, ...] = (1, 3)


ENCODER_IN = [(name, "INT64", [-1, -1]) for name in ("input_ids", "attention_mask", "token_type_ids")]
TABULAR_IN = [("input", "FP32", [-1, 4])]

# fmt: off
ZOO = [
    # The BERT-style encoder of tests/test_dynamic_dims.py: every dim but hidden open; the sequence grows with
    # the batch, so both change between requests.
    Served("encoder", encoder_model, lambda batch, seed: encoder_inputs(batch, 4 + batch, seed=seed),
           ENCODER_IN, [("last_hidden_state", "FP32", [-1, -1, 16]), ("pooler_output", "FP32", [-1, 16])]),
    # ImageNet-sized images: one JSON request of one image (150,528 numbers) is enough.
    Served("resnet-cnn", cnn_model, lambda batch, seed: cnn_inputs(batch, seed),
           [("images", "FP32", [-1, 3, 224, 224])], [("logits", "FP32", [-1, 10])],
           binary_batches=(2,), json_batches=(1,)),
    Served("gbt-classifier", tree_classifier_model, lambda batch, seed: tabular_inputs(batch, seed),
           TABULAR_IN, [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 3])]),
    Served("gbt-regressor", tree_regressor_model, lambda batch, seed: tabular_inputs(batch, seed),
           TABULAR_IN, [("variable", "FP32", [-1, 1])]),
    Served("fp16-dense", fp16_model, lambda batch, seed: fp16_inputs(batch, seed=seed),
           [("x", "FP16", [-1, 8])], [("y", "FP16", [-1, 4])]),
]
# fmt: on


@dataclasses.dataclass(frozen=True)
class Refused:
    """A zoo model a bare push refuses, and what the refusal must say: the input or output, and the fix."""

    name: str
    build: Callable[[], bytes]
    says: tuple[str, ...]


REFUSED = [
    Refused(
        "zipmap-classifier",
        zipmap_classifier_model,
        ("output 'output_probability' is seq(map(int64,tensor(float)))", "convert with options={'zipmap': False}"),
    ),
    Refused(
        "text-pipeline",
        text_pipeline_model,
        (
            "input 'text' is tensor(string)",
            "tokenize or vectorize",
            "a function with pre-processing (see guest_modules/)",
        ),
    ),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # One runner, kept up for the whole module once the first pod-tier request has started it.
    tmp = tmp_path_factory.mktemp("zoo")
    env = {"WASMGATE_POD_MAX_REPLICAS": "1", "WASMGATE_POD_IDLE_GRACE_S": "120", "WASMGATE_POD_HOLD_TIMEOUT_S": "60"}
    gw = Gateway(tmp / "data", tmp / "gateway.log", env=env)
    gw.start()
    yield gw
    gw.stop()


def json_request(gateway: Gateway, name: str, tier: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    body = {
        "inputs": [
            {"name": key, "shape": list(x.shape), "datatype": DATATYPES[x.dtype], "data": x.ravel().tolist()}
            for key, x in inputs.items()
        ]
    }
    r = httpx.post(f"{gateway.url}/v2/models/{name}/infer", json=body, headers={"x-wasmgate-tier": tier}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-wasmgate-tier"] == tier
    return {o["name"]: np.array(o["data"], NUMPY[o["datatype"]]).reshape(o["shape"]) for o in r.json()["outputs"]}


def binary_request(
    gateway: Gateway, name: str, tier: str, inputs: dict[str, np.ndarray], outputs: list[str]
) -> dict[str, np.ndarray]:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}", network_timeout=120)
    try:
        tensors = []
        for key, x in inputs.items():
            tensor = triton.InferInput(key, list(x.shape), DATATYPES[x.dtype])
            tensor.set_data_from_numpy(x)  # binary
            tensors.append(tensor)
        wanted = [triton.InferRequestedOutput(key) for key in outputs]  # binary too
        result = client.infer(name, tensors, outputs=wanted, headers={"x-wasmgate-tier": tier})
        return {key: result.as_numpy(key) for key in outputs}
    finally:
        client.close()


@pytest.mark.parametrize("row", ZOO, ids=lambda row: row.name)
def test_each_zoo_model_pushed_bare_answers_as_onnxruntime_on_both_tiers_in_binary_and_json(
    gateway: Gateway, row: Served, tmp_path: Path
) -> None:
    model = row.build()
    path = tmp_path / f"{row.name}.onnx"
    path.write_bytes(model)
    r = gateway.cli("push", str(path), "--name", row.name)
    assert r.returncode == 0, r.stderr
    assert f"pushed {row.name} version 1 (passthrough" in r.stdout

    meta = httpx.get(f"{gateway.url}/v2/models/{row.name}").json()
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == row.inputs_meta
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == row.outputs_meta
    names = [name for name, _, _ in row.outputs_meta]

    for tier in TIERS:
        for protocol, batches in (("binary", row.binary_batches), ("json", row.json_batches)):
            for batch in batches:
                inputs = row.inputs(batch, batch)
                want = onnx_answers(model, inputs)
                if protocol == "binary":
                    got = binary_request(gateway, row.name, tier, inputs, names)
                else:
                    got = json_request(gateway, row.name, tier, inputs)
                assert list(got) == names
                for name in names:
                    where = f"{tier} {protocol} batch {batch} {name}"
                    assert got[name].dtype == want[name].dtype, where
                    np.testing.assert_array_equal(got[name], want[name], err_msg=where, strict=True)

    # Each tier served every request, the binary ones included (their responses carry no tier header to check).
    text = httpx.get(f"{gateway.url}/metrics").text
    for tier in TIERS:
        served = metric(text, "wasmgate_requests_total", function=row.name, backend=tier, status="200")
        assert served == len(row.binary_batches) + len(row.json_batches), tier


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.name)
def test_a_model_wasi_nn_cannot_carry_is_refused_at_push_by_the_cli_and_the_admin_api_and_never_stored(
    gateway: Gateway, case: Refused, tmp_path: Path
) -> None:
    listed = gateway.cli("ls")
    assert listed.returncode == 0, listed.stderr
    model = case.build()
    path = tmp_path / f"{case.name}.onnx"
    path.write_bytes(model)

    pushed = gateway.cli("push", str(path), "--name", case.name)
    assert (pushed.returncode, pushed.stdout) == (1, "")
    assert pushed.stderr.startswith("error: 400: WASI-NN carries only tensors of"), pushed.stderr
    for fragment in case.says:
        assert fragment in pushed.stderr

    digest = "sha256:" + hashlib.sha256(model).hexdigest()
    assert httpx.put(f"{gateway.url}/admin/v1/blobs/{digest}", content=model).status_code in (200, 201)
    r = httpx.put(f"{gateway.url}/admin/v1/functions/{case.name}", json={"module": None, "models": {"model": digest}})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("WASI-NN carries only tensors of"), error
    for fragment in case.says:
        assert fragment in error

    # Nothing was stored, so no request can reach the model: every one is a 404, on either tier, never a 500.
    assert gateway.cli("ls").stdout == listed.stdout
    assert httpx.get(f"{gateway.url}/v2/models/{case.name}").status_code == 404
    for tier in TIERS:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}
        r = httpx.post(
            f"{gateway.url}/v2/models/{case.name}/infer", json=body, headers={"x-wasmgate-tier": tier}, timeout=60
        )
        assert r.status_code == 404, r.text


def test_a_function_of_its_own_may_not_push_a_model_with_a_string_input_but_may_one_with_a_zipmap_output(
    gateway: Gateway,
) -> None:
    # WASI-NN's set_input cannot feed a string to any model, whoever calls it; but a function's guest reads
    # only the outputs it asks for, so a model of its own may have outputs it never reads (ZipMap's).
    import wasmtime

    def upload(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert httpx.put(f"{gateway.url}/admin/v1/blobs/{digest}", content=data).status_code in (200, 201)
        return digest

    module = upload(bytes(wasmtime.wat2wasm(COUNTER)))
    url = f"{gateway.url}/admin/v1/functions/own-text"
    r = httpx.put(url, json={"module": module, "models": {"vectorizer": upload(text_pipeline_model())}})
    assert r.status_code == 400
    assert r.json()["error"].startswith("model 'vectorizer': WASI-NN carries only tensors of")
    assert "input 'text' is tensor(string) (tokenize or vectorize" in r.json()["error"]
    assert httpx.get(f"{gateway.url}/v2/models/own-text").status_code == 404

    url = f"{gateway.url}/admin/v1/functions/own-classifier"
    r = httpx.put(url, json={"module": module, "models": {"classifier": upload(zipmap_classifier_model())}})
    assert r.status_code == 201, r.text
    assert httpx.delete(url).status_code == 200

"""The HTTP app in process (Starlette's AppClient runs the lifespan): admin API, OIP endpoints and errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import AppClient, Digits, infer_body, onnx_predict, push, upload


@pytest.fixture
def client(tmp_path: Path) -> Iterator[AppClient]:
    settings = Settings.from_env({}, data_dir=tmp_path / "data", deadline_ms=500)
    with AppClient(create_app(settings)) as c:
        yield c


def test_health_and_server_metadata(client: AppClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "wasmgate"
    assert "binary_tensor_data" in meta["extensions"]


def test_push_bare_model_and_infer(client: AppClient, digits: Digits) -> None:
    manifest = push(client, "digits", None, {"model": digits.model})
    assert manifest["kind"] == "passthrough"
    assert manifest["version"] == 1
    meta = client.get("/v2/models/digits").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert client.get("/v2/models/digits/ready").status_code == 200

    x = digits.x_test[:16]
    r = client.post("/v2/models/digits/infer", json={**infer_body(x), "id": "req-1"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-1"
    assert doc["model_name"] == "digits"
    labels, probs = onnx_predict(digits.model, x)
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["label"]["shape"] == [16]
    assert out["label"]["data"] == labels.tolist()
    assert out["probabilities"]["shape"] == [16, 10]
    np.testing.assert_array_equal(np.array(out["probabilities"]["data"], np.float32).reshape(16, 10), probs)
    assert r.headers["x-wasmgate-tier"] == "wasm"


def test_versioned_routes(client: AppClient, digits: Digits) -> None:
    push(client, "digits", None, {"model": digits.model})
    push(client, "digits", None, {"model": digits.model})
    assert client.get("/v2/models/digits/versions/2").status_code == 200
    r = client.post("/v2/models/digits/versions/1/infer", json=infer_body(digits.x_test[:1]))
    assert r.status_code == 404
    assert "no version '1'" in r.json()["error"]
    assert client.post("/v2/models/digits/versions/2/infer", json=infer_body(digits.x_test[:1])).status_code == 200


@pytest.mark.parametrize(
    ("mutate", "status", "message"),
    [
        (
            lambda b: b.update(inputs=[{**b["inputs"][0], "datatype": "INT64", "data": [0] * 128}]),
            400,
            "takes FP32, got INT64",
        ),
        (lambda b: b.update(inputs=[{**b["inputs"][0], "shape": [4, 32]}]), 400, "takes shape [-1, 64]"),
        (lambda b: b.update(inputs=[{**b["inputs"][0], "name": "pixels"}]), 400, "missing ['input']"),
        (lambda b: b.update(outputs=[{"name": "logits"}]), 400, "unknown output"),
    ],
)
def test_bad_requests_against_the_signature(client: AppClient, digits: Digits, mutate, status, message) -> None:  # type: ignore[no-untyped-def]
    push(client, "digits", None, {"model": digits.model})
    b = infer_body(digits.x_test[:2])
    mutate(b)
    r = client.post("/v2/models/digits/infer", json=b)
    assert r.status_code == status
    assert message in r.json()["error"]


def test_unknown_model_and_route(client: AppClient) -> None:
    r = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404
    assert r.json() == {"error": "function 'nope' not found"}
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/nowhere").json()["error"].startswith("no route")


def test_body_limit_is_413(tmp_path: Path) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path / "d", max_body_bytes=1000)
    with AppClient(create_app(settings)) as c:
        r = c.post("/v2/models/x/infer", content=b"x" * 2000)
        assert r.status_code in (404, 413)  # the function lookup may come first
        r = c.put("/admin/v1/blobs/sha256:" + "0" * 64, content=b"x" * 2000)
        assert r.status_code == 400  # digest mismatch is checked after the (allowed) upload size


def test_refused_pushes_leave_the_store_unchanged(client: AppClient, digits: Digits, tmp_path: Path) -> None:
    push(client, "digits", None, {"model": digits.model})
    before = client.get("/admin/v1/functions").json()
    cases = [
        (
            {"module": None, "models": {"model": upload(client, b"garbage, not onnx")}},
            "not a valid ONNX model",
        ),
        ({"module": upload(client, b"\0asm\x01\0\0\0junk"), "models": {}}, "not a valid WebAssembly module"),
        ({"module": upload(client, bytes(wasmtime.wat2wasm("(module)"))), "models": {}}, "missing export"),
        ({"module": None, "models": {}}, "a push needs a module, a model, or an endpoint"),
        ({"module": None, "models": {"model": "sha256:" + "1" * 64}}, "never uploaded"),
        ({"module": None, "models": {"../x": upload(client, digits.model)}}, "invalid model alias"),
    ]
    for doc, message in cases:
        r = client.put("/admin/v1/functions/digits", json=doc)
        assert r.status_code == 400, (doc, r.text)
        assert message in r.json()["error"]
    assert client.get("/admin/v1/functions").json() == before


def test_zipmap_model_is_refused_with_a_hint(client: AppClient) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    onx = to_onnx(LogisticRegression(max_iter=500).fit(x, y), x[:1].astype(np.float32))
    doc = {"module": None, "models": {"model": upload(client, onx.SerializeToString())}}
    r = client.put("/admin/v1/functions/iris", json=doc)
    assert r.status_code == 400
    assert "zipmap" in r.json()["error"]


@pytest.mark.parametrize("name", ["../etc", "a" * 200, "bad\nname", "-x", "x..y", ".hidden"])
def test_bad_function_names(client: AppClient, name: str) -> None:
    from urllib.parse import quote

    r = client.put(f"/admin/v1/functions/{quote(name, safe='')}", json={"module": None, "models": {}})
    if "/" in name:  # the decoded path has another segment: no route matches
        assert r.status_code == 404
    else:
        assert r.status_code == 400
        assert "invalid function name" in r.json()["error"]


def test_list_and_delete(client: AppClient, digits: Digits) -> None:
    push(client, "a", None, {"model": digits.model})
    push(client, "b", None, {"model": digits.model})
    assert [f["name"] for f in client.get("/admin/v1/functions").json()["functions"]] == ["a", "b"]
    assert client.delete("/admin/v1/functions/a").json() == {"deleted": "a", "version": 1}
    assert client.post("/v2/models/a/infer", json=infer_body(digits.x_test[:1])).status_code == 404
    assert client.delete("/admin/v1/functions/a").status_code == 404
    assert client.post("/v2/models/b/infer", json=infer_body(digits.x_test[:1])).status_code == 200


def test_guest_trap_is_500_and_the_gateway_keeps_serving(client: AppClient, digits: Digits) -> None:
    trap = wasmtime.wat2wasm("""(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "handle") (param i32 i32) (result i64) unreachable))""")
    loop = wasmtime.wat2wasm("""(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "handle") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))""")
    push(client, "trap", bytes(trap), {})
    push(client, "loop", bytes(loop), {})
    push(client, "digits", None, {"model": digits.model})
    x = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    r = client.post("/v2/models/trap/infer", json=x)
    assert r.status_code == 500
    assert "trapped" in r.json()["error"]
    r = client.post("/v2/models/loop/infer", json=x)
    assert r.status_code == 504
    assert "deadline" in r.json()["error"]
    assert client.post("/v2/models/digits/infer", json=infer_body(digits.x_test[:1])).status_code == 200


def test_manifest_survives_as_json(client: AppClient, digits: Digits, tmp_path: Path) -> None:
    push(client, "digits", None, {"model": digits.model})
    doc = json.loads((tmp_path / "data" / "functions" / "digits.json").read_text())
    assert doc["models"] == {"model": "sha256:" + digits.digest}

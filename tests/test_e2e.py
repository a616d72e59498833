"""End to end: a real ``wasm serve`` process on a loopback port, driven over HTTP by the ``wasm`` CLI, httpx and the
Triton client, with real guests built from guest_modules/ and a real ONNX model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import COUNTER, Digits, Gateway, json_infer, metric, onnx_predict, wasm_command

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log")
    gw.start()
    yield gw
    gw.stop()


def test_push_bare_model_with_cli_and_match_onnxruntime_on_the_whole_test_split(
    gateway: Gateway, digits: Digits
) -> None:
    r = gateway.cli("push", str(digits.path), "--name", "digits")
    assert r.returncode == 0, r.stderr
    assert "pushed digits version 1 (passthrough, tier auto:wasm)" in r.stdout

    x = digits.x_test
    labels, probs = onnx_predict(digits.model, x)
    resp = json_infer(
        gateway.url,
        "digits",
        [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}],
    )
    assert resp.status_code == 200, resp.text
    out = {o["name"]: o for o in resp.json()["outputs"]}
    assert out["label"]["data"] == labels.tolist()
    got = np.array(out["probabilities"]["data"], dtype=np.float32).reshape(out["probabilities"]["shape"])
    np.testing.assert_array_equal(got, probs)
    assert (np.array(out["label"]["data"]) == digits.y_test).mean() > 0.9  # the model itself is sane

    # Row by row too: a reused instance must give the same answers as a fresh one.
    for i in range(0, len(x), 50):
        row = x[i : i + 1]
        resp = json_infer(
            gateway.url,
            "digits",
            [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.ravel().tolist()}],
        )
        assert resp.json()["outputs"][0]["data"] == [int(labels[i])]


def test_triton_client_binary_protocol(gateway: Gateway, digits: Digits) -> None:
    import tritonclient.http as triton

    assert gateway.cli("push", str(digits.path), "--name", "digits").returncode == 0
    client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
        x = digits.x_test
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)  # binary by default
        outputs = [triton.InferRequestedOutput("label"), triton.InferRequestedOutput("probabilities")]
        result = client.infer("digits", [inp], outputs=outputs)
        labels, probs = onnx_predict(digits.model, x)
        np.testing.assert_array_equal(result.as_numpy("label"), labels)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
        # No outputs named: the client asks for every output in binary.
        result = client.infer("digits", [inp])
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
        # JSON input and JSON output through the same client.
        small = triton.InferInput("input", [3, 64], "FP32")
        small.set_data_from_numpy(x[:3], binary_data=False)
        result = client.infer("digits", [small], outputs=[triton.InferRequestedOutput("label", binary_data=False)])
        np.testing.assert_array_equal(result.as_numpy("label"), labels[:3])
    finally:
        client.close()


def test_custom_function_with_pre_and_post_processing(
    gateway: Gateway, digits: Digits, guests: dict[str, Path]
) -> None:
    r = gateway.cli("push", str(guests["digits_topk"]), "--name", "digits-top3", "--model", f"digits={digits.path}")
    assert r.returncode == 0, r.stderr
    assert "(custom, tier auto:wasm)" in r.stdout
    meta = httpx.get(f"{gateway.url}/v2/models/digits-top3").json()
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 64]}]

    raw = np.rint(digits.x_test * 16).astype(np.uint8)
    resp = json_infer(
        gateway.url,
        "digits-top3",
        [{"name": "images", "shape": list(raw.shape), "datatype": "UINT8", "data": raw.ravel().tolist()}],
    )
    assert resp.status_code == 200, resp.text
    out = {o["name"]: o for o in resp.json()["outputs"]}
    assert out["labels"]["shape"] == [len(raw), 3]
    _, probs = onnx_predict(digits.model, raw.astype(np.float32) / 16)
    expected = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(np.array(out["labels"]["data"]).reshape(-1, 3), expected)
    np.testing.assert_allclose(
        np.array(out["probabilities"]["data"]).reshape(-1, 3),
        np.take_along_axis(probs, expected, 1),
        rtol=1e-6,
    )

    # The function validates its own input range: 17 is not a 0-16 pixel.
    bad = raw[:1].copy()
    bad[0, 5] = 17
    resp = json_infer(
        gateway.url,
        "digits-top3",
        [{"name": "images", "shape": [1, 64], "datatype": "UINT8", "data": bad.ravel().tolist()}],
    )
    assert resp.status_code == 400
    assert "16" in resp.json()["error"]


def test_bad_inputs_get_documented_statuses(gateway: Gateway, digits: Digits) -> None:
    assert gateway.cli("push", str(digits.path), "--name", "digits").returncode == 0
    url = f"{gateway.url}/v2/models/digits/infer"
    good = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    cases = [
        (httpx.post(url, content=b'{"inputs": [', timeout=10), 400),
        (httpx.post(url, json={"inputs": [{**good, "shape": [1, 63], "data": [0.0] * 63}]}, timeout=10), 400),
        (httpx.post(url, json={"inputs": [{**good, "datatype": "FP64"}]}, timeout=10), 400),
        (httpx.post(f"{gateway.url}/v2/models/nope/infer", json={"inputs": [good]}, timeout=10), 404),
    ]
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    ).encode()
    truncated = httpx.post(
        url,
        content=head + b"\0" * 100,
        timeout=10,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    cases.append((truncated, 400))
    for resp, status in cases:
        assert resp.status_code == status, resp.text
        assert set(resp.json()) == {"error"}
        assert resp.json()["error"]


def test_functions_survive_a_restart_and_cli_ls_rm(tmp_path: Path, digits: Digits, guests: dict[str, Path]) -> None:
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log")
    gw.start()
    try:
        assert gw.cli("push", str(digits.path), "--name", "digits").returncode == 0
        assert (
            gw.cli("push", str(guests["digits_topk"]), "--name", "top3", "--model", f"digits={digits.path}").returncode
            == 0
        )
        gw.stop()
        gw.start()
        x = digits.x_test[:5]
        resp = json_infer(
            gw.url,
            "digits",
            [{"name": "input", "shape": [5, 64], "datatype": "FP32", "data": x.ravel().tolist()}],
        )
        assert resp.status_code == 200
        assert resp.json()["outputs"][0]["data"] == onnx_predict(digits.model, x)[0].tolist()
        ls = gw.cli("ls")
        assert ls.returncode == 0
        lines = ls.stdout.splitlines()
        assert lines[0].split() == [
            "NAME",
            "VERSION",
            "KIND",
            "TIER",
            "SIZE",
            "PARAMS",
            "FLOPS/ROW",
            "INPUTS",
            "OUTPUTS",
            "MODELS",
            "FILES",
        ]
        assert lines[1].split()[:3] == ["digits", "1", "passthrough"]
        assert lines[2].split()[:3] == ["top3", "1", "custom"]
        rm = gw.cli("rm", "digits")
        assert rm.returncode == 0
        assert "deleted digits" in rm.stdout
        assert json_infer(gw.url, "digits", []).status_code == 404
        assert gw.cli("rm", "digits").returncode == 1
    finally:
        gw.stop()


def test_cli_refusals_are_clear(gateway: Gateway, tmp_path: Path, refused_url: str) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    r = gateway.cli("push", str(junk))
    assert r.returncode == 1
    assert "not a valid ONNX model" in r.stderr
    bad_module = tmp_path / "fn.wasm"
    bad_module.write_bytes(b"\0asm\x01\0\0\0\x01")
    r = gateway.cli("push", str(bad_module), "--name", "fn")
    assert r.returncode == 1
    assert "not a valid WebAssembly module" in r.stderr
    assert gateway.cli("ls").stdout.count("\n") == 1  # header only: nothing was stored
    r = subprocess.run(
        [*wasm_command(), "ls", "--gateway", refused_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "cannot reach the gateway" in r.stderr


@pytest.mark.skipif(
    shutil.which("clang-14") is None and shutil.which("clang") is None,
    reason="Debian clang with wasi-libc is not installed",
)
def test_guest_built_with_debian_clang_behaves_the_same(gateway: Gateway, digits: Digits, tmp_path: Path) -> None:
    import build  # guest_modules/build.py

    wasm = build.build(["digits_topk"], cc="clang", out=tmp_path / "clang")["digits_topk"]
    assert gateway.cli("push", str(wasm), "--name", "top3-clang", "--model", f"digits={digits.path}").returncode == 0
    raw = np.rint(digits.x_test[:20] * 16).astype(np.uint8)
    resp = json_infer(
        gateway.url,
        "top3-clang",
        [{"name": "images", "shape": [20, 64], "datatype": "UINT8", "data": raw.ravel().tolist()}],
    )
    assert resp.status_code == 200, resp.text
    _, probs = onnx_predict(digits.model, raw.astype(np.float32) / 16)
    labels = np.array(resp.json()["outputs"][0]["data"]).reshape(-1, 3)
    np.testing.assert_array_equal(labels, np.argsort(-probs, axis=1, kind="stable")[:, :3])


def test_workers_see_pushes_and_deletes_made_through_another_worker(tmp_path: Path, digits: Digits) -> None:
    """Two worker processes share the store: whichever worker takes a push, every worker serves the new version
    on its next request, and a delete is seen by all. Each request opens a new connection, so the kernel spreads
    them over the workers; /metrics from any one worker reports the sum of both."""
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", "--workers", "2")
    gw.start()
    try:
        body = [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": digits.x_test[0].tolist()}]
        for version in ("1", "2"):
            assert gw.cli("push", str(digits.path), "--name", "digits").returncode == 0
            for _ in range(20):
                resp = json_infer(gw.url, "digits", body)
                assert resp.status_code == 200, resp.text
                assert resp.json()["model_version"] == version
        assert gw.cli("rm", "digits").returncode == 0
        for _ in range(20):
            assert json_infer(gw.url, "digits", body).status_code == 404
        # Scrapes land on either worker; each must report both workers' requests.
        for _ in range(10):
            text = httpx.get(f"{gw.url}/metrics", timeout=10).text
            assert metric(text, "wasmgate_requests_total", function="digits", status="200") == 40
        pids = set(re.findall(r"wasmgate gateway ready \(pid (\d+)\)", gw.log.read_text()))
        assert len(pids) == 2
    finally:
        gw.stop()


def test_isolation_set_at_push_and_changed_with_wasm_scale(gateway: Gateway, tmp_path: Path) -> None:
    """A guest that counts its requests: pushed with --isolation fresh every request sees a new instance;
    after `wasm scale --isolation reuse` one instance serves them in turn."""
    import wasmtime

    module = tmp_path / "counter.wasm"
    module.write_bytes(bytes(wasmtime.wat2wasm(COUNTER)))
    r = gateway.cli("push", str(module), "--name", "counter", "--isolation", "fresh", "--max-instances", "2")
    assert r.returncode == 0, r.stderr
    body = [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]

    def counts() -> list[int]:
        return [json_infer(gateway.url, "counter", body).json()["outputs"][0]["data"][0] for _ in range(3)]

    assert counts() == [1, 1, 1]
    r = gateway.cli("scale", "counter", "--isolation", "reuse")
    assert r.returncode == 0, r.stderr
    assert "isolation=reuse" in r.stdout
    assert "max_instances=2" in r.stdout  # settings not named are kept
    assert counts() == [1, 2, 3]
    assert gateway.cli("scale", "counter").returncode == 2  # nothing to change is a usage error


def test_the_demo_serves_both_functions_with_the_requests_it_prints(tmp_path: Path, guests: dict[str, Path]) -> None:
    """The README's first command ends in ``wasm demo``: with the example functions built (the ``guests``
    fixture builds them, as the README's command does), it serves ``digits`` and ``digits-top3``, and each
    curl it prints is answered."""
    demo = Gateway(tmp_path / "data", tmp_path / "demo.log", command="demo")
    demo.start()
    try:
        deadline = time.monotonic() + 120
        while "Functions: wasm ls" not in demo.log.read_text():  # printed once both pushes are done
            assert time.monotonic() < deadline, demo.log.read_text()
            time.sleep(0.1)
        printed = demo.log.read_text()
        assert "to get digits-top3 too" not in printed
        bodies = dict(re.findall(r"/v2/models/([\w-]+)/infer .*\n\s+-d '(.*)'", printed))
        assert sorted(bodies) == ["digits", "digits-top3"]
        for name, body in bodies.items():
            r = httpx.post(f"{demo.url}/v2/models/{name}/infer", content=body, timeout=60)
            assert r.status_code == 200, (name, r.text)
        top3 = {o["name"]: o["data"] for o in r.json()["outputs"]}
        assert len(top3["labels"]) == 3
    finally:
        demo.stop()

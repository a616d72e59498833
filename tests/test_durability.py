"""Durability of the store: versions and rollback, concurrent pushes, and a gateway killed (SIGKILL) in the
middle of pushes, which must restart with a consistent store."""

from __future__ import annotations

import concurrent.futures
import random
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.cli.demo import dense_model
from tests.support import Digits, Gateway, assert_consistent, json_infer, onnx_predict, wasm_command

pytestmark = pytest.mark.e2e


def digits_infer(gw: Gateway, x: np.ndarray) -> httpx.Response:
    return json_infer(gw.url, "fn", [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                      "data": x.ravel().tolist()}])  # fmt: skip


def test_versions_and_rollback(tmp_path: Path, digits: Digits) -> None:
    dense = tmp_path / "dense.onnx"
    dense.write_bytes(dense_model((64, 32, 10)))
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env={"WASMGATE_POD_SCALER": "none"})
    gw.start()
    try:
        assert gw.cli("push", str(digits.path), "--name", "fn").returncode == 0  # v1: digits
        assert gw.cli("push", str(dense), "--name", "fn").returncode == 0  # v2: dense
        x = digits.x_test[:3]
        v2 = digits_infer(gw, x)
        assert v2.json()["model_version"] == "2"
        assert v2.json()["outputs"][0]["datatype"] == "FP32"

        back = gw.cli("rollback", "fn")
        assert back.returncode == 0, back.stderr
        assert "back to version 1: now version 3" in back.stdout
        v3 = digits_infer(gw, x)
        assert v3.json()["model_version"] == "3"
        assert v3.json()["outputs"][0]["data"] == onnx_predict(digits.model, x)[0].tolist()

        assert "back to version 2: now version 4" in gw.cli("rollback", "fn", "--to", "2").stdout
        assert digits_infer(gw, x).json()["outputs"][0]["datatype"] == "FP32"
        versions = httpx.get(f"{gw.url}/admin/v1/functions/fn/versions").json()
        assert versions == {"name": "fn", "current": 4, "versions": [1, 2, 3, 4]}

        for args, message in [
            (("--to", "4"), "roll back to an earlier version (1 to 3)"),
            (("--to", "0"), "roll back to an earlier version"),
        ]:
            refused = gw.cli("rollback", "fn", *args)
            assert refused.returncode == 1
            assert message in refused.stderr
        missing = gw.cli("rollback", "nope")
        assert missing.returncode == 1
        assert "404" in missing.stderr
        # Deleting a function deletes its history: a new function of that name starts again at version 1.
        assert gw.cli("rm", "fn").returncode == 0
        assert gw.cli("push", str(digits.path), "--name", "fn").returncode == 0
        assert httpx.get(f"{gw.url}/admin/v1/functions/fn/versions").json()["versions"] == [1]
        assert "no earlier version" in gw.cli("rollback", "fn").stderr
    finally:
        gw.stop()


def test_concurrent_pushes_never_corrupt_the_store(tmp_path: Path, digits: Digits) -> None:
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env={"WASMGATE_POD_SCALER": "none"})
    gw.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: gw.cli("push", str(digits.path), "--name", f"f{i % 3}").returncode,
                                  range(12)))  # fmt: skip
        assert codes == [0] * 12
        for i in range(3):
            versions = httpx.get(f"{gw.url}/admin/v1/functions/f{i}/versions").json()
            assert versions["versions"] == [1, 2, 3, 4]  # every push got its own version, none lost
            assert versions["current"] == 4
        assert_consistent(tmp_path / "data")
    finally:
        gw.stop()


def test_a_gateway_killed_mid_push_restarts_with_a_consistent_store(tmp_path: Path, digits: Digits) -> None:
    """SIGKILL at a random moment while pushes are in flight, four times over. After each restart the store
    must load, every function it lists must serve, and each push either landed whole or not at all."""
    big = tmp_path / "big.onnx"
    big.write_bytes(dense_model((256, 1024, 1024, 10)))  # about 5 MB: a push takes long enough to interrupt
    data = tmp_path / "data"
    rng = random.Random(7)
    interrupted = 0
    for round_ in range(4):
        gw = Gateway(data, tmp_path / "gateway.log", env={"WASMGATE_POD_SCALER": "none"})
        gw.start()
        pushes = [
            subprocess.Popen(
                [*wasm_command(), "push", str(path), "--name", f"{name}-{round_}", "--gateway", gw.url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for path, name in ((big, "big"), (digits.path, "small"))
        ]
        time.sleep(rng.uniform(0.05, 0.6))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait()
        gw.proc = None
        for push in pushes:
            interrupted += push.wait(timeout=60) != 0

        restarted = Gateway(data, tmp_path / "gateway.log", env={"WASMGATE_POD_SCALER": "none"})
        restarted.start()
        try:
            names = assert_consistent(data)
            listed = [f["name"] for f in httpx.get(f"{restarted.url}/admin/v1/functions").json()["functions"]]
            assert sorted(listed) == names
            for name in names:
                width = 256 if name.startswith("big") else 64
                x = np.zeros((1, width), np.float32)
                r = json_infer(restarted.url, name, [{"name": "input", "shape": [1, width], "datatype": "FP32",
                                                      "data": x.ravel().tolist()}])  # fmt: skip
                assert r.status_code == 200, (name, r.text)
            # A push interrupted by the kill can simply be made again.
            again = restarted.cli("push", str(digits.path), "--name", f"small-{round_}")
            assert again.returncode == 0, again.stderr
        finally:
            restarted.stop()
    assert interrupted > 0  # the kill did land in the middle of some push

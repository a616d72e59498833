"""Faults around the gateway itself: a disk that fills up during a push, and SIGTERM while requests run.

The full disk is real, not simulated: the gateway process runs under a file-size limit (RLIMIT_FSIZE, with
SIGXFSZ ignored), so the kernel fails its writes past the limit with EFBIG, as a full filesystem fails them
with ENOSPC. Runner faults (killed, hung) are in tests/test_pod_tier.py; a corrupted compile-cache entry is in
tests/test_wasi_nn.py."""

from __future__ import annotations

import concurrent.futures
import resource
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.cli.demo import dense_model
from tests.support import Digits, Gateway, assert_consistent, metric, wait_until, wasm_command

pytestmark = pytest.mark.e2e

LIMIT = 3 << 20  # no file the gateway writes may grow past 3 MiB


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored dispositions survive exec: writes fail, no kill


def test_a_disk_that_fills_during_a_push_is_a_clear_503_and_the_store_is_unchanged(
    tmp_path: Path, digits: Digits
) -> None:
    big = tmp_path / "big.onnx"
    big.write_bytes(dense_model((256, 1024, 1024, 10)))  # about 5 MB: past the limit
    data = tmp_path / "data"
    gw = Gateway(data, tmp_path / "gateway.log", env={"WASMGATE_POD_SCALER": "none"}, preexec_fn=limited)
    gw.start()
    url = gw.url
    try:
        ok = subprocess.run([*wasm_command(), "push", str(digits.path), "--name", "small", "--gateway", url],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if "cache" not in p.parts)

        full = subprocess.run([*wasm_command(), "push", str(big), "--name", "big", "--gateway", url],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert full.returncode == 1
        assert "503" in full.stderr
        assert "out of space" in full.stderr
        after = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if "cache" not in p.parts)
        assert after == before  # no partial upload, no manifest, no version
        assert_consistent(data)
        # Still serving, and still taking pushes that fit.
        x = digits.x_test[:2]
        body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
        assert httpx.post(f"{url}/v2/models/small/infer", json=body, timeout=30).status_code == 200
        again = subprocess.run([*wasm_command(), "push", str(digits.path), "--name", "small2", "--gateway", url],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert again.returncode == 0, again.stderr
    finally:
        gw.stop()


def test_sigterm_drains_requests_in_flight_within_the_grace_period(tmp_path: Path) -> None:
    heavy = tmp_path / "heavy.onnx"
    heavy.write_bytes(dense_model((1024, 2048, 2048, 10)))
    env = {"WASMGATE_POD_SCALER": "none", "WASMGATE_DEADLINE_MS": "30000", "WASMGATE_DRAIN_TIMEOUT_S": "60"}
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    try:
        assert gw.cli("push", str(heavy), "--name", "heavy", "--tier", "wasm").returncode == 0
        x = np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32)
        header = (
            b'{"inputs":[{"name":"input","shape":[2048,1024],"datatype":"FP32",'
            b'"parameters":{"binary_data_size":%d}}]}' % x.nbytes
        )
        headers = {"inference-header-content-length": str(len(header))}

        def busy() -> float:
            return metric(httpx.get(f"{gw.url}/metrics").text, "wasmgate_instances", function="heavy", state="busy")

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post, f"{gw.url}/v2/models/heavy/infer", content=header + x.tobytes(), headers=headers,
                timeout=120,
            )  # fmt: skip
            wait_until(lambda: busy() == 1 or pending.done(), 60, "the batch to be running")
            assert not pending.done(), "the batch finished before the gateway was told to stop"
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
            answered = pending.result()
        assert answered.status_code == 200, answered.text[:300]
        assert gw.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{gw.url}/v2/health/live", timeout=2)
    finally:
        gw.stop()

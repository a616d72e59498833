"""Per-request routing end to end: a real ``wasm serve`` with real local runners, driven over HTTP; each
response's headers say where it ran and why, and the results are checked against onnxruntime."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from gateway.cli.demo import dense_model
from tests.support import Digits, Gateway, binary_body, metric, onnx_predict, runner_pids, wait_until

pytestmark = pytest.mark.e2e

SIZES = (64, 512, 512, 10)  # about 1.2 MB: "large" under the thresholds these gateways are given


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ort.InferenceSession]:
    model = dense_model(SIZES)
    path = tmp_path_factory.mktemp("routing") / "dense.onnx"
    path.write_bytes(model)
    return path, ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def infer(gw: Gateway, name: str, x: np.ndarray, **headers: str) -> httpx.Response:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return httpx.post(f"{gw.url}/v2/models/{name}/infer", json=body, headers=headers, timeout=120)


def infer_binary(gw: Gateway, name: str, x: np.ndarray) -> httpx.Response:
    """One FP32 input in OIP v2's binary tensor extension (a large batch without its JSON cost)."""
    body, headers = binary_body(x)
    return httpx.post(f"{gw.url}/v2/models/{name}/infer", content=body, headers=headers, timeout=120)


def where(r: httpx.Response) -> tuple[str, str]:
    assert r.status_code == 200, r.text
    return r.headers["x-wasmgate-tier"], r.headers["x-wasmgate-reason"]


def check_dense(r: httpx.Response, session: ort.InferenceSession, x: np.ndarray) -> None:
    got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(len(x), SIZES[-1])
    np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-4, atol=1e-5)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, SIZES[0])).astype(np.float32)


#: Thresholds that make the 4 KB digits model small and the 1.3 MB dense model large.
ROUTING_ENV = {
    "WASMGATE_TIER_POD_BYTES": str(512 * 1024),
    "WASMGATE_SPILL_BATCH_ROWS": "32",
    # Placement by the rules alone, so that where each request goes here does not hang on which tier this
    # machine happens to run quicker; test_measured_service_times_decide_for_auto_functions turns it on.
    "WASMGATE_ROUTE_BY_SERVICE_TIME": "false",
    "WASMGATE_ACCELERATORS": "yes",
    "WASMGATE_POD_IDLE_GRACE_S": "30",
    "WASMGATE_POD_MAX_REPLICAS": "1",
}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    g = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=dict(ROUTING_ENV))
    g.start()
    yield g
    g.stop()


def test_small_to_wasm_large_to_pod_with_cold_start_masking_then_spill_over(
    gw: Gateway, digits: Digits, dense: tuple[Path, ort.InferenceSession]
) -> None:
    path, session = dense
    assert gw.cli("push", str(digits.path), "--name", "digits").returncode == 0
    r = gw.cli("push", str(path), "--name", "dense")
    assert r.returncode == 0, r.stderr
    assert "tier auto:pod" in r.stdout
    ls = gw.cli("ls").stdout.splitlines()
    dense_row = next(line.split() for line in ls if line.startswith("dense"))
    assert dense_row[3:7] == ["auto:pod", "1.2MB", "301k", "601k"]  # 64*512+512*512+512*10 weights, and biases
    digits_row = next(line.split() for line in ls if line.startswith("digits"))
    assert digits_row[3] == "auto:wasm"

    x = digits.x_test[:4]
    small = infer(gw, "digits", x)
    assert where(small) == ("wasm", "home")
    assert small.json()["outputs"][0]["data"] == onnx_predict(digits.model, x)[0].tolist()

    # The large model's pod tier is at zero: the first request is served by the Wasm tier at once (the model
    # fits the sandbox), while the pod tier scales up for the requests that follow.
    first = infer(gw, "dense", rows(2))
    assert where(first) == ("wasm", "cold_start_masked")
    check_dense(first, session, rows(2))
    wait_until(lambda: len(runner_pids(gw)) == 1, 60, "the pod tier to scale up behind the masked request")

    def on_pod() -> bool:
        return infer(gw, "dense", rows(1)).headers.get("x-wasmgate-tier") == "pod"

    wait_until(on_pod, 60, "the dense model to be served by its now-ready pod")
    home = infer(gw, "dense", rows(3, seed=1))
    assert where(home) == ("pod", "home")
    assert home.headers["x-wasmgate-replica"].startswith("runner-")
    check_dense(home, session, rows(3, seed=1))

    # A small model's large batch goes to the ready pod; a small batch stays in the sandbox.
    big = digits.x_test[:40]
    spilled = infer(gw, "digits", big)
    assert where(spilled) == ("pod", "spill_batch")
    assert spilled.json()["outputs"][0]["data"] == onnx_predict(digits.model, big)[0].tolist()
    assert where(infer(gw, "digits", digits.x_test[:31])) == ("wasm", "home")

    # A caller's hint wins, from the header or from the OIP parameters; a bad one is a 400.
    assert where(infer(gw, "digits", x, **{"x-wasmgate-tier": "pod"})) == ("pod", "hint")
    body = {
        "parameters": {"tier": "wasm"},
        "inputs": [{"name": "input", "shape": [2, SIZES[0]], "datatype": "FP32", "data": rows(2).ravel().tolist()}],
    }
    hinted = httpx.post(f"{gw.url}/v2/models/dense/infer", json=body, timeout=60)
    assert where(hinted) == ("wasm", "hint")
    bad = infer(gw, "digits", x, **{"x-wasmgate-tier": "gpu"})
    assert bad.status_code == 400
    assert "x-wasmgate-tier" in bad.json()["error"]

    text = httpx.get(f"{gw.url}/metrics").text
    for function, tier, reason in [
        ("digits", "wasm", "home"),
        ("digits", "pod", "spill_batch"),
        ("dense", "wasm", "cold_start_masked"),
        ("dense", "pod", "home"),
    ]:
        decisions = metric(text, "wasmgate_route_decisions_total", function=function, tier=tier, reason=reason)
        assert decisions >= 1, (function, tier, reason)


def test_measured_service_times_decide_for_auto_functions(
    tmp_path: Path, dense: tuple[Path, ort.InferenceSession]
) -> None:
    """With ``route_by_service_time`` on (the default), an ``auto`` function goes to the tier this gateway has
    measured quicker for it. Which tier that is depends on the machine (here a "pod" is a CPU runner one hop
    away), so the test reads the figures the router compares from the admin API and checks that the next
    request went where they say. Also: cold-start masking lasts until a ready replica has preloaded the model."""
    path, session = dense
    gw = Gateway(
        tmp_path / "data", tmp_path / "gateway.log", env={**ROUTING_ENV, "WASMGATE_ROUTE_BY_SERVICE_TIME": "1"}
    )
    gw.start()
    try:
        assert gw.cli("push", str(path), "--name", "dense").returncode == 0
        assert where(infer(gw, "dense", rows(2))) == ("wasm", "cold_start_masked")

        def gateway_sees_a_ready_replica() -> bool:
            return metric(httpx.get(f"{gw.url}/metrics").text, "wasmgate_pod_replicas", state="ready") == 1

        wait_until(gateway_sees_a_ready_replica, 60, "the pod tier to scale up behind the masked request")
        # The replica is ready but has not loaded the model: still masked, and this request has it preload.
        assert where(infer(gw, "dense", rows(1))) == ("wasm", "cold_start_masked")
        # Once preloaded, the pod tier (not yet measured) is tried as the home tier.
        wait_until(lambda: infer(gw, "dense", rows(1)).headers["x-wasmgate-tier"] == "pod", 60, "the preload")

        for seed in range(5):  # measure both tiers
            check_dense(infer(gw, "dense", rows(2, seed), **{"x-wasmgate-tier": "pod"}), session, rows(2, seed))
            check_dense(infer(gw, "dense", rows(2, seed), **{"x-wasmgate-tier": "wasm"}), session, rows(2, seed))
        admin = httpx.get(f"{gw.url}/admin/v1/functions/dense", timeout=30).json()
        measured = admin["service_ms"]
        assert set(measured) == {"wasm", "pod"}
        assert all(set(m) == {"small"} for m in measured.values())
        quicker = "wasm" if measured["wasm"]["small"] < measured["pod"]["small"] else "pod"
        r = infer(gw, "dense", rows(3, seed=9))
        assert where(r) == ((quicker, "faster") if quicker == "wasm" else (quicker, "home")), measured
        check_dense(r, session, rows(3, seed=9))
        reason = "faster" if quicker == "wasm" else "home"
        decisions = metric(httpx.get(f"{gw.url}/metrics").text, "wasmgate_route_decisions_total", function="dense",
            tier=quicker, reason=reason)  # fmt: skip
        assert decisions >= 1
    finally:
        gw.stop()


def test_a_saturated_wasm_pool_spills_to_a_ready_pod_unless_the_function_forbids_it(tmp_path: Path) -> None:
    """Saturation is set up step by step, not by racing a burst: a long batch holds the function's one slot
    (seen in /metrics), a second request waits in its queue (seen in /metrics), and only then does the third
    arrive, to a pool whose slots are all busy with a queue behind them."""
    heavy_sizes = (1024, 2048, 2048, 10)
    heavy = tmp_path / "heavy.onnx"
    heavy.write_bytes(dense_model(heavy_sizes))
    env = {
        **ROUTING_ENV,
        "WASMGATE_POD_MIN_REPLICAS": "1",
        "WASMGATE_SPILL_BATCH_ROWS": "100000",
        "WASMGATE_DEADLINE_MS": "60000",
    }
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    try:
        wait_until(lambda: len(runner_pids(gw)) == 1, 60, "a runner (pod_min_replicas=1)")
        flags = ["--tier", "wasm", "--concurrency", "1", "--max-instances", "1", "--queue-timeout", "120"]
        assert gw.cli("push", str(heavy), "--name", "busy", *flags).returncode == 0
        assert gw.cli("push", str(heavy), "--name", "confined", *flags, "--no-spill").returncode == 0
        one = np.random.default_rng(4).standard_normal((1, heavy_sizes[0])).astype(np.float32)
        wait_until(lambda: infer(gw, "busy", one, **{"x-wasmgate-tier": "pod"}).status_code == 200, 60, "pod")
        big = np.random.default_rng(5).standard_normal((4096, heavy_sizes[0])).astype(np.float32)
        header = (
            b'{"inputs":[{"name":"input","shape":[4096,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}]}'
            % (heavy_sizes[0], big.nbytes)
        )

        def gauge(name: str, function: str, **labels: str) -> float:
            return metric(httpx.get(f"{gw.url}/metrics").text, name, function=function, **labels)

        def third_request(function: str) -> tuple[str, str, bool]:
            """Where the third request ran, and whether it was answered while the long batch still ran."""
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                long = pool.submit(
                    httpx.post,
                    f"{gw.url}/v2/models/{function}/infer",
                    content=header + big.tobytes(),
                    headers={"inference-header-content-length": str(len(header))},
                    timeout=120,
                )
                wait_until(lambda: gauge("wasmgate_instances", function, state="busy") == 1, 60, "the long batch")
                queued = pool.submit(infer, gw, function, one)
                wait_until(lambda: gauge("wasmgate_queue_depth", function) == 1, 60, "a request in the queue")
                assert not long.done(), "the long batch ended before the third request was sent"
                third = infer(gw, function, one)
                # Overtook: the long batch still runs in the gateway once the third is answered. The client's
                # own view (long.done()) alone can lag: the gateway may have answered the long batch first while
                # this process is still reading that answer in the other thread.
                overtook = not long.done() and gauge("wasmgate_instances", function, state="busy") == 1
                for r in (long.result(), queued.result(), third):
                    assert r.status_code == 200, r.text[:300]
                assert where(queued.result()) == ("wasm", "home")
                return (*where(third), overtook)

        assert third_request("busy") == ("pod", "spill_saturated", True)  # answered by the pod meanwhile
        assert third_request("confined") == ("wasm", "home", False)  # --no-spill: it waits its turn instead
    finally:
        gw.stop()


def test_edge_cluster_runs_everything_on_cpu(tmp_path: Path, digits: Digits) -> None:
    """No accelerators: a model past the pod thresholds stays in the sandbox while it fits; one too large for
    the sandbox goes to a CPU runner."""
    fits = dense_model((64, 512, 512, 10))  # 1.3 MB
    too_big = dense_model((64, 1024, 1024, 10))  # 4.5 MB
    (tmp_path / "fits.onnx").write_bytes(fits)
    (tmp_path / "big.onnx").write_bytes(too_big)
    env = {
        "WASMGATE_TIER_POD_BYTES": str(512 * 1024),
        "WASMGATE_WASM_FIT_BYTES": str(3 << 20),
        "WASMGATE_ACCELERATORS": "none",
    }
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    try:
        assert "tier auto:wasm" in gw.cli("push", str(tmp_path / "fits.onnx"), "--name", "fits").stdout
        assert "tier auto:pod" in gw.cli("push", str(tmp_path / "big.onnx"), "--name", "big").stdout
        x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
        assert where(infer(gw, "fits", x)) == ("wasm", "home")
        big = infer(gw, "big", x)
        assert where(big) == ("pod", "home_cold")  # nothing to mask with: held for a CPU runner
        expected = ort.InferenceSession(too_big, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        got = np.array(big.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        meta = httpx.get(f"{gw.url}/v2").json()
        assert meta["execution_providers"] == ["CPUExecutionProvider"]
    finally:
        gw.stop()


def test_a_backend_that_fails_before_answering_is_retried_once_and_an_answer_never(
    tmp_path: Path, dense: tuple[Path, ort.InferenceSession], refused_url: str
) -> None:
    """Failing before answering: an endpoint that cannot be reached, and a replica whose admission refuses the
    request with 429 (it never ran). The runner here fetches its functions from the gateway."""
    path, session = dense
    env = {"WASMGATE_POD_SCALER": "none", "WASMGATE_DEADLINE_MS": "60000"}
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    runner = Gateway(tmp_path / "other", tmp_path / "runner.log", "--source-url", gw.url, command="runner", env=env)
    runner.start()
    try:
        dead = refused_url  # nothing listens there
        push = ["push", str(path), "--tier", "pod", "--endpoint"]
        assert gw.cli(*push, dead, "--name", "flaky").returncode == 0
        # The pod tier (its endpoint) never takes the request: retried once, on the Wasm tier.
        r = infer(gw, "flaky", rows(2))
        assert where(r) == ("wasm", "retry")
        check_dense(r, session, rows(2))
        # Its endpoint answers (404: that server has no such model): an answer is passed on, never retried.
        assert gw.cli(*push, runner.url, "--endpoint-model", "nowhere", "--name", "answers").returncode == 0
        answered = infer(gw, "answers", rows(2))
        assert answered.status_code == 404
        assert answered.headers["x-wasmgate-tier"] == "pod"
        text = httpx.get(f"{gw.url}/metrics").text
        assert metric(text, "wasmgate_retries_total", from_tier="pod", to_tier="wasm") == 1
        assert metric(text, "wasmgate_route_decisions_total", function="answers", reason="retry") == 0
        # Asked for the pod tier alone, nothing is left to retry on: a clear 503.
        alone = infer(gw, "flaky", rows(2), **{"x-wasmgate-tier": "pod"})
        assert alone.status_code == 503
        assert "unreachable" in alone.json()["error"]

        # A replica at capacity answers 429 before running the request: retried on the Wasm tier. The endpoint
        # is the runner serving "crowded" (one slot, no queue), kept busy by a long batch sent to it directly.
        heavy_sizes = (256, 2048, 2048, 10)
        heavy = tmp_path / "heavy.onnx"
        heavy.write_bytes(dense_model(heavy_sizes))
        one_slot = ["--concurrency", "1", "--max-instances", "1", "--max-queue", "0"]
        assert gw.cli("push", str(heavy), "--name", "crowded", "--tier", "wasm", *one_slot).returncode == 0
        assert gw.cli("push", str(heavy), "--name", "busy", "--tier", "pod", "--endpoint", runner.url,
            "--endpoint-model", "crowded").returncode == 0  # fmt: skip
        x = np.random.default_rng(1).standard_normal((1, heavy_sizes[0])).astype(np.float32)
        assert infer(runner, "crowded", x).status_code == 200  # fetched and loaded
        big = np.random.default_rng(2).standard_normal((16000, heavy_sizes[0])).astype(np.float32)  # seconds
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            long = pool.submit(infer_binary, runner, "crowded", big)
            busy = {"function": "crowded", "state": "busy"}
            wait_until(lambda: metric(httpx.get(f"{runner.url}/metrics").text, "wasmgate_instances", **busy) == 1,
                60, "the long batch on the runner")  # fmt: skip
            assert not long.done(), "the long batch ended before the request it should crowd out was sent"
            crowded_out = infer(gw, "busy", x)
            refused = infer(gw, "busy", x, **{"x-wasmgate-tier": "pod"})  # no other candidate: the 429 stands
            assert not long.done(), "the long batch ended before both requests were refused"
            assert long.result().status_code == 200
        assert where(crowded_out) == ("wasm", "retry")
        assert refused.status_code == 429, refused.text
        assert "at capacity" in refused.json()["error"]
    finally:
        runner.stop()
        gw.stop()

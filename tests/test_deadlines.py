"""Deadlines per tier, the routing headers on error answers, and pool settings that apply without a request.

End to end on a real ``wasm serve`` whose local scaler starts real ``wasm runner`` processes. The guest is
:data:`tests.support.SPINNER`, whose run time the request sets: about a second here for the requests below,
which is 50 times the Wasm tier's 20 ms deadline and 1/60 of the runners' default 60 s, so which of them it
meets does not depend on how busy the machine is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import wasmtime

from gateway.app import create_app
from gateway.settings import Settings
from router.forward import Forwarder
from tests.support import (
    FP16_INPUT,
    SPINNER,
    AppClient,
    Gateway,
    fp16_model,
    metric,
    push,
    spin_body,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: Thousands of iterations: about a second of spinning on this machine (1.4 ns an iteration).
LONG = 800_000
WASM_DEADLINE_MS = 20


@pytest.fixture(scope="module")
def spinner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spinner") / "spin.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(SPINNER)))
    return path


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Gateway]:
    env = {
        # The gateway-wide deadline is the Wasm tier's alone: runners get runner_deadline_ms (default 60 s).
        "WASMGATE_DEADLINE_MS": str(WASM_DEADLINE_MS),
        "WASMGATE_POD_MAX_REPLICAS": "1",
        "WASMGATE_SPILL_BATCH_ROWS": "4",
        "WASMGATE_DRAIN_TIMEOUT_S": "5",
    }
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    yield gw
    gw.stop()


def infer(gw: Gateway, name: str, body: dict[str, object], tier: str | None = None) -> httpx.Response:
    headers = {"x-wasmgate-tier": tier} if tier else {}
    return httpx.post(f"{gw.url}/v2/models/{name}/infer", json=body, headers=headers, timeout=120)


def count(response: httpx.Response) -> int:
    (out,) = response.json()["outputs"]
    return int(out["data"][0])


def test_long_work_runs_past_the_wasm_deadline_on_the_pods_and_each_504_names_its_setting(
    pods: Gateway, spinner: Path
) -> None:
    r = pods.cli("push", str(spinner), "--name", "spin")
    assert r.returncode == 0, r.stderr

    # On the Wasm tier it runs into the gateway's 20 ms: 504, saying how to raise it, and where it ran.
    short = infer(pods, "spin", spin_body(LONG), tier="wasm")
    assert short.status_code == 504, short.text
    error = short.json()["error"]
    assert f"({WASM_DEADLINE_MS} ms)" in error
    assert "wasm scale spin --deadline-ms" in error
    assert "WASMGATE_DEADLINE_MS" in error
    assert short.headers["x-wasmgate-tier"] == "wasm"
    assert short.headers["x-wasmgate-reason"] == "hint"
    assert short.headers["x-wasmgate-replica"].startswith("gateway-")

    # The same request on the pod tier completes: a runner holds it to runner_deadline_ms, not deadline_ms.
    long = infer(pods, "spin", spin_body(LONG), tier="pod")
    assert long.status_code == 200, long.text
    assert count(long) == LONG * 1000
    assert long.headers["x-wasmgate-tier"] == "pod"
    runner = long.headers["x-wasmgate-replica"]

    # A batch of spill_batch_rows rows, with no hint, spills to the ready replica and completes there.
    spilled = infer(pods, "spin", spin_body(LONG, rows=4))
    assert spilled.status_code == 200, spilled.text
    assert (spilled.headers["x-wasmgate-tier"], spilled.headers["x-wasmgate-reason"]) == ("pod", "spill_batch")
    assert count(spilled) == LONG * 1000

    # The function's own pod-tier deadline, set with wasm scale, applies in the runner: 504, naming it.
    r = pods.cli("scale", "spin", "--pod-deadline-ms", str(WASM_DEADLINE_MS))
    assert r.returncode == 0, r.stderr
    capped = infer(pods, "spin", spin_body(LONG), tier="pod")
    assert capped.status_code == 504, capped.text
    error = capped.json()["error"]
    assert f"({WASM_DEADLINE_MS} ms)" in error
    assert "on the pod tier" in error
    assert "wasm scale spin --pod-deadline-ms" in error
    assert "WASMGATE_RUNNER_DEADLINE_MS" in error
    assert (capped.headers["x-wasmgate-tier"], capped.headers["x-wasmgate-replica"]) == ("pod", runner)

    # A short request still answers on both tiers.
    for tier in ("wasm", "pod"):
        quick = infer(pods, "spin", spin_body(1), tier=tier)
        assert quick.status_code == 200, quick.text
        assert count(quick) == 1000


def test_a_lowered_idle_timeout_unloads_and_a_raised_min_warm_loads_without_a_request(
    tmp_path: Path, spinner: Path
) -> None:
    """With two workers, the admin call lands on either; each worker's reaper follows the manifest."""
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", "--workers", "2")
    gw.start()
    try:

        def scraped(name: str, **labels: str) -> float:
            return metric(httpx.get(f"{gw.url}/metrics", timeout=10).text, name, function="spin", **labels)

        assert gw.cli("push", str(spinner), "--name", "spin").returncode == 0
        assert infer(gw, "spin", spin_body(1)).status_code == 200  # loaded in one worker, idle_timeout 300 s
        assert gw.cli("scale", "spin", "--idle-timeout", "1").returncode == 0
        wait_until(lambda: scraped("wasmgate_scale_to_zero_total") == 1, 60, "the idle function to be unloaded")

        # Scaled to zero in every worker; raising min_warm fills each worker's pool with no request at all.
        assert gw.cli("scale", "spin", "--min-warm", "2").returncode == 0
        wait_until(lambda: scraped("wasmgate_instances", state="warm") == 4, 60, "two warm instances per worker")
        assert scraped("wasmgate_requests_total") == 1
        pids = set(re.findall(r"wasmgate gateway ready \(pid (\d+)\)", gw.log.read_text()))
        assert len(pids) == 2
    finally:
        gw.stop()


def test_an_error_answer_of_the_wasm_tier_carries_the_routing_headers(tmp_path: Path) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path / "data", pod_scaler="none", reap_interval_s=3600.0)
    with AppClient(create_app(settings)) as c:
        push(c, "half", None, {"model": fp16_model(features=8)})
        wrong = {"inputs": [{"name": FP16_INPUT, "shape": [1, 7], "datatype": "FP16", "data": [0.0] * 7}]}
        r = c.post("/v2/models/half/infer", json=wrong)  # placed, then refused by the function's signature
        assert r.status_code == 400, r.text
        assert r.headers["x-wasmgate-tier"] == "wasm"
        assert r.headers["x-wasmgate-reason"] == "home"
        assert r.headers["x-wasmgate-replica"].startswith("gateway-")
        # Refused before placement (not OIP v2 at all): it ran nowhere, and says nothing of where.
        r = c.post("/v2/models/half/infer", content=b"{")
        assert r.status_code == 400
        assert "x-wasmgate-tier" not in r.headers


def test_the_forward_waits_for_the_runners_deadline_and_for_a_longer_one_of_a_function() -> None:
    settings = Settings.from_env({})
    assert settings.pod_timeout_s * 1000 > settings.runner_deadline_ms  # derived: never gives up first
    forwarder = Forwarder(2.0, 90.0, runner_deadline_ms=60_000)
    assert forwarder.timeout_s() == forwarder.timeout_s(30_000) == 90.0
    assert forwarder.timeout_s(120_000) == 150.0
    with pytest.raises(ValueError, match=r"WASMGATE_POD_REQUEST_TIMEOUT_S=30 .*WASMGATE_RUNNER_DEADLINE_MS=60000"):
        Settings.from_env({"WASMGATE_POD_REQUEST_TIMEOUT_S": "30"})
    assert Settings.from_env({"WASMGATE_POD_REQUEST_TIMEOUT_S": "30", "WASMGATE_RUNNER_DEADLINE_MS": "20000"})

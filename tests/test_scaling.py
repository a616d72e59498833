"""Scale to zero and back, cold-start reporting, admission limits and metrics, through the in-process app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from router.admission import Admission
from router.inline import runs_inline
from tests.support import AppClient, Digits, infer_body, metric, push, wait_for
from wasm_host.errors import TooManyRequests, Unavailable


@pytest.fixture
def client(tmp_path: Path) -> Iterator[AppClient]:
    # A reaper interval far beyond the test: the tests call reap() themselves, so nothing depends on timing.
    settings = Settings.from_env({}, data_dir=tmp_path / "data", reap_interval_s=3600.0)
    with AppClient(create_app(settings)) as c:
        yield c


def state(client: AppClient):  # type: ignore[no-untyped-def]
    return client.portal.call(_state, client)


async def _state(client: AppClient):  # type: ignore[no-untyped-def]
    return client._client._transport.app.state.wasmgate  # type: ignore[attr-defined]


def test_scale_to_zero_and_back_with_cold_start_header(client: AppClient, digits: Digits) -> None:
    push(client, "digits", None, {"model": digits.model})
    client.request("PATCH", "/admin/v1/functions/digits/pool", json={"idle_timeout_s": 0})
    body = infer_body(digits.x_test[:1])
    first = client.post("/v2/models/digits/infer", json=body)
    assert first.status_code == 200
    assert first.headers["x-wasmgate-cold-start"] == "true"
    second = client.post("/v2/models/digits/infer", json=body)
    assert "x-wasmgate-cold-start" not in second.headers

    s = state(client)
    assert s.host.backend.cached() == 1  # the digits session is loaded
    assert s.registry.reap() == ["digits"]
    assert s.registry.loaded() == []
    assert s.host.backend.cached() == 0  # scaled to zero: its onnxruntime session is gone too
    assert (Path(s.settings.data_dir) / "functions" / "digits.json").exists()  # the store stays

    third = client.post("/v2/models/digits/infer", json=body)
    assert third.status_code == 200
    assert third.headers["x-wasmgate-cold-start"] == "true"
    assert third.json()["outputs"] == first.json()["outputs"]

    text = client.get("/metrics").text
    assert metric(text, "wasmgate_cold_starts_total", function="digits") == 2
    assert metric(text, "wasmgate_requests_total", function="digits", backend="wasm", status="200") == 3


def test_min_warm_keeps_instances_and_is_not_scaled_to_zero(client: AppClient, digits: Digits) -> None:
    push(client, "digits", None, {"model": digits.model})
    r = client.request("PATCH", "/admin/v1/functions/digits/pool", json={"min_warm": 2, "idle_timeout_s": 0})
    assert r.status_code == 200
    assert r.json()["pool"]["min_warm"] == 2
    assert r.json()["version"] == 1  # settings are not a new version
    assert client.post("/v2/models/digits/infer", json=infer_body(digits.x_test[:1])).status_code == 200
    s = state(client)
    (fn,) = s.registry.loaded()
    wait_for(lambda: fn.pool.ready >= 2)  # the warmer's two, plus the request's own if it raced them
    assert s.registry.reap() == []  # idle, but min_warm keeps it loaded ...
    assert fn.pool.ready == 2  # ... at exactly min_warm ready instances


def test_bad_pool_settings_are_400(client: AppClient, digits: Digits) -> None:
    push(client, "digits", None, {"model": digits.model})
    r = client.request("PATCH", "/admin/v1/functions/digits/pool", json={"min_warm": 99, "max_instances": 2})
    assert r.status_code == 400
    assert "min_warm (99) exceeds max_instances (2)" in r.json()["error"]
    r = client.request("PATCH", "/admin/v1/functions/digits/pool", json={"warmth": 1})
    assert r.status_code == 400
    assert "unknown pool setting" in r.json()["error"]
    assert client.request("PATCH", "/admin/v1/functions/nope/pool", json={"min_warm": 1}).status_code == 404


def test_a_full_queue_is_429_and_metrics_count_it(client: AppClient, digits: Digits) -> None:
    push(client, "digits", None, {"model": digits.model})
    client.request("PATCH", "/admin/v1/functions/digits/pool", json={"concurrency": 1, "max_queue": 0})
    body = infer_body(digits.x_test[:1])
    assert client.post("/v2/models/digits/infer", json=body).status_code == 200
    (fn,) = state(client).registry.loaded()

    # Hold the function's only slot from the event loop, exactly as a long request would.
    held, release = client.portal.call(anyio.Event), client.portal.call(anyio.Event)

    async def occupy() -> None:
        async with fn.admission.slot():
            held.set()
            await release.wait()

    task = client.portal.start_task_soon(occupy)
    client.portal.call(held.wait)
    r = client.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert "queue is full" in r.json()["error"]
    client.portal.call(release.set)
    task.result()
    assert client.post("/v2/models/digits/infer", json=body).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, "wasmgate_rejections_total", function="digits", reason="queue_full") == 1
    assert metric(text, "wasmgate_requests_total", function="digits", status="429") == 1


def test_known_sequence_of_requests_in_metrics(client: AppClient, digits: Digits) -> None:
    push(client, "digits", None, {"model": digits.model})
    body = infer_body(digits.x_test[:2])
    for _ in range(3):
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200
    assert client.post("/v2/models/digits/infer", content=b"{").status_code == 400
    text = client.get("/metrics").text
    assert metric(text, "wasmgate_requests_total", function="digits", backend="wasm", status="200") == 3
    assert metric(text, "wasmgate_requests_total", function="digits", backend="wasm", status="400") == 1
    assert metric(text, "wasmgate_request_duration_seconds_count", function="digits", backend="wasm") == 4
    assert metric(text, "wasmgate_cold_starts_total", function="digits") == 1
    assert metric(text, "wasmgate_instances", function="digits", state="busy") == 0
    assert metric(text, "wasmgate_instances", function="digits", state="warm") == 1  # one reused instance
    assert metric(text, "wasmgate_queue_depth", function="digits") == 0
    assert metric(text, "wasmgate_instantiations_total", function="digits", where="request") == 1
    assert metric(text, "wasmgate_instantiations_total", function="digits", where="background") == 0


# -- admission on its own, deterministic with events ---------------------------------------------------------


def test_admission_queues_in_order_and_bounds_the_queue() -> None:
    async def main() -> None:
        adm = Admission("f", limit=1, max_queue=2, queue_timeout_s=60)
        order: list[str] = []
        gate = anyio.Event()

        async def request(tag: str) -> None:
            async with adm.slot():
                order.append(tag)
                await gate.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "a")
            await _until(lambda: adm.in_flight == 1)
            tg.start_soon(request, "b")
            await _until(lambda: adm.waiting == 1)
            tg.start_soon(request, "c")
            await _until(lambda: adm.waiting == 2)
            with pytest.raises(TooManyRequests):
                async with adm.slot():
                    pass
            gate.set()
        assert order == ["a", "b", "c"]
        assert adm.rejected_full == 1

    anyio.run(main)


def test_admission_wait_past_the_queue_timeout_is_503() -> None:
    async def main() -> None:
        adm = Admission("f", limit=1, max_queue=5, queue_timeout_s=0)
        async with adm.slot():
            with pytest.raises(Unavailable) as info:
                async with adm.slot():
                    pass
            assert not isinstance(info.value, TooManyRequests)
            assert info.value.retry_after == 1.0
        assert adm.waiting == 0
        assert adm.rejected_timeout == 1

    anyio.run(main)


async def _until(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await anyio.sleep(0)


def test_placement_policy() -> None:

    assert not runs_inline(None, 2.0)  # no history: a thread, where a slow guest cannot hold the loop
    assert runs_inline(0.3, 2.0)
    assert not runs_inline(2.5, 2.0)
    assert not runs_inline(0.3, 0.0)  # 0 turns inline execution off


def test_a_guest_that_hits_its_deadline_is_kept_off_the_event_loop(tmp_path: Path) -> None:
    import wasmtime

    loop = wasmtime.wat2wasm("""(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "handle") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))""")
    settings = Settings.from_env({}, data_dir=tmp_path / "data", reap_interval_s=3600.0, deadline_ms=100)
    with AppClient(create_app(settings)) as c:
        push(c, "loop", bytes(loop), {})
        x = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
        assert c.post("/v2/models/loop/infer", json=x).status_code == 504
        (fn,) = state(c).registry.loaded()
        assert fn.pool.typical_ms is not None
        assert fn.pool.typical_ms >= 100  # the deadline counted: the next call goes to a worker thread
        assert not runs_inline(fn.pool.typical_ms, settings.inline_below_ms)
        assert fn.placement is not None
        assert not fn.placement.inline


def test_raising_min_warm_on_a_loaded_function_warms_it(client: AppClient, digits: Digits) -> None:
    push(client, "digits", None, {"model": digits.model})
    body = infer_body(digits.x_test[:1])
    assert client.post("/v2/models/digits/infer", json=body).status_code == 200
    (fn,) = state(client).registry.loaded()
    assert client.request("PATCH", "/admin/v1/functions/digits/pool", json={"min_warm": 3}).status_code == 200
    assert client.post("/v2/models/digits/infer", json=body).status_code == 200  # applies the new settings
    assert state(client).registry.loaded() == [fn]  # same code: retuned in place, not reloaded
    wait_for(lambda: fn.pool.ready >= 3)

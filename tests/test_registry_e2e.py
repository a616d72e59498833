"""End to end: two real ``wasm serve`` processes on one real registry (Debian's docker-registry). A push through
either is served by both, a delete through either stops both; the registry restarting or being unreachable
for a while never stops serving, and the sync picks up where it left off."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.oci_registry import Registry
from tests.support import Digits, Gateway, json_infer, onnx_predict

pytestmark = pytest.mark.e2e


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def settings_env(registry: Registry) -> dict[str, str]:
    return {
        "WASMGATE_STORE": registry.store,
        "WASMGATE_REGISTRY_PLAIN_HTTP": "true",
        "WASMGATE_REGISTRY_SYNC_INTERVAL_S": "0.2",
    }


@pytest.fixture
def pair(registry: Registry, tmp_path: Path) -> Iterator[tuple[Gateway, Gateway]]:
    gateways = tuple(
        Gateway(tmp_path / f"data-{n}", tmp_path / f"gateway-{n}.log", env=settings_env(registry)) for n in "ab"
    )
    try:
        for gw in gateways:
            gw.start()
        yield gateways[0], gateways[1]
    finally:
        for gw in gateways:
            gw.stop()


def infer(gw: Gateway, name: str, digits: Digits) -> httpx.Response:
    x = digits.x_test[:20]
    return json_infer(gw.url, name, [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}])


def serves(gw: Gateway, name: str, digits: Digits) -> bool:
    return infer(gw, name, digits).status_code == 200


def gone(gw: Gateway, name: str) -> bool:
    return httpx.get(f"{gw.url}/v2/models/{name}", timeout=10).status_code == 404


def describe(gw: Gateway, name: str) -> dict[str, object]:
    result: dict[str, object] = httpx.get(f"{gw.url}/admin/v1/functions/{name}", timeout=10).json()
    return result


def metric(gw: Gateway, name: str) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else float("nan")


def test_two_gateways_on_one_registry_push_infer_and_delete(
    registry: Registry, pair: tuple[Gateway, Gateway], digits: Digits, guests: dict[str, Path]
) -> None:
    a, b = pair
    r = a.cli("push", str(digits.path), "--name", "digits")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: serves(b, "digits", digits), "the other gateway to serve the push")
    labels, _ = onnx_predict(digits.model, digits.x_test[:20])
    assert infer(b, "digits", digits).json()["outputs"][0]["data"] == labels.tolist()
    # Pinned by digest: both serve exactly the manifest pushed.
    assert describe(b, "digits")["digest"] == describe(a, "digits")["digest"]
    assert str(describe(a, "digits")["digest"]).startswith("sha256:")
    listing = a.cli("ls").stdout.splitlines()
    assert listing[0].split()[-1] == "DIGEST"
    assert listing[1].split()[-1] == describe(a, "digits")["digest"]

    # A new version through the other gateway reaches the first.
    r = b.cli("push", str(digits.path), "--name", "digits", "--min-warm", "1")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: describe(a, "digits")["version"] == 2, "version 2 on the first gateway")

    # Straight to the registry, no gateway involved: both serve it.
    raw = np.rint(digits.x_test[:5] * 16).astype(np.uint8)
    r = a.cli(
        "push", str(guests["digits_topk"]), "--model", f"digits={digits.path}",
        "--registry", f"{registry.store}:top3", "--registry-plain-http",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    body = [{"name": "images", "shape": list(raw.shape), "datatype": "UINT8", "data": raw.ravel().tolist()}]
    wait_for(lambda: all(json_infer(gw.url, "top3", body).status_code == 200 for gw in (a, b)), "top3 on both")

    # A delete through one stops both.
    r = b.cli("rm", "digits")
    assert r.returncode == 0, r.stderr
    assert gone(b, "digits")
    wait_for(lambda: gone(a, "digits"), "the delete to reach the first gateway")
    assert json_infer(a.url, "top3", body).status_code == 200  # the other function is untouched


def test_serving_survives_the_registry_restarting_and_being_unreachable(
    registry: Registry, pair: tuple[Gateway, Gateway], digits: Digits
) -> None:
    a, b = pair
    assert a.cli("push", str(digits.path), "--name", "digits").returncode == 0
    wait_for(lambda: serves(b, "digits", digits), "the other gateway to serve the push")
    assert metric(a, "wasmgate_registry_sync_up") == 1

    registry.stop()
    wait_for(lambda: metric(b, "wasmgate_registry_sync_up") == 0, "the sync to notice the outage")
    for _ in range(5):  # several sync intervals: every one fails, serving goes on from the cache
        assert serves(a, "digits", digits)
        assert serves(b, "digits", digits)
        time.sleep(0.2)
    r = httpx.put(
        f"{a.url}/admin/v1/functions/again", json={"module": None, "models": {"model": f"sha256:{digits.digest}"}}
    )
    assert r.status_code == 503
    assert registry.host in r.json()["error"]
    assert b.log.read_text().count("sync with the registry store failed") == 1  # once per outage

    # A gateway that starts while the registry is down serves from its cache.
    b.stop()
    b.start()
    assert serves(b, "digits", digits)

    registry.start()  # same port, same storage
    wait_for(lambda: metric(b, "wasmgate_registry_sync_up") == 1, "the sync to resume")
    assert "answers again; sync resumed" in b.log.read_text()
    r = b.cli("push", str(digits.path), "--name", "after")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: serves(a, "after", digits), "a push after the outage to reach the other gateway")
    assert serves(a, "digits", digits)  # what was there before the restart is still there

"""The store's generation counter (gateway.store.generation): a change made through one process is seen by
another on its next request, without a stat() of the manifest on every request."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from gateway.cli.demo import dense_model
from gateway.store.generation import Generation
from gateway.store.local import LocalStore
from tests.support import Digits, Gateway, json_infer, onnx_predict


def test_a_bump_through_one_mapping_is_read_through_another(tmp_path: Path) -> None:
    first, second = Generation(tmp_path / "generation"), Generation(tmp_path / "generation")
    assert first.read() == second.read() == 0
    assert first.bump() == 1
    assert second.read() == 1
    assert second.bump() == 2
    assert first.read() == 2
    assert (tmp_path / "generation").read_bytes() == (2).to_bytes(8, "little")
    first.close()
    second.close()


def test_every_manifest_write_of_the_store_bumps_the_generation(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data")
    seen = LocalStore(tmp_path / "data").generation  # another reader of the same directory
    before = seen.read()
    digest = store.stage(b"\0asm\1\0\0\0")
    from gateway.store.manifest import Manifest

    pushed = store.commit(Manifest("fn", 0, "custom", digest, {}, None, None), max_functions=10)
    assert seen.read() == before + 1
    store.set_pool("fn", dataclasses.replace(pushed.pool, min_warm=1))
    assert seen.read() == before + 2
    store.delete("fn")
    assert seen.read() == before + 3


def digits_request(gw: Gateway, x: np.ndarray) -> dict[str, object]:
    r = json_infer(gw.url, "fn", [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}])  # fmt: skip
    assert r.status_code in (200, 404), r.text
    return {"status": r.status_code, **r.json()}


@pytest.mark.e2e
def test_a_push_through_one_gateway_is_served_by_another_on_its_next_request(tmp_path: Path, digits: Digits) -> None:
    """Two gateway processes on one data directory: each change pushed through the first is what the second
    answers with on its very next request, though the second has the function loaded and warm."""
    dense = tmp_path / "dense.onnx"
    dense.write_bytes(dense_model((64, 32, 10)))
    env = {"WASMGATE_POD_SCALER": "none"}
    a = Gateway(tmp_path / "data", tmp_path / "a.log", env=env)
    b = Gateway(tmp_path / "data", tmp_path / "b.log", env=env)
    a.start()
    b.start()
    x = digits.x_test[:2]
    try:
        assert a.cli("push", str(digits.path), "--name", "fn").returncode == 0
        for _ in range(3):  # loaded and warm in b: its lookups are the cached ones from here on
            first = digits_request(b, x)
            assert first["model_version"] == "1"
        assert first["outputs"][0]["data"] == onnx_predict(digits.model, x)[0].tolist()  # type: ignore[index]

        assert a.cli("push", str(dense), "--name", "fn").returncode == 0
        second = digits_request(b, x)
        assert second["model_version"] == "2"
        assert second["outputs"][0]["datatype"] == "FP32"  # type: ignore[index]

        assert a.cli("rm", "fn").returncode == 0
        gone = digits_request(b, x)
        assert gone["status"] == 404
        assert "not found" in str(gone["error"])
    finally:
        a.stop()
        b.stop()


def test_a_manifest_changed_behind_the_stores_back_is_seen_at_the_next_bump(tmp_path: Path) -> None:
    """The counter is what readers trust: a file rewritten without the store (by hand) is not looked at until
    something bumps the generation (the documented limit of gateway.store.generation)."""
    from gateway.functions.serving import FunctionRegistry
    from gateway.settings import Settings
    from gateway.store.manifest import Manifest

    store = LocalStore(tmp_path / "data")
    digest = store.stage(b"\0asm\1\0\0\0")
    store.commit(Manifest("fn", 0, "external", digest, {}, None, None, endpoint="http://x:1"), max_functions=10)
    registry = FunctionRegistry(store, None, Settings(data_dir=tmp_path / "data"))  # type: ignore[arg-type]
    assert registry.manifest("fn").version == 1

    path = tmp_path / "data" / "functions" / "fn.json"
    doc = json.loads(path.read_text())
    doc["version"] = 7
    path.write_text(json.dumps(doc))
    assert registry.manifest("fn").version == 1  # no bump: the cached manifest, no look at the file

    store.generation.bump()
    assert registry.manifest("fn").version == 7

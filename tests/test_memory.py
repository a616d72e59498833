"""Memory a gateway holds for models: nothing after a push, nothing after scale to zero, a budget with
least-recently-used unloading, and functions lent to the Wasm tier by the pod tier let go soon.

The checks are structural (how many onnxruntime graphs the backend holds, what the registry holds, the
metrics), not RSS: bench/memory.py measures the resident set of a real ``wasm serve``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.app import create_app
from gateway.cli.demo import dense_model
from gateway.settings import Settings
from gateway.state import AppState
from tests.support import AppClient, encoder_inputs, encoder_model, infer_body, metric, upload

LAYERS = (64, 512, 512, 10)  # about 1.3 MB of weights
ROW = infer_body(np.zeros((1, 64), np.float32))


def state_of(app: Any) -> AppState:
    state: AppState = app.state.wasmgate
    return state


def put(client: AppClient, name: str, model: bytes, **doc: object) -> None:
    r = client.put(
        f"/admin/v1/functions/{name}", json={"module": None, "models": {"model": upload(client, model)}, **doc}
    )
    assert r.status_code == 201, r.text


def loaded(state: AppState) -> set[str]:
    return {fn.name for fn in state.registry.loaded()}


def test_a_push_leaves_no_graph_loaded_and_scale_to_zero_drops_the_graph(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({}, data_dir=tmp_path / "data", pod_scaler="none", reap_interval_s=3600.0))
    model = encoder_model()
    with AppClient(app) as client:
        state = state_of(app)
        put(client, "enc", model)
        # Validation built a session to check the model; none is left behind.
        assert state.host.backend.cached() == 0
        assert loaded(state) == set()
        assert metric(client.get("/metrics").text, "wasmgate_model_bytes_loaded") == 0

        inputs = encoder_inputs(2, 8)
        body = {
            "inputs": [
                {"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
                for k, v in inputs.items()
            ]
        }
        assert client.post("/v2/models/enc/infer", json=body).status_code == 200
        assert state.host.backend.cached() == 1
        assert metric(client.get("/metrics").text, "wasmgate_model_bytes_loaded") == len(model)

        assert state.registry.reap(now=time.monotonic() + 10_000) == ["enc"]
        assert state.host.backend.cached() == 0
        assert metric(client.get("/metrics").text, "wasmgate_model_bytes_loaded") == 0


def test_the_gateway_budget_unloads_the_least_recently_used_idle_function(tmp_path: Path) -> None:
    # Room for two of the three models: loading the third unloads whichever was used least recently.
    settings = Settings.from_env(
        {}, data_dir=tmp_path / "data", pod_scaler="none", reap_interval_s=3600.0, wasm_model_memory_budget_mb=3
    )
    app = create_app(settings)
    models = {name: dense_model(LAYERS, seed=seed) for seed, name in enumerate("abc")}
    with AppClient(app) as client:
        state = state_of(app)
        for name, model in models.items():
            put(client, name, model)
        for name in ("a", "b", "a"):  # b is now the least recently used
            assert client.post(f"/v2/models/{name}/infer", json=ROW).status_code == 200
        assert loaded(state) == {"a", "b"}

        assert client.post("/v2/models/c/infer", json=ROW).status_code == 200
        assert loaded(state) == {"a", "c"}
        assert state.host.backend.cached() == 2  # b's session went with it
        text = client.get("/metrics").text
        assert metric(text, "wasmgate_evictions_total", function="b") == 1
        assert metric(text, "wasmgate_evictions_total", function="a") == 0
        assert metric(text, "wasmgate_model_bytes_loaded") == len(models["a"]) + len(models["c"])

        again = client.post("/v2/models/b/infer", json=ROW)
        assert again.status_code == 200
        assert again.headers["x-wasmgate-cold-start"] == "true"
        assert loaded(state) == {"b", "c"}  # a was the least recently used this time
        assert metric(client.get("/metrics").text, "wasmgate_evictions_total", function="a") == 1


def test_a_pod_home_function_run_in_the_gateway_is_let_go_soon_whatever_its_min_warm(tmp_path: Path) -> None:
    # Accelerators and a 1 kB pod threshold make the auto function's home the pod tier; with no pod tier to
    # run it, the gateway runs it (as it does while masking a pod tier's cold start). The pinned one lives here.
    settings = Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        pod_scaler="none",
        accelerators="yes",
        tier_pod_bytes=1000,
        reap_interval_s=3600.0,
        wasm_lent_idle_timeout_s=5.0,
    )
    app = create_app(settings)
    pool = {"min_warm": 1, "idle_timeout_s": 300}
    with AppClient(app) as client:
        state = state_of(app)
        put(client, "lent", dense_model(LAYERS), pool=pool)
        put(client, "home", dense_model(LAYERS, seed=1), pool=pool, tier="wasm")
        assert loaded(state) == {"home"}  # a push prewarms (min_warm) only what lives in the gateway
        lent = client.post("/v2/models/lent/infer", json=ROW)
        assert lent.status_code == 200
        assert lent.headers["x-wasmgate-tier"] == "wasm"
        assert lent.headers["x-wasmgate-reason"] != "home"
        assert client.post("/v2/models/home/infer", json=ROW).status_code == 200

        assert state.registry.reap(now=time.monotonic() + 1) == []  # both were used just now
        assert state.registry.reap(now=time.monotonic() + 6) == ["lent"]
        assert loaded(state) == {"home"}  # kept: its own idle timeout, then min_warm, apply
        assert state.registry.reap(now=time.monotonic() + 10_000) == []
        assert loaded(state) == {"home"}

    # A restart prewarms the function that lives here (min_warm 1), not the one lent to this process.
    restarted = create_app(settings)
    with AppClient(restarted):
        assert loaded(state_of(restarted)) == {"home"}

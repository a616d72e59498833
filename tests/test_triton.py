"""Triton's model configuration and repository extensions, and the health bodies both SDKs read: the
configuration derived from signatures (plain values), the endpoints in process (bodies, tokens, refusals), and
a real ``wasm serve`` driven by ``tritonclient.http`` and KServe's ``InferenceRESTClient``, unchanged."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from gateway.store.manifest import Manifest
from gateway.triton_api import MAX_BATCH, model_config
from tests.support import AppClient, Digits, Gateway, metric, onnx_predict
from wasm_host.tensors import TensorSpec

ADMIN = "admin-secret"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}
MiB = 1 << 20


def manifest(inputs: list[TensorSpec] | None, outputs: list[TensorSpec] | None, kind: str = "custom") -> Manifest:
    return Manifest("fn", 3, kind, "" if kind == "external" else "ab" * 32, {}, inputs, outputs)  # type: ignore[arg-type]


def test_a_function_whose_tensors_all_start_with_a_dynamic_dim_batches_and_its_dims_leave_the_batch_out() -> None:
    m = manifest(
        [TensorSpec("ids", "INT64", (-1, -1)), TensorSpec("text", "BYTES", (-1,))],
        [TensorSpec("vec", "FP32", (-1, 384)), TensorSpec("label", "BOOL", (-1,))],
    )
    config = model_config(m, 64 * MiB)
    assert config["name"] == "fn"
    assert config["platform"] == "wasmgate_wasm"
    assert config["backend"] == "wasmgate"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    # The widest smallest row is the INT64 one (8 bytes, its dynamic dim at 1): 64 MiB of those.
    assert config["max_batch_size"] == 64 * MiB // 8
    assert config["input"] == [
        {"name": "ids", "data_type": "TYPE_INT64", "dims": [-1]},
        {"name": "text", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}},
    ]
    assert config["output"] == [
        {"name": "vec", "data_type": "TYPE_FP32", "dims": [384]},
        {"name": "label", "data_type": "TYPE_BOOL", "dims": [1], "reshape": {"shape": []}},
    ]


def test_the_batch_bound_is_the_rows_of_the_widest_input_that_fit_the_tensor_limit() -> None:
    m = manifest([TensorSpec("a", "FP32", (-1, 64)), TensorSpec("b", "FP16", (-1, 3, 4))], [])
    assert model_config(m, 64 * MiB)["max_batch_size"] == 64 * MiB // 256
    tiny = manifest([TensorSpec("a", "FP64", (-1, 1000))], [TensorSpec("o", "FP64", (-1,))])
    assert model_config(tiny, 100)["max_batch_size"] == 1  # never 0, which would say "no batching"
    huge = manifest([TensorSpec("a", "UINT8", (-1,))], [TensorSpec("o", "UINT8", (-1,))])
    assert model_config(huge, 1 << 40)["max_batch_size"] == MAX_BATCH


def test_a_fixed_first_dim_a_scalar_or_no_signature_means_no_batching_and_whole_shapes() -> None:
    fixed = manifest([TensorSpec("x", "FP32", (-1, 4))], [TensorSpec("y", "FP32", (2, 4))])
    config = model_config(fixed, 64 * MiB)
    assert config["max_batch_size"] == 0
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [2, 4]}]
    scalar = manifest([TensorSpec("x", "INT32", ())], [TensorSpec("y", "INT32", (-1,))])
    config = model_config(scalar, 64 * MiB)
    assert config["max_batch_size"] == 0
    assert config["input"] == [{"name": "x", "data_type": "TYPE_INT32", "dims": [1], "reshape": {"shape": []}}]
    external = model_config(manifest(None, None, "external"), 64 * MiB)
    assert (external["platform"], external["max_batch_size"], external["input"], external["output"]) == (
        "wasmgate_endpoint",
        0,
        [],
        [],
    )


@pytest.fixture
def guarded(tmp_path: Path, digits: Digits) -> Iterator[AppClient]:
    """The app with an admin token and an inference token, holding the bare digits model as ``digits``."""
    settings = Settings.from_env({}, data_dir=tmp_path / "data", admin_token=ADMIN, inference_token="infer")
    with AppClient(create_app(settings)) as client:
        blob = f"/admin/v1/blobs/sha256:{digits.digest}"
        assert client.put(blob, content=digits.model, headers=ADMIN_HEADERS).status_code == 201
        doc = {"module": None, "models": {"model": f"sha256:{digits.digest}"}}
        assert client.put("/admin/v1/functions/digits", json=doc, headers=ADMIN_HEADERS).status_code == 201
        yield client


def test_health_answers_with_the_bodies_kserve_reads_and_metadata_lists_the_extensions(tmp_path: Path) -> None:
    with AppClient(create_app(Settings.from_env({}, data_dir=tmp_path / "data"))) as client:
        live, ready = client.get("/v2/health/live"), client.get("/v2/health/ready")
        assert (live.status_code, live.json()) == (200, {"live": True})
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        extensions = client.get("/v2").json()["extensions"]
        assert extensions == ["binary_tensor_data", "model_configuration", "model_repository"]


def test_a_gateway_not_yet_ready_answers_503_ready_false_with_retry_after(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({}, data_dir=tmp_path / "data"))
    app.state.wasmgate = types.SimpleNamespace(ready=False)  # as the lifespan leaves it before start-up ends

    async def get() -> httpx.Response:
        # No lifespan: the app as it answers while starting (or draining).
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get("/v2/health/ready")

    r = anyio.run(get)
    assert (r.status_code, r.json(), r.headers["retry-after"]) == (503, {"ready": False}, "1")


def test_load_and_unload_need_the_admin_token_and_the_index_lists_what_the_callers_token_opens(
    guarded: AppClient, digits: Digits
) -> None:
    admin = ADMIN_HEADERS
    assert guarded.post("/v2/repository/models/digits/load").status_code == 401
    assert guarded.post("/v2/repository/models/digits/unload").status_code == 401
    caller = {"authorization": "Bearer infer"}
    assert guarded.post("/v2/repository/models/digits/load", headers=caller).status_code == 401
    assert guarded.post("/v2/repository/index").json() == []  # no token: nothing it opens
    assert guarded.get("/v2/models/digits/config").status_code == 401
    index = guarded.post("/v2/repository/index", headers=caller).json()
    assert [(e["name"], e["version"], e["state"]) for e in index] == [("digits", "1", "UNAVAILABLE")]
    assert "at zero" in index[0]["reason"]
    assert guarded.get("/v2/models/digits/config", headers=caller).json()["max_batch_size"] > 0

    loaded = guarded.post("/v2/repository/models/digits/load", headers=admin, content=b"{}")
    assert (loaded.status_code, loaded.json()) == (200, {"name": "digits", "version": "1", "state": "READY"})
    pool = guarded.get("/admin/v1/functions/digits", headers=admin).json()["pool"]
    assert pool["min_warm"] == 1  # kept ready: the reaper does not scale it to zero
    assert guarded.post("/v2/repository/index", headers=caller, json={"ready": True}).json() == [
        {"name": "digits", "version": "1", "state": "READY"}
    ]

    body = {"parameters": {"unload_dependents": False}}
    unloaded = guarded.post("/v2/repository/models/digits/unload", headers=admin, json=body)
    assert unloaded.status_code == 200
    assert unloaded.json()["state"] == "UNAVAILABLE"
    assert guarded.get("/admin/v1/functions/digits", headers=admin).json()["pool"]["min_warm"] == 0
    assert guarded.post("/v2/repository/index", headers=caller, json={"ready": True}).json() == []
    assert metric(guarded.get("/metrics").text, "wasmgate_scale_to_zero_total", function="digits") == 1
    # Unloaded is at zero, not gone: it is still ready, and its next request loads it.
    assert guarded.get("/v2/models/digits/ready", headers=caller).json() == {"name": "digits", "ready": True}
    x = digits.x_test[:2]
    doc = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = guarded.post("/v2/models/digits/infer", headers=caller, json=doc)
    assert r.status_code == 200, r.text
    assert r.headers["x-wasmgate-cold-start"] == "true"


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v2/repository/models/digits/load", {"parameters": {"config": "{}"}}, "loads only what was pushed"),
        ("/v2/repository/models/digits/load", {"parameters": {"file:1/model.onnx": "AAAA"}}, "wasm push"),
        ("/v2/repository/models/digits/load", {"parameters": {"version": "1"}}, "unknown parameter 'version'"),
        ("/v2/repository/models/digits/unload", {"parameters": {"unload_dependents": "yes"}}, "must be a bool"),
        ("/v2/repository/models/digits/unload", {"other": 1}, "unknown field"),
        ("/v2/repository/index", {"ready": "yes"}, "'ready' must be true or false"),
        ("/v2/repository/index", [1], 'such as {"ready": true}'),
    ],
)
def test_repository_requests_out_of_shape_are_refused_with_what_to_send(
    guarded: AppClient, path: str, body: object, fragment: str
) -> None:
    r = guarded.post(path, json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_loading_an_unknown_function_is_404(guarded: AppClient) -> None:
    r = guarded.post("/v2/repository/models/nope/load", headers=ADMIN_HEADERS)
    assert r.status_code == 404
    assert "'nope' not found" in r.json()["error"]


# -- the clients, unchanged, against a real server ----------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, digits: Digits) -> Iterator[Gateway]:
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env={"WASMGATE_ADMIN_TOKEN": ADMIN})
    gw.start()
    try:
        r = gw.cli("push", str(digits.path), "--name", "digits", "--token", ADMIN)
        assert r.returncode == 0, r.stderr
        yield gw
    finally:
        gw.stop()


@pytest.mark.e2e
def test_tritonclient_reads_the_config_and_the_index_and_loads_and_unloads(served: Gateway, digits: Digits) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    admin = {"Authorization": f"Bearer {ADMIN}"}
    client = triton.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert "model_repository" in client.get_server_metadata()["extensions"]
        config = client.get_model_config("digits")
        assert config["max_batch_size"] > 0
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
        assert [(o["name"], o["data_type"]) for o in config["output"]] == [
            ("label", "TYPE_INT64"),
            ("probabilities", "TYPE_FP32"),
        ]
        assert client.get_model_config("digits", "1") == config
        assert [(e["name"], e["state"]) for e in client.get_model_repository_index()] == [("digits", "UNAVAILABLE")]

        with pytest.raises(InferenceServerException, match="admin token"):
            client.load_model("digits")
        client.load_model("digits", headers=admin)
        assert client.get_model_repository_index() == [{"name": "digits", "version": "1", "state": "READY"}]
        assert client.is_model_ready("digits")
        x = digits.x_test[:5]
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("digits", [inp]).as_numpy("label"), onnx_predict(digits.model, x)[0])

        client.unload_model("digits", headers=admin)
        assert client.get_model_repository_index()[0]["state"] == "UNAVAILABLE"
        assert client.is_model_ready("digits")  # at zero, not gone: the next request loads it
        with pytest.raises(InferenceServerException, match="loads only what was pushed"):
            client.load_model("digits", headers=admin, config='{"max_batch_size": 4}')
    finally:
        client.close()


@pytest.mark.e2e
def test_kserve_rest_client_reads_health_readiness_and_infers(served: Gateway, digits: Digits) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    x = digits.x_test[:4]

    async def drive() -> tuple[bool, bool, bool, bool, np.ndarray]:
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            inp = InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=False)
            result = await client.infer(served.url, InferRequest("digits", [inp]), model_name="digits")
            probs = next(o for o in result.outputs if o.name == "probabilities").as_numpy()
            return (
                await client.is_server_live(served.url),
                await client.is_server_ready(served.url),
                await client.is_model_ready(served.url, "digits"),
                await client.is_model_ready(served.url, "nope"),
                probs,
            )
        finally:
            await client.close()

    live, ready, model_ready, unknown_ready, probs = asyncio.run(drive())
    assert (live, ready, model_ready, unknown_ready) == (True, True, True, False)
    np.testing.assert_array_equal(probs, onnx_predict(digits.model, x)[1])

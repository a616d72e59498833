"""Cold starts cut: optimized graphs saved at push and loaded from, functions prewarmed at push, runners that
preload the pod tier's functions before they report ready."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from gateway.wiring import runner_command
from router.scalers.local import LocalProcessScaler
from tests.support import (
    CNN_INPUT,
    AppClient,
    Encoder,
    cnn_inputs,
    cnn_model,
    encoder_inputs,
    metric,
    onnx_answers,
    require_compiled_host,
    resnet18_model,
    upload,
)
from wasm_host import compiled
from wasm_host.onnx_backend import Descriptions, ModelRef, OnnxBackend


def saved_path(backend: OnnxBackend, digest: str) -> Path:
    assert backend.optimized is not None
    return backend.optimized.path(digest)


def run(backend: OnnxBackend, ref: ModelRef, inputs: dict[str, np.ndarray]) -> tuple[list[object], str | None]:
    """The graph's answers, and the file its session was created from (None: the original model's bytes)."""
    graph = backend.load_ref(ref)
    assert graph.session is not None  # a backend without the compiled host keeps it
    return graph.run([inputs[name] for name in graph.input_names]), graph.session._model_path


def test_an_optimized_graph_is_saved_once_and_sessions_are_created_from_it(encoder: Encoder, tmp_path: Path) -> None:
    ref = ModelRef(encoder.digest, encoder.path)
    backend = OnnxBackend(optimized_dir=tmp_path / "onnx")
    assert backend.optimize(ref)
    saved = saved_path(backend, encoder.digest)
    assert saved.exists()
    assert saved.with_name(saved.name + ".data").exists()
    stamp = saved.stat().st_mtime_ns
    assert backend.optimize(ref)  # already there: not written again
    assert saved.stat().st_mtime_ns == stamp

    inputs = encoder_inputs(3, 7)
    got, source = run(backend, ref, inputs)
    assert source == str(saved)
    want = encoder.expected(inputs)
    for value, expected in zip(got, want.values(), strict=True):
        np.testing.assert_array_equal(value, expected)


def test_the_resnet_class_model_answers_the_same_from_its_optimized_graph(tmp_path: Path) -> None:
    model = resnet18_model()
    assert 45e6 < len(model) < 49e6  # ResNet-18's 11.7 M parameters
    path = tmp_path / "resnet18.onnx"
    path.write_bytes(model)
    ref = ModelRef(hashlib.sha256(model).hexdigest(), path)
    backend = OnnxBackend(optimized_dir=tmp_path / "onnx")
    inputs = cnn_inputs(2)
    (got,), source = run(backend, ref, inputs)
    assert source == str(saved_path(backend, ref.digest))
    (want,) = onnx_answers(model, inputs).values()
    # Saved at the extended level, then given this machine's layout optimizations: the same operators in
    # the same order as the original's session, so the same numbers up to float rounding.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.asarray(got).shape == (2, 1000)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage data"])
def test_a_missing_or_damaged_optimized_graph_is_written_again_and_never_fails_a_load(
    encoder: Encoder, tmp_path: Path, damage: str
) -> None:
    ref = ModelRef(encoder.digest, encoder.path)
    backend = OnnxBackend(optimized_dir=tmp_path / "onnx")
    assert backend.optimize(ref)
    saved = saved_path(backend, encoder.digest)
    data = saved.with_name(saved.name + ".data")
    if damage == "missing":
        saved.unlink()
    elif damage == "truncated":
        saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    else:
        data.write_bytes(b"\x00" * 7)

    fresh = OnnxBackend(optimized_dir=tmp_path / "onnx")
    inputs = encoder_inputs(2, 5)
    got, source = run(fresh, ref, inputs)
    for value, expected in zip(got, encoder.expected(inputs).values(), strict=True):
        np.testing.assert_array_equal(value, expected)
    assert source == str(saved)  # written again, and used
    # The rewritten copy is whole: a third process loads it as it is.
    third = OnnxBackend(optimized_dir=tmp_path / "onnx")
    assert third.optimized is not None
    assert third.optimized.open(encoder.digest, third._session) is not None


def test_a_cache_that_cannot_be_written_leaves_the_original_model_serving(encoder: Encoder, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory would go")
    backend = OnnxBackend(optimized_dir=blocked)
    ref = ModelRef(encoder.digest, encoder.path)
    assert not backend.optimize(ref)
    inputs = encoder_inputs(2, 5)
    got, source = run(backend, ref, inputs)
    assert source is None  # from the original's bytes
    for value, expected in zip(got, encoder.expected(inputs).values(), strict=True):
        np.testing.assert_array_equal(value, expected)


def compiled_backend(cache: Path) -> OnnxBackend:
    """A backend on the compiled host, as a process's Host makes it, over the saved graphs in ``cache``."""
    require_compiled_host("compiled")
    backend = OnnxBackend(optimized_dir=cache)
    backend.native = compiled.load("compiled")
    return backend


def counting_sessions(backend: OnnxBackend) -> list[object]:
    """The sources of the Python sessions ``backend`` makes from here on, as they are made."""
    made: list[object] = []
    make = backend._session

    def counted(model: bytes | str, tune: object = None) -> object:
        made.append(model)
        return make(model, tune)  # type: ignore[arg-type]

    backend._session = counted  # type: ignore[method-assign,assignment]
    return made


def test_on_the_compiled_host_a_later_load_makes_no_python_session_only_to_read_the_graph(
    encoder: Encoder, tmp_path: Path
) -> None:
    """The first load reads the descriptions from a Python session and saves them beside the optimized graph;
    the next process's load takes them from there, and makes a Python session only if Python runs the graph."""
    ref = ModelRef(encoder.digest, encoder.path)
    read = compiled_backend(tmp_path / "onnx").load_ref(ref)
    later = compiled_backend(tmp_path / "onnx")
    made = counting_sessions(later)
    graph = later.load_ref(ref)
    assert made == []
    assert graph.native is not None
    assert graph.session is None
    assert (graph.inputs, graph.outputs, graph.providers) == (read.inputs, read.outputs, read.providers)
    inputs = encoder_inputs(2, 5)
    got = graph.run([inputs[name] for name in graph.input_names])
    assert made == [str(saved_path(later, encoder.digest))]  # made now, from the saved graph
    for value, expected in zip(got, encoder.expected(inputs).values(), strict=True):
        np.testing.assert_array_equal(value, expected)


@pytest.mark.parametrize("damage", ["descriptions not JSON", "descriptions of another shape", "graph truncated"])
def test_damaged_saved_descriptions_or_graph_never_fail_a_load_on_the_compiled_host(
    encoder: Encoder, tmp_path: Path, damage: str
) -> None:
    ref = ModelRef(encoder.digest, encoder.path)
    first = compiled_backend(tmp_path / "onnx").load_ref(ref)
    saved = saved_path(compiled_backend(tmp_path / "onnx"), encoder.digest)
    descriptions = saved.with_name(saved.name + ".io.json")
    assert Descriptions.from_json(json.loads(descriptions.read_text())) == first.described
    if damage == "descriptions not JSON":
        descriptions.write_text("{")
    elif damage == "descriptions of another shape":
        descriptions.write_text(json.dumps({"inputs": [["x", 1, []]], "outputs": [], "providers": []}))
    else:
        saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])

    fresh = compiled_backend(tmp_path / "onnx")
    graph = fresh.load_ref(ref)
    assert graph.native is not None
    assert graph.described == first.described
    inputs = encoder_inputs(2, 5)
    got = graph.run([inputs[name] for name in graph.input_names])
    for value, expected in zip(got, encoder.expected(inputs).values(), strict=True):
        np.testing.assert_array_equal(value, expected)
    # Written again, whole: the next process's load takes them as they are.
    assert Descriptions.from_json(json.loads(descriptions.read_text())) == first.described
    third = compiled_backend(tmp_path / "onnx")
    made = counting_sessions(third)
    assert third.load_ref(ref).session is None
    assert made == []


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path / "data", reap_interval_s=3600.0)


@pytest.fixture
def client(settings: Settings) -> Iterator[AppClient]:
    with AppClient(create_app(settings)) as c:
        yield c


def push_cnn(client: AppClient, name: str, **doc: object) -> str:
    model = cnn_model()
    digest = upload(client, model)
    r = client.put(f"/admin/v1/functions/{name}", json={"module": None, "models": {"model": digest}, **doc})
    assert r.status_code == 201, r.text
    return digest.removeprefix("sha256:")


def cnn_body() -> dict[str, object]:
    x = cnn_inputs(1)[CNN_INPUT]
    return {"inputs": [{"name": CNN_INPUT, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def test_a_push_saves_the_optimized_graph_before_any_request(client: AppClient, settings: Settings) -> None:
    digest = push_cnn(client, "cnn")
    saved = list((settings.cache_dir / "onnx").glob(f"{digest}-*.onnx"))
    assert len(saved) == 1
    r = client.post("/v2/models/cnn/infer", json=cnn_body())
    assert r.status_code == 200, r.text
    assert r.headers["x-wasmgate-cold-start"] == "true"  # loaded at this request, from the saved graph


def test_a_push_with_min_warm_loads_the_function_before_it_returns(client: AppClient) -> None:
    push_cnn(client, "warm", pool={"min_warm": 1})
    text = client.get("/metrics").text
    assert metric(text, "wasmgate_instances", function="warm", state="warm") >= 1  # min_warm, made at the push
    r = client.post("/v2/models/warm/infer", json=cnn_body())
    assert r.status_code == 200, r.text
    assert "x-wasmgate-cold-start" not in r.headers
    assert metric(client.get("/metrics").text, "wasmgate_cold_starts_total", function="warm") == 0


def test_a_runner_preloads_the_pod_tier_functions_before_it_reports_ready(settings: Settings) -> None:
    with AppClient(create_app(settings)) as gateway:
        push_cnn(gateway, "pinned", tier="pod")
        push_cnn(gateway, "anywhere")
    with AppClient(create_app(settings, role="runner")) as runner:
        assert runner.get("/v2/health/ready").status_code == 200
        loaded = runner.portal.call(_loaded_names, runner)
        assert loaded == ["pinned"]  # the pod tier's function, and not the one the gateway serves itself
        r = runner.post("/v2/models/pinned/infer", json=cnn_body())
        assert r.status_code == 200, r.text
        assert "x-wasmgate-cold-start" not in r.headers
        assert metric(runner.get("/metrics").text, "wasmgate_cold_starts_total", function="pinned") == 0


async def _loaded_names(client: AppClient) -> list[str]:
    state = client._client._transport.app.state.wasmgate  # type: ignore[attr-defined]
    return [fn.name for fn in state.registry.loaded()]


def test_a_runner_started_for_held_requests_loads_their_function_before_it_reports_ready(
    settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    with AppClient(create_app(settings)) as gateway:
        push_cnn(gateway, "anywhere")  # not pinned to the pod tier: only being named makes a runner load it
        push_cnn(gateway, "other")
    scaler = LocalProcessScaler(runner_command(), settings.runner_env(), stop_grace_s=5)

    async def scenario() -> httpx.Response:
        async with anyio.create_task_group() as tg:
            tg.start_soon(scaler.run, lambda: None)
            await scaler.scale(1, ["anywhere"])  # what the activator asks with a request of it held
            with anyio.fail_after(120):  # only a runner that never starts takes this long
                while not scaler.ready():
                    await anyio.sleep(0.02)
            url = scaler.ready()[0].url
            async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                answer = await client.post(f"{url}/v2/models/anywhere/infer", json=cnn_body())
            tg.cancel_scope.cancel()
        await scaler.aclose()
        return answer

    answer = anyio.run(scenario)
    log = capfd.readouterr().err  # the runner's, which writes to the stderr it inherits
    assert "preloaded anywhere for its held requests" in log
    assert "preloaded other" not in log
    assert answer.status_code == 200, answer.text
    assert "x-wasmgate-cold-start" not in answer.headers  # its model was loaded before it reported ready


def test_a_deleted_functions_saved_graphs_go_once_no_function_uses_their_model(
    client: AppClient, settings: Settings
) -> None:
    shared = push_cnn(client, "one")
    assert push_cnn(client, "two") == shared
    digest = upload(client, cnn_model(seed=1)).removeprefix("sha256:")
    r = client.put("/admin/v1/functions/own", json={"module": None, "models": {"model": f"sha256:{digest}"}})
    assert r.status_code == 201, r.text
    saved = settings.cache_dir / "onnx"

    def graphs(d: str) -> int:
        return len(list(saved.glob(f"{d}-*")))

    assert graphs(shared) == graphs(digest) == 2  # the graph and its data
    assert client.delete("/admin/v1/functions/own").status_code == 200
    assert graphs(digest) == 0
    assert client.delete("/admin/v1/functions/one").status_code == 200
    assert graphs(shared) == 2  # "two" still uses it
    r = client.post("/v2/models/two/infer", json=cnn_body())
    assert r.status_code == 200, r.text
    assert client.delete("/admin/v1/functions/two").status_code == 200
    assert graphs(shared) == 0

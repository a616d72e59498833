"""A gateway process's start up to its first answer: the modules it leaves to the requests that use them, and
the cyclic collector, which the ``wasm`` command holds off while it starts and the app's lifespan resumes.

How long the start takes is measured in bench/ (``python -m bench.http_load --start-only``), never here."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.cli.main import main
from gateway.settings import Settings
from tests.support import AppClient, Digits, Gateway, infer_body, onnx_predict

#: Imported where they are used, not by a start: the pod tier's and the CLI's HTTP client (the pod tier's is made
#: on a thread ten seconds after ready, gateway.app.PREPARE_FORWARDER_AFTER_S, long after this test's gateway
#: has answered and stopped), a WebSocket protocol no endpoint speaks, and the package metadata that only
#: ``GET /v2`` reports.
LEFT_FOR_LATER = {"httpx", "websockets", "importlib.metadata"}


def imported_modules(log: Path) -> set[str]:
    """The modules a process imported, from what ``PYTHONPROFILEIMPORTTIME`` wrote to its log."""
    lines = log.read_text(errors="replace").splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:") and "|" in line}


def labels(answer: httpx.Response) -> list[int]:
    assert answer.status_code == 200, answer.text
    return {o["name"]: o["data"] for o in answer.json()["outputs"]}["label"]  # type: ignore[no-any-return]


def test_a_gateway_answers_its_first_inference_without_importing_what_only_other_requests_use(
    tmp_path: Path, digits: Digits
) -> None:
    data = tmp_path / "data"
    x = digits.x_test[:3]
    want = onnx_predict(digits.model, x)[0].tolist()
    pusher = Gateway(data, tmp_path / "push.log")
    pusher.start()
    try:
        pushed = pusher.cli("push", str(digits.path), "--name", "digits")
        assert pushed.returncode == 0, pushed.stderr
        # Served once: on the compiled host the model's descriptions are saved beside its optimized graph.
        assert labels(httpx.post(f"{pusher.url}/v2/models/digits/infer", json=infer_body(x), timeout=60)) == want
    finally:
        pusher.stop()
    # A fresh process on the data dir that holds the function, as a restart finds it.
    log = tmp_path / "start.log"
    gateway = Gateway(data, log, env={"PYTHONPROFILEIMPORTTIME": "1"})
    gateway.start()
    try:
        assert labels(httpx.post(f"{gateway.url}/v2/models/digits/infer", json=infer_body(x), timeout=60)) == want
    finally:
        gateway.stop()
    imported = imported_modules(log)
    assert {"numpy", "wasmtime", "uvicorn", "gateway.app"} <= imported, "the log holds no import profile"
    assert not LEFT_FOR_LATER & imported


@pytest.fixture
def collector_held_off() -> Iterator[None]:
    """The collector as the ``wasm`` command leaves it while a process starts; enabled again afterwards."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("collector_held_off")
def test_the_collector_runs_again_once_the_app_is_ready(tmp_path: Path) -> None:
    assert not gc.isenabled()
    with AppClient(create_app(Settings.from_env({}, data_dir=tmp_path / "data"))) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert gc.isenabled()


@pytest.mark.usefixtures("collector_held_off")
def test_a_command_that_returns_leaves_the_collector_running(refused_url: str) -> None:
    assert main(["ls", "--gateway", refused_url]) == 1  # the gateway cannot be reached: it says so and returns
    assert gc.isenabled()

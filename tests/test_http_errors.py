"""Errors: every class the product raises on purpose belongs to the one tree, drawn whole in its docstring. At
the HTTP edge, a bug (an error outside the tree) is answered 500 with a message that says the details are in the
log, and it is logged exactly once, with its traceback, by a real uvicorn server; the request after it is served
as usual."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.functions.serving import FunctionRegistry
from gateway.settings import Settings
from wasm_host import errors
from wasm_host.errors import WasmgateError


class PlantedBug(RuntimeError):
    """Raised where no wasmgate code raises anything: stands for a bug."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn server, in this process so that the test can plant a bug, on a socket bound here. Its
    log configuration is left to the root logger (``log_config=None``) so that ``caplog`` sees what uvicorn
    itself logs, "Exception in ASGI application" included."""
    app = create_app(Settings.from_env({}, data_dir=tmp_path / "data", pod_scaler="none"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield url
    finally:
        instance.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_an_unexpected_error_is_answered_500_and_logged_exactly_once(
    server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: FunctionRegistry, name: str) -> None:
        raise PlantedBug(f"planted bug looking up {name}")

    monkeypatch.setattr(FunctionRegistry, "manifest", broken)
    caplog.set_level(logging.INFO)

    r = httpx.get(f"{server}/v2/models/digits", timeout=10)

    assert r.status_code == 500
    assert r.json() == {"error": "internal error; the gateway logged the details"}
    assert "planted" not in r.text  # the cause stays in the log
    time.sleep(0.2)  # the server logs after the response has gone out
    with_cause = [rec for rec in caplog.records if rec.exc_info and isinstance(rec.exc_info[1], PlantedBug)]
    assert len(with_cause) == 1, [(rec.name, rec.getMessage()) for rec in with_cause]
    assert with_cause[0].getMessage() == "GET /v2/models/digits -> 500: unexpected error"
    assert not [rec for rec in caplog.records if "Exception in ASGI application" in rec.getMessage()]

    monkeypatch.undo()
    assert httpx.get(f"{server}/v2/models/digits", timeout=10).status_code == 404  # the gateway serves on


def test_every_error_class_is_defined_in_the_one_tree_and_drawn_in_its_docstring() -> None:
    for package in ("gateway", "router", "wasm_host"):
        for module in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            if not module.name.endswith(".__main__"):  # a command, which runs when imported
                importlib.import_module(module.name)  # so that every subclass, wherever written, exists
    classes: list[type[WasmgateError]] = []
    pending: list[type[WasmgateError]] = [WasmgateError]
    while pending:
        cls = pending.pop()
        classes.append(cls)
        pending.extend(cls.__subclasses__())
    assert len(classes) >= 15
    drawing = errors.__doc__ or ""
    for cls in classes:
        assert cls.__module__ == "wasm_host.errors", f"{cls.__qualname__} is defined in {cls.__module__}"
        assert cls.__name__ in drawing.split(), f"{cls.__name__} is missing from the drawing of the tree"

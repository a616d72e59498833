"""Shared fixtures: the digits model, guest modules built from source, and hosts with short deadlines."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import wasmtime

from gateway.cli.demo import train_digits
from wasm_host.engine import SandboxLimits
from wasm_host.guest import FunctionImage
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef

if TYPE_CHECKING:
    from tests.oci_registry import Registry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "guest_modules"))


class Digits:
    def __init__(self, model: bytes, x_test: np.ndarray, y_test: np.ndarray, path: Path) -> None:
        self.model = model
        self.x_test = x_test
        self.y_test = y_test
        self.path = path
        self.digest = hashlib.sha256(model).hexdigest()


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    model, x_test, y_test = train_digits()
    path = tmp_path_factory.mktemp("models") / "digits.onnx"
    path.write_bytes(model)
    return Digits(model, x_test, y_test, path)


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    """Every example function in guest_modules/, built from source with zig (cached between runs)."""
    import build  # guest_modules/build.py

    return dict(build.build())


@pytest.fixture(scope="session")
def hostile_guests() -> dict[str, Path]:
    """The misbehaving test functions in guest_modules/hostile/, built from source with zig (cached between
    runs); see guest_modules/hostile/README.md."""
    import build  # guest_modules/build.py

    return dict(build.build_hostile())


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(SandboxLimits(deadline_ms=200, memory_limit_bytes=16 * 1024 * 1024), tmp_path / "cache").start()
    yield h
    h.close()


def prepare_wat(host: Host, wat: str, models: dict[str, ModelRef] | None = None) -> FunctionImage:
    wasm = wasmtime.wat2wasm(wat)
    return host.prepare(bytes(wasm), hashlib.sha256(wasm).hexdigest(), models or {})


def onnx_predict(model: bytes, x: np.ndarray) -> list[Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return list(session.run(None, {session.get_inputs()[0].name: x}))


class AppClient:
    """A synchronous client for an ASGI app in this process, with its lifespan run (httpx.ASGITransport on a
    blocking anyio portal). Starlette's TestClient would do, but now wants a different httpx distribution."""

    def __init__(self, app: Any) -> None:
        import functools

        import anyio
        import httpx
        from anyio.from_thread import start_blocking_portal

        self._partial = functools.partial
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        # The lifespan runs in one task of its own, as a server runs it (it holds a task group open).
        self._started = self.portal.call(anyio.Event)
        self._stop = self.portal.call(anyio.Event)

        async def lifespan() -> None:
            async with app.router.lifespan_context(app):
                self._started.set()
                await self._stop.wait()

        self._lifespan = self.portal.start_task_soon(lifespan)
        self.portal.call(self._started.wait)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://wasmgate.test")

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.portal.call(self._partial(self._client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Any:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        self.portal.call(self._client.aclose)
        self.portal.call(self._stop.set)
        self._lifespan.result()
        self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> AppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A real OCI registry (tests/oci_registry.py) on a loopback port, plain HTTP, deletes enabled; skips when
    Debian's docker-registry is not installed. ``stop()`` and ``start()`` keep its port and storage."""
    from tests.oci_registry import Registry

    reg = Registry(tmp_path / "registry")
    reg.start()
    yield reg
    reg.stop()

"""Shared fixtures: the digits model, a BERT-shaped encoder, a BERT vocab, guest modules built from source,
hosts with short deadlines, a real OCI registry, and a URL nothing listens on. The helpers the test modules
share are in tests/support.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.cli.demo import train_digits
from tests import support
from tests.support import Digits, Encoder, encoder_model, refused_port, require_compiled_host, write_bert_vocab
from wasm_host.compiled import HOST_PATHS
from wasm_host.engine import SandboxLimits
from wasm_host.host import Host

if TYPE_CHECKING:
    from tests.oci_registry import Registry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "guest_modules"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--host-path",
        choices=HOST_PATHS,
        default="auto",
        help="the host path end-to-end gateways run on (the tests taking the host fixture run on both)",
    )


def pytest_configure(config: pytest.Config) -> None:
    support.E2E_HOST_PATH = config.getoption("--host-path")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    model, x_test, y_test = train_digits()
    path = tmp_path_factory.mktemp("models") / "digits.onnx"
    path.write_bytes(model)
    return Digits(model, x_test, y_test, path)


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    """A tiny BERT-shaped model (tests.support.encoder_model): outputs with more than one dynamic dim."""
    model = encoder_model()
    path = tmp_path_factory.mktemp("models") / "encoder.onnx"
    path.write_bytes(model)
    return Encoder(model, path)


@pytest.fixture(scope="session")
def bert_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT vocab.txt built from tests.support.BERT_CORPUS (no download), for the text_embed example."""
    return write_bert_vocab(tmp_path_factory.mktemp("bert") / "vocab.txt")


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


@pytest.fixture(params=["python", "compiled"])
def host_path(request: pytest.FixtureRequest) -> str:
    """Each host path in turn (wasm_host.compiled): the tests that take a host run on both. The compiled one is
    skipped, saying so, where the extension is not built (``pytest --host-path=compiled`` makes the end-to-end
    tests fail there instead)."""
    require_compiled_host(request.param)
    return str(request.param)


@pytest.fixture
def host(tmp_path: Path, host_path: str) -> Iterator[Host]:
    limits = SandboxLimits(deadline_ms=200, memory_limit_bytes=16 * 1024 * 1024)
    h = Host(limits, tmp_path / "cache", host_path=host_path).start()
    yield h
    h.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL where connections are refused for the whole test: its port is bound and held, never
    listened on (tests.support.refused_port)."""
    with refused_port() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A real OCI registry (tests/oci_registry.py) on a loopback port, plain HTTP, deletes enabled; skips when
    Debian's docker-registry is not installed. ``stop()`` and ``start()`` keep its port and storage."""
    from tests.oci_registry import Registry

    reg = Registry(tmp_path / "registry")
    reg.start()
    yield reg
    reg.stop()

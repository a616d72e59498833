"""Running the app under uvicorn, in one process or several.

With ``workers > 1`` uvicorn's supervisor starts the workers with ``spawn`` (never ``fork`` after start-up: a
forked copy of a process with wasmtime's and onnxruntime's threads is not safe). Each worker builds its own
app from the environment, so ``serve`` first writes the complete settings into ``WASMGATE_*`` variables, and
points prometheus-client's multi-process mode at a fresh shared directory so that ``/metrics`` on any worker
reports all of them. Workers share the store and the compile cache on disk; each has its own pools.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from gateway.app import create_app
from gateway.settings import MULTIPROC_ENV, Settings


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def uvicorn_server(settings: Settings) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(create_app(settings), **_uvicorn_options(settings)))


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }


def tcp_listener(host: str, port: int) -> socket.socket:
    """The listening socket the workers share, made as ``IPPROTO_TCP`` explicitly.

    uvicorn's own (``socket.socket(AF_INET)``) carries protocol 0, and asyncio enables TCP_NODELAY only on
    connections whose socket says IPPROTO_TCP; the workers' connections then wait on Nagle's algorithm and
    delayed ACKs, about 40 ms per response (measured: 23 req/s at concurrency 1, for any app).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def app_from_env() -> Starlette:
    """The app of one worker process, from the settings its parent exported (uvicorn's ``factory``)."""
    settings = Settings.from_env()
    configure_logging(settings)
    tune_interpreter(settings)
    return create_app(settings)


def tune_interpreter(settings: Settings) -> None:
    """Process-wide interpreter settings for serving. Guests run on worker threads while the event loop
    handles sockets; with CPython's default 5 ms GIL switch interval the loop thread, after each syscall,
    can wait that long for a guest thread's host code to yield the GIL. 1 ms measured about 1.5x the
    throughput of the default on one core (bench/http_load.py)."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)


def serve(settings: Settings) -> None:
    configure_logging(settings)
    tune_interpreter(settings)
    if settings.workers <= 1:
        uvicorn_server(settings).run()
        return
    metrics_dir = tempfile.mkdtemp(prefix="wasmgate-metrics-")
    os.environ.update(settings.to_env())
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        config = uvicorn.Config(
            "gateway.server:app_from_env", factory=True, workers=settings.workers, **_uvicorn_options(settings)
        )
        Multiprocess(config, sockets=[tcp_listener(settings.host, settings.port)]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)

"""Running the app under uvicorn, in one process or several; ``wasm serve``'s app also serves OIP v2 over gRPC
(``gateway.oip_grpc``, started from the app's lifespan on uvicorn's event loop).

With ``workers > 1`` uvicorn's supervisor starts the workers with ``spawn`` (never ``fork`` after start-up: a
forked copy of a process with wasmtime's and onnxruntime's threads is not safe). Each worker builds its own
app from the environment, so ``serve`` first writes the complete settings into ``WASMGATE_*`` variables, and
points prometheus-client's multi-process mode at a fresh shared directory so that ``/metrics`` on any worker
reports all of them. Workers share the store and the compile cache on disk; each has its own pools.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from gateway.app import create_app
from gateway.auth import check_bind
from gateway.settings import MULTIPROC_ENV, Settings
from gateway.state import Role
from router.sockets import tcp_listener


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request it makes at INFO: the pod tier's forwards and health checks would flood the log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def uvicorn_server(
    settings: Settings, role: Role = "gateway", preload: Sequence[str] = (), serve_grpc: bool = False
) -> uvicorn.Server:
    app = create_app(settings, role, preload, serve_grpc)
    return uvicorn.Server(uvicorn.Config(app, **_uvicorn_options(settings)))


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        **event_loop_options(),
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        # Nothing here reads the client's address or scheme, so X-Forwarded-* need no rewriting on every request;
        # and a response does not advertise the server software.
        "proxy_headers": False,
        "server_header": False,
        # No endpoint is a WebSocket: without a WebSocket protocol uvicorn does not import one (the websockets
        # package, about 20 ms of every start). A WebSocket handshake, which Starlette refused, is now answered as the
        # plain HTTP request it also is (its route's usual answer), and uvicorn logs a warning for it.
        "ws": "none",
        # On SIGTERM uvicorn stops accepting, lets in-flight requests finish for this long, then closes.
        "timeout_graceful_shutdown": settings.drain_timeout_s,
    }


def event_loop_options() -> dict[str, Any]:
    """uvloop's event loop and httptools' HTTP parser where they are installed (Linux: core dependencies), for
    the CPU they save on every request, the latter writing each response in one system call
    (``gateway.http_protocol``); asyncio's loop and h11 otherwise, which serve the same."""
    http: Any = "h11"
    if importlib.util.find_spec("httptools"):
        from gateway.http_protocol import HttpProtocol  # imports httptools

        http = HttpProtocol
    return {"loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio", "http": http}


def app_from_env() -> Starlette:
    """The app of one worker process, from the settings its parent exported (uvicorn's ``factory``)."""
    settings = Settings.from_env()
    configure_logging(settings)
    tune_interpreter(settings)
    return create_app(settings, serve_grpc=True)


def tune_interpreter(settings: Settings) -> None:
    """Process-wide interpreter settings for serving. Guests run on worker threads while the event loop
    handles sockets; with CPython's default 5 ms GIL switch interval the loop thread, after each syscall,
    can wait that long for a guest thread's host code to yield the GIL. 1 ms measured about 1.5x the
    throughput of the default on one core (bench/http_load.py)."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)


def serve_runner(
    settings: Settings, fd: int | None = None, parent_pid: int | None = None, preload: Sequence[str] = ()
) -> None:
    """Run a pod-tier runner: one process, on the listening socket ``fd`` when given (the local scaler binds
    it), else on ``host:port``. With ``parent_pid`` the runner stops itself, as on SIGTERM, once it is no
    longer that process's child, so a killed gateway leaves no runners behind. ``preload`` names functions
    to load before it reports ready, besides those pinned to the pod tier (see ``create_app``)."""
    configure_logging(settings)
    tune_interpreter(settings)
    server = uvicorn_server(settings, "runner", preload)
    if parent_pid is not None:
        _watch_parent(server, parent_pid)
    sockets = [socket.socket(fileno=fd)] if fd is not None else None
    server.run(sockets=sockets)


def _watch_parent(server: uvicorn.Server, parent: int) -> None:
    # The parent's pid comes from the parent itself: one read here could already see the reaper that
    # adopted this process, if the parent died while this one was still starting.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        logging.getLogger("wasmgate").warning("parent process %d is gone; draining and exiting", parent)
        server.should_exit = True

    threading.Thread(target=watch, name="wasmgate-parent-watch", daemon=True).start()


def serve(settings: Settings) -> None:
    check_bind(settings)
    if settings.grpc_port and settings.grpc_port == settings.port:
        raise ValueError(
            f"WASMGATE_GRPC_PORT={settings.grpc_port} is also the HTTP port: give gRPC another (--grpc-port), "
            "or 0 for none"
        )
    configure_logging(settings)
    tune_interpreter(settings)
    if settings.workers <= 1:
        uvicorn_server(settings, serve_grpc=True).run()
        return
    metrics_dir = tempfile.mkdtemp(prefix="wasmgate-metrics-")
    os.environ.update(settings.to_env())
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        config = uvicorn.Config(
            "gateway.server:app_from_env", factory=True, workers=settings.workers, **_uvicorn_options(settings)
        )
        gc.enable()  # held off by the `wasm` command while it started; this process has no app to resume them
        Multiprocess(config, sockets=[tcp_listener(settings.host, settings.port)]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)

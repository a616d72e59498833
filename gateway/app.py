"""The app factory: ``create_app(settings)`` wires the store, the sandbox host and the tiers in its lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from gateway import admin, oip
from gateway.errors import EXCEPTION_HANDLERS
from gateway.functions import FunctionRegistry
from gateway.settings import Settings
from gateway.state import AppState
from gateway.store import LocalStore
from router.wasm_tier import WasmTier
from wasm_host.host import Host

log = logging.getLogger("wasmgate")


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = LocalStore(settings.data_dir)
        store.prune_uploads()
        host = Host(settings.sandbox, settings.cache_dir, settings.ort_intra_op_threads).start()
        state = AppState(
            settings=settings,
            store=store,
            host=host,
            registry=FunctionRegistry(store, host, settings),
            wasm=WasmTier(settings.worker_threads),
        )
        app.state.wasmgate = state
        state.ready = True
        log.info("wasmgate ready: data dir %s", settings.data_dir)
        try:
            yield
        finally:
            state.ready = False
            host.close()

    return Starlette(
        routes=[*oip.ROUTES, *admin.ROUTES],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )

"""The app factory: ``create_app(settings)`` wires the store, the sandbox host, the pools and the tiers in its
lifespan, and runs the background work: pre-warming functions with ``min_warm``, and the reaper that scales
idle functions down (to zero when ``min_warm`` is 0)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
from starlette.applications import Starlette

from gateway import admin, oip
from gateway.errors import EXCEPTION_HANDLERS
from gateway.functions import FunctionRegistry
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.state import AppState
from gateway.store import LocalStore
from router.wasm_tier import WasmTier
from wasm_host.host import Host
from wasm_host.pool import Warmer

log = logging.getLogger("wasmgate")


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = LocalStore(settings.data_dir)
        store.prune_uploads()
        host = Host(settings.sandbox, settings.cache_dir, settings.ort_intra_op_threads).start()
        metrics = Metrics(settings.metrics_multiproc_dir)
        warmer = Warmer()
        registry = FunctionRegistry(store, host, settings, warmer=warmer, observer=metrics)
        state = AppState(
            settings, store, host, registry, WasmTier(settings.worker_threads, settings.inline_below_ms), metrics
        )
        app.state.wasmgate = state
        await anyio.to_thread.run_sync(registry.prewarm)
        # Everything made so far lives as long as the process: keep it out of every later collection, so a
        # full collection (which can land in any request) walks only what requests allocate.
        gc.freeze()
        state.ready = True
        log.info("wasmgate ready (pid %d): data dir %s", os.getpid(), settings.data_dir)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_reaper, state)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            state.ready = False
            metrics.close()
            warmer.close()
            host.close()

    return Starlette(
        routes=[*oip.ROUTES, *admin.ROUTES],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


async def _reaper(state: AppState) -> None:
    """Scale idle functions down, and sample the pools into the metrics, every ``reap_interval_s``."""
    while True:
        await anyio.sleep(state.settings.reap_interval_s)
        try:
            for name in await anyio.to_thread.run_sync(state.registry.reap):
                state.metrics.scale_to_zero.labels(name).inc()
                log.info("scaled %s to zero", name)
            # With several workers a scrape reaches one of them; the others' gauges come from this sample.
            state.metrics.sample(state.registry.pools())
        except Exception:  # the reaper must outlive any one bad function
            log.exception("reaping idle functions failed")

"""The app factory: ``create_app(settings)`` wires the store, the sandbox host, the pools and the tiers in its
lifespan, and runs the background work: pre-warming functions with ``min_warm``, the reaper that scales
idle functions down (to zero when ``min_warm`` is 0), and with a registry store the sync of its cache."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import admin, oip, openai_api, triton_api
from gateway.dispatch import Dispatcher
from gateway.functions.push import Publisher
from gateway.functions.serving import FunctionRegistry
from gateway.http_errors import EXCEPTION_HANDLERS, UnexpectedErrors
from gateway.lean import GatewayApp
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.state import AppState, Role
from gateway.store.local import LocalStore
from gateway.wiring import has_accelerators, make_pod_tier, thresholds
from router.deadlines import Deadlines
from router.latency import ServiceTimes
from router.wasm_tier import WasmTier
from wasm_host.host import Host
from wasm_host.pool import Warmer
from wasm_host.providers import CPU, choose_providers

if TYPE_CHECKING:  # imported when a registry store is used, see create_app
    from gateway.store.registry import RegistryStore

log = logging.getLogger("wasmgate")

#: How long after it is ready a gateway makes its forwarder's client (router.forward.Forwarder.prepare): past a
#: start's first requests, and mostly before a pod tier at zero has its first runner up.
PREPARE_FORWARDER_AFTER_S = 10.0


def create_app(
    settings: Settings, role: Role = "gateway", preload: Sequence[str] = (), serve_grpc: bool = False
) -> Starlette:
    """The app of a gateway, or (``role="runner"``) of a pod-tier runner: the same OIP v2 endpoints on the same
    engine, without the admin API or a pod tier of its own, and with the node's execution providers.

    Before it reports ready, the app loads every function with ``min_warm`` > 0; a runner also loads the
    functions pinned to the pod tier and those named in ``preload`` (the functions whose held requests it was
    started for, passed by the local scaler), first named first.

    With ``serve_grpc`` (``wasm serve``), a gateway also serves the OIP v2 gRPC service on ``grpc_port`` (when not
    0) from its lifespan, on the same event loop, before it reports ready; it stops it, letting calls in flight
    finish for up to ``drain_timeout_s``, when the lifespan ends."""
    # Bad settings fail here, at start, with the setting's name: not in the lifespan, not at the first request.
    accelerated = False
    if role == "gateway" and settings.store:
        # Imported only for a registry store: OCI and TLS code a runner, or a gateway on a local store, never
        # runs, and whose import a runner's start would pay for.
        from gateway.store.registry import registry_client

        client = registry_client(settings)  # a bad store URL fails here
    else:
        client = None
    if role == "gateway":
        providers = [CPU]  # the gateway's own tier is the CPU tier
        accelerated = has_accelerators(settings, ort.get_available_providers())
    else:
        # A runner reads the store as a local one: the gateway's cache on this machine, or what it fetches
        # from the gateway (runner_source_url).
        providers = choose_providers(settings.execution_providers, ort.get_available_providers())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        remote: RegistryStore | None = None
        if client is None:
            store = LocalStore(settings.data_dir)
        else:
            from gateway.store.registry import registry_store  # see the import of registry_client above

            store = remote = registry_store(settings, client)
        if role == "gateway":
            store.prune_uploads()
        # A runner's sandbox holds guests to the pod tier's deadline; everything else in its limits is the same.
        sandbox = settings.sandbox if role == "gateway" else settings.runner_sandbox
        host = Host(sandbox, settings.cache_dir, settings.ort_intra_op_threads, providers, settings.host_path).start()
        metrics = Metrics(settings.metrics_multiproc_dir)
        metrics.providers(providers)
        warmer = Warmer()
        source = None
        if role == "runner" and settings.runner_source_url:
            from gateway.store.source import GatewaySource  # httpx: loaded only where it is used

            source = GatewaySource(settings.runner_source_url, store, settings.max_blob_bytes, settings.admin_token)
        budget = settings.model_memory_budget_mb if role == "runner" else settings.wasm_model_memory_budget_mb
        registry = FunctionRegistry(
            store,
            host,
            settings,
            warmer=warmer,
            observer=metrics,
            source=source,
            memory_budget_mb=budget,
            lent_idle_s=settings.wasm_lent_idle_timeout_s,
        )
        publisher = Publisher(store, host, settings, registry)
        sync = None
        if remote is not None:
            from gateway.store.sync import RegistrySync

            sync = RegistrySync(remote, publisher.validate, metrics, settings.registry_sync_interval_s)
            # Start from what the registry holds when it answers; from the cache alone when it does not.
            await anyio.to_thread.run_sync(lambda: sync.once(report=sync.lead()))
        times = ServiceTimes(settings.spill_batch_rows)
        deadlines = Deadlines.wasm(sandbox.deadline_ms) if role == "gateway" else Deadlines.pod(sandbox.deadline_ms)
        wasm = WasmTier(settings.worker_threads, settings.inline_below_ms, deadlines, registry, times)
        pods, activator, dispatcher = None, None, None
        if role == "gateway":
            pods, activator = make_pod_tier(settings, metrics, times)
            dispatcher = Dispatcher(
                wasm,
                pods,
                times,
                metrics,
                thresholds(settings),
                accelerated,
                settings.max_body_bytes,
                settings.sandbox.max_tensor_bytes,
                settings.max_response_bytes,
            )
            # In the gateway, a function whose home is the pod tier is only lent to this process: the reaper
            # lets it go soon after its requests stop coming here.
            home = dispatcher.home_tier
            registry.at_home = lambda manifest: home(manifest) == "wasm"
        state = AppState(settings, store, host, registry, publisher, wasm, metrics, role, dispatcher)
        app.state.wasmgate = state
        await anyio.to_thread.run_sync(lambda: registry.prewarm(pod_tier=role == "runner", named=preload))
        grpc_server = None
        if serve_grpc and role == "gateway" and settings.grpc_port:
            # Imported only here: a runner, and the apps of tests and the demo, never load gRPC.
            from gateway.oip_grpc.service import start_grpc

            grpc_server = await start_grpc(state)
        # Everything made so far lives as long as the process: keep it out of every later collection, so a
        # full collection (which can land in any request) walks only what requests allocate. The `wasm` command
        # holds collections off while the process starts (gateway.cli.main): they resume here.
        gc.freeze()
        gc.enable()
        state.ready = True
        prepare = None
        if pods is not None:
            # The forwarder's client, off the event loop and after the first requests of a start (see
            # Forwarder.prepare); called off at shutdown if it has not run.
            prepare = threading.Timer(PREPARE_FORWARDER_AFTER_S, pods.forwarder.prepare)
            prepare.daemon = True
            prepare.start()
        log.info(
            "wasmgate %s ready (pid %d): data dir %s, providers %s", role, os.getpid(), settings.data_dir, providers
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_reaper, state)
                if activator is not None:
                    tg.start_soon(activator.run)
                if sync is not None:
                    tg.start_soon(sync.run)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            state.ready = False
            if prepare is not None:
                prepare.cancel()
                prepare.join()  # a client it is making now is closed below with the others
            with anyio.CancelScope(shield=True):
                if grpc_server is not None:
                    await grpc_server.stop(settings.drain_timeout_s)
                if pods is not None:
                    await pods.aclose()
                if source is not None:
                    source.close()
                if sync is not None:
                    sync.close()
                if client is not None:
                    client.close()
            metrics.close()
            warmer.close()
            host.close()

    if role == "gateway":
        routes = [*oip.ROUTES, *triton_api.ROUTES, *openai_api.ROUTES, *admin.ROUTES]
    else:  # a runner serves OIP v2 alone: the gateway has translated any other protocol into it
        routes = [*oip.ROUTES, *oip.RUNNER_ROUTES]
    # The document describes every endpoint module, so it is served from here, above them all.
    routes.append(Route("/openapi.json", _openapi_json))
    return GatewayApp(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(UnexpectedErrors)],
        lifespan=lifespan,
    )


async def _reaper(state: AppState) -> None:
    """Scale idle functions down, warm those whose ``min_warm`` was raised, and sample the pools into the
    metrics, every ``reap_interval_s``: pool settings changed through any worker apply within one interval."""
    while True:
        await anyio.sleep(state.settings.reap_interval_s)
        try:
            for name in await anyio.to_thread.run_sync(state.registry.reap):
                state.metrics.scale_to_zero.labels(name).inc()
                log.info("scaled %s to zero", name)
            await anyio.to_thread.run_sync(state.registry.prewarm_changed)
            # With several workers a scrape reaches one of them; the others' gauges come from this sample.
            state.metrics.sample(state.registry.pools())
        except Exception:  # the reaper must outlive any one bad function
            log.exception("reaping idle functions failed")


async def _openapi_json(request: Request) -> Response:
    # The document's builder is imported at its first request, not at start: every runner starts without it.
    from gateway import openapi

    return await openapi.openapi_json(request)

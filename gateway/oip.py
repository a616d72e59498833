"""Open Inference Protocol v2 endpoints. Handlers are thin: parse, look up, run, encode."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope

from gateway.auth import check_inference
from gateway.codec import HEADER_LENGTH, parse_request
from gateway.dispatch import HttpCall
from gateway.http_errors import status_of
from gateway.requests import header_map, read_body, receive_body
from gateway.responses import InferResponse
from gateway.state import AppState, state_in, state_of
from gateway.store.manifest import Manifest
from wasm_host.errors import InvalidRequest, NotFound, WasmgateError

#: What ``GET /v2`` lists: Triton's binary tensors everywhere; its model configuration and repository
#: extensions (gateway.triton_api) in a gateway, not in a runner, which serves what its gateway sends it.
EXTENSIONS = ["binary_tensor_data"]
GATEWAY_EXTENSIONS = [*EXTENSIONS, "model_configuration", "model_repository"]
PLATFORMS = {"passthrough": "onnxruntime_onnx", "custom": "wasmgate_wasm", "external": "wasmgate_endpoint"}


async def lookup(state: AppState, request: Request) -> Manifest:
    """The function's current manifest, checked against a version in the path and the caller's token. Loads
    nothing."""
    manifest = state.registry.manifest(request.path_params["name"])
    admit(state, manifest, request.path_params.get("version"), request.headers)
    return manifest


def admit(state: AppState, manifest: Manifest, version: str | None, headers: Mapping[str, str]) -> None:
    """The version asked for (None: any), must be the current one, and a gateway's caller must hold the
    function's token in ``headers`` (a runner serves only what its gateway admitted). Every protocol's requests
    are admitted here: HTTP's by their path and headers, gRPC's (``gateway.oip_grpc``) by their fields and
    metadata."""
    check_version(manifest, version)
    if state.role == "gateway":
        check_inference(state.settings, manifest, headers)


def check_version(manifest: Manifest, wanted: str | None) -> None:
    if wanted is not None and wanted != str(manifest.version):
        raise NotFound(f"function {manifest.name!r} has no version {wanted!r} (current: {manifest.version})")


async def live(request: Request) -> Response:
    """200 ``{"live": true}``: the body KServe's client reads; Triton's reads the status alone."""
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    """200 ``{"ready": true}`` once the app has started; while it starts or drains, 503 ``{"ready": false}``
    (as KServe's own server answers; OIP asks for an error status, and any client or probe reads one as not
    ready), with ``Retry-After``."""
    if state_of(request).ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False}, status_code=503, headers={"Retry-After": "1"})


async def server_metadata(request: Request) -> Response:
    """OIP server metadata, plus what this process is (``role``) and the onnxruntime execution providers its
    sessions are created with, best first (a runner's choice by what the node has)."""
    # Imported here, by the one request that asks: importlib.metadata (with email, zipfile and csv) cost about
    # 10 ms of every start.
    from importlib.metadata import version

    state = state_of(request)
    return JSONResponse(
        {
            "name": "wasmgate" if state.role == "gateway" else "wasmgate-runner",
            "version": version("wasmgate"),
            "extensions": GATEWAY_EXTENSIONS if state.role == "gateway" else EXTENSIONS,
            "role": state.role,
            "execution_providers": state.host.backend.providers,
            "execution_providers_in_use": state.host.backend.providers_in_use(),
        }
    )


async def model_metadata(request: Request) -> Response:
    m = await lookup(state_of(request), request)
    return JSONResponse(
        {
            "name": m.name,
            "versions": [str(m.version)],
            "platform": PLATFORMS[m.kind],
            "inputs": [s.to_json() for s in m.inputs or []],
            "outputs": [s.to_json() for s in m.outputs or []],
        }
    )


async def model_ready(request: Request) -> Response:
    """Ready when the function exists. A Wasm-tier function loads on demand in milliseconds and a pod-tier
    one is held while replicas start, so neither makes a caller wait for an explicit load."""
    m = await lookup(state_of(request), request)
    return JSONResponse({"name": m.name, "ready": True})


async def infer(request: Request) -> Response:
    """The infer route's handler on Starlette's path; ``gateway.lean`` calls :func:`infer_asgi` directly."""
    return await infer_asgi(request.scope, request.receive)


async def infer_asgi(scope: Scope, receive: Receive) -> Response:
    """The infer route's handler, from the request's ASGI scope (with its ``path_params``) and channel."""
    path = scope["path_params"]
    return await serve_infer(state_in(scope), path["name"], path.get("version"), header_map(scope), receive)


async def serve_infer(
    state: AppState, name: str, version: str | None, headers: Mapping[str, str], receive: Receive
) -> Response:
    """Serve one inference request of function ``name`` (``version``: the one in the path, if any), its headers
    ``headers`` (``gateway.requests.header_map``) and its body read from the ASGI channel ``receive``."""
    if state.dispatcher is None:  # a runner
        return await infer_here(state, name, version, headers, receive)
    manifest, fn = state.registry.current(name)  # the one lookup
    admit(state, manifest, version, headers)
    return await state.dispatcher.infer(receive, headers, manifest, fn)


async def infer_here(
    state: AppState, name: str, wanted: str | None, headers: Mapping[str, str], receive: Receive
) -> Response:
    """A runner serves what it is sent on its own engine, loading (or fetching) the version it is asked for."""
    registry = state.registry
    fn = registry.get_loaded(name)
    if fn is None or (wanted is not None and wanted != str(fn.manifest.version)):
        version = int(wanted) if wanted is not None and wanted.isdigit() else None
        fn = await anyio.to_thread.run_sync(registry.get_version, name, version)
    check_version(fn.manifest, wanted)
    tier = state.wasm.name
    started = time.perf_counter()
    status = 500
    cold = False
    try:
        body = await receive_body(receive, headers, state.settings.max_body_bytes)
        req = parse_request(body, headers.get(HEADER_LENGTH), state.settings.sandbox.max_tensor_bytes)
        outcome, _ = await state.wasm.serve(fn, HttpCall(body, headers, req, state.settings.max_response_bytes))
        status, cold = outcome.status, outcome.cold
    except WasmgateError as exc:
        status = status_of(exc)
        exc.headers = {"x-wasmgate-tier": tier}  # as its answers say, errors too
        raise
    finally:
        state.metrics.observe_request(fn.name, tier, status, time.perf_counter() - started, cold)
    answer_headers = {**outcome.headers, "x-wasmgate-tier": tier}
    if cold:
        answer_headers["x-wasmgate-cold-start"] = "true"
    return InferResponse(outcome.body, 200, answer_headers)


async def load_model(request: Request) -> Response:
    """OIP v2's model repository extension, on a runner: load a function now (the version in the body's
    ``parameters.version``, else the current one), fetching it from the source if needed, so that its first
    request does not wait for the load. The gateway calls it while it masks a cold start (router.pod_tier)."""
    state = state_of(request)
    body = await read_body(request, 64 * 1024)
    version = _load_version(body)
    fn = await anyio.to_thread.run_sync(state.registry.get_version, request.path_params["name"], version)
    return JSONResponse({"name": fn.name, "version": str(fn.manifest.version)})


def _load_version(body: bytes) -> int | None:
    if not body.strip():
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    parameters = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(parameters, dict):
        raise InvalidRequest('a load request\'s body must be a JSON object, e.g. {"parameters": {"version": "3"}}')
    raw = parameters.get("version")
    if raw is None:
        return None
    if isinstance(raw, bool) or not str(raw).isdigit():
        raise InvalidRequest(f"parameters.version {str(raw)[:20]!r} must be a version number")
    return int(raw)


async def metrics(request: Request) -> Response:
    state = state_of(request)
    m = state.metrics
    m.sample(state.registry.pools())
    return Response(await anyio.to_thread.run_sync(m.render), media_type=m.content_type)


ROUTES = [
    # Infer first: routes are matched in order, and it is the route that carries the traffic.
    Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    Route("/v2/health/live", live),
    Route("/v2/health/ready", ready),
    Route("/v2", server_metadata),
    Route("/v2/models/{name}", model_metadata),
    Route("/v2/models/{name}/versions/{version}", model_metadata),
    Route("/v2/models/{name}/ready", model_ready),
    Route("/v2/models/{name}/versions/{version}/ready", model_ready),
    Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    Route("/metrics", metrics),
]

#: A runner's own: the gateway asks it to load a function ahead of its requests.
RUNNER_ROUTES = [Route("/v2/repository/models/{name}/load", load_model, methods=["POST"])]

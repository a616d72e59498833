"""Open Inference Protocol v2 endpoints. Handlers are thin: parse, look up, run, encode."""

from __future__ import annotations

import time
from importlib.metadata import version

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.codec import HEADER_LENGTH, encode_response, parse_request, select_outputs
from gateway.errors import status_of
from gateway.functions import FunctionRegistry, LoadedFunction, bind_inputs
from gateway.state import AppState
from wasm_host.errors import InvalidRequest, NotFound, TooLarge, WasmgateError

EXTENSIONS = ["binary_tensor_data"]


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.wasmgate
    return state


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) past ``limit`` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds {limit} (setting max_body_bytes)")
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise InvalidRequest(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds {limit} bytes (setting max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def lookup(registry: FunctionRegistry, request: Request) -> LoadedFunction:
    name = request.path_params["name"]
    # A loaded, unchanged function costs one stat(); only a load (a cold start) goes to a thread.
    fn = registry.get_loaded(name)
    if fn is None:
        fn = await anyio.to_thread.run_sync(registry.get, name)
    wanted = request.path_params.get("version")
    if wanted is not None and wanted != str(fn.manifest.version):
        raise NotFound(f"function {name!r} has no version {wanted!r} (current: {fn.manifest.version})")
    return fn


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if state_of(request).ready else 503)


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "wasmgate", "version": version("wasmgate"), "extensions": EXTENSIONS})


async def model_metadata(request: Request) -> Response:
    fn = await lookup(state_of(request).registry, request)
    m = fn.manifest
    return JSONResponse(
        {
            "name": m.name,
            "versions": [str(m.version)],
            "platform": "onnxruntime_onnx" if m.kind == "passthrough" else "wasmgate_wasm",
            "inputs": [s.to_json() for s in m.inputs or []],
            "outputs": [s.to_json() for s in m.outputs or []],
        }
    )


async def model_ready(request: Request) -> Response:
    await lookup(state_of(request).registry, request)
    return Response(status_code=200)


async def infer(request: Request) -> Response:
    state = state_of(request)
    fn = await lookup(state.registry, request)
    cold, fn.cold = fn.cold, False
    backend = state.wasm.name
    started = time.perf_counter()
    fn.last_used = time.monotonic()
    status = 500
    try:
        body = await read_body(request, state.settings.max_body_bytes)
        req = parse_request(body, request.headers.get(HEADER_LENGTH), state.settings.sandbox.max_tensor_bytes)
        inputs = bind_inputs(fn.name, fn.manifest.inputs, req.inputs)
        produced = await state.wasm.infer(fn.admission, fn.pool, inputs, fn.manifest.outputs or [])
        payload, headers = encode_response(fn.name, str(fn.manifest.version), req, select_outputs(produced, req))
        status = 200
    except WasmgateError as exc:
        status = status_of(exc)
        raise
    finally:
        fn.last_used = time.monotonic()
        state.metrics.observe_request(fn.name, backend, status, time.perf_counter() - started, cold)
    extra = {"x-wasmgate-tier": backend}
    if cold:
        extra["x-wasmgate-cold-start"] = "true"
    return Response(payload, headers={**headers, **extra})


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

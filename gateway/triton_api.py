"""Triton's model configuration and model repository extensions, for clients written against Triton
(``tritonclient``'s ``get_model_config``, ``get_model_repository_index``, ``load_model``, ``unload_model``).

- ``GET /v2/models/{name}[/versions/{v}]/config``: a Triton model configuration derived from the function's
  signature (:func:`model_config`). Same token as the function's metadata.
- ``POST /v2/repository/index``: every function the caller's token opens (as ``GET /v1/models`` lists them),
  with its version and a state: ``READY`` when this gateway process holds it loaded (or an endpoint serves it),
  ``UNAVAILABLE`` with a reason otherwise. UNAVAILABLE here means *at zero*, not unservable: the function's
  ``/ready`` still answers 200, and its next request loads it (a cold start). ``{"ready": true}`` lists only
  the READY ones.
- ``POST /v2/repository/models/{name}/load``: prewarm. A function with ``min_warm`` 0 gets ``min_warm`` 1 (a
  pool change, not a new version, which every worker and runner follows), and, when it lives in the gateway,
  is loaded with its instances made before the answer. A function whose home is the pod tier is loaded by
  each runner that comes up (the gateway loads nothing for it).
- ``POST /v2/repository/models/{name}/unload``: scale to zero. ``min_warm`` becomes 0 and this process unloads
  the function now (the reaper's scale to zero, counted in ``wasmgate_scale_to_zero_total``); other workers let
  it go at their idle timeout. It stays servable: its next request loads it again.

Load and unload change what the gateway holds, so they need the admin token, as the admin API does. Triton's
load may carry a new configuration or model files; wasmgate loads only what was pushed (``wasm push``), so a
load with either is refused with 400.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import check_admin, may_infer
from gateway.oip import PLATFORMS, lookup
from gateway.requests import json_object, read_body
from gateway.state import AppState, state_of
from gateway.store.manifest import Manifest, check_name
from wasm_host.errors import InvalidRequest
from wasm_host.tensors import DTYPES, DYNAMIC, TensorSpec

#: A function's state in the repository index (Triton's names for the two it can be in here).
State = Literal["READY", "UNAVAILABLE"]
#: Triton's data types by OIP datatype: ``TYPE_`` and the name, except that Triton calls BYTES a string.
TRITON_TYPES = {name: "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}" for name in DTYPES}
#: The backend Triton would name for each kind of function (its ``platform`` is the metadata's).
BACKENDS = {"passthrough": "onnxruntime", "custom": "wasmgate", "external": "wasmgate"}
#: Triton's ``max_batch_size`` is an int32.
MAX_BATCH = 2**31 - 1
#: The least bytes one BYTES element takes: its 4-byte length.
MIN_BYTES_ELEMENT = 4
MAX_REPOSITORY_BODY = 64 * 1024


def batched(manifest: Manifest) -> bool:
    """Whether the function batches as Triton means it: it has inputs, and every input and output has a
    dynamic first dimension, the rows of one request."""
    specs = [*(manifest.inputs or []), *(manifest.outputs or [])]
    return bool(manifest.inputs) and all(s.shape and s.shape[0] == DYNAMIC for s in specs)


def max_batch_size(inputs: list[TensorSpec], max_tensor_bytes: int) -> int:
    """The most rows one request may carry: the rows of the input whose smallest row (its dynamic dimensions
    at 1, a BYTES element at its 4-byte length) is largest that fit ``max_tensor_bytes``. An upper bound, as
    Triton's ``max_batch_size`` is."""
    rows = MAX_BATCH
    for spec in inputs:
        row = DTYPES[spec.datatype].size or MIN_BYTES_ELEMENT
        for dim in spec.shape[1:]:
            row *= max(dim, 1)
        rows = min(rows, max_tensor_bytes // row)
    return max(rows, 1)


def _tensor(spec: TensorSpec, batch: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batch else spec.shape)
    doc: dict[str, Any] = {"name": spec.name, "data_type": TRITON_TYPES[spec.datatype], "dims": dims}
    if not dims:  # Triton's way to write a tensor of the batch dimension alone (or a scalar): [1], reshaped
        doc["dims"] = [1]
        doc["reshape"] = {"shape": []}
    return doc


def model_config(manifest: Manifest, max_tensor_bytes: int) -> dict[str, Any]:
    """The Triton model configuration of ``manifest``'s function, derived from its signature: ``platform`` as
    its metadata gives it and the ``backend`` Triton would name; ``max_batch_size`` > 0 (:func:`max_batch_size`)
    when it batches (:func:`batched`), and then each tensor's ``dims`` without the batch dimension, else
    ``max_batch_size`` 0 and the whole shapes; ``-1`` for a variable dimension; ``data_type`` as Triton's
    ``TYPE_*``. Only the current version is served (``version_policy`` latest 1). A function with no signature
    (one served by its endpoint alone) has no inputs or outputs here."""
    batch = batched(manifest)
    inputs, outputs = manifest.inputs or [], manifest.outputs or []
    return {
        "name": manifest.name,
        "platform": PLATFORMS[manifest.kind],
        "backend": BACKENDS[manifest.kind],
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size(inputs, max_tensor_bytes) if batch else 0,
        "input": [_tensor(s, batch) for s in inputs],
        "output": [_tensor(s, batch) for s in outputs],
    }


async def get_config(request: Request) -> Response:
    state = state_of(request)
    manifest = await lookup(state, request)
    return JSONResponse(model_config(manifest, state.settings.sandbox.max_tensor_bytes))


def entry(state: AppState, manifest: Manifest) -> dict[str, str]:
    """One function in the repository index: READY when it serves without a load (see the module docstring)."""
    doc = {"name": manifest.name, "version": str(manifest.version)}
    ready: State = "READY"
    unavailable: State = "UNAVAILABLE"
    if manifest.kind == "external" or state.registry.get_loaded(manifest.name) is not None:
        return {**doc, "state": ready}
    if not state.registry.lives_here(manifest):
        reason = "its home is the pod tier: a runner loads it for its requests"
    else:
        reason = "at zero: its next request loads it (a cold start); load keeps it ready"
    return {**doc, "state": unavailable, "reason": reason}


async def _body(request: Request, example: str, fields: set[str]) -> dict[str, Any]:
    """A repository request's optional JSON body (empty: ``{}``), an object of ``fields`` alone."""
    body = await read_body(request, MAX_REPOSITORY_BODY)
    if not body.strip():
        return {}
    expected = f"the body must be empty or a JSON object such as {example}"
    doc = json_object(body, "the body", expected, expected)
    if set(doc) - fields:
        raise InvalidRequest(f"unknown field(s) {sorted(set(doc) - fields)}; {expected}")
    return doc


async def _parameters(request: Request, allowed: dict[str, type], example: str) -> dict[str, Any]:
    """The ``parameters`` of a load or unload body, each of the type ``allowed`` gives it."""
    parameters = (await _body(request, example, {"parameters"})).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"'parameters' must be an object, as in {example}")
    for key, value in parameters.items():
        if key == "config" or key.startswith("file:"):
            raise InvalidRequest(
                f"parameters.{key[:40]}: wasmgate loads only what was pushed; push new code or models with "
                "`wasm push` (PUT /admin/v1/functions/NAME)"
            )
        kind = allowed.get(key)
        if kind is None:
            raise InvalidRequest(f"unknown parameter {key[:40]!r}; accepted: {sorted(allowed) or 'none'}")
        if not isinstance(value, kind):
            raise InvalidRequest(f"parameters.{key} must be a {kind.__name__}")
    return parameters


async def repository_index(request: Request) -> Response:
    state = state_of(request)
    ready_only = (await _body(request, '{"ready": true}', {"ready"})).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidRequest("'ready' must be true or false")
    manifests = await anyio.to_thread.run_sync(state.store.manifests)
    entries = [entry(state, m) for m in manifests if may_infer(state.settings, m, request.headers)]
    return JSONResponse([e for e in entries if e["state"] == "READY" or not ready_only])


async def load(request: Request) -> Response:
    state = state_of(request)
    check_admin(state.settings, request.headers)
    name = check_name(request.path_params["name"])
    await _parameters(request, {}, "{} (Triton's load without a new configuration)")
    manifest = state.registry.manifest(name)
    if manifest.kind != "external" and manifest.pool.min_warm == 0:
        manifest = await anyio.to_thread.run_sync(state.publisher.set_pool, name, {"min_warm": 1})
    if manifest.kind != "external" and state.registry.lives_here(manifest):
        await anyio.to_thread.run_sync(state.registry.load, name)
    return JSONResponse(entry(state, manifest))


async def unload(request: Request) -> Response:
    state = state_of(request)
    check_admin(state.settings, request.headers)
    name = check_name(request.path_params["name"])
    await _parameters(request, {"unload_dependents": bool}, '{"parameters": {"unload_dependents": false}}')
    manifest = state.registry.manifest(name)
    if manifest.pool.min_warm > 0:
        manifest = await anyio.to_thread.run_sync(state.publisher.set_pool, name, {"min_warm": 0})
    if await anyio.to_thread.run_sync(state.registry.unload, name):
        state.metrics.scale_to_zero.labels(name).inc()
    return JSONResponse(entry(state, manifest))


ROUTES = [
    Route("/v2/models/{name}/config", get_config),
    Route("/v2/models/{name}/versions/{version}/config", get_config),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/v2/repository/models/{name}/load", load, methods=["POST"]),
    Route("/v2/repository/models/{name}/unload", unload, methods=["POST"]),
]

"""The admin API: upload blobs, push, list and delete functions.

``PATCH /admin/v1/functions/{name}/pool`` changes a function's pool settings (partially) without a new
version; every worker applies them on its next request.

A push is two steps, as with an OCI registry: upload each blob (module, models, data files) by its sha256
(``PUT /admin/v1/blobs/{digest}``, skipped when ``HEAD`` says the gateway has it), then
``PUT /admin/v1/functions/{name}`` with the digests. The second step validates everything and commits
atomically, or changes nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.auth import check_admin
from gateway.functions.push import ROUTING_KEYS
from gateway.requests import json_object, read_body
from gateway.state import AppState, state_of
from gateway.store.manifest import Manifest, check_digest, check_name
from wasm_host.errors import InvalidRequest, NotFound
from wasm_host.figures import REFERENCE_SIZE

MAX_PUSH_DOC = 64 * 1024


def _finite(text: str) -> float:
    """A JSON number as a float, refusing what would overflow to infinity (a manifest must stay JSON)."""
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refusing a key given twice (an alias pushed twice would otherwise lose one silently)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidRequest(f"key {key[:80]!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


async def body_object(request: Request, expected: str) -> dict[str, Any]:
    """The request body as a JSON object; InvalidRequest with ``expected`` when it is anything else."""
    body = await read_body(request, MAX_PUSH_DOC)
    return json_object(
        body, "body", expected, parse_float=_finite, parse_constant=_no_constant, object_pairs_hook=_unique_keys
    )


def describe(state: AppState, manifest: Manifest) -> dict[str, Any]:
    """A manifest as the admin API shows it: plus ``home_tier``, where the router places the function when
    nothing argues otherwise (its ``tier``, or for ``auto`` its figures at their reference size, on this
    gateway's settings), ``cost``, the figures' FLOPs per row as a person reads them and at the reference size,
    whether it has an inference token of its own (never the token, nor its digest), and ``service_ms``, the
    service times the router compares (router.latency), as this gateway process has measured them."""
    doc = manifest.to_json()
    doc["requires_token"] = bool(doc.pop("token_sha256"))
    dispatcher = state.gateway
    service = dispatcher.times.report(manifest.name, manifest.version)
    figures = manifest.figures
    cost = {
        "flops_per_row": figures.formula(),
        "reference_size": REFERENCE_SIZE,
        "at_reference": figures.reference_flops,
    }
    return {**doc, "home_tier": dispatcher.home_tier(manifest), "cost": cost, "service_ms": service}


def admin_only(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The handler, behind the admin token (gateway.auth)."""

    @functools.wraps(handler)
    async def checked(request: Request) -> Response:
        check_admin(state_of(request).settings, request.headers)
        return await handler(request)

    return checked


async def head_blob(request: Request) -> Response:
    digest = check_digest(request.path_params["digest"])
    return Response(status_code=200 if state_of(request).store.has_blob(digest) else 404)


async def get_blob(request: Request) -> Response:
    """A stored blob's bytes: how a runner in another pod fetches a function's module and models."""
    digest = check_digest(request.path_params["digest"])
    path = state_of(request).store.blob_path(digest)
    if not path.exists():
        raise NotFound(f"blob sha256:{digest} is not in the store")
    return FileResponse(path, media_type="application/octet-stream")


async def put_blob(request: Request) -> Response:
    state = state_of(request)
    digest = check_digest(request.path_params["digest"])
    limit = state.settings.max_blob_bytes
    created = await state.store.receive_upload(digest, request.stream(), limit)
    return JSONResponse({"digest": f"sha256:{digest}"}, status_code=201 if created else 200)


async def put_function(request: Request) -> Response:
    state = state_of(request)
    name = check_name(request.path_params["name"])
    doc = await body_object(
        request,
        'push body must be {"module": "sha256:..." | null, "models": {"alias": "sha256:..."}, '
        '"files": {"alias": "sha256:..."}}',
    )
    module = doc.get("module")
    if module is not None and not isinstance(module, str):
        raise InvalidRequest("'module' must be a digest string or null")
    models = doc.get("models") or {}
    files = doc.get("files") or {}
    pool = doc.get("pool") or {}
    if not isinstance(pool, dict):
        raise InvalidRequest("'pool' must be an object of pool settings")
    routing = {key: doc[key] for key in ROUTING_KEYS if doc.get(key) is not None}
    for key in ("tier", "endpoint", "endpoint_model"):
        if key in routing and not isinstance(routing[key], str):
            raise InvalidRequest(f"'{key}' must be a string")
    token = doc.get("inference_token")
    if token is not None and (not isinstance(token, str) or (token and not token.isprintable())):
        raise InvalidRequest("'inference_token' must be a printable string ('' removes the function's token)")
    push = functools.partial(state.publisher.push, name, module, models, pool, routing, token, files)
    manifest = await anyio.to_thread.run_sync(push)
    return JSONResponse(describe(state, manifest), status_code=201)


async def patch_pool(request: Request) -> Response:
    state = state_of(request)
    name = check_name(request.path_params["name"])
    doc = await body_object(request, 'body must be an object of pool settings, e.g. {"min_warm": 1}')
    manifest = await anyio.to_thread.run_sync(state.publisher.set_pool, name, doc)
    return JSONResponse(describe(state, manifest))


async def rollback(request: Request) -> Response:
    """Make an earlier version current again, as a new version: ``{"to": V}`` (default: the one before)."""
    state = state_of(request)
    name = check_name(request.path_params["name"])
    doc = await body_object(request, 'body must be an object, e.g. {"to": 3} or {}')
    to = doc.get("to")
    if to is not None and (not isinstance(to, int) or isinstance(to, bool)):
        raise InvalidRequest("'to' must be a version number")
    manifest = await anyio.to_thread.run_sync(state.publisher.rollback, name, to)
    return JSONResponse(describe(state, manifest), status_code=201)


async def function_versions(request: Request) -> Response:
    store = state_of(request).store
    name = check_name(request.path_params["name"])
    current = store.get(name)
    return JSONResponse({"name": name, "current": current.version, "versions": store.history(name)})


async def list_functions(request: Request) -> Response:
    state = state_of(request)
    manifests = await anyio.to_thread.run_sync(state.store.manifests)
    return JSONResponse({"functions": [describe(state, m) for m in manifests]})


async def get_function(request: Request) -> Response:
    state = state_of(request)
    return JSONResponse(describe(state, state.store.get(request.path_params["name"])))


async def delete_function(request: Request) -> Response:
    state = state_of(request)
    manifest = await anyio.to_thread.run_sync(state.publisher.delete, request.path_params["name"])
    return JSONResponse({"deleted": manifest.name, "version": manifest.version})


ROUTES = [
    Route("/admin/v1/blobs/{digest}", admin_only(head_blob), methods=["HEAD"]),
    Route("/admin/v1/blobs/{digest}", admin_only(get_blob), methods=["GET"]),
    Route("/admin/v1/blobs/{digest}", admin_only(put_blob), methods=["PUT"]),
    Route("/admin/v1/functions", admin_only(list_functions), methods=["GET"]),
    Route("/admin/v1/functions/{name}", admin_only(get_function), methods=["GET"]),
    Route("/admin/v1/functions/{name}", admin_only(put_function), methods=["PUT"]),
    Route("/admin/v1/functions/{name}", admin_only(delete_function), methods=["DELETE"]),
    Route("/admin/v1/functions/{name}/pool", admin_only(patch_pool), methods=["PATCH"]),
    Route("/admin/v1/functions/{name}/rollback", admin_only(rollback), methods=["POST"]),
    Route("/admin/v1/functions/{name}/versions", admin_only(function_versions), methods=["GET"]),
]

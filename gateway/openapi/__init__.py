"""The OpenAPI 3.1 document of the gateway's HTTP API, served at ``GET /openapi.json``.

:data:`DOCUMENT` is a plain dict built once at import from constants (no I/O); the handler renders it to JSON
on its first request and keeps the bytes. It describes what the handlers do: the OIP v2 endpoints with the
binary tensor extension, the routing headers, the OpenAI-compatible ``/v1`` endpoints, ``/metrics`` and the
admin API, and for each operation the
statuses README's Errors table gives it. A runner serves the same document but only the OIP v2 part of it.

Schemas say what a well-formed request looks like; the gateway checks more than they can (a function's
signature, a blob's hash, ``binary_data_size`` against the body) and answers 400 when those checks fail.

Its enums and patterns are the code's own (:mod:`gateway.openapi.derived`), so it cannot drift from what the
gateway accepts and answers. The parts: :mod:`~gateway.openapi.schemas` (components),
:mod:`~gateway.openapi.paths` (OIP v2 and operational paths), :mod:`~gateway.openapi.triton_paths` (Triton's
model configuration and repository extensions), :mod:`~gateway.openapi.openai_paths` (the
OpenAI-compatible paths and their schemas), :mod:`~gateway.openapi.admin_paths` (the admin API), put together
here with the statuses every function operation shares.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.openapi import openai_paths, triton_paths
from gateway.openapi.admin_paths import admin_paths
from gateway.openapi.parts import BAD_NAME, UNAUTHORIZED, UNKNOWN, param
from gateway.openapi.paths import model_paths, server_paths
from gateway.openapi.schemas import HEADERS, PARAMETERS, SCHEMAS


def _build() -> dict[str, Any]:
    paths = {**server_paths(), **model_paths("/v2/models/{name}", False)}
    paths.update(model_paths("/v2/models/{name}/versions/{version}", True))
    paths.update(triton_paths.config_paths("/v2/models/{name}", False))
    paths.update(triton_paths.config_paths("/v2/models/{name}/versions/{version}", True))
    paths.update(triton_paths.repository_paths())
    paths.update(admin_paths())
    for path, item in paths.items():  # the statuses every operation on a function shares
        named = any(p == param("name") for p in item.get("parameters", []))
        guarded = path.startswith(("/admin/", "/v2/models/", "/v2/repository/models/"))
        for operation in (v for k, v in item.items() if k != "parameters"):
            responses = operation["responses"]
            if named:
                responses.setdefault("400", BAD_NAME)
                responses.setdefault("404", UNKNOWN)
            if guarded:
                responses.setdefault("401", UNAUTHORIZED)
                operation["security"] = [{"bearer": []}, {}]  # the token is required only when configured
    paths.update(openai_paths.openai_paths())  # OpenAI's error shape: none of the statuses above apply
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wasmgate",
            "version": "1",
            "description": "Open Inference Protocol v2 (with Triton's binary tensor extension) and the admin API "
            'of the wasmgate gateway, and OpenAI-compatible embeddings. Every error body is {"error": "..."}, except '
            'under /v1/, where it is OpenAI\'s {"error": {"message", "type", "param", "code"}}. Unknown routes are '
            "404.",
        },
        "tags": [
            {"name": "oip", "description": "Open Inference Protocol v2"},
            {"name": "admin", "description": "Blobs and functions (behind the admin token, when one is set)"},
            {"name": "openai", "description": "OpenAI-compatible embeddings and model list"},
            {"name": "operations", "description": "Metrics and this document"},
        ],
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **triton_paths.SCHEMAS, **openai_paths.SCHEMAS},
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


DOCUMENT: dict[str, Any] = _build()


@functools.cache
def _rendered() -> bytes:
    return json.dumps(DOCUMENT, separators=(",", ":")).encode()


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``: :data:`DOCUMENT`, rendered once."""
    return Response(_rendered(), media_type="application/json")

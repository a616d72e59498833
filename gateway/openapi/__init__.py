"""The OpenAPI 3.1 document of the gateway's HTTP API, served at ``GET /openapi.json``.

:data:`DOCUMENT` is a plain dict built once at import from constants (no I/O); the handler renders it to JSON
on its first request and keeps the bytes. It describes what the handlers do: the OIP v2 endpoints with the
binary tensor extension, the routing headers, ``/metrics`` and the admin API, and for each operation the
statuses README's Errors table gives it. A runner serves the same document but only the OIP v2 part of it.

Schemas say what a well-formed request looks like; the gateway checks more than they can (a function's
signature, a blob's hash, ``binary_data_size`` against the body) and answers 400 when those checks fail.
"""

from __future__ import annotations

import functools
import json
from typing import Any, get_args

from starlette.requests import Request
from starlette.responses import Response

from router.policy import Tier
from wasm_host.tensors import DTYPES

Schema = dict[str, Any]

NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$"
DIGEST_PATTERN = r"^(?:sha256:)?[0-9a-f]{64}$"
TIERS = list(get_args(Tier))
REASONS = ["home", "home_cold", "spill_batch", "spill_saturated", "cold_start_masked", "hint", "fallback", "retry"]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _error(description: str, retry_after: bool = False) -> Schema:
    response: Schema = {"description": description, "content": _json(_ref("Error"))}
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


def _empty(description: str) -> Schema:
    return {"description": description}


BAD_NAME = _error("a function name that is not 1-128 letters, digits, '.', '_' or '-' starting and ending alphanumeric")
UNKNOWN = _error("unknown function or version, or no route for the path")
TOO_LARGE = _error("the body, a tensor, a module or a model is past its limit; the message names the setting")
#: What a change can meet with the registry store (settings ``store``): it cannot be reached, or it refuses.
STORE_ERRORS = {
    "502": _error("the registry store refused: credentials, deletes disabled, or bytes that do not match"),
    "503": _error("the registry store cannot be reached, or the store's disk is full", True),
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error: what went wrong and what to change.",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "Datatype": {"type": "string", "enum": list(DTYPES)},
    "Parameters": {"type": "object", "description": "Free-form OIP parameters.", "additionalProperties": True},
    "TensorSpec": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": _ref("Datatype"),
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}, "description": "-1: variable"},
        },
        "required": ["name", "datatype", "shape"],
    },
    "TensorData": {
        "description": "Row-major elements, flat or nested: numbers, booleans (BOOL) or strings (BYTES).",
        "type": ["array", "number", "boolean", "string"],
        "items": {"$ref": "#/components/schemas/TensorData"},
    },
    "InferInput": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 8},
            "datatype": _ref("Datatype"),
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data_size": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "bytes of this input in the binary section, in place of data",
                    }
                },
                "additionalProperties": True,
            },
            "data": _ref("TensorData"),
        },
        "required": ["name", "shape", "datatype"],
        "description": "Needs data, or parameters.binary_data_size with a binary body.",
    },
    "RequestedOutput": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data": {"type": "boolean"}},
                "additionalProperties": True,
            },
        },
        "required": ["name"],
    },
    "InferRequest": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data_output": {"type": "boolean"},
                    "tier": {"type": "string", "enum": TIERS, "description": "as the x-wasmgate-tier header"},
                },
                "additionalProperties": True,
            },
            "inputs": {"type": "array", "items": _ref("InferInput"), "minItems": 1},
            "outputs": {"type": "array", "items": _ref("RequestedOutput")},
        },
        "required": ["inputs"],
    },
    "InferOutput": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": _ref("Datatype"),
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
            "data": _ref("TensorData"),
        },
        "required": ["name", "shape", "datatype"],
    },
    "InferResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": _ref("Parameters"),
            "outputs": {"type": "array", "items": _ref("InferOutput")},
        },
        "required": ["model_name", "outputs"],
    },
    "ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
            "role": {"type": "string", "enum": ["gateway", "runner"]},
            "execution_providers": {"type": "array", "items": {"type": "string"}},
            "execution_providers_in_use": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "version", "extensions"],
    },
    "ModelMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorSpec")},
            "outputs": {"type": "array", "items": _ref("TensorSpec")},
        },
        "required": ["name", "platform", "inputs", "outputs"],
    },
    "PoolSettings": {
        "type": "object",
        "description": "A function's pool settings (README: Pools, scale to zero and admission).",
        "properties": {
            "min_warm": {"type": "integer", "minimum": 0},
            "max_instances": {"type": "integer", "minimum": 1},
            "idle_timeout_s": {"type": "number", "minimum": 0},
            "concurrency": {"type": "integer", "minimum": 1},
            "max_queue": {"type": "integer", "minimum": 0},
            "queue_timeout_s": {"type": "number", "minimum": 0},
            "isolation": {"type": "string", "enum": ["reuse", "fresh"]},
            "recycle_after": {"type": "integer", "minimum": 1},
            "deadline_ms": {"type": "integer", "minimum": 0, "description": "0: the gateway's deadline_ms"},
        },
        "additionalProperties": False,
    },
    "PushRequest": {
        "type": "object",
        "properties": {
            "module": {
                "type": ["string", "null"],
                "pattern": DIGEST_PATTERN,
                "description": "the uploaded module's digest; null pushes one bare ONNX model (alias 'model')",
            },
            "models": {
                "type": "object",
                "additionalProperties": {"type": "string", "pattern": DIGEST_PATTERN},
                "description": "alias (a name) -> uploaded model digest",
            },
            "pool": _ref("PoolSettings"),
            "tier": {"type": "string", "enum": ["auto", *TIERS]},
            "spill": {"type": "boolean"},
            "mask_cold_start": {"type": "boolean"},
            "endpoint": {"type": "string", "description": "an http:// or https:// OIP v2 server's base URL"},
            "endpoint_model": {"type": "string", "pattern": NAME_PATTERN},
            "inference_token": {
                "type": "string",
                "description": "a bearer token this function's requests must carry ('' removes it)",
            },
        },
    },
    "Manifest": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "kind": {"type": "string", "enum": ["passthrough", "custom", "external"]},
            "module": {"type": ["string", "null"]},
            "models": {"type": "object", "additionalProperties": {"type": "string"}},
            "inputs": {"type": ["array", "null"], "items": _ref("TensorSpec")},
            "outputs": {"type": ["array", "null"], "items": _ref("TensorSpec")},
            "created": {"type": "number"},
            "pool": _ref("PoolSettings"),
            "tier": {"type": "string", "enum": ["auto", *TIERS]},
            "endpoint": {"type": ["string", "null"]},
            "endpoint_model": {"type": ["string", "null"]},
            "figures": {
                "type": "object",
                "properties": {k: {"type": "integer"} for k in ("bytes", "params", "flops_per_row")},
            },
            "spill": {"type": "boolean"},
            "mask_cold_start": {"type": "boolean"},
            "requires_token": {"type": "boolean", "description": "whether it has an inference token of its own"},
            "digest": {
                "type": ["string", "null"],
                "description": "with the registry store: the OCI manifest this version is (sha256:...); else null",
            },
            "home_tier": {"type": "string", "enum": TIERS},
            "service_ms": {
                "type": "object",
                "description": "what this gateway has measured of the current version, by tier and size of request "
                "(small: below spill_batch_rows rows; large: at or above), in milliseconds",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        },
        "required": ["name", "version", "kind", "module", "models", "pool", "tier", "home_tier"],
    },
}

PARAMETERS: dict[str, Schema] = {
    "name": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "a function name: 1-128 letters, digits, '.', '_' or '-', starting and ending with a letter "
        "or digit, without '..'",
        "schema": {"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": 128},
    },
    "version": {
        "name": "version",
        "in": "path",
        "required": True,
        "description": "the function's current version (its push count)",
        "schema": {"type": "string", "pattern": r"^[1-9][0-9]*$"},
    },
    "digest": {
        "name": "digest",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": DIGEST_PATTERN},
    },
    "tier": {
        "name": "x-wasmgate-tier",
        "in": "header",
        "required": False,
        "description": "serve on this tier only (503 when it cannot)",
        "schema": {"type": "string", "enum": TIERS},
    },
    "deadline": {
        "name": "x-wasmgate-deadline-ms",
        "in": "header",
        "required": False,
        "description": "rule out a tier that could not answer within this many milliseconds",
        "schema": {"type": "number", "exclusiveMinimum": 0},
    },
    "header_length": {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "description": "binary extension: bytes of JSON header at the start of the body (required with a binary "
        "body); the raw input tensors follow it in input order",
        "schema": {"type": "integer", "minimum": 1},
    },
}

HEADERS: dict[str, Schema] = {
    "RetryAfter": {"description": "seconds after which a retry may succeed", "schema": {"type": "string"}},
}

INFER_HEADERS: dict[str, Schema] = {
    "x-wasmgate-tier": {"description": "where it ran", "required": True, "schema": {"type": "string", "enum": TIERS}},
    "x-wasmgate-replica": {
        "description": "the gateway process, a runner or an endpoint that served it",
        "schema": {"type": "string"},
    },
    "x-wasmgate-reason": {"description": "why it ran there", "schema": {"type": "string", "enum": REASONS}},
    "x-wasmgate-cold-start": {
        "description": "present on the first response after the function loaded from zero, or that waited for "
        "the pod tier to scale up",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Inference-Header-Content-Length": {
        "description": "with a binary body: bytes of its JSON header",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


def _p(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def _model_paths(prefix: str, versioned: bool) -> dict[str, Schema]:
    params = [_p("name"), _p("version")] if versioned else [_p("name")]
    which = "that version of the function (404 unless it is the current one)" if versioned else "the function"
    return {
        prefix: {
            "parameters": params,
            "get": {
                "operationId": "model_metadata_versioned" if versioned else "model_metadata",
                "tags": ["oip"],
                "summary": f"Metadata of {which}: inputs and outputs, -1 for a variable dimension",
                "responses": {"200": {"description": "metadata", "content": _json(_ref("ModelMetadata"))}},
            },
        },
        f"{prefix}/ready": {
            "parameters": params,
            "get": {
                "operationId": "model_ready_versioned" if versioned else "model_ready",
                "tags": ["oip"],
                "summary": f"200 when {which} exists",
                "responses": {"200": _empty("ready")},
            },
        },
        f"{prefix}/infer": {
            "parameters": params,
            "post": {
                "operationId": "infer_versioned" if versioned else "infer",
                "tags": ["oip"],
                "summary": f"Run {which} on a request, JSON or binary tensors",
                "parameters": [_p("tier"), _p("deadline"), _p("header_length")],
                "requestBody": {
                    "required": True,
                    "content": {
                        **_json(_ref("InferRequest")),
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "format": "binary",
                                "description": "binary extension: Inference-Header-Content-Length bytes of "
                                "InferRequest JSON, then the raw inputs with parameters.binary_data_size",
                            },
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "the outputs: JSON, or binary when any output asked for binary_data",
                        "headers": INFER_HEADERS,
                        "content": {
                            **_json(_ref("InferResponse")),
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "400": _error(
                        "malformed JSON or binary body (Inference-Header-Content-Length or binary_data_size "
                        "disagreeing with the body), wrong shape or datatype, unknown output, a bad routing "
                        "header, a bad name, or a function that rejected its input"
                    ),
                    "413": TOO_LARGE,
                    "429": _error(
                        "the function's slots and wait queue, or the pod tier's held requests, are full", True
                    ),
                    "500": _error("the function trapped or reported a failure; the gateway keeps serving"),
                    "503": _error(
                        "no tier can serve it now (hint, deadline, no pod tier), a wait for a slot or a replica "
                        "timed out, or a registered endpoint is unreachable",
                        True,
                    ),
                    "504": _error("the function ran past its deadline, or a replica past pod_request_timeout_s"),
                },
            },
        },
    }


def _admin_paths() -> dict[str, Schema]:
    fn = _json(_ref("Manifest"))
    return {
        "/admin/v1/blobs/{digest}": {
            "parameters": [_p("digest")],
            "head": {
                "operationId": "head_blob",
                "tags": ["admin"],
                "summary": "200 when the gateway holds the blob (stored, or uploaded for a push)",
                "responses": {"200": _empty("held"), "400": _empty("not a digest"), "404": _empty("not held")},
            },
            "get": {
                "operationId": "get_blob",
                "tags": ["admin"],
                "summary": "A stored blob's bytes",
                "responses": {
                    "200": {
                        "description": "the blob",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "400": _error("not a digest"),
                    "404": _error("not in the store"),
                },
            },
            "put": {
                "operationId": "put_blob",
                "tags": ["admin"],
                "summary": "Upload a module or model; the bytes must hash to the digest",
                "requestBody": {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {
                    "200": {"description": "already held", "content": _json(_ref("BlobStored"))},
                    "201": {"description": "uploaded", "content": _json(_ref("BlobStored"))},
                    "400": _error("not a digest, or the bytes hash to another digest"),
                    "404": _error("no route (a digest with '/')"),
                    "413": TOO_LARGE,
                },
            },
        },
        "/admin/v1/functions": {
            "get": {
                "operationId": "list_functions",
                "tags": ["admin"],
                "summary": "Every function's manifest, by name",
                "responses": {"200": {"description": "manifests", "content": _json(_ref("FunctionList"))}},
            },
        },
        "/admin/v1/functions/{name}": {
            "parameters": [_p("name")],
            "get": {
                "operationId": "get_function",
                "tags": ["admin"],
                "summary": "A function's manifest",
                "responses": {"200": {"description": "the manifest", "content": fn}, "400": BAD_NAME, "404": UNKNOWN},
            },
            "put": {
                "operationId": "put_function",
                "tags": ["admin"],
                "summary": "Push: validate everything, then commit a new version atomically, or change nothing",
                "requestBody": {"required": True, "content": _json(_ref("PushRequest"))},
                "responses": {
                    "201": {"description": "the new version", "content": fn},
                    "400": _error("a refused push: bad body, name or digest, or a module or model that fails"),
                    "404": _error("no route (a name with '/')"),
                    "413": TOO_LARGE,
                    **STORE_ERRORS,
                },
            },
            "delete": {
                "operationId": "delete_function",
                "tags": ["admin"],
                "summary": "Delete a function (its blobs stay)",
                "responses": {
                    "200": {"description": "deleted", "content": _json(_ref("Deleted"))},
                    "400": BAD_NAME,
                    "404": UNKNOWN,
                    **STORE_ERRORS,
                },
            },
        },
        "/admin/v1/functions/{name}/rollback": {
            "parameters": [_p("name")],
            "post": {
                "operationId": "rollback",
                "tags": ["admin"],
                "summary": "Make an earlier version current again, as a new version",
                "requestBody": {
                    "required": True,
                    "content": _json(
                        {
                            "type": "object",
                            "properties": {"to": {"type": "integer", "minimum": 1}},
                            "additionalProperties": True,
                        }
                    ),
                },
                "responses": {
                    "201": {"description": "the new version", "content": fn},
                    "400": _error("bad name or body, or no such earlier version to go back to"),
                    "404": UNKNOWN,
                    "413": TOO_LARGE,
                    **STORE_ERRORS,
                },
            },
        },
        "/admin/v1/functions/{name}/versions": {
            "parameters": [_p("name")],
            "get": {
                "operationId": "function_versions",
                "tags": ["admin"],
                "summary": "The versions a function has had, and its current one",
                "responses": {
                    "200": {
                        "description": "versions",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["name", "current", "versions"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "current": {"type": "integer"},
                                    "versions": {"type": "array", "items": {"type": "integer"}},
                                },
                            }
                        ),
                    },
                    "400": BAD_NAME,
                    "404": UNKNOWN,
                    **STORE_ERRORS,
                },
            },
        },
        "/admin/v1/functions/{name}/pool": {
            "parameters": [_p("name")],
            "patch": {
                "operationId": "patch_pool",
                "tags": ["admin"],
                "summary": "Change some pool settings; not a new version",
                "requestBody": {"required": True, "content": _json(_ref("PoolSettings"))},
                "responses": {
                    "200": {"description": "the manifest", "content": fn},
                    "400": _error("bad name, or bad or unknown pool settings"),
                    "404": UNKNOWN,
                    "413": TOO_LARGE,
                    **STORE_ERRORS,
                },
            },
        },
    }


def _server_paths() -> dict[str, Schema]:
    return {
        "/v2/health/live": {
            "get": {
                "operationId": "live",
                "tags": ["oip"],
                "summary": "200 while the process serves",
                "responses": {"200": _empty("live")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "operationId": "ready",
                "tags": ["oip"],
                "summary": "200 once the gateway is ready",
                "responses": {"200": _empty("ready"), "503": _empty("starting or stopping")},
            }
        },
        "/v2": {
            "get": {
                "operationId": "server_metadata",
                "tags": ["oip"],
                "summary": "Server metadata, with the role and the onnxruntime execution providers",
                "responses": {"200": {"description": "metadata", "content": _json(_ref("ServerMetadata"))}},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (all workers' figures with --workers)",
                "responses": {
                    "200": {"description": "text exposition format", "content": {"text/plain": {"schema": {}}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": _json({"type": "object"})}},
            }
        },
    }


def _build() -> dict[str, Any]:
    paths = {**_server_paths(), **_model_paths("/v2/models/{name}", False)}
    paths.update(_model_paths("/v2/models/{name}/versions/{version}", True))
    paths.update(_admin_paths())
    unauthorized = _error("a missing or wrong bearer token (when the gateway is configured with one)")
    for path, item in paths.items():  # the statuses every operation on a function shares
        named = any(p == _p("name") for p in item.get("parameters", []))
        guarded = path.startswith(("/admin/", "/v2/models/"))
        for operation in (v for k, v in item.items() if k != "parameters"):
            responses = operation["responses"]
            if named:
                responses.setdefault("400", BAD_NAME)
                responses.setdefault("404", UNKNOWN)
            if guarded:
                responses.setdefault("401", unauthorized)
                operation["security"] = [{"bearer": []}, {}]  # the token is required only when configured
    schemas = {
        **SCHEMAS,
        "BlobStored": {"type": "object", "properties": {"digest": {"type": "string"}}, "required": ["digest"]},
        "FunctionList": {
            "type": "object",
            "properties": {"functions": {"type": "array", "items": _ref("Manifest")}},
            "required": ["functions"],
        },
        "Deleted": {
            "type": "object",
            "properties": {"deleted": {"type": "string"}, "version": {"type": "integer"}},
            "required": ["deleted", "version"],
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wasmgate",
            "version": "1",
            "description": "Open Inference Protocol v2 (with Triton's binary tensor extension) and the admin API "
            'of the wasmgate gateway. Every error body is {"error": "..."}. Unknown routes are 404.',
        },
        "tags": [
            {"name": "oip", "description": "Open Inference Protocol v2"},
            {"name": "admin", "description": "Blobs and functions (behind the admin token, when one is set)"},
            {"name": "operations", "description": "Metrics and this document"},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
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
    return Response(_rendered(), media_type="application/json")

"""The document's OIP v2 paths (health, server and model metadata, readiness, inference, JSON or binary, with
the routing headers), and the operational ones: ``/metrics`` and this document."""

from __future__ import annotations

from gateway.openapi.derived import REASONS, TIERS, Schema
from gateway.openapi.parts import TOO_LARGE, error, json_content, param, ref

#: What an inference response says of where it ran and why (gateway.dispatch).
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

#: The routing headers as an error answer of a placed request carries them (gateway.dispatch): none required,
#: since a request refused before it was placed ran nowhere, and one held for a replica has no replica.
ROUTED_ERROR_HEADERS: dict[str, Schema] = {
    k: {**v, "required": False}
    for k, v in INFER_HEADERS.items()
    if k in ("x-wasmgate-tier", "x-wasmgate-replica", "x-wasmgate-reason")
}


def routed(response: Schema) -> Schema:
    """An error response of an inference operation, with the routing headers it carries once placed."""
    return {**response, "headers": {**response.get("headers", {}), **ROUTED_ERROR_HEADERS}}


def server_paths() -> dict[str, Schema]:
    """Health, server metadata, ``/metrics`` and ``/openapi.json``."""
    return {
        "/v2/health/live": {
            "get": {
                "operationId": "live",
                "tags": ["oip"],
                "summary": "200 while the process serves",
                "responses": {"200": {"description": "live", "content": json_content(ref("Live"))}},
            }
        },
        "/v2/health/ready": {
            "get": {
                "operationId": "ready",
                "tags": ["oip"],
                "summary": "200 once the gateway is ready",
                "responses": {
                    "200": {"description": "ready", "content": json_content(ref("Ready"))},
                    "503": {
                        "description": "starting or stopping: ready is false",
                        "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
                        "content": json_content(ref("Ready")),
                    },
                },
            }
        },
        "/v2": {
            "get": {
                "operationId": "server_metadata",
                "tags": ["oip"],
                "summary": "Server metadata, with the role and the onnxruntime execution providers",
                "responses": {"200": {"description": "metadata", "content": json_content(ref("ServerMetadata"))}},
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
                "responses": {"200": {"description": "OpenAPI 3.1", "content": json_content({"type": "object"})}},
            }
        },
    }


def model_paths(prefix: str, versioned: bool) -> dict[str, Schema]:
    """A function's metadata, readiness and inference under ``prefix``, for the current version or (``versioned``)
    the one named in the path."""
    params = [param("name"), param("version")] if versioned else [param("name")]
    which = "that version of the function (404 unless it is the current one)" if versioned else "the function"
    return {
        prefix: {
            "parameters": params,
            "get": {
                "operationId": "model_metadata_versioned" if versioned else "model_metadata",
                "tags": ["oip"],
                "summary": f"Metadata of {which}: inputs and outputs, -1 for a variable dimension",
                "responses": {"200": {"description": "metadata", "content": json_content(ref("ModelMetadata"))}},
            },
        },
        f"{prefix}/ready": {
            "parameters": params,
            "get": {
                "operationId": "model_ready_versioned" if versioned else "model_ready",
                "tags": ["oip"],
                "summary": f"200 when {which} exists (at zero included: its next request loads it)",
                "responses": {"200": {"description": "ready", "content": json_content(ref("ModelReady"))}},
            },
        },
        f"{prefix}/infer": {
            "parameters": params,
            "post": {
                "operationId": "infer_versioned" if versioned else "infer",
                "tags": ["oip"],
                "summary": f"Run {which} on a request, JSON or binary tensors",
                "parameters": [param("tier"), param("deadline"), param("header_length")],
                "requestBody": {
                    "required": True,
                    "content": {
                        **json_content(ref("InferRequest")),
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
                            **json_content(ref("InferResponse")),
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "400": routed(
                        error(
                            "malformed JSON or binary body (Inference-Header-Content-Length or binary_data_size "
                            "disagreeing with the body), wrong shape or datatype, unknown output, a bad routing "
                            "header, a bad name, or a function that rejected its input"
                        )
                    ),
                    "413": TOO_LARGE,
                    "429": routed(
                        error("the function's slots and wait queue, or the pod tier's held requests, are full", True)
                    ),
                    "500": routed(error("the function trapped or reported a failure; the gateway keeps serving")),
                    "503": routed(
                        error(
                            "no tier can serve it now (hint, deadline, no pod tier), a wait for a slot or a replica "
                            "timed out, or a registered endpoint is unreachable",
                            True,
                        )
                    ),
                    "504": routed(
                        error(
                            "the function ran past its tier's deadline (the message names the setting), or a "
                            "replica past pod_request_timeout_s"
                        )
                    ),
                },
            },
        },
    }

"""The document's paths of Triton's model configuration and model repository extensions
(gateway.triton_api), with the schemas of their bodies. The data types, states and platforms are the code's."""

from __future__ import annotations

from gateway.oip import PLATFORMS
from gateway.openapi.derived import Schema, literal_values
from gateway.openapi.parts import error, json_content, param, ref
from gateway.triton_api import BACKENDS, MAX_BATCH, TRITON_TYPES, State

TRITON_TENSOR: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "data_type": {"type": "string", "enum": list(dict.fromkeys(TRITON_TYPES.values()))},
        "dims": {
            "type": "array",
            "items": {"type": "integer", "minimum": -1},
            "description": "without the batch dimension when max_batch_size > 0; -1 for a variable dimension",
        },
        "reshape": {
            "type": "object",
            "properties": {"shape": {"type": "array", "items": {"type": "integer"}, "maxItems": 0}},
            "description": "present when the tensor is the batch dimension alone (or a scalar): dims [1], "
            "reshaped to []",
        },
    },
    "required": ["name", "data_type", "dims"],
}

SCHEMAS: dict[str, Schema] = {
    "ModelConfig": {
        "type": "object",
        "description": "Triton's model configuration, derived from the function's signature",
        "properties": {
            "name": {"type": "string"},
            "platform": {"type": "string", "enum": list(dict.fromkeys(PLATFORMS.values()))},
            "backend": {"type": "string", "enum": list(dict.fromkeys(BACKENDS.values()))},
            "version_policy": {"type": "object"},
            "max_batch_size": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_BATCH,
                "description": "0: no batching; else the most rows one request may carry (the tensor limit)",
            },
            "input": {"type": "array", "items": ref("TritonTensor")},
            "output": {"type": "array", "items": ref("TritonTensor")},
        },
        "required": ["name", "platform", "backend", "max_batch_size", "input", "output"],
    },
    "TritonTensor": TRITON_TENSOR,
    "RepositoryEntry": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "state": {"type": "string", "enum": literal_values(State)},
            "reason": {"type": "string", "description": "why it is not READY: at zero, or its home is the pod tier"},
        },
        "required": ["name", "version", "state"],
    },
    "RepositoryIndexRequest": {
        "type": "object",
        "properties": {"ready": {"type": "boolean", "description": "list only the READY functions"}},
        "additionalProperties": False,
    },
    "LoadRequest": {
        "type": "object",
        "properties": {"parameters": {"type": "object", "additionalProperties": False}},
        "additionalProperties": False,
        "description": "Triton's config and file: parameters are refused: wasmgate loads only what was pushed",
    },
    "UnloadRequest": {
        "type": "object",
        "properties": {
            "parameters": {
                "type": "object",
                "properties": {"unload_dependents": {"type": "boolean", "description": "accepted; no effect"}},
                "additionalProperties": False,
            }
        },
        "additionalProperties": False,
    },
}

BAD_BODY = error("a body that is not the JSON object described, or a load with a new configuration or files")


def _change(operation: str, summary: str, request: str) -> Schema:
    return {
        "parameters": [param("name")],
        "post": {
            "operationId": operation,
            "tags": ["oip"],
            "summary": summary,
            "requestBody": {"required": False, "content": json_content(ref(request))},
            "responses": {
                "200": {
                    "description": "the function's index entry now",
                    "content": json_content(ref("RepositoryEntry")),
                },
                "400": BAD_BODY,
            },
        },
    }


def config_paths(prefix: str, versioned: bool) -> dict[str, Schema]:
    """A function's Triton configuration under ``prefix`` (as gateway.openapi.paths.model_paths)."""
    params = [param("name"), param("version")] if versioned else [param("name")]
    return {
        f"{prefix}/config": {
            "parameters": params,
            "get": {
                "operationId": "model_config_versioned" if versioned else "model_config",
                "tags": ["oip"],
                "summary": "Triton's model configuration, derived from the signature",
                "responses": {"200": {"description": "configuration", "content": json_content(ref("ModelConfig"))}},
            },
        }
    }


def repository_paths() -> dict[str, Schema]:
    """The repository index, and load and unload (behind the admin token, when one is set)."""
    return {
        "/v2/repository/index": {
            "post": {
                "operationId": "repository_index",
                "tags": ["oip"],
                "summary": "The functions the caller's token opens, READY when loaded here, else UNAVAILABLE "
                "(at zero: the next request loads them)",
                "requestBody": {"required": False, "content": json_content(ref("RepositoryIndexRequest"))},
                "responses": {
                    "200": {
                        "description": "index",
                        "content": json_content({"type": "array", "items": ref("RepositoryEntry")}),
                    },
                    "400": BAD_BODY,
                },
            }
        },
        "/v2/repository/models/{name}/load": _change(
            "repository_load", "Prewarm: min_warm at least 1, and loaded here before the answer", "LoadRequest"
        ),
        "/v2/repository/models/{name}/unload": _change(
            "repository_unload", "Scale to zero: min_warm 0, and unloaded here now", "UnloadRequest"
        ),
    }

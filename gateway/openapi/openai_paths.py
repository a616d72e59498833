"""The document's OpenAI-compatible paths (gateway.openai_api), ``/v1/embeddings`` and ``/v1/models``, with the
schemas of their bodies. Their errors are OpenAI's shape, ``OpenAIError``, not the ``Error`` of every other
route."""

from __future__ import annotations

from gateway.openapi.derived import (
    EMBEDDINGS_FIELDS,
    ENCODING_FORMATS,
    MAX_EMBEDDING_INPUTS,
    OPENAI_ERROR_CODES,
    OPENAI_ERROR_TYPES,
    Schema,
)
from gateway.openapi.parts import json_content, param, ref
from gateway.openapi.paths import INFER_HEADERS, routed

TEXT: Schema = {"type": "string", "minLength": 1}

EMBEDDINGS_PROPERTIES: dict[str, Schema] = {
    "model": {**TEXT, "description": "the function's name"},
    "input": {
        "description": "the texts: a string, or a list of strings (token arrays are refused)",
        "oneOf": [TEXT, {"type": "array", "items": TEXT, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS}],
    },
    "encoding_format": {
        "type": ["string", "null"],
        "enum": [*ENCODING_FORMATS, None],
        "description": "float (null: the default), or base64 of each embedding's little-endian float32 bytes",
    },
    "dimensions": {
        "type": ["integer", "null"],
        "minimum": 1,
        "description": "refused (400) unless it is the function's number of dimensions",
    },
    "user": {"type": ["string", "null"], "description": "ignored"},
}

SCHEMAS: dict[str, Schema] = {
    "OpenAIError": {
        "type": "object",
        "description": "Every error of an OpenAI-compatible route, in OpenAI's shape. param is always null.",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "enum": OPENAI_ERROR_TYPES},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"], "enum": OPENAI_ERROR_CODES},
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
    },
    "EmbeddingsRequest": {
        "type": "object",
        "properties": {name: EMBEDDINGS_PROPERTIES[name] for name in EMBEDDINGS_FIELDS},
        "required": ["model", "input"],
        "additionalProperties": False,
    },
    "EmbeddingsResponse": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "object": {"const": "embedding"},
                        "index": {"type": "integer", "minimum": 0},
                        "embedding": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "contentEncoding": "base64"},
                            ]
                        },
                    },
                    "required": ["object", "index", "embedding"],
                },
            },
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "description": "always 0: the tokenizer is inside the function, out of the gateway's sight",
                "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
                "required": ["prompt_tokens", "total_tokens"],
            },
        },
        "required": ["object", "data", "model", "usage"],
    },
    "ModelList": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                    },
                    "required": ["id", "object", "created", "owned_by"],
                },
            },
        },
        "required": ["object", "data"],
    },
}


def openai_error(description: str, retry_after: bool = False) -> Schema:
    """An error response of an OpenAI-compatible route: an ``OpenAIError`` body, and a ``Retry-After`` header
    when a later try may succeed."""
    response: Schema = {"description": description, "content": json_content(ref("OpenAIError"))}
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


def openai_paths() -> dict[str, Schema]:
    """``POST /v1/embeddings`` and ``GET /v1/models``, with the statuses each gives."""
    routing = {k: v for k, v in INFER_HEADERS.items() if k.startswith("x-wasmgate-")}
    return {
        "/v1/embeddings": {
            "post": {
                "operationId": "create_embeddings",
                "tags": ["openai"],
                "summary": "OpenAI-compatible embeddings from a function that takes one BYTES input [-1] and "
                "returns one FP32 output [-1, D], routed as an OIP v2 request",
                "parameters": [param("tier"), param("deadline")],
                "security": [{"bearer": []}, {}],
                "requestBody": {"required": True, "content": json_content(ref("EmbeddingsRequest"))},
                "responses": {
                    "200": {
                        "description": "one embedding per text, in order",
                        "headers": routing,
                        "content": json_content(ref("EmbeddingsResponse")),
                    },
                    "400": routed(
                        openai_error(
                            "a body that is not the JSON the schema describes, token arrays, dimensions other than "
                            "the function's, a function whose signature is not one BYTES input and one FP32 [N, D] "
                            "output, a bad routing header, or a function that rejected its input"
                        )
                    ),
                    "401": openai_error("a missing or wrong bearer key (when the function or gateway has a token)"),
                    "404": openai_error("no function of that name (code model_not_found), or no route"),
                    "413": openai_error("the body or the text tensor is past its limit; the message names the setting"),
                    "429": routed(
                        openai_error("the function's slots and wait queue, or the pod tier's, are full", True)
                    ),
                    "500": routed(openai_error("the function trapped, reported a failure, or answered no FP32 [N, D]")),
                    "503": routed(
                        openai_error("no tier can serve it now, or a wait for a slot or a replica timed out", True)
                    ),
                    "504": routed(
                        openai_error(
                            "the function ran past its tier's deadline (the message names the setting), or a "
                            "replica past pod_request_timeout_s"
                        )
                    ),
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "list_models",
                "tags": ["openai"],
                "summary": "The functions the bearer key may call (and those that need no key), as OpenAI models",
                "security": [{"bearer": []}, {}],
                "responses": {"200": {"description": "the functions", "content": json_content(ref("ModelList"))}},
            }
        },
    }

"""The document's components: the schemas of the bodies (OIP v2 tensors and metadata, pushes, manifests, pool
settings), the parameters and the headers that operations share. Enums and patterns come from
:mod:`gateway.openapi.derived`; the pool settings and a model's figures are described from their dataclasses'
fields."""

from __future__ import annotations

import dataclasses
from typing import get_type_hints

from gateway.functions.push import ROUTING_KEYS
from gateway.openapi.derived import (
    DATATYPES,
    DIGEST_PATTERN,
    KINDS,
    MAX_SHAPE_DIMS,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    ROLES,
    TIER_SETTINGS,
    TIERS,
    Schema,
    field_schema,
)
from gateway.openapi.parts import ref
from wasm_host.figures import ModelFigures
from wasm_host.pool import PoolSettings

#: The least value of a pool setting that ``PoolSettings`` accepts, where it is more than 0 (every count and
#: time must be non-negative).
POOL_MINIMUMS = {"max_instances": 1, "concurrency": 1, "recycle_after": 1}
POOL_NOTES = {
    "deadline_ms": "on the Wasm tier; 0: the gateway's deadline_ms",
    "pod_deadline_ms": "on the pod tier; 0: the runners' runner_deadline_ms",
}


def pool_settings() -> Schema:
    """The ``PoolSettings`` object: one property per field, typed by its annotation, and no other (its
    ``from_json`` refuses unknown keys)."""
    hints = get_type_hints(PoolSettings)
    properties: dict[str, Schema] = {}
    for f in dataclasses.fields(PoolSettings):
        schema = field_schema(hints[f.name], f"PoolSettings.{f.name}")
        if schema["type"] in ("integer", "number"):
            schema["minimum"] = POOL_MINIMUMS.get(f.name, 0)
        if f.name in POOL_NOTES:
            schema["description"] = POOL_NOTES[f.name]
        properties[f.name] = schema
    return {
        "type": "object",
        "description": "A function's pool settings (README: Pools, scale to zero and admission).",
        "properties": properties,
        "additionalProperties": False,
    }


#: ``ModelFigures``' fields that are not scalars: the dynamic dimensions and the terms of the cost, as their
#: ``to_json`` writes them (wasm_host.figures).
FIGURE_LISTS: dict[str, Schema] = {
    "dims": {
        "type": "array",
        "description": "the dynamic dimensions other than the batch, and where a request gives each one's size",
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "at": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"input": {"type": "string"}, "axis": {"type": "integer", "minimum": 0}},
                        "required": ["input", "axis"],
                    },
                },
            },
            "required": ["name", "at"],
        },
    },
    "terms": {
        "type": "array",
        "description": "FLOPs per row = the sum of each term's flops times the product of the sizes of its "
        "'per' dimensions (a name twice: its square); none: flops_per_row whatever the request",
        "items": {
            "type": "object",
            "properties": {"flops": {"type": "number"}, "per": {"type": "array", "items": {"type": "string"}}},
            "required": ["flops", "per"],
        },
    },
}


def model_figures() -> Schema:
    """A manifest's ``figures``: the ``ModelFigures`` fields (a field that is neither a scalar nor in
    :data:`FIGURE_LISTS` stops the document from being built)."""
    hints = get_type_hints(ModelFigures)
    fields = dataclasses.fields(ModelFigures)
    return {
        "type": "object",
        "properties": {
            f.name: FIGURE_LISTS[f.name]
            if f.name in FIGURE_LISTS
            else field_schema(hints[f.name], f"ModelFigures.{f.name}")
            for f in fields
        },
    }


def aliased(description: str) -> Schema:
    """A push's ``models`` or ``files``: aliases (names, as ``check_name`` holds them) to uploaded digests."""
    return {
        "type": "object",
        "propertyNames": {"pattern": NAME_PATTERN, "maxLength": NAME_MAX_LENGTH},
        "additionalProperties": {"type": "string", "pattern": DIGEST_PATTERN},
        "description": description,
    }


#: The push body's routing settings, one for each of ``ROUTING_KEYS`` (a key added there without a schema
#: here stops the document from being built).
ROUTING_SETTINGS: dict[str, Schema] = {
    "tier": {"type": "string", "enum": TIER_SETTINGS},
    "spill": {"type": "boolean"},
    "mask_cold_start": {"type": "boolean"},
    "endpoint": {"type": "string", "description": "an http:// or https:// OIP v2 server's base URL"},
    "endpoint_model": {"type": "string", "pattern": NAME_PATTERN},
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error: what went wrong and what to change.",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "Datatype": {"type": "string", "enum": DATATYPES},
    "Parameters": {"type": "object", "description": "Free-form OIP parameters.", "additionalProperties": True},
    "TensorSpec": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": ref("Datatype"),
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
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": MAX_SHAPE_DIMS},
            "datatype": ref("Datatype"),
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
            "data": ref("TensorData"),
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
            "inputs": {"type": "array", "items": ref("InferInput"), "minItems": 1},
            "outputs": {"type": "array", "items": ref("RequestedOutput")},
        },
        "required": ["inputs"],
    },
    "InferOutput": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": ref("Datatype"),
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
            "data": ref("TensorData"),
        },
        "required": ["name", "shape", "datatype"],
    },
    "InferResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": ref("Parameters"),
            "outputs": {"type": "array", "items": ref("InferOutput")},
        },
        "required": ["model_name", "outputs"],
    },
    "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}, "required": ["live"]},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}, "required": ["ready"]},
    "ModelReady": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        "required": ["name", "ready"],
    },
    "ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
            "role": {"type": "string", "enum": ROLES},
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
            "inputs": {"type": "array", "items": ref("TensorSpec")},
            "outputs": {"type": "array", "items": ref("TensorSpec")},
        },
        "required": ["name", "platform", "inputs", "outputs"],
    },
    "PoolSettings": pool_settings(),
    "PushRequest": {
        "type": "object",
        "properties": {
            "module": {
                "type": ["string", "null"],
                "pattern": DIGEST_PATTERN,
                "description": "the uploaded module's digest; null pushes one bare ONNX model (alias 'model')",
            },
            "models": aliased("alias (a name) -> uploaded model digest"),
            "files": aliased(
                "alias (a name) -> uploaded data file digest: read-only files the function reads as /files/ALIAS "
                "(.wasm functions only; limits: settings max_file_bytes, max_function_files_bytes, "
                "max_function_files)"
            ),
            "pool": ref("PoolSettings"),
            **{key: ROUTING_SETTINGS[key] for key in ROUTING_KEYS},
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
            "kind": {"type": "string", "enum": KINDS},
            "module": {"type": ["string", "null"]},
            "models": {"type": "object", "additionalProperties": {"type": "string"}},
            "files": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "its data files: alias -> digest",
            },
            "inputs": {"type": ["array", "null"], "items": ref("TensorSpec")},
            "outputs": {"type": ["array", "null"], "items": ref("TensorSpec")},
            "created": {"type": "number"},
            "pool": ref("PoolSettings"),
            "tier": {"type": "string", "enum": TIER_SETTINGS},
            "endpoint": {"type": ["string", "null"]},
            "endpoint_model": {"type": ["string", "null"]},
            "figures": model_figures(),
            "spill": {"type": "boolean"},
            "mask_cold_start": {"type": "boolean"},
            "requires_token": {"type": "boolean", "description": "whether it has an inference token of its own"},
            "digest": {
                "type": ["string", "null"],
                "description": "with the registry store: the OCI manifest this version is (sha256:...); else null",
            },
            "home_tier": {"type": "string", "enum": TIERS},
            "cost": {
                "type": "object",
                "description": "the figures' FLOPs per row as a person reads them, e.g. '21.3M*seq + 9.43k*seq^2', "
                "and their value with every dynamic dimension at the reference size (the router's home_tier)",
                "properties": {
                    "flops_per_row": {"type": "string"},
                    "reference_size": {"type": "integer"},
                    "at_reference": {"type": "integer"},
                },
                "required": ["flops_per_row", "reference_size", "at_reference"],
            },
            "service_ms": {
                "type": "object",
                "description": "what this gateway has measured of the current version, by tier and size of request "
                "(small: below spill_batch_rows rows; large: at or above), in milliseconds",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        },
        "required": ["name", "version", "kind", "module", "models", "files", "pool", "tier", "home_tier"],
    },
    "BlobStored": {"type": "object", "properties": {"digest": {"type": "string"}}, "required": ["digest"]},
    "FunctionList": {
        "type": "object",
        "properties": {"functions": {"type": "array", "items": ref("Manifest")}},
        "required": ["functions"],
    },
    "Deleted": {
        "type": "object",
        "properties": {"deleted": {"type": "string"}, "version": {"type": "integer"}},
        "required": ["deleted", "version"],
    },
}

PARAMETERS: dict[str, Schema] = {
    "name": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "a function name: 1-128 letters, digits, '.', '_' or '-', starting and ending with a letter "
        "or digit, without '..'",
        "schema": {"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": NAME_MAX_LENGTH},
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

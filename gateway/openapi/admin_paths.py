"""The document's admin API paths: blobs (upload, check, fetch) and functions (push, list, show, delete, roll
back, list versions, change pool settings). The statuses every function operation shares (400 for a bad name,
404, 401) are added where the document is put together."""

from __future__ import annotations

from gateway.openapi.derived import Schema
from gateway.openapi.parts import BAD_NAME, STORE_ERRORS, TOO_LARGE, UNKNOWN, empty, error, json_content, param, ref


def admin_paths() -> dict[str, Schema]:
    """Every ``/admin/v1`` operation, with the statuses particular to it."""
    fn = json_content(ref("Manifest"))
    return {
        "/admin/v1/blobs/{digest}": {
            "parameters": [param("digest")],
            "head": {
                "operationId": "head_blob",
                "tags": ["admin"],
                "summary": "200 when the gateway holds the blob (stored, or uploaded for a push)",
                "responses": {"200": empty("held"), "400": empty("not a digest"), "404": empty("not held")},
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
                    "400": error("not a digest"),
                    "404": error("not in the store"),
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
                    "200": {"description": "already held", "content": json_content(ref("BlobStored"))},
                    "201": {"description": "uploaded", "content": json_content(ref("BlobStored"))},
                    "400": error("not a digest, or the bytes hash to another digest"),
                    "404": error("no route (a digest with '/')"),
                    "413": TOO_LARGE,
                },
            },
        },
        "/admin/v1/functions": {
            "get": {
                "operationId": "list_functions",
                "tags": ["admin"],
                "summary": "Every function's manifest, by name",
                "responses": {"200": {"description": "manifests", "content": json_content(ref("FunctionList"))}},
            },
        },
        "/admin/v1/functions/{name}": {
            "parameters": [param("name")],
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
                "requestBody": {"required": True, "content": json_content(ref("PushRequest"))},
                "responses": {
                    "201": {"description": "the new version", "content": fn},
                    "400": error("a refused push: bad body, name or digest, or a module or model that fails"),
                    "404": error("no route (a name with '/')"),
                    "413": TOO_LARGE,
                    **STORE_ERRORS,
                },
            },
            "delete": {
                "operationId": "delete_function",
                "tags": ["admin"],
                "summary": "Delete a function (its blobs stay)",
                "responses": {
                    "200": {"description": "deleted", "content": json_content(ref("Deleted"))},
                    "400": BAD_NAME,
                    "404": UNKNOWN,
                    **STORE_ERRORS,
                },
            },
        },
        "/admin/v1/functions/{name}/rollback": {
            "parameters": [param("name")],
            "post": {
                "operationId": "rollback",
                "tags": ["admin"],
                "summary": "Make an earlier version current again, as a new version",
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        {
                            "type": "object",
                            "properties": {"to": {"type": "integer", "minimum": 1}},
                            "additionalProperties": True,
                        }
                    ),
                },
                "responses": {
                    "201": {"description": "the new version", "content": fn},
                    "400": error("bad name or body, or no such earlier version to go back to"),
                    "404": UNKNOWN,
                    "413": TOO_LARGE,
                    **STORE_ERRORS,
                },
            },
        },
        "/admin/v1/functions/{name}/versions": {
            "parameters": [param("name")],
            "get": {
                "operationId": "function_versions",
                "tags": ["admin"],
                "summary": "The versions a function has had, and its current one",
                "responses": {
                    "200": {
                        "description": "versions",
                        "content": json_content(
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
            "parameters": [param("name")],
            "patch": {
                "operationId": "patch_pool",
                "tags": ["admin"],
                "summary": "Change some pool settings; not a new version",
                "requestBody": {"required": True, "content": json_content(ref("PoolSettings"))},
                "responses": {
                    "200": {"description": "the manifest", "content": fn},
                    "400": error("bad name, or bad or unknown pool settings"),
                    "404": UNKNOWN,
                    "413": TOO_LARGE,
                    **STORE_ERRORS,
                },
            },
        },
    }

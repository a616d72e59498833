"""Building blocks the document's modules share: references to components, JSON content, error responses,
and the error responses several operations give alike."""

from __future__ import annotations

from gateway.openapi.derived import Schema


def ref(name: str) -> Schema:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def param(name: str) -> Schema:
    """A reference to the component parameter ``name``."""
    return {"$ref": f"#/components/parameters/{name}"}


def json_content(schema: Schema) -> Schema:
    """A ``content`` map of JSON described by ``schema``."""
    return {"application/json": {"schema": schema}}


def error(description: str, retry_after: bool = False) -> Schema:
    """An error response: an ``Error`` body, and a ``Retry-After`` header when a later try may succeed."""
    response: Schema = {"description": description, "content": json_content(ref("Error"))}
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


def empty(description: str) -> Schema:
    """A response without a body."""
    return {"description": description}


BAD_NAME = error("a function name that is not 1-128 letters, digits, '.', '_' or '-' starting and ending alphanumeric")
UNKNOWN = error("unknown function or version, or no route for the path")
TOO_LARGE = error(
    "the body, a tensor, a module, a model or a data file is past its limit; the message names the setting"
)
UNAUTHORIZED = error("a missing or wrong bearer token (when the gateway is configured with one)")
#: What a change can meet with the registry store (settings ``store``): it cannot be reached, or it refuses.
STORE_ERRORS = {
    "502": error("the registry store refused: credentials, deletes disabled, or bytes that do not match"),
    "503": error("the registry store cannot be reached, or the store's disk is full", True),
}

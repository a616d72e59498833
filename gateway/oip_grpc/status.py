"""The one place where errors become gRPC statuses. An error's HTTP status comes from the one table of
``gateway.http_errors`` (the class of the tree decides it); its gRPC status code comes from that status, by
:data:`CODES`::

    400  INVALID_ARGUMENT    bad input: a tensor, a shape, a datatype, a parameter; a function that refused it
    401  UNAUTHENTICATED     no token, or a wrong one
    404  NOT_FOUND           no such function or version
    413  RESOURCE_EXHAUSTED  a tensor or request past its limit
    429  RESOURCE_EXHAUSTED  the function's queue is full (retry later)
    500  INTERNAL            the function trapped or failed; a bug, logged with its traceback
    502  UNAVAILABLE         a service the gateway depends on failed
    503  UNAVAILABLE         no capacity, not ready, no tier can take it (retry later)
    504  DEADLINE_EXCEEDED   the function ran past its deadline

A request past ``max_body_bytes`` is refused by gRPC itself, before it is read, with RESOURCE_EXHAUSTED. No
error of the tree means "known, but not allowed": a wrong token is UNAUTHENTICATED, as a missing one is (HTTP
answers both 401), so PERMISSION_DENIED is never sent.
"""

from __future__ import annotations

import grpc

from gateway.http_errors import status_of
from wasm_host.errors import WasmgateError

#: The gRPC status code of each HTTP status an error of the tree is answered with.
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_of(exc: WasmgateError) -> grpc.StatusCode:
    return CODES.get(status_of(exc), grpc.StatusCode.INTERNAL)

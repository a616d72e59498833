"""The one place where errors become gRPC statuses: the gRPC side of ``gateway.http_errors``, with the same
classes in the same order, each with the status code a gRPC client gets for it (and the HTTP status it is
answered with, for reference)::

    DeadlineExceeded   504  DEADLINE_EXCEEDED    the function ran past its deadline
    GuestTrap          500  INTERNAL             the function trapped
    GuestFailure       500  INTERNAL             the function failed
    InvalidRequest     400  INVALID_ARGUMENT     bad input: a tensor, a shape, a datatype, a parameter
    Unauthorized       401  UNAUTHENTICATED      no token, or a wrong one
    NotFound           404  NOT_FOUND            no such function or version
    TooLarge           413  RESOURCE_EXHAUSTED   a tensor or request past its limit
    TooManyRequests    429  RESOURCE_EXHAUSTED   the function's queue is full (retry later)
    Unavailable        503  UNAVAILABLE          no capacity, not ready, no tier can take it (retry later)
    UpstreamError      502  UNAVAILABLE          a service the gateway depends on failed
    anything else      500  INTERNAL             a bug, logged with its traceback

A request past ``max_body_bytes`` is refused by gRPC itself, before it is read, with RESOURCE_EXHAUSTED. No
error of the tree means "known, but not allowed": a wrong token is UNAUTHENTICATED, as a missing one is (HTTP
answers both 401), so PERMISSION_DENIED is never sent.
"""

from __future__ import annotations

import grpc

from wasm_host.errors import (
    DeadlineExceeded,
    GuestFailure,
    GuestTrap,
    InvalidRequest,
    NotFound,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UpstreamError,
    WasmgateError,
)

#: Most specific first: the first class an error is an instance of decides its code.
CODES: list[tuple[type[WasmgateError], grpc.StatusCode]] = [
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (GuestTrap, grpc.StatusCode.INTERNAL),
    (GuestFailure, grpc.StatusCode.INTERNAL),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TooManyRequests, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (UpstreamError, grpc.StatusCode.UNAVAILABLE),
]
UNMAPPED = grpc.StatusCode.INTERNAL


def code_of(exc: WasmgateError) -> grpc.StatusCode:
    for error, code in CODES:
        if isinstance(exc, error):
            return code
    return UNMAPPED

"""The one place where errors become HTTP responses.

Every error body is ``{"error": "<message>"}``. Each error is logged once, here: client errors at INFO, server
errors at WARNING (with the traceback for anything unexpected). Messages never contain tokens or request data
beyond what the caller sent.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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

log = logging.getLogger("wasmgate.http")

#: Most specific first: the first class an error is an instance of decides its status.
STATUS: list[tuple[type[WasmgateError], int]] = [
    (DeadlineExceeded, 504),
    (GuestTrap, 500),
    (GuestFailure, 500),
    (InvalidRequest, 400),
    (Unauthorized, 401),
    (NotFound, 404),
    (TooLarge, 413),
    (TooManyRequests, 429),
    (Unavailable, 503),
    (UpstreamError, 502),
]


def status_of(exc: WasmgateError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def handle_wasmgate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WasmgateError)
    status = status_of(exc)
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "%s %s -> %d: %s",
        request.method,
        request.url.path,
        status,
        exc,
    )
    headers = None
    if isinstance(exc, Unavailable) and exc.retry_after is not None:
        headers = {"retry-after": str(max(1, round(exc.retry_after)))}
    if isinstance(exc, Unauthorized):
        headers = {"www-authenticate": "Bearer"}
    return error_response(status, str(exc), headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else f"no route for {request.method} {request.url.path}"
    return error_response(exc.status_code, message, dict(exc.headers) if exc.headers else None)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s -> 500: unexpected error", request.method, request.url.path)
    return error_response(500, "internal error; the gateway logged the details")


EXCEPTION_HANDLERS = {
    WasmgateError: handle_wasmgate_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}

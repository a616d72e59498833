"""The one place where errors become HTTP responses.

Every error body is ``{"error": "<message>"}``. Each error is logged once, here: client errors at INFO, server
errors at WARNING, and anything unexpected (a bug) at ERROR with its traceback. Messages never contain tokens or
request data beyond what the caller sent.

Errors of the tree (``wasm_host.errors``) and Starlette's HTTP errors go through :data:`EXCEPTION_HANDLERS`.
Anything else is answered by :class:`UnexpectedErrors`, a middleware, rather than by an ``Exception`` handler:
Starlette runs that handler in its outermost middleware and then raises the error again for the server, which
logs it a second time.
"""

from __future__ import annotations

import contextlib
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

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


EXCEPTION_HANDLERS = {
    WasmgateError: handle_wasmgate_error,
    HTTPException: handle_http_exception,
}


class UnexpectedErrors:
    """ASGI middleware: an error no handler knows is answered 500 and logged once, with its traceback, and
    goes no further. When the response had already started, nothing more can be sent; the server then closes
    the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("%s %s -> 500: unexpected error", scope["method"], scope["path"])
            response = error_response(500, "internal error; the gateway logged the details")
            with contextlib.suppress(RuntimeError):  # the response had started: the server refuses a second one
                await response(scope, receive, send)

"""The one place where errors become HTTP responses.

One table (:data:`ERRORS`) gives each error of the tree its status and, for the OpenAI-compatible routes, its
OpenAI ``type`` and ``code``. The body's shape is chosen by route: under :data:`OPENAI_PREFIX` it is OpenAI's,
``{"error": {"message", "type", "param", "code"}}`` (``param`` is always null: the message names the
parameter), everywhere else ``{"error": "<message>"}``. Each error is logged once, here: client errors at INFO,
server errors at WARNING, and anything unexpected (a bug) at ERROR with its traceback. Messages never contain
tokens or request data beyond what the caller sent.

Errors of the tree (``wasm_host.errors``) and Starlette's HTTP errors go through :data:`EXCEPTION_HANDLERS`.
Anything else is answered by :class:`UnexpectedErrors`, a middleware, rather than by an ``Exception`` handler:
Starlette runs that handler in its outermost middleware and then raises the error again for the server, which
logs it a second time.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import NamedTuple

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

#: The routes whose errors are answered in OpenAI's shape (gateway.openai_api).
OPENAI_PREFIX = "/v1/"


class Mapped(NamedTuple):
    """How one class of the tree is answered: its status, and its ``type`` and ``code`` in OpenAI's shape."""

    error: type[WasmgateError]
    status: int
    openai_type: str
    openai_code: str | None


#: Most specific first: the first class an error is an instance of decides how it is answered.
ERRORS: list[Mapped] = [
    Mapped(DeadlineExceeded, 504, "server_error", "timeout"),
    Mapped(GuestTrap, 500, "server_error", None),
    Mapped(GuestFailure, 500, "server_error", None),
    Mapped(InvalidRequest, 400, "invalid_request_error", None),
    Mapped(Unauthorized, 401, "authentication_error", "invalid_api_key"),
    Mapped(NotFound, 404, "invalid_request_error", "model_not_found"),
    Mapped(TooLarge, 413, "invalid_request_error", "request_too_large"),
    Mapped(TooManyRequests, 429, "rate_limit_error", "rate_limit_exceeded"),
    Mapped(Unavailable, 503, "server_error", "service_unavailable"),
    Mapped(UpstreamError, 502, "server_error", "upstream_error"),
]
#: What neither the tree nor the table names: a bug (500), or a status of Starlette's own (404, 405).
UNMAPPED = Mapped(WasmgateError, 500, "server_error", None)


def mapped(exc: WasmgateError) -> Mapped:
    for row in ERRORS:
        if isinstance(exc, row.error):
            return row
    return UNMAPPED


def status_of(exc: WasmgateError) -> int:
    return mapped(exc).status


def error_for_status(status: int, message: str) -> WasmgateError:
    """The error of the tree that is answered with ``status`` (the first in :data:`ERRORS`), carrying
    ``message``: for an error a replica or endpoint answered, raised again here in the caller's shape. A status
    the table lacks becomes a 400 (any other 4xx) or a 500."""
    for row in ERRORS:
        if row.status == status:
            return row.error(message)
    return InvalidRequest(message) if 400 <= status < 500 else GuestFailure(message)


def answered_error(answer: Response) -> WasmgateError | None:
    """The error an OIP v2 answer of a placed request stands for, None for a 200: a replica's or endpoint's error
    answer, to be raised again where the request came in by another protocol (OpenAI's, gRPC), with its status's
    error (:func:`error_for_status`), its message, and the ``x-wasmgate-*`` headers of where it ran."""
    if answer.status_code == 200:
        return None
    failed = error_for_status(answer.status_code, _message(bytes(answer.body)))
    failed.headers = {k: v for k, v in answer.headers.items() if k.startswith("x-wasmgate-")}
    return failed


def _message(body: bytes) -> str:
    """The message of an OIP v2 error body, ``{"error": "..."}``."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return body[:200].decode(errors="replace") or "the function's tier answered an error without a message"


def error_response(
    path: str, status: int, message: str, headers: dict[str, str] | None = None, row: Mapped | None = None
) -> Response:
    """The error response for a request of ``path``: in OpenAI's shape under :data:`OPENAI_PREFIX` (``type``
    and ``code`` from ``row``, else by status alone), else ``{"error": message}``."""
    if not path.startswith(OPENAI_PREFIX):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    if row is None:  # a status of Starlette's own (no route, a method not allowed): no code to give
        row = Mapped(WasmgateError, status, "invalid_request_error" if status < 500 else "server_error", None)
    body = {"message": message, "type": row.openai_type, "param": None, "code": row.openai_code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def handle_wasmgate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WasmgateError)
    row = mapped(exc)
    status = row.status
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "%s %s -> %d: %s",
        request.method,
        request.url.path,
        status,
        exc,
    )
    headers = dict(exc.headers or {})  # where it ran, for an error that ended a placed request
    if isinstance(exc, Unavailable) and exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = "Bearer"
    return error_response(request.url.path, status, str(exc), headers, row)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else f"no route for {request.method} {request.url.path}"
    return error_response(request.url.path, exc.status_code, message, dict(exc.headers) if exc.headers else None)


EXCEPTION_HANDLERS = {
    WasmgateError: handle_wasmgate_error,
    HTTPException: handle_http_exception,
}


async def answer_error(request: Request, exc: Exception) -> Response:
    """The answer of the handler in :data:`EXCEPTION_HANDLERS` that takes ``exc``, as Starlette's exception
    middleware gives it, for a route served outside that middleware (``gateway.lean``). Raises ``exc`` again when
    no handler takes it: :class:`UnexpectedErrors` answers it."""
    for kind, handler in EXCEPTION_HANDLERS.items():
        if isinstance(exc, kind):
            return await handler(request, exc)
    raise exc


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
            response = error_response(scope["path"], 500, "internal error; the gateway logged the details")
            with contextlib.suppress(RuntimeError):  # the response had started: the server refuses a second one
                await response(scope, receive, send)

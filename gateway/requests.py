"""Reading a request body up to its limit, and a body (or a binary request's header) as a JSON object."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import Request

from wasm_host.errors import InvalidRequest, TooLarge


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) past ``limit`` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds {limit} (setting max_body_bytes)")
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise InvalidRequest(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds {limit} bytes (setting max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(
    body: bytes, what: str, expected: str, hint: str = "", fast: bool = False, **options: Any
) -> dict[str, Any]:
    """``body`` parsed as a JSON object (``options`` go to ``json.loads``). InvalidRequest ``"<what> is not valid
    JSON: <why>"`` (then ``; <hint>``) when it does not parse: bad UTF-8 or syntax, an integer too long, nesting too
    deep, or what an option refuses; and ``expected`` when it parses to anything but an object.

    With ``fast`` the body is parsed by orjson first (several times quicker on a request's tensors), and by
    ``json.loads`` with ``options`` only when orjson refuses it: orjson is the stricter parser (no NaN or
    Infinity tokens, no number past a double's range, nesting to 1024), so what is accepted, and every error's
    message, stay those of ``json.loads`` with ``options``, with one difference: an integer past 64 bits reads as
    a float (json.loads: an int), which the codec refuses all the same (as a shape, a 400 rather than a 413).
    ``options`` must refuse no more than orjson does (``parse_constant`` refusing NaN and Infinity does not:
    orjson never accepts those)."""
    if fast:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the stdlib below decides, and explains
        else:
            if not isinstance(doc, dict):
                raise InvalidRequest(expected)
            return doc
    try:
        doc = json.loads(body, **options)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, huge ints
        raise InvalidRequest(f"{what} is not valid JSON: {exc}" + (f"; {hint}" if hint else "")) from None
    if not isinstance(doc, dict):
        raise InvalidRequest(expected)
    return doc

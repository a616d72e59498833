"""Reading a request body up to its limit, and a body (or a binary request's header) as a JSON object."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from wasm_host.errors import InvalidRequest, TooLarge


def header_map(scope: Scope) -> dict[str, str]:
    """A request's headers as a dict of each name's first value (what Starlette's ``Headers.get`` answers; ASGI
    servers give names lower-cased). Built once per inference request, whose path reads its headers several
    times (lengths, encoding, token, routing hints): a dict answers each in constant time, where ``Headers``
    scans and decodes the raw list on every read."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) past ``limit`` without reading it all."""
    return await receive_body(request.receive, request.headers, limit)


async def receive_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The body of the request whose ASGI channel is ``receive`` and whose headers are ``headers``, refusing
    (413) past ``limit`` without reading it all, and an encoded body (400). Raises Starlette's
    ``ClientDisconnect`` when the client leaves before sending it all. Reads the channel directly: one message
    for most bodies, with none of a stream's per-chunk machinery."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds {limit} (setting max_body_bytes)")
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise InvalidRequest(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"request body exceeds {limit} bytes (setting max_body_bytes)")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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

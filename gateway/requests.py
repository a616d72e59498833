"""Reading a request body up to its limit."""

from __future__ import annotations

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

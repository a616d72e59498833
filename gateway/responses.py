"""The response of an inference request, with its headers encoded once per distinct set rather than per request.

An answer's headers repeat from one request to the next: its content type, the routing headers (tier, reason,
replica), a binary answer's header length. Starlette's ``Response`` lower-cases and encodes every header of
every response; :class:`InferResponse` looks the encoded set up instead. The bytes on the wire are the same as
Starlette's: the given headers in order, then ``content-length``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from starlette.responses import Response

Encoded = tuple[tuple[bytes, bytes], ...]


@functools.lru_cache(maxsize=4096)
def _encoded(items: tuple[tuple[str, str], ...]) -> Encoded:
    # Bounded: a set is one function's content type and routing headers, so there are few; the cache keeps the
    # most recent 4096 whatever comes.
    return tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items)


class InferResponse(Response):
    """A Starlette ``Response`` of ``body`` with ``headers`` (which must not hold ``content-length``)."""

    def __init__(self, body: bytes, status_code: int, headers: Mapping[str, str]) -> None:
        self.body = body
        self.status_code = status_code
        self.background = None
        self.raw_headers = [*_encoded(tuple(headers.items())), (b"content-length", str(len(body)).encode())]

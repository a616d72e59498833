"""uvicorn's httptools protocol, with each response written to its socket in one system call.

uvicorn writes a response's status line and headers when the app sends ``http.response.start`` and its body when
the app sends ``http.response.body``: two writes, and on a TCP socket each write is a system call that runs the
kernel's whole send path (on a loopback connection, the receiving side's as well). For a small inference answer
that second call measured about a tenth of the request's CPU. :class:`HttpProtocol` hands uvicorn a transport
that collects the writes made during one turn of the event loop and passes them on together at the end of that
turn: the head and the body of an answer go out in one call, as does a run of pipelined answers. Nothing else
changes: the bytes, their order, flow control (the real transport still pauses and resumes the protocol) and
closing (pending writes go out first).

Only the httptools protocol gets this; where httptools is not installed, uvicorn's h11 protocol serves as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Pending writes up to this many bytes in all are joined into one; past it the transport gets them as a list.
JOIN_BYTES = 256 * 1024


class CoalescingTransport(asyncio.Transport):
    """A transport that passes ``write`` calls on to ``transport`` once per event-loop turn, joined; every other
    call goes straight through (a close or an end of file after the pending writes)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        # Copied when mutable: a caller may reuse its buffer once write returns, as asyncio allows.
        self._pending.append(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Pass the pending writes on now, in one call (dropped if the connection is closing: so would the
        transport drop them)."""
        pending, self._pending = self._pending, []
        if not pending or self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        elif sum(map(len, pending)) <= JOIN_BYTES:
            self._transport.write(b"".join(pending))
        else:  # a large body is not copied to be joined: the transport writes the parts as they are
            self._transport.writelines(pending)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CoalescingTransport` (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))

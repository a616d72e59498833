"""gateway.http_protocol: a response's writes reach the socket in one call, and HTTP/1.1 behaves as uvicorn's own
protocol does (pipelining, ``Connection: close``, large bodies). The first test records what the transport is
given; the others run a real uvicorn server with the protocol on a real socket."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("httptools")

import uvicorn

from gateway.http_protocol import JOIN_BYTES, CoalescingTransport, HttpProtocol


class Recording(asyncio.Transport):
    """The transport under the coalescing one: records each call it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", [bytes(d) for d in list_of_data]))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_loop_turn_go_out_together_and_close_sends_them_first() -> None:
    async def scenario() -> list[list[tuple[str, object]]]:
        loop = asyncio.get_running_loop()
        seen = []
        under = Recording()
        t = CoalescingTransport(under, loop)
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        t.write(bytearray(b"ok"))
        assert under.calls == []  # held until the turn ends
        assert t.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        seen.append(list(under.calls))
        under.calls.clear()
        t.write(b"a" * JOIN_BYTES)
        t.write(b"b")
        await asyncio.sleep(0)
        seen.append(list(under.calls))
        under.calls.clear()
        t.write(b"last")
        t.close()
        seen.append(list(under.calls))
        under2 = Recording()
        t2 = CoalescingTransport(under2, loop)
        t2.write(b"dropped")
        t2.abort()
        await asyncio.sleep(0)
        seen.append(list(under2.calls))
        return seen

    one_turn, large, closing, aborted = asyncio.run(scenario())
    assert one_turn == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")]
    assert large == [("writelines", [b"a" * JOIN_BYTES, b"b"])]  # not copied to be joined
    assert closing == [("write", b"last"), ("close", None)]
    assert aborted == [("abort", None)]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers a POST with its body, reversed, and ``GET /big`` with 1 MiB."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    answer = bytes(range(256)) * 4096 if scope["path"] == "/big" else body[::-1]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=HttpProtocol, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


def read_response(f: Any) -> tuple[bytes, dict[bytes, bytes], bytes]:
    status = f.readline()
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers[b"content-length"]))


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    requests = b"".join(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(b), b) for b in (b"abc", b"hello")
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(requests)
        f = s.makefile("rb")
        first, second = read_response(f), read_response(f)
    assert first[0].startswith(b"HTTP/1.1 200")
    assert first[2] == b"cba"
    assert second[0].startswith(b"HTTP/1.1 200")
    assert second[2] == b"olleh"


def test_connection_close_gets_the_whole_answer_then_end_of_file(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        f = s.makefile("rb")
        status, headers, body = read_response(f)
        assert f.read() == b""  # closed after the answer, which was not lost to the close
    assert status.startswith(b"HTTP/1.1 200")
    assert body == b"ko"
    assert headers[b"connection"] == b"close"


def test_a_large_answer_arrives_whole(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        status, _, body = read_response(s.makefile("rb"))
    assert status.startswith(b"HTTP/1.1 200")
    assert body == bytes(range(256)) * 4096


@pytest.mark.skipif(sys.platform != "linux", reason="httptools is a dependency on Linux only")
def test_wasm_serve_uses_it() -> None:
    from gateway.server import event_loop_options

    assert event_loop_options()["http"] is HttpProtocol

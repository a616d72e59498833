"""The workers' shared listening socket: connections accepted from it must have TCP_NODELAY, or every response
waits on a delayed ACK. asyncio sets TCP_NODELAY only when the socket says IPPROTO_TCP."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from router.sockets import tcp_listener


async def nodelay_of_accepted(listener: socket.socket) -> int:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    port = listener.getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(accepted, 10)
    finally:
        writer.close()
        server.close()


def test_workers_listener_gets_nodelay_connections() -> None:
    assert asyncio.run(nodelay_of_accepted(tcp_listener("127.0.0.1", 0))) == 1


def test_a_protocol_zero_socket_would_not() -> None:
    # What uvicorn's own multi-worker socket is, and why gateway.server makes its own.
    sock = socket.socket(socket.AF_INET)
    sock.bind(("127.0.0.1", 0))
    assert asyncio.run(nodelay_of_accepted(sock)) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="uvloop and httptools are dependencies on Linux only")
def test_uvloop_and_httptools_serve_where_installed_and_keep_nodelay() -> None:
    """On Linux both are core dependencies: uvicorn is given uvloop by name and httptools' protocol through
    gateway.http_protocol, and uvloop's accepted connections
    from the workers' listener have TCP_NODELAY as asyncio's do."""
    import uvloop

    from gateway.http_protocol import HttpProtocol
    from gateway.server import event_loop_options

    assert event_loop_options() == {"loop": "uvloop", "http": HttpProtocol}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(nodelay_of_accepted(tcp_listener("127.0.0.1", 0))) == 1

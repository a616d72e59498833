"""The workers' shared listening socket: connections accepted from it must have TCP_NODELAY, or every response
waits on a delayed ACK. asyncio sets TCP_NODELAY only when the socket says IPPROTO_TCP."""

from __future__ import annotations

import asyncio
import socket

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

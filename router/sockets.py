"""Listening sockets, made the way both the gateway's workers and the local scaler's runners need them."""

from __future__ import annotations

import socket


def tcp_listener(host: str, port: int) -> socket.socket:
    """The listening socket the workers share, made as ``IPPROTO_TCP`` explicitly.

    uvicorn's own (``socket.socket(AF_INET)``) carries protocol 0, and asyncio enables TCP_NODELAY only on
    connections whose socket says IPPROTO_TCP; the workers' connections then wait on Nagle's algorithm and
    delayed ACKs, about 40 ms per response (measured: 23 req/s at concurrency 1, for any app).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock

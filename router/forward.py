"""Forwarding inference requests to a replica over HTTP, with httpx.

One :class:`Forwarder` per app holds one ``httpx.AsyncClient``: keep-alive connections are pooled per replica,
so a warm replica costs no TCP handshake per request. The client is made, and httpx imported, after the app is
ready (:meth:`Forwarder.prepare`, on a thread) or by the first forward if that comes first: building it loads the
TLS trust store, and with the import that is about a tenth of a second that a gateway would otherwise pay before
it reports ready, and that the first forward would otherwise pay on the event loop.

The request body goes out exactly as the caller sent it (JSON, or Triton binary tensors with their
``Inference-Header-Content-Length``), and the replica's response comes back as it is; the gateway neither parses
nor re-encodes tensors for the pod tier.

Failures are told apart by whether a retry could run the request twice:

- :class:`ReplicaUnreachable`: the replica never took the request (connection refused or reset before the
  request was written, connect timeout, or the connection closed before any response byte on a reused
  keep-alive connection). Retrying it on another replica is safe in the sense the gateway promises: no
  response was ever produced.
- :class:`~wasm_host.errors.DeadlineExceeded`: the replica took the request and did not answer within
  ``pod_request_timeout_s`` (extended for a function whose own pod-tier deadline is longer than the runners';
  see :meth:`Forwarder.timeout_s`). Never retried: it may still be running.
- :class:`~wasm_host.errors.Unavailable`: the response began and then broke off. Never retried.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from wasm_host.errors import DeadlineExceeded, ReplicaUnreachable, Unavailable

#: Request headers a replica needs to read the body; everything else (cookies, tokens) stays at the gateway.
FORWARDED_REQUEST_HEADERS = ("content-type", "inference-header-content-length")
#: Response headers that describe the body; hop-by-hop and framing headers are the gateway's own.
FORWARDED_RESPONSE_HEADERS = ("content-type", "inference-header-content-length")


NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

if TYPE_CHECKING:  # imported at the first forward, see the module docstring
    import httpx


@dataclasses.dataclass(frozen=True)
class Forwarded:
    status: int
    body: bytes
    headers: dict[str, str]


class Forwarder:
    def __init__(
        self,
        connect_timeout_s: float,
        request_timeout_s: float,
        runner_deadline_ms: int = 0,
        max_connections: int = 256,
    ) -> None:
        """``request_timeout_s`` covers a request held to the runners' own deadline, ``runner_deadline_ms``
        (settings ``pod_request_timeout_s`` and ``runner_deadline_ms``)."""
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.runner_deadline_ms = runner_deadline_ms
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None  # made by prepare or the first forward (module docstring)
        self._making = threading.Lock()

    def prepare(self) -> None:
        """Make the client now, off the event loop (blocking: importing httpx and loading the TLS trust store
        take about a tenth of a second). The app calls it from a thread shortly after it is ready, so that the
        first forward does not hold the event loop that long; a forward that comes first makes it itself."""
        self._http()

    def _http(self) -> httpx.AsyncClient:
        client = self._client
        if client is None:
            with self._making:  # prepare's thread and a first forward may race: one client
                client = self._client or self._make()
                self._client = client
        return client

    def _make(self) -> httpx.AsyncClient:
        import httpx

        limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.request_timeout_s, connect=self.connect_timeout_s),
            # httpcore writes a request's head and body in separate sends; with Nagle's algorithm on, the body
            # waits for the replica's delayed ACK of the head. TCP_NODELAY sends it at once.
            transport=httpx.AsyncHTTPTransport(limits=limits, socket_options=[NODELAY]),
            # A replica is addressed directly; proxies from the environment must not reroute that traffic.
            trust_env=False,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def timeout_s(self, deadline_ms: int = 0) -> float:
        """Seconds to wait for the answer to a request of a function whose pod-tier deadline is
        ``deadline_ms`` (0: the runners'): ``request_timeout_s``, plus however much longer than the runners'
        that function's deadline is, so the gateway never gives up on a request its runner still runs."""
        return self.request_timeout_s + max(0, deadline_ms - self.runner_deadline_ms) / 1000

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], deadline_ms: int = 0) -> Forwarded:
        """POST ``body`` to ``url``, waiting :meth:`timeout_s` for the answer; raises ReplicaUnreachable or
        DeadlineExceeded as the module says."""
        import httpx  # loaded by _http() already: a lookup in sys.modules

        client = self._http()
        sent = {k: v for k in FORWARDED_REQUEST_HEADERS if (v := headers.get(k)) is not None}
        timeout = self.timeout_s(deadline_ms)
        request = client.build_request(
            "POST", url, content=body, headers=sent, timeout=httpx.Timeout(timeout, connect=self.connect_timeout_s)
        )
        try:
            response = await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ReplicaUnreachable(f"cannot connect to {_origin(url)}: {_reason(exc)}") from exc
        except httpx.TimeoutException as exc:
            raise self._deadline(url, timeout) from exc
        except httpx.TransportError as exc:
            # Closed or reset before the response began: a draining replica closing a keep-alive connection,
            # or a replica that died. Nothing was answered.
            raise ReplicaUnreachable(f"{_origin(url)} closed the connection without answering") from exc
        # The response has started: from here on a failure is final, never a reason to run it elsewhere.
        try:
            content = await response.aread()
        except httpx.TimeoutException as exc:
            raise self._deadline(url, timeout) from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"{_origin(url)} failed in the middle of its response: {_reason(exc)}") from exc
        finally:
            await response.aclose()
        kept = {k: v for k in FORWARDED_RESPONSE_HEADERS if (v := response.headers.get(k)) is not None}
        return Forwarded(response.status_code, content, kept)

    def _deadline(self, url: str, timeout_s: float) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"{_origin(url)} did not answer within {timeout_s:g} s; raise it with WASMGATE_POD_REQUEST_TIMEOUT_S "
            "(setting pod_request_timeout_s, which must exceed the runners' runner_deadline_ms)"
        )


def _origin(url: str) -> str:
    import httpx  # a forward has loaded it

    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__

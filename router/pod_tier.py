"""The pod tier: forwarding a function's requests to a runner replica, or to the OIP v2 server registered
as its endpoint.

A replica gets ``/v2/models/{name}/versions/{version}/infer``, so it serves exactly the version the gateway
routed (a runner that has an older one loads the new one; see ``gateway.source``). A registered endpoint gets
``/v2/models/{endpoint_model}/infer``, as any OIP v2 server expects.

One call is one attempt. A replica that did not take the request raises
:class:`router.forward.ReplicaUnreachable` naming it, and the router retries once, on another candidate
(``gateway.routing``). A response that has started, an error response included, is never retried.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Mapping

from router.activator import Activator
from router.forward import Forwarded, Forwarder, ReplicaUnreachable
from router.wasm_tier import EWMA_WEIGHT
from wasm_host.errors import Unavailable


@dataclasses.dataclass(frozen=True)
class Served:
    response: Forwarded
    replica: str  # what x-wasmgate-replica reports
    held: bool  # the request waited for the tier to scale up


@dataclasses.dataclass(frozen=True)
class Target:
    """What the pod tier needs to know of a function."""

    name: str
    version: int
    endpoint: str | None = None
    endpoint_model: str | None = None


class PodTier:
    name = "pod"

    def __init__(self, forwarder: Forwarder, activator: Activator | None) -> None:
        """``activator`` is None when no scaler is configured: only functions with an endpoint are served."""
        self.forwarder = forwarder
        self.activator = activator
        #: Recent time of a forwarded request on a ready replica (EWMA, ms); the router's deadline check reads it.
        self.typical_ms: float | None = None

    async def aclose(self) -> None:
        """Close pooled connections, and release the scaler (the local scaler stops its runners)."""
        await self.forwarder.aclose()
        if self.activator is not None:
            await self.activator.scaler.aclose()

    async def infer(
        self, target: Target, body: bytes, headers: Mapping[str, str], exclude: Collection[str] = (), hold: bool = True
    ) -> Served:
        """One attempt on one replica (or on the registered endpoint). Raises ReplicaUnreachable, naming the
        replica, when it did not take the request: the caller may retry elsewhere, once. ``exclude`` and
        ``hold`` are for that retry: skip the replica that failed, and do not wait for one to start."""
        started = time.perf_counter()
        if target.endpoint is not None:
            url = f"{target.endpoint}/v2/models/{target.endpoint_model or target.name}/infer"
            try:
                response = await self.forwarder.post(url, body, headers)
            except ReplicaUnreachable as exc:
                raise ReplicaUnreachable(
                    f"the endpoint registered for {target.name!r} is unreachable: {exc}", 5, replica=target.endpoint
                ) from exc
            self._observe(started)
            return Served(response, target.endpoint, False)
        if self.activator is None:
            raise Unavailable(
                f"{target.name!r} runs on the pod tier, and this gateway has none (setting pod_scaler is 'none'); "
                "configure a scaler, or push the function with --tier wasm"
            )
        path = f"/v2/models/{target.name}/versions/{target.version}/infer"
        async with self.activator.acquire(target.name, exclude=exclude, hold=hold) as lease:
            try:
                response = await self.forwarder.post(lease.replica.url + path, body, headers)
            except ReplicaUnreachable as exc:
                self.activator.failed(lease.replica)
                raise ReplicaUnreachable(str(exc), 1, replica=lease.replica.id) from exc
            self.activator.served(target.name, lease.replica)
            if not lease.held:
                self._observe(started)
            return Served(response, lease.replica.id, lease.held)

    def _observe(self, started: float) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        typical = self.typical_ms
        self.typical_ms = elapsed_ms if typical is None else typical + EWMA_WEIGHT * (elapsed_ms - typical)

"""The pod tier: forwarding a function's requests to a runner replica, or to the OIP v2 server registered
as its endpoint.

A replica gets ``/v2/models/{name}/versions/{version}/infer``, so it serves exactly the version the gateway
routed (a runner that has an older one loads the new one; see ``gateway.source``). A registered endpoint gets
``/v2/models/{endpoint_model}/infer``, as any OIP v2 server expects.

Retry: a request that a replica did not take (:class:`router.forward.ReplicaUnreachable`) is retried once,
on another ready replica; if there is none it fails with 503 at once. A response that has started, an error
response included, is never retried.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from router.activator import Activator
from router.forward import Forwarded, Forwarder, ReplicaUnreachable
from wasm_host.errors import Unavailable


@dataclasses.dataclass(frozen=True)
class Served:
    response: Forwarded
    replica: str  # what x-wasmgate-replica reports
    held: bool  # the request waited for the tier to scale up
    retried: bool


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

    async def aclose(self) -> None:
        """Close pooled connections, and release the scaler (the local scaler stops its runners)."""
        await self.forwarder.aclose()
        if self.activator is not None:
            await self.activator.scaler.aclose()

    async def infer(self, target: Target, body: bytes, headers: Mapping[str, str]) -> Served:
        if target.endpoint is not None:
            url = f"{target.endpoint}/v2/models/{target.endpoint_model or target.name}/infer"
            try:
                return Served(await self.forwarder.post(url, body, headers), target.endpoint, False, False)
            except ReplicaUnreachable as exc:
                raise Unavailable(f"the endpoint registered for {target.name!r} is unreachable: {exc}", 5) from exc
        if self.activator is None:
            raise Unavailable(
                f"{target.name!r} runs on the pod tier, and this gateway has none (setting pod_scaler is 'none'); "
                "configure a scaler, or push the function with --tier wasm"
            )
        path = f"/v2/models/{target.name}/versions/{target.version}/infer"
        first = await self._attempt(target, path, body, headers, ())
        if isinstance(first, Served):
            return first
        failed, failure = first
        try:
            second = await self._attempt(target, path, body, headers, (failed,))
        except Unavailable as exc:
            raise Unavailable(f"{failure}, and {exc}", retry_after=1) from failure
        if isinstance(second, Served):
            return second
        raise Unavailable(f"{failure}; the retry on {second[0]} failed too: {second[1]}", retry_after=1)

    async def _attempt(
        self, target: Target, path: str, body: bytes, headers: Mapping[str, str], tried: tuple[str, ...]
    ) -> Served | tuple[str, ReplicaUnreachable]:
        """One try on one replica: what it served, or which replica did not take the request and why."""
        assert self.activator is not None
        async with self.activator.acquire(target.name, exclude=tried, hold=not tried) as lease:
            try:
                response = await self.forwarder.post(lease.replica.url + path, body, headers)
            except ReplicaUnreachable as exc:
                self.activator.failed(lease.replica)
                return lease.replica.id, exc
            self.activator.served(target.name, lease.replica)
            return Served(response, lease.replica.id, lease.held, bool(tried))

"""What the pod tier needs from a scaler, and the replicas it reports.

A scaler owns one group of runner replicas (one runner Deployment, or one set of local runner processes) that
serves every function routed to the pod tier. The activator decides how many replicas it wants; the scaler
makes that so and reports which replicas are ready to take requests. Implementations:
:class:`router.scalers.local.LocalProcessScaler` (runner processes on loopback ports, the embedded default) and
:class:`router.scalers.kubernetes.KubernetesScaler` (a Deployment's ``scale`` subresource, and its Service's
EndpointSlices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Replica:
    """One ready runner. ``id`` is stable for the replica's life (a pod name, a local process's name) and is
    what responses report in ``x-wasmgate-replica``; ``url`` is its OIP v2 base URL, ``http://host:port``."""

    id: str
    url: str


class Scaler(Protocol):
    async def run(self, on_change: Callable[[], None]) -> None:
        """Track the replicas until cancelled, calling ``on_change`` (on the event loop's thread, never from
        another thread) whenever the ready set may have changed. Must survive transient failures of what it
        watches: log, back off, retry."""

    async def scale(self, replicas: int, functions: Collection[str] = ()) -> None:
        """Ask for ``replicas`` replicas (0: scale to zero). Returns once the request is made, not once they
        are ready; readiness arrives through ``on_change``. ``functions`` names the functions whose requests
        are held for these replicas, first held first: a scaler that starts the replicas itself has them
        loaded before the replicas report ready; one that cannot pass them on ignores them.
        Raises ``wasm_host.errors.Unavailable`` when the request cannot be made (the API server refused or is
        unreachable). A scaler that several gateways share (``router.scalers.shares``) takes ``replicas`` as
        this gateway's share, and runs their sum."""

    def ready(self) -> Sequence[Replica]:
        """The replicas ready to serve now. Cheap: called on every pod-tier request."""

    def wanted(self) -> int:
        """The replica count last asked for (or observed, when something else scaled the group); for a shared
        scaler, this gateway's share."""

    async def aclose(self) -> None:
        """Release what the scaler holds. The local scaler stops its processes; the Kubernetes scaler stops
        watching and leaves the Deployment as it is."""

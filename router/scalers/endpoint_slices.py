"""The reading of a Service's EndpointSlices for the pod tier's scaler (``router.scalers.kubernetes``): which of
their endpoints are ready replicas, and at what URL.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from router.scaler import Replica

log = logging.getLogger("wasmgate.kubernetes")


def ready_replicas(
    slices: Mapping[str, Any], port_name: str, namespace: str, portless_logged: set[str]
) -> tuple[Replica, ...]:
    """The ready replicas in ``slices`` (slice name -> ``V1EndpointSlice``, of ``namespace``), sorted by id.

    A replica is an endpoint whose ``conditions.ready`` is true or unset (the API defines nil as ready) and
    that is not ``terminating``, in a slice that has a port named ``port_name``. Its id is the pod's name
    (``targetRef``), else its address; the same id in two slices (the controller moves endpoints between
    slices) counts once. Its URL uses the endpoint's first address, bracketed when IPv6.

    A slice with endpoints but no such port is logged once: its name is added to ``portless_logged``, and a
    name already there is not logged again.
    """
    found: dict[str, Replica] = {}
    for name in sorted(slices):
        piece = slices[name]
        endpoints = piece.endpoints or ()
        if not endpoints:
            continue  # the controller's placeholder slice, or a slice emptied before its deletion
        port = next((p.port for p in piece.ports or () if (p.name or "") == port_name), None)
        if port is None:
            if name not in portless_logged:
                portless_logged.add(name)
                log.warning(
                    "EndpointSlice %s/%s has no port named %r; its endpoints are not used (set "
                    "WASMGATE_K8S_PORT_NAME to the Service port's name)",
                    namespace,
                    name,
                    port_name,
                )
            continue
        for endpoint in endpoints:
            conditions = endpoint.conditions
            if conditions is not None and (conditions.ready is False or conditions.terminating):
                continue
            if not endpoint.addresses:
                continue
            address = endpoint.addresses[0]
            ref = endpoint.target_ref
            replica_id = ref.name if ref is not None and ref.name else address
            host = f"[{address}]" if ":" in address else address
            found.setdefault(replica_id, Replica(id=replica_id, url=f"http://{host}:{port}"))
    return tuple(sorted(found.values(), key=lambda r: r.id))

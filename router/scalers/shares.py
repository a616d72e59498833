"""Several gateways, one runner Deployment: each gateway's share of the runners, recorded on the Deployment.

With one gateway, its activator's replica count is the Deployment's. With several (the gateway Deployment
scaled out by its HorizontalPodAutoscaler, say), each activator sees only its own requests; if each set
``spec.replicas`` to its own figure they would undo each other, and an idle gateway, once its idle grace had
passed, would scale the runners to zero under a busy one. So each gateway records its own figure, its *share*,
in one annotation on the runner Deployment, keyed by the gateway's id (its pod name), and sets
``spec.replicas`` to the combined figure, both in one write::

    metadata.annotations["wasmgate.io/replica-shares"] =
        '{"wasmgate-5d8f9c7b6-x2kqz": {"replicas": 2, "at": 1718000000.25}, "wasmgate-5d8f9c7b6-q7wpl": ...}'
    spec.replicas = max(pod_min_replicas, min(pod_max_replicas, sum of the live shares))

**The sum, not the maximum.** A gateway's share is its own demand (requests in flight and held) over
``pod_target_in_flight``, rounded up, held through its idle grace as a single gateway's count is. The gateway
Service spreads requests over the gateways, so each sees about 1/N of the traffic, and the faithful figure for
the runners is total demand / target: the sum of the per-gateway demand / target. The maximum would size the
runners for one gateway's part of the traffic: N gateways with a full replica's worth of demand each would get
one replica between them, and that replica would carry N times its target (each gateway counts only its own
requests on a replica). The sum of rounded shares is never below ceil(total demand / target), and above it by
at most N - 1 replicas, while several gateways each have a fraction of a replica's worth of demand. Publishing
unrounded demand would remove that excess at the price of a write to the API server whenever any gateway's
demand changed (every autoscaling tick, under load); a rounded share changes only when a gateway's demand
crosses a replica boundary, and on the way down only after its idle grace.

``pod_min_replicas`` bounds the total, not each share (N idle gateways would otherwise keep N times the
minimum), so with shares each activator scales its own figure from zero and the floor is applied here.

**Live shares.** Each gateway rewrites its share with a fresh timestamp every heartbeat (a third of the TTL)
even when it has not changed; the write also re-applies the combined figure, so a ``kubectl apply`` that reset
``spec.replicas`` is undone within a heartbeat. A share older than the TTL belongs to a gateway that is gone
(deleted, crashed, cut off from the API server), and the next gateway to write drops it; the total falls
accordingly. A gateway that shuts down leaves its share to expire rather than removing it: the TTL is the grace
in which its traffic moves to the others. A gateway that starts with the id of a live share (its container
restarted; the pod keeps its name) adopts that share, so a restart does not drop it without the idle grace.

Timestamps are wall-clock seconds from each gateway's own clock, so the gateways' clocks must agree to well
within the TTL (NTP-synchronised nodes do). A share stamped more than the TTL in the future counts as stale
too, so a wild clock cannot keep a dead gateway's share alive. A gateway that has not itself written within the
TTL (it has just started, or was cut off from the API server) drops nobody on that write: the others may have
been cut off as well, and get one heartbeat to come back.

**Concurrency.** Reading the shares and writing them with the new total is one optimistic transaction: the
write (a JSON merge patch on the Deployment) carries the ``resourceVersion`` that was read, the API server
answers 409 Conflict when anything changed the Deployment in between (another gateway's share, the Deployment
controller's status), and the gateway reads again and retries (``router.scalers.kubernetes``).

This module is the pure part: the annotation's format and the rules above, with no I/O and no clock.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("wasmgate.kubernetes")

#: The annotation on the runner Deployment that holds every gateway's share.
ANNOTATION = "wasmgate.io/replica-shares"


@dataclasses.dataclass(frozen=True)
class Share:
    """One gateway's share: the replicas its own demand needs, and when it last said so (wall-clock seconds)."""

    replicas: int
    at: float

    def live(self, now: float, ttl_s: float) -> bool:
        return abs(now - self.at) <= ttl_s


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one write sets: the shares to record, the Deployment's replicas, and the shares it drops."""

    shares: dict[str, Share]
    replicas: int
    dropped: tuple[str, ...]

    def patch(self, resource_version: str) -> dict[str, Any]:
        """The JSON merge patch (RFC 7386) for the Deployment. The resourceVersion makes it conditional: the
        API server refuses it with 409 if the Deployment changed since it was read."""
        return {
            "metadata": {"resourceVersion": resource_version, "annotations": {ANNOTATION: dump_shares(self.shares)}},
            "spec": {"replicas": self.replicas},
        }


def parse_shares(text: str | None) -> dict[str, Share]:
    """The shares in the annotation's value. An unreadable value or entry is left out (and logged): it is
    rewritten, without it, by the next write."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        log.warning("annotation %s is not a JSON object; rewriting it: %.200s", ANNOTATION, text)
        return {}
    shares = {}
    for gateway, entry in raw.items():
        share = _share(entry)
        if share is None:
            log.warning("annotation %s: unreadable share of gateway %s dropped: %.200r", ANNOTATION, gateway, entry)
        else:
            shares[gateway] = share
    return shares


def _share(entry: Any) -> Share | None:
    if not isinstance(entry, dict):
        return None
    replicas, at = entry.get("replicas"), entry.get("at")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        return None
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        return None
    return Share(replicas, float(at))


def dump_shares(shares: Mapping[str, Share]) -> str:
    return json.dumps(
        {gateway: {"replicas": s.replicas, "at": round(s.at, 3)} for gateway, s in sorted(shares.items())},
        separators=(",", ":"),
    )


def total_replicas(shares: Mapping[str, Share], floor: int, cap: int | None) -> int:
    """The sum of the shares, at least ``floor`` and at most ``cap`` (None: no cap)."""
    total = sum(s.replicas for s in shares.values())
    if cap is not None:
        total = min(cap, total)
    return max(floor, total)


def adopted(text: str | None, gateway: str, now: float, ttl_s: float) -> int | None:
    """This gateway's live share as the annotation records it (a restarted container's), else None."""
    share = parse_shares(text).get(gateway)
    return share.replicas if share is not None and share.live(now, ttl_s) else None


def plan(
    text: str | None,
    gateway: str,
    replicas: int,
    *,
    now: float,
    ttl_s: float,
    floor: int,
    cap: int | None,
    expire: bool,
) -> Plan:
    """The write that records ``replicas`` as ``gateway``'s share at ``now``, given the annotation's current
    value ``text``. With ``expire``, other gateways' shares that are no longer live are dropped; without, all
    are kept (see the module docstring: a gateway that has not written within the TTL drops nobody)."""
    shares = parse_shares(text)
    shares.pop(gateway, None)
    dropped = tuple(sorted(g for g, s in shares.items() if not s.live(now, ttl_s))) if expire else ()
    for name in dropped:
        del shares[name]
    shares[gateway] = Share(replicas, now)
    return Plan(shares, total_replicas(shares, floor, cap), dropped)

"""The activator: the pod tier's front door, which holds requests while replicas come up.

Every pod-tier request passes through :meth:`Activator.acquire`, which yields a ready replica:

- When one is ready, it is picked at once (model affinity first, then least in flight; ``pod_policy``).
- When none is (the tier is scaled to zero, or every replica failed), the request is held in a bounded FIFO
  queue and the scaler is asked for replicas immediately. As replicas turn ready, held requests are released
  in arrival order. A request held past ``hold_timeout_s`` fails with 503 and ``Retry-After``; one arriving
  at a full queue fails at once with 429. A held request is not forwarded until it is released, and it is
  released once, so nothing is lost and nothing runs twice.

Scaling follows demand (in-flight plus held requests) through :class:`router.pod_policy.Scaling`:
up at once, down only after demand has stayed low for the idle grace period, and to zero only after the
keep-alive, which the idle gaps this tier has seen stretch past the grace (:func:`router.pod_policy.keep_alive_s`:
traffic that pauses and comes back finds a warm replica). The activator counts in flight per replica itself,
and the expected work of what is in flight (the router's figures, passed in by the caller: the backlog a new
request would queue behind), so it needs nothing from the replicas but their readiness.
Every activator decides from its own requests only: where several gateways front one runner Deployment, the
count it asks for is its gateway's share, and the scaler runs the sum of the gateways' shares
(``router.scalers.shares``), so one gateway's idleness never scales away runners another one is using.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Protocol

import anyio

from router.pod_policy import ScalePolicy, Scaling, pick_replica
from router.scaler import Replica, Scaler
from wasm_host.errors import TooManyRequests, Unavailable

log = logging.getLogger("wasmgate.activator")

#: A replica that failed to take a request is passed over for this long, unless it is all there is; the
#: scaler usually reports it gone (or back) well within this.
SUSPECT_S = 2.0


class PodObserver(Protocol):
    """What the activator reports (the metrics implement it)."""

    def pod_state(
        self, ready: int, wanted: int, held: int, in_flight: int, replica_seconds: float, keep_alive_s: float
    ) -> None: ...

    def pod_scaled(self, replicas: int) -> None: ...


@dataclasses.dataclass(frozen=True)
class Lease:
    """A replica for one request; ``held``: the request waited for the tier to scale up; ``alone``: nothing
    else was in flight on the replica when the request took it (its time is the replica's service alone)."""

    replica: Replica
    held: bool
    alone: bool = False


class _Held:
    __slots__ = ("event", "function")

    def __init__(self, function: str) -> None:
        self.function = function
        self.event = anyio.Event()


class Activator:
    def __init__(
        self,
        scaler: Scaler,
        policy: ScalePolicy,
        max_held: int,
        hold_timeout_s: float,
        observer: PodObserver | None = None,
        tick_s: float = 0.25,
    ) -> None:
        self.scaler = scaler
        self.policy = policy
        self.max_held = max_held
        self.hold_timeout_s = hold_timeout_s
        self.observer = observer
        self.tick_s = tick_s
        self.in_flight: dict[str, int] = collections.defaultdict(int)
        self._backlog: dict[str, float] = collections.defaultdict(float)  # replica id -> expected ms in flight
        self._holders: dict[str, set[str]] = collections.defaultdict(set)  # function -> replica ids
        self._suspect: dict[str, float] = {}  # replica id -> monotonic time it failed
        self._held: collections.deque[_Held] = collections.deque()
        self._kick = anyio.Event()
        self._last_scale_error: str | None = None
        self._scaling_from_zero_at: float | None = None
        #: How long the last scale-up from zero took to bring a replica ready (seconds); None until one did.
        self.scale_up_s: float | None = None
        #: Replicas asked for, integrated over time: what the pod tier costs (GPU-seconds, on a GPU pool).
        self.replica_seconds = 0.0
        self._last_tick: float | None = None
        self.scaling = Scaling(policy)

    # -- running -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run the scaler's tracking and the scaling loop until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.scaler.run, self._changed)
            tg.start_soon(self._autoscale)

    def _changed(self) -> None:
        """The ready set may have changed: forget suspects that are gone, and release held requests."""
        ready = {r.id for r in self.scaler.ready()}
        if ready and self._scaling_from_zero_at is not None:
            self.scale_up_s = time.monotonic() - self._scaling_from_zero_at
            self._scaling_from_zero_at = None
        for replica_id in [r for r in self._suspect if r not in ready]:
            del self._suspect[replica_id]
        for holders in self._holders.values():
            holders &= ready
        self._release()
        self._report()

    def _release(self) -> None:
        """Wake held requests in arrival order while some replica can take them."""
        while self._held and self._candidate(self._held[0].function, ()) is not None:
            self._held.popleft().event.set()

    async def _autoscale(self) -> None:
        while True:
            with anyio.move_on_after(self.tick_s):
                await self._kick.wait()
            self._kick = anyio.Event()
            await self._scale_once(time.monotonic())

    async def _scale_once(self, now: float) -> None:
        if self._last_tick is not None:
            self.replica_seconds += self.scaler.wanted() * (now - self._last_tick)
        self._last_tick = now
        current = self.scaler.wanted()
        want, demand = self.scaling.decide(sum(self.in_flight.values()) + len(self._held), current, now)
        if want != current:
            log.info("scaling the pod tier from %d to %d replicas (demand %d)", current, want, demand)
            # The functions of the held requests, first held first, so that new replicas load them before
            # they report ready (only on the way up: replicas that are stopping load nothing).
            held = list(dict.fromkeys(h.function for h in self._held)) if want > current else []
            try:
                await self.scaler.scale(want, held)
                self._last_scale_error = None
                if current == 0 and not self.scaler.ready():
                    self._scaling_from_zero_at = now
            except Unavailable as exc:
                self._last_scale_error = str(exc)
                log.warning("scaling the pod tier to %d failed: %s", want, exc)
            else:
                self.scaling.scaled()
                if self.observer is not None:
                    self.observer.pod_scaled(want)
        self._expire_suspects(now)
        self._report()

    def _expire_suspects(self, now: float) -> None:
        for replica_id, since in list(self._suspect.items()):
            if now - since > SUSPECT_S:
                del self._suspect[replica_id]
        if self._held:
            self._release()

    def _report(self) -> None:
        if self.observer is not None:
            self.observer.pod_state(
                len(self.scaler.ready()),
                self.scaler.wanted(),
                len(self._held),
                sum(self.in_flight.values()),
                self.replica_seconds,
                self.scaling.idle.keep_alive_s,
            )

    # -- serving -------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def acquire(
        self, function: str, exclude: Collection[str] = (), hold: bool = True, expected_ms: float = 0.0
    ) -> AsyncIterator[Lease]:
        """A ready replica for one request of ``function``, counted in flight until the block exits, with
        ``expected_ms`` of work (the router's figure for it) added to the replica's backlog meanwhile.

        With no replica ready, the request is held (``hold``), or refused with 503 at once (a retry, which
        must not wait behind new requests). ``exclude`` names replicas already tried."""
        replica = self._candidate(function, exclude)
        held = False
        if replica is None:
            if not hold:
                raise Unavailable("no other pod-tier replica is ready to retry on", retry_after=1)
            replica = await self._hold(function, exclude)
            held = True
        alone = self.in_flight.get(replica.id, 0) == 0
        self.in_flight[replica.id] += 1
        self._backlog[replica.id] += expected_ms
        self.scaling.seen(sum(self.in_flight.values()) + len(self._held))
        try:
            yield Lease(replica, held, alone)
        finally:
            self.in_flight[replica.id] -= 1
            self._backlog[replica.id] -= expected_ms
            if self.in_flight[replica.id] <= 0:
                del self.in_flight[replica.id]
                del self._backlog[replica.id]  # no float residue left behind
            if held or not self.in_flight:
                self._kick.set()  # demand changed in a way the scaler should hear about promptly

    def _candidate(self, function: str, exclude: Collection[str]) -> Replica | None:
        ready = self.scaler.ready()
        if not ready:  # the usual state of a pod tier at zero, asked on every request's routing (backlog_ms)
            return None
        skip = set(exclude)
        if self._suspect:
            healthy = [r for r in ready if r.id not in self._suspect and r.id not in skip]
            if healthy:
                skip |= self._suspect.keys()
        return pick_replica(ready, self.in_flight, self._holders[function], self.policy.target_in_flight, skip)

    async def _hold(self, function: str, exclude: Collection[str]) -> Replica:
        if len(self._held) >= self.max_held:
            raise TooManyRequests(
                f"{len(self._held)} requests are already waiting for the pod tier to scale up (setting pod_max_held)",
                retry_after=max(1.0, self.hold_timeout_s / 4),
            )
        entry = _Held(function)
        self._held.append(entry)
        self.scaling.seen(sum(self.in_flight.values()) + len(self._held))
        self._kick.set()  # scale from zero now, not at the next tick
        self._report()
        deadline = time.monotonic() + self.hold_timeout_s
        try:
            while True:
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                    await entry.event.wait()
                replica = self._candidate(function, exclude) if entry.event.is_set() else None
                if replica is not None:
                    return replica
                if time.monotonic() >= deadline:
                    reason = f"; scaling failed: {self._last_scale_error}" if self._last_scale_error else ""
                    raise Unavailable(
                        f"no pod-tier replica became ready within {self.hold_timeout_s:g} s "
                        f"(setting pod_hold_timeout_s){reason}",
                        retry_after=5,
                    )
                # Released but beaten to the replica (it went away): wait again, first in line.
                entry.event = anyio.Event()
                self._held.appendleft(entry)
        finally:
            with contextlib.suppress(ValueError):
                self._held.remove(entry)
            self._report()

    def warm(self, function: str) -> int:
        """Ready replicas that hold ``function``'s model (they answered one of its requests, or preloaded it)."""
        return len(self._holders[function]) if function in self._holders else 0

    def pick(self, function: str) -> Replica | None:
        """The replica a request of ``function`` would get now, without taking it; None when none is ready."""
        return self._candidate(function, ())

    def backlog_ms(self, function: str) -> float:
        """The expected work in flight on the replica a request of ``function`` would get now (0: none)."""
        replica = self.pick(function)
        return 0.0 if replica is None else self._backlog.get(replica.id, 0.0)

    def snapshot(self, function: str) -> tuple[int, int, int, int, float]:
        """What the router reads of this tier for one request of ``function``, in one call: (:attr:`ready`,
        :meth:`warm`, :attr:`in_flight_total`, :attr:`held`, :meth:`backlog_ms`)."""
        ready = self.scaler.ready()
        backlog = self.backlog_ms(function) if ready else 0.0  # no replica up: none to pick, nothing on it
        return len(ready), self.warm(function), sum(self.in_flight.values()), len(self._held), backlog

    def note_demand(self) -> None:
        """A request that wants this tier was served by another one (cold-start masking, say): count it as one
        request seen since the last scaling decision, so that the tier scales up for the requests that follow
        and, like any request, holds it up until the idle grace has passed since the last one."""
        self.scaling.seen(1)
        self._kick.set()

    @property
    def ready(self) -> int:
        return len(self.scaler.ready())

    @property
    def in_flight_total(self) -> int:
        return sum(self.in_flight.values())

    def served(self, function: str, replica: Replica) -> None:
        """``replica`` answered a request of ``function``: it holds the model now."""
        self._holders[function].add(replica.id)

    def failed(self, replica: Replica) -> None:
        """``replica`` did not take a request: pass it over until the scaler says otherwise or it expires."""
        self._suspect[replica.id] = time.monotonic()
        for holders in self._holders.values():
            holders.discard(replica.id)
        self._kick.set()

    @property
    def held(self) -> int:
        return len(self._held)

"""The pod tier: forwarding a function's requests to a runner replica, or to the OIP v2 server registered
as its endpoint.

A replica gets ``/v2/models/{name}/versions/{version}/infer``, so it serves exactly the version the gateway
routed (a runner that has an older one loads the new one; see ``gateway.store.source``). A registered endpoint gets
``/v2/models/{endpoint_model}/infer``, as any OIP v2 server expects.

One call is one attempt. A replica that did not take the request raises
:class:`wasm_host.errors.ReplicaUnreachable` naming it, and the router retries once, on another candidate
(``gateway.dispatch``). So does a replica or endpoint that answers 429: it refused the request before running
it (its admission queue was full), which OIP v2 servers, wasmgate's runners included, signal that way. Any
other response that has started, an error response included, is never retried.

**Preloading.** While the router masks a pod-home function's cold start on the Wasm tier, nothing would make
a new replica load that function's model until the first request it is sent, which would then wait for the
load. :meth:`PodTier.preload` asks a ready replica to load it ahead (OIP v2's model repository extension,
``POST /v2/repository/models/{name}/load``), and the replica counts as warm for the function once that
answers, so the router keeps masking until then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Collection, Mapping, Sequence

from router.activator import Activator
from router.forward import Forwarded, Forwarder
from router.latency import ServiceTimes
from router.policy import PodState, Thresholds, Tier
from router.scaler import Replica
from router.tier import Call, Job, NotTaken, Outcome
from wasm_host.errors import ReplicaBusy, ReplicaUnreachable, Unavailable, WasmgateError

log = logging.getLogger("wasmgate.pods")


@dataclasses.dataclass(frozen=True)
class Served:
    response: Forwarded
    replica: str  # what x-wasmgate-replica reports
    held: bool  # the request waited for the tier to scale up
    elapsed_ms: float  # from being forwarded to the whole answer (a held request's wait left out)
    alone: bool = False  # nothing else was in flight on the replica: ``elapsed_ms`` is its service alone


@dataclasses.dataclass(frozen=True)
class Target:
    """What the pod tier needs to know of a function."""

    name: str
    version: int
    endpoint: str | None = None
    endpoint_model: str | None = None


class PodTier:
    name: Tier = "pod"

    def __init__(self, forwarder: Forwarder, activator: Activator | None, times: ServiceTimes | None = None) -> None:
        """``activator`` is None when no scaler is configured: only functions with an endpoint are served.
        ``times`` learns the tier's service times from what :meth:`run` forwards."""
        self.forwarder = forwarder
        self.activator = activator
        self.times = times if times is not None else ServiceTimes(Thresholds.spill_batch_rows)
        self._preloading: dict[tuple[str, str], asyncio.Task[None]] = {}  # (function, replica id) -> its load

    # -- the TierBackend protocol (router.tier) -------------------------------------------------------------
    def state(self, job: Job) -> PodState:
        typical = self.times.typical_ms(job.name, job.version, "pod", job.rows)
        if job.endpoint is not None:
            return PodState(True, 1, 1, 0, 0, typical)
        act = self.activator
        if act is None:
            return PodState()
        ready, warm, in_flight, held, backlog_ms = act.snapshot(job.name)
        return PodState(True, ready, warm, in_flight, held, typical, act.scale_up_s, backlog_ms)

    async def run(self, job: Job, call: Call, retry: bool = False, exclude: Sequence[str] = ()) -> Outcome:
        """Forward ``job`` once (see :meth:`infer`); a replica or endpoint that did not take it raises
        NotTaken. A first attempt waits for a replica while the tier scales up; the retry never does."""
        target = Target(job.name, job.version, job.endpoint, job.endpoint_model)
        expected = self.times.expected_ms(job.name, job.version, job.rows)
        try:
            served = await self.infer(
                target, call.body, call.headers, exclude, not retry, expected, job.pod_deadline_ms
            )
        except ReplicaUnreachable as exc:
            raise NotTaken(exc, exc.replica) from exc
        response = served.response
        if response.status == 200 and not served.held and served.alone:  # a replica's service, not its queue
            self.times.observe(job.name, job.version, self.name, job.rows, served.elapsed_ms)
        return Outcome(response.status, response.body, response.headers, served.replica, served.held)

    def can_retry(self, job: Job, failed: str | None, same_tier: bool) -> bool:
        if job.endpoint is not None:
            return not same_tier  # the endpoint itself, as the other candidate: it has no replicas to count
        ready = self.activator.ready if self.activator is not None else 0
        return ready - (1 if failed else 0) > 0  # another ready replica than the one that failed

    def expect(self, job: Job) -> None:
        """Scale up for the requests that follow, and have a ready replica that lacks the function load it
        now rather than at a request (:meth:`preload`)."""
        if self.activator is not None:
            self.activator.note_demand()
            self.preload(Target(job.name, job.version))

    # -- forwarding ---------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close pooled connections, and release the scaler (the local scaler stops its runners)."""
        await self.forwarder.aclose()
        if self.activator is not None:
            await self.activator.scaler.aclose()

    async def infer(
        self,
        target: Target,
        body: bytes,
        headers: Mapping[str, str],
        exclude: Collection[str] = (),
        hold: bool = True,
        expected_ms: float = 0.0,
        deadline_ms: int = 0,
    ) -> Served:
        """One attempt on one replica (or on the registered endpoint). Raises ReplicaUnreachable, naming the
        replica, when it did not take the request: the caller may retry elsewhere, once. ``exclude`` and
        ``hold`` are for that retry: skip the replica that failed, and do not wait for one to start.
        ``expected_ms`` is what the router expects the request to take, counted in the replica's backlog
        while it runs (``Activator.backlog_ms``). ``deadline_ms`` is the function's own pod-tier deadline, which
        the forward waits for (``Forwarder.timeout_s``)."""
        if target.endpoint is not None:
            url = f"{target.endpoint}/v2/models/{target.endpoint_model or target.name}/infer"
            started = time.perf_counter()
            try:
                response = await self.forwarder.post(url, body, headers, deadline_ms)
            except ReplicaUnreachable as exc:
                raise ReplicaUnreachable(
                    f"the endpoint registered for {target.name!r} is unreachable: {exc}", 5, replica=target.endpoint
                ) from exc
            except WasmgateError as exc:  # it took the request: a timeout, or an answer that broke off
                exc.replica = target.endpoint
                raise
            _check_taken(response, target.endpoint)
            # alone: an endpoint's load is not seen from here, and its answers are the only figures there are
            return Served(response, target.endpoint, False, _ms_since(started), True)
        if self.activator is None:
            raise Unavailable(
                f"{target.name!r} runs on the pod tier, and this gateway has none (setting pod_scaler is 'none'); "
                "configure a scaler, or push the function with --tier wasm"
            )
        path = f"/v2/models/{target.name}/versions/{target.version}/infer"
        async with self.activator.acquire(target.name, exclude, hold, expected_ms) as lease:
            started = time.perf_counter()
            try:
                response = await self.forwarder.post(lease.replica.url + path, body, headers, deadline_ms)
            except ReplicaUnreachable as exc:
                self.activator.failed(lease.replica)
                raise ReplicaUnreachable(str(exc), 1, replica=lease.replica.id) from exc
            except WasmgateError as exc:  # it took the request: a timeout, or an answer that broke off
                exc.replica = lease.replica.id
                raise
            _check_taken(response, lease.replica.id)
            self.activator.served(target.name, lease.replica)
            return Served(response, lease.replica.id, lease.held, _ms_since(started), lease.alone)

    def preload(self, target: Target) -> None:
        """Have a ready replica that lacks ``target``'s function load it now, in the background (see the
        module docstring); at most one load per function and replica at a time. Failures are logged: the
        function then loads at its first request, as it would have anyway."""
        activator = self.activator
        if activator is None or target.endpoint is not None or activator.warm(target.name) > 0:
            return
        replica = activator.pick(target.name)
        if replica is None or (target.name, replica.id) in self._preloading:
            return
        key = (target.name, replica.id)
        task = asyncio.get_running_loop().create_task(self._preload(target, replica))
        self._preloading[key] = task
        task.add_done_callback(lambda _: self._preloading.pop(key, None))

    async def _preload(self, target: Target, replica: Replica) -> None:
        assert self.activator is not None
        url = f"{replica.url}/v2/repository/models/{target.name}/load"
        body = b'{"parameters": {"version": "%d"}}' % target.version
        try:
            response = await self.forwarder.post(url, body, {"content-type": "application/json"})
        except WasmgateError as exc:
            log.warning("replica %s did not preload %r: %s", replica.id, target.name, exc)
            return
        if response.status != 200:
            shown = response.body[:200]
            log.warning("replica %s did not preload %r: %d %s", replica.id, target.name, response.status, shown)
            return
        self.activator.served(target.name, replica)


def _check_taken(response: Forwarded, replica: str) -> None:
    if response.status == 429:  # refused by its admission before it ran: another candidate may take it
        reason = response.body[:200].decode(errors="replace")
        raise ReplicaBusy(f"{replica} is at capacity (429: {reason})", 1, replica=replica)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000

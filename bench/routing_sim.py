"""The simulated half of the routing bench (``bench.routing_trace``, which measures its inputs and prints it).

**Simulated.** A discrete-event simulation of the same trace for the same policies, which places every request with
the product's own ``router.policy.decide`` and scales the pod tier with ``router.pod_policy`` (``Scaling``,
``pick_replica``), following ``router.activator``: held requests, a scale-up at once on demand, scale-down after the
idle grace and to zero after the keep-alive, cold-start-masked requests counted as demand and preloading the model
on a ready replica (``router.pod_tier``), a replica's 429 retried once on the Wasm tier, the expected work in flight
per replica (the backlog the policy reads), replica-seconds integrated the same way. The policy reads service times
the simulation measures as the gateway does (``router.latency.ServiceTimes``: Wasm service without the wait for a
slot, pod forwards that were not held and found their replica idle). Its inputs are measured in this run:

- *service times*: after wasmgate's replay, on its gateway (warm, otherwise idle), requests one at a time with the
  replay's client, pinned to each tier with the ``x-wasmgate-tier`` hint, each model and batch kind in turn. Each
  simulated request draws from these: a quantile of their distribution, the same quantile for the same request under
  every policy (common random numbers; ``Simulation``). They are taken apart from the replay because the replay's
  latencies already hold queueing, which the simulation adds itself;
- *a runner's load of a model*, which a runner does at its first request of it (readiness does not wait for
  it): that model's first request on a runner in that calibration, less its service time (the small model's
  first request brings the runner up, so its load stays in the scale-up time);
- *the scale from zero to a first answer*: always pod's first held request of each burst in its replay, less
  its service time and model load.

The Wasm tier is the product's admission (per function ``concurrency`` 8, a queue of 64 with a 5 s timeout: the pool
defaults) in front of ``worker_threads`` 8, whose running requests share the gateway's CPUs (processor sharing: each
runs at ``min(1, cpus / running)`` of its measured speed, ``cpus`` being those the replay's gateway had); a refused
request is retried on a ready replica, as the gateway does. A pod replica is one device that runs one request's
compute at a time (FIFO), plus the rest of its measured time (the edge, the hop), which overlaps; requests of a
model it is loading wait for the load; its own admission is the same pool defaults (429 past 72 requests of a
function, 503 past a 5 s wait), and the gateway passes those answers on. One assumption, clearly not measured: the
large model's compute on a GPU pod is ``--gpu-speedup`` times faster (default 10) than on this CPU; its compute is
its median Wasm time less the smallest request's (the fixed cost of any request), and the small model gets no speed-
up. The simulation at speed-up 1 is printed too, as a check of the simulation against the replay."""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bench.routing_workload import LARGE, SMALL, TICK_S, Arrival, Kind, Model, Outcome, Policy, Trace, bucket
from gateway.settings import Settings
from router.latency import ServiceTimes as Figures
from router.pod_policy import ScalePolicy, Scaling, pick_replica
from router.policy import Decision, PodState, RouteInputs, Thresholds, WasmState, decide
from router.scaler import Replica
from wasm_host.pool import PoolSettings


# -- what the simulation draws from ----------------------------------------------------------------------------
@dataclasses.dataclass
class ServiceTimes:
    """What the simulation draws from: measured service times (ms) by kind, a runner's model load (s) and the
    pod tier's scale from zero (s)."""

    samples: dict[Kind, list[float]]
    load_s: dict[str, float]
    scale_up_s: float = 0.0
    scale_up_bursts: int = 0

    def median(self, tier: str, model: str, b: str) -> float:
        return float(np.median(self.samples[tier, model, b]))

    def compute_ms(self, model: str, b: str) -> float:
        """The model's compute: its Wasm time less the smallest request's (the fixed cost of any request)."""
        return max(0.0, self.median("wasm", model, b) - self.median("wasm", SMALL, "small"))

    def quantile_ms(self, kind: Kind, u: float) -> float:
        """The ``u`` quantile (0-1) of a kind's samples, interpolated between them: a draw from their empirical
        distribution, smoothed so that two policies' tails are not ties between a few repeated values."""
        return float(np.quantile(self.samples[kind], u))

    def wasm_s(self, model: str, rows: int, u: float) -> float:
        return self.quantile_ms(("wasm", model, bucket(rows)), u) / 1000

    def pod_parts(self, model: str, rows: int, speedup: float, u: float) -> tuple[float, float]:
        """(device seconds, other seconds) of one request on a pod replica: a measured pod time, whose compute
        part runs on the device ``speedup`` times faster (the large model only), the rest (the edge, the hop,
        the jitter) as measured."""
        b = bucket(rows)
        total = self.quantile_ms(("pod", model, b), u)
        compute = min(total, self.compute_ms(model, b))
        device = compute / (speedup if model == LARGE else 1.0)
        return device / 1000, (total - compute) / 1000


# -- the simulation ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SimConfig:
    scale: ScalePolicy
    thresholds: Thresholds
    pool: PoolSettings
    worker_threads: int
    max_held: int
    hold_timeout_s: float
    gpu_speedup: float
    seed: int  # for the draws of service times (common to all policies: see Simulation)
    cpus: int  # the gateway's CPUs, which the Wasm tier's running requests share

    @classmethod
    def from_settings(cls, settings: Settings, gpu_speedup: float, seed: int, cpus: int) -> SimConfig:
        from gateway.wiring import thresholds

        scale = ScalePolicy(
            settings.pod_min_replicas,
            settings.pod_max_replicas,
            settings.pod_target_in_flight,
            settings.pod_idle_grace_s,
            settings.pod_keep_alive_max_s,
        )
        return cls(
            scale, thresholds(settings), PoolSettings(), settings.worker_threads, settings.pod_max_held,
            settings.pod_hold_timeout_s, gpu_speedup, seed, cpus,
        )  # fmt: skip


@dataclasses.dataclass(eq=False)
class _Req:
    index: int
    arrival: Arrival
    u: float  # where its service times fall in the measured distributions (0-1)
    decision: Decision | None = None
    tier: str = ""
    reason: str = ""
    held: bool = False
    status: int = 0
    latency_s: float = 0.0
    started_s: float = 0.0  # when its service began (a Wasm slot, or its forwarding)
    expected_ms: float = 0.0  # what the gateway expected it to take on its replica (router.activator's backlog)
    alone: bool = False  # its replica had nothing else in flight when it was forwarded


@dataclasses.dataclass(eq=False)
class _Pod:
    replica: Replica
    ready: bool = False
    device_free_at: float = 0.0
    backlog_ms: float = 0.0  # the gateway's expectation of the requests in flight on it
    loaded_at: dict[str, float] = dataclasses.field(default_factory=dict)  # model -> when its load is done
    admitted: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # by model


class Simulation:
    """The trace through the product's policy and scaling rules, with measured service times (module docstring).

    Draws are common random numbers: request ``i`` of the trace falls at the same quantile ``u`` of the
    measured distributions under every policy (``u`` depends on the seed and ``i`` only), so a request that two
    policies serve alike takes the same time under both, and their numbers differ by what the policies did,
    not by which draws each happened to get.

    Events are (time, sequence, kind, item) on a heap. The pod tier's scaling runs as the activator's loop does:
    at once when it is kicked (a request held, a masked request, a held request done, the last request in flight
    done), else ``TICK_S`` after its last run."""

    def __init__(
        self, trace: Trace, policy: Policy, models: Mapping[str, Model], times: ServiceTimes, cfg: SimConfig
    ) -> None:
        self.trace, self.policy, self.models, self.times, self.cfg = trace, policy, models, times, cfg
        self.now = 0.0
        self._events: list[tuple[float, int, str, Any]] = []
        self._pending = 0  # events other than ticks
        self._tick = 0  # the tick that is due; an older one on the heap is ignored
        self._seq = itertools.count()
        self._names = itertools.count(1)
        self.done: list[_Req] = []
        # The Wasm tier: per-function admission, then the shared worker threads.
        self.w_in_flight: collections.Counter[str] = collections.Counter()
        self.w_queue: dict[str, collections.deque[_Req]] = collections.defaultdict(collections.deque)
        self.threads_busy = 0
        self.thread_queue: collections.deque[_Req] = collections.deque()
        self.cpu_work: dict[_Req, float] = {}  # running in the Wasm tier: seconds of work left at a whole CPU
        self._cpu_since = 0.0
        self._cpu_version = 0
        # The pod tier: the activator's state.
        self.pods: list[_Pod] = []
        self.in_flight: dict[str, int] = collections.defaultdict(int)
        self.holders: dict[str, set[str]] = collections.defaultdict(set)
        self.held: collections.deque[_Req] = collections.deque()
        self.wanted = 0
        self.scaling = Scaling(cfg.scale)  # the activator's own decisions
        self.replica_seconds = 0.0
        self._integrated_to = 0.0
        # What the gateway has measured per function, tier and size (gateway.dispatch feeds the same book).
        self.figures = Figures(cfg.thresholds.spill_batch_rows)

    def _at(self, t: float, kind: str, item: Any = None) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, item))
        self._pending += kind != "tick"

    def run(self) -> Outcome:
        us = np.random.default_rng(self.cfg.seed).random(len(self.trace.arrivals))
        for i, a in enumerate(self.trace.arrivals):
            self._at(a.t, "arrive", _Req(i, a, float(us[i])))
        self._at(0.0, "tick", self._tick)
        handlers: dict[str, Callable[[Any], None]] = {
            "arrive": self._route,
            "wasm_done": self._wasm_done,
            "wasm_timeout": self._wasm_timeout,
            "pod_done": self._pod_done,
            "preloaded": self._preloaded,
            "ready": self._ready,
            "hold_timeout": self._hold_timeout,
            "kick": lambda _: self._autoscale(),
            "tick": lambda tick: None if tick != self._tick else self._autoscale(),  # a later run moved it
        }
        while self._events:
            self.now, _, kind, item = heapq.heappop(self._events)
            self._pending -= kind != "tick"
            handlers[kind](item)
        done = sorted(self.done, key=lambda r: r.index)
        return Outcome(
            self.policy.key,
            [r.status for r in done],
            [r.latency_s * 1000 for r in done if r.status == 200],
            [r.arrival.model for r in done if r.status == 200],
            [r.tier for r in done],
            [r.reason for r in done],
            self.replica_seconds,
        )

    def _finish(self, req: _Req, status: int) -> None:
        req.status, req.latency_s = status, self.now - req.arrival.t
        self.done.append(req)

    # routing: router.policy.decide on what the gateway would observe now
    def _route(self, req: _Req) -> None:
        model = self.models[req.arrival.model]
        fn, conc = model.key, self.cfg.pool.effective_concurrency
        w_in, rows = self.w_in_flight[fn], req.arrival.rows
        wasm_ms = self.figures.typical_ms(fn, 1, "wasm", rows)
        wasm = WasmState(True, max(0, conc - w_in), w_in, len(self.w_queue[fn]), conc, wasm_ms)
        ready = sum(p.ready for p in self.pods)
        warm = sum(p.ready and p.replica.id in self.holders[fn] for p in self.pods)
        pod_ms = self.figures.typical_ms(fn, 1, "pod", rows)
        in_flight = sum(self.in_flight.values())
        picked = self._pick(fn)
        backlog = 0.0 if picked is None else picked.backlog_ms
        pod = PodState(True, ready, warm, in_flight, len(self.held), pod_ms, self.times.scale_up_s, backlog)
        p = self.policy
        inputs = RouteInputs(
            p.tier, model.figures, True, p.spill, p.mask_cold_start, req.arrival.rows, None, None, True, wasm, pod,
            self.cfg.thresholds, self.figures.other_size(fn, 1, rows),
        )  # fmt: skip
        d = req.decision = decide(inputs)
        req.tier, req.reason = d.tier, d.reason
        if d.scale_pod:  # gateway.dispatch: Activator.note_demand, then PodTier.preload
            self.scaling.seen(1)
            self._at(self.now, "kick")
            if ready and not warm:
                self._preload(fn)
        if d.tier == "wasm":
            self._wasm_submit(req)
        else:
            self._pod_submit(req, hold=True)

    # the Wasm tier
    def _wasm_submit(self, req: _Req) -> None:
        fn, pool = req.arrival.model, self.cfg.pool
        if self.w_in_flight[fn] < pool.effective_concurrency:
            self._wasm_admit(req)
        elif len(self.w_queue[fn]) >= pool.max_queue:
            self._not_run(req, 429)
        else:
            self.w_queue[fn].append(req)
            self._at(self.now + pool.queue_timeout_s, "wasm_timeout", req)

    def _wasm_admit(self, req: _Req) -> None:
        self.w_in_flight[req.arrival.model] += 1
        if self.threads_busy < self.cfg.worker_threads:
            self._wasm_start(req)
        else:
            self.thread_queue.append(req)

    def _wasm_start(self, req: _Req) -> None:
        self.threads_busy += 1
        req.started_s = self.now
        self._cpu_advance()
        self.cpu_work[req] = self.times.wasm_s(req.arrival.model, req.arrival.rows, req.u)
        self._cpu_schedule()

    def _cpu_advance(self) -> None:
        """Processor sharing: the requests running in the Wasm tier share the gateway's CPUs (each at most one),
        so their remaining work falls by the elapsed time at that share."""
        if self.cpu_work:
            done = (self.now - self._cpu_since) * min(1.0, self.cfg.cpus / len(self.cpu_work))
            for r in self.cpu_work:
                self.cpu_work[r] -= done
        self._cpu_since = self.now

    def _cpu_schedule(self) -> None:
        """The next Wasm request to finish at the current share; any earlier completion event is now stale."""
        self._cpu_version += 1
        if self.cpu_work:
            req = min(self.cpu_work, key=self.cpu_work.__getitem__)
            share = min(1.0, self.cfg.cpus / len(self.cpu_work))
            self._at(self.now + max(0.0, self.cpu_work[req]) / share, "wasm_done", (req, self._cpu_version))

    def _wasm_done(self, item: tuple[_Req, int]) -> None:
        req, version = item
        if version != self._cpu_version:
            return  # the share changed since this was scheduled
        self._cpu_advance()
        del self.cpu_work[req]
        fn = req.arrival.model
        self.threads_busy -= 1
        self.w_in_flight[fn] -= 1
        self.figures.observe(fn, 1, "wasm", req.arrival.rows, (self.now - req.started_s) * 1000)
        self._finish(req, 200)
        if self.thread_queue:
            self._wasm_start(self.thread_queue.popleft())
        if self.w_queue[fn]:
            self._wasm_admit(self.w_queue[fn].popleft())
        self._cpu_schedule()

    def _wasm_timeout(self, req: _Req) -> None:
        queue = self.w_queue[req.arrival.model]
        if req in queue:
            queue.remove(req)
            self._not_run(req, 503)

    def _not_run(self, req: _Req, status: int) -> None:
        """Refused by admission, so it never ran: gateway.dispatch retries it once on the other candidate (a
        ready replica, or the Wasm tier for a replica's 429)."""
        fallback = req.decision.fallback if req.decision is not None and req.reason != "retry" else None
        if fallback == "pod" and any(p.ready for p in self.pods):
            req.tier, req.reason = "pod", "retry"
            self._pod_submit(req, hold=False)
        elif fallback == "wasm":
            req.tier, req.reason = "wasm", "retry"
            self._wasm_submit(req)
        else:
            self._finish(req, status)

    # the pod tier: router.activator with router.pod_policy
    def _pick(self, fn: str) -> _Pod | None:
        ready = [p for p in self.pods if p.ready]
        chosen = pick_replica(
            [p.replica for p in ready], self.in_flight, self.holders[fn], self.cfg.scale.target_in_flight
        )
        return None if chosen is None else next(p for p in ready if p.replica is chosen)

    def _pod_submit(self, req: _Req, hold: bool) -> None:
        pod = self._pick(req.arrival.model)
        if pod is not None:
            self._dispatch(req, pod)
        elif not hold:
            self._finish(req, 503)
        elif len(self.held) >= self.cfg.max_held:
            self._finish(req, 429)
        else:
            req.held = True
            self.held.append(req)
            self._note_peak()
            self._at(self.now + self.cfg.hold_timeout_s, "hold_timeout", req)
            self._at(self.now, "kick")

    def _dispatch(self, req: _Req, pod: _Pod) -> None:
        """Forward to ``pod``, whose own admission (the pool defaults, as in the gateway) answers 429 past
        ``concurrency + max_queue`` requests of a function (the gateway retries those on the Wasm tier, once),
        and 503 to one that would wait past ``queue_timeout_s`` (passed on: an answer is never retried)."""
        a, pool = req.arrival, self.cfg.pool
        req.alone = self.in_flight[pod.replica.id] == 0
        req.expected_ms = self.figures.expected_ms(a.model, 1, a.rows)
        pod.backlog_ms += req.expected_ms
        self.in_flight[pod.replica.id] += 1
        self._note_peak()
        req.started_s = self.now
        if pod.admitted[a.model] >= pool.effective_concurrency + pool.max_queue:
            self._at(self.now, "pod_done", (req, pod, 429))
            return
        if a.model not in pod.loaded_at:  # the first request of a model on a runner loads it; others wait
            pod.loaded_at[a.model] = self.now + self.times.load_s[a.model]
        device_s, other_s = self.times.pod_parts(a.model, a.rows, self.cfg.gpu_speedup, req.u)
        start = max(max(self.now, pod.loaded_at[a.model]) + other_s, pod.device_free_at)
        pod.admitted[a.model] += 1
        if start - self.now > pool.queue_timeout_s + other_s:
            self._at(self.now + pool.queue_timeout_s, "pod_done", (req, pod, 503))
            return
        pod.device_free_at = start + device_s
        self._at(start + device_s, "pod_done", (req, pod, 200))

    def _pod_done(self, item: tuple[_Req, _Pod, int]) -> None:
        req, pod, status = item
        fn = req.arrival.model
        if status != 429:
            pod.admitted[fn] -= 1
            self.holders[fn].add(pod.replica.id)  # Activator.served, once it has answered
        self.in_flight[pod.replica.id] -= 1
        pod.backlog_ms -= req.expected_ms
        if self.in_flight[pod.replica.id] <= 0:
            del self.in_flight[pod.replica.id]
            pod.backlog_ms = 0.0
        if status == 200 and not req.held and req.alone:
            self.figures.observe(fn, 1, "pod", req.arrival.rows, (self.now - req.started_s) * 1000)
        if status == 429:
            self._not_run(req, 429)
        else:
            self._finish(req, status)
        if req.held or not self.in_flight:
            self._at(self.now, "kick")

    def _note_peak(self) -> None:
        self.scaling.seen(sum(self.in_flight.values()) + len(self.held))

    def _preload(self, fn: str) -> None:
        """router.pod_tier.PodTier.preload: the replica a request would get loads the model now."""
        pod = self._pick(fn)
        if pod is None or fn in pod.loaded_at:
            return
        pod.loaded_at[fn] = self.now + self.times.load_s[fn]
        self._at(pod.loaded_at[fn], "preloaded", (fn, pod))

    def _preloaded(self, item: tuple[str, _Pod]) -> None:
        fn, pod = item
        if pod in self.pods and pod.ready:
            self.holders[fn].add(pod.replica.id)

    def _hold_timeout(self, req: _Req) -> None:
        if req in self.held:
            self.held.remove(req)
            self._finish(req, 503)

    def _ready(self, pod: _Pod) -> None:
        if pod not in self.pods:
            return  # scaled down before it was ready
        pod.ready = True
        while self.held:
            chosen = self._pick(self.held[0].arrival.model)
            if chosen is None:
                break
            self._dispatch(self.held.popleft(), chosen)

    def _autoscale(self) -> None:
        """One run of the activator's loop; the next is ``TICK_S`` later, unless a kick comes first."""
        self._scale_once()
        self._tick += 1
        if self._pending or self.wanted or self.held or self.in_flight:
            self._at(self.now + TICK_S, "tick", self._tick)

    def _scale_once(self) -> None:
        self.replica_seconds += self.wanted * (self.now - self._integrated_to)
        self._integrated_to = self.now
        current = self.wanted
        want, _ = self.scaling.decide(sum(self.in_flight.values()) + len(self.held), current, self.now)
        if want == current:
            return
        while len(self.pods) < want:
            pod = _Pod(Replica(f"runner-{next(self._names)}", ""))
            self.pods.append(pod)
            self._at(self.now + self.times.scale_up_s, "ready", pod)
        while len(self.pods) > want:  # the local scaler stops those not yet ready first, then the newest
            starting = [p for p in self.pods if not p.ready]
            self.pods.remove(starting[-1] if starting else self.pods[-1])
        self.wanted = want
        self.scaling.scaled()

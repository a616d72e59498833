"""Routing under a bursty trace: the same seeded trace replayed against three placement policies in one run, and
simulated for the same three, with p50 and p99 latency and the pod tier's replica-seconds (its GPU cost).

    python -m bench.routing_trace [--duration 50] [--rate 25] [--seed 7] [--large-share 0.3]
        [--sizes 256,1024,1024,1024,10] [--gpu-speedup 10] [--json OUT] [--quick]

**The trace** (seeded, the same for every policy). Bursts of 2-6 s whose arrivals are Poisson at ``--rate``
requests per second, separated by idle gaps of 1-8 s, most longer than the pod tier's idle grace (3 s), so the
tier goes cold between bursts. Each request asks the small model (``gateway.demo.train_digits``: a 4 KB
logistic regression, rows of 64 floats) or, with probability ``--large-share``, the large one
(``gateway.demo.dense_model``: a 2.37 M-parameter MLP of about 9.5 MB, rows of 256 floats; ``--sizes`` for
another). A request carries 1-4 rows, or with probability 3% a batch of 512 rows (past ``spill_batch_rows``, so
spill-over has work). Bodies use OIP v2's binary tensor extension both ways, so JSON encoding is not what is
measured.

**The policies** are placements the product offers at push, nothing bench-only. Each gets a fresh
``wasm serve`` with the same settings, and its own store, so no policy inherits another's warm state:

- *always pod*: ``wasm push MODEL --tier pod --no-mask-cold-start --no-spill``;
- *always Wasm*: ``wasm push MODEL --tier wasm --no-spill`` (both models fit the sandbox: ``wasm_fit_bytes``
  is 256 MiB);
- *wasmgate*: ``wasm push MODEL`` (tier ``auto``, spill-over and cold-start masking on).

Settings, all three: ``WASMGATE_ACCELERATORS=yes`` and ``WASMGATE_TIER_POD_BYTES`` of 4 MiB, so that ``auto``
calls the 9.5 MB model large on this machine, which has no accelerator (with ``accelerators=none`` it would
keep every model that fits in the sandbox); ``WASMGATE_POD_IDLE_GRACE_S=3``, ``WASMGATE_POD_MAX_REPLICAS=2``,
``WASMGATE_DRAIN_TIMEOUT_S=2``; the local scaler (runner processes on this machine). Policies run one after
another on the same trace. Before each replay one untimed request per model pays the gateway's one-time costs
(the guest's compile, the first model load), then the bench waits until the pod tier is back at zero.

**Measured** (the replay). Open loop: every request is sent at its scheduled time whatever earlier ones are
doing (asyncio, one connection per request in flight). Latency runs from the scheduled time to the whole
response, so a late client counts against the policy, not for it (the client's lag is printed). Every answer
is checked against onnxruntime in this process; non-200 answers are counted and reported, and p50/p99 are over
the answered ones. Replica-seconds are the increase of ``wasmgate_pod_replica_seconds_total`` on ``/metrics``
(replicas asked of the scaler, integrated over time) from the start of the replay until the tier is back at zero,
so every policy pays its tail. Runner process-seconds are the gateway's runner processes, sampled every 0.2 s.
On this CPU-only machine a "pod" is a CPU runner process: the same onnxruntime as the sandbox behind one more
HTTP hop, so it cannot be faster than the sandbox for compute; what the replay shows is the cost of cold starts
and hops, not what a GPU pod buys.

**Simulated.** A discrete-event simulation of the same trace for the same policies, which places every request
with the product's own ``router.policy.decide`` and scales the pod tier with ``router.pod_policy``
(``desired_replicas``, ``needed_replicas``, ``pick_replica``), following ``router.activator``: held requests,
a scale-up at once on demand, scale-down after the idle grace, cold-start-masked requests counted as demand
and preloading the model on a ready replica (``router.pod_tier``), a replica's 429 retried once on the Wasm
tier, replica-seconds integrated the same way. The policy reads service times the simulation measures as the
gateway does (``router.latency.ServiceTimes``: Wasm service without the wait for a slot, pod forwards that were
not held). Its inputs are measured in this run:

- *service times*: after wasmgate's replay, on its gateway (warm, otherwise idle), requests one at a time with
  the replay's client, pinned to each tier with the ``x-wasmgate-tier`` hint, each model and batch kind in turn.
  Each simulated request draws one of these (seeded). They are taken apart from the replay because the replay's
  latencies already hold queueing, which the simulation adds itself;
- *a runner's load of a model*, which a runner does at its first request of it (readiness does not wait for
  it): that model's first request on a runner in that calibration, less its service time (the small model's
  first request brings the runner up, so its load stays in the scale-up time);
- *the scale from zero to a first answer*: always pod's first held request of each burst in its replay, less
  its service time and model load.

The Wasm tier is the product's admission (per function ``concurrency`` 8, a queue of 64 with a 5 s timeout: the
pool defaults) in front of ``worker_threads`` 8, with no model of CPU contention beyond that; a refused request
is retried on a ready replica, as the gateway does. A pod replica is one device that runs one request's compute
at a time (FIFO), plus the rest of its measured time (the edge, the hop), which overlaps; requests of a model it
is loading wait for the load; its own admission is the same pool defaults (429 past 72 requests of a function,
503 past a 5 s wait), and the gateway passes those answers on. One assumption, clearly not measured: the large
model's compute on a GPU pod is ``--gpu-speedup`` times faster (default 10) than on this CPU; its compute is its
median Wasm time less the smallest request's (the fixed cost of any request), and the small model gets no
speed-up. The simulation at speed-up 1 is printed too, as a check of the simulation against the replay.

``--quick`` replays a few seconds of trace with a 1.2 MB MLP (and a 512 KiB threshold) and a 1 s idle grace,
for a smoke test; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import heapq
import itertools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.http_load import WASM, free_port
from bench.pod_cold_start import TIMEOUT_S, PodGateway, clean_env, runner_children, spawned, wait_until
from gateway.demo import dense_model, train_digits
from gateway.settings import Settings
from router.latency import ServiceTimes as Figures
from router.pod_policy import ScalePolicy, desired_replicas, needed_replicas, pick_replica
from router.policy import Decision, PodState, RouteInputs, Thresholds, TierSetting, WasmState, decide
from router.scaler import Replica
from tests.test_scaling import metric
from wasm_host.figures import ModelFigures, measure
from wasm_host.pool import PoolSettings

MiB = 1 << 20
HEADER_LENGTH = "inference-header-content-length"
NUMPY = {"FP32": "<f4", "INT64": "<i8"}
SMALL, LARGE = "small", "large"
BIG_ROWS = 512
BIG_SHARE = 0.03
TICK_S = 0.25  # router.activator.Activator's default scaling tick
SAMPLE_S = 0.2  # runner process-seconds sampling
CALIBRATION, QUICK_CALIBRATION = (40, 8), (4, 1)  # service-time requests of 1-4 rows, and of BIG_ROWS


@dataclasses.dataclass(frozen=True)
class Mode:
    """What differs between the full bench and ``--quick``."""

    sizes: tuple[int, ...]
    tier_pod_bytes: int
    idle_grace_s: float
    duration_s: float
    rate: float
    burst_s: tuple[float, float]
    gap_s: tuple[float, float]


FULL = Mode((256, 1024, 1024, 1024, 10), 4 * MiB, 3.0, 50.0, 25.0, (2.0, 6.0), (1.0, 8.0))
QUICK = Mode((64, 512, 512, 10), 512 << 10, 1.0, 3.0, 10.0, (0.8, 1.2), (1.2, 1.6))


@dataclasses.dataclass(frozen=True)
class Policy:
    key: str
    label: str
    flags: tuple[str, ...]  # for ``wasm push``
    tier: TierSetting
    spill: bool
    mask_cold_start: bool


POLICIES = (
    Policy("pod", "always pod", ("--tier", "pod", "--no-mask-cold-start", "--no-spill"), "pod", False, False),
    Policy("wasm", "always Wasm", ("--tier", "wasm", "--no-spill"), "wasm", False, True),
    Policy("wasmgate", "wasmgate", (), "auto", True, True),
)


# -- the trace ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Arrival:
    t: float  # seconds from the start of the replay
    model: str  # SMALL or LARGE
    rows: int
    burst: int


@dataclasses.dataclass(frozen=True)
class Trace:
    arrivals: tuple[Arrival, ...]
    bursts: tuple[tuple[float, float], ...]  # (start, end) in seconds

    @property
    def gaps(self) -> list[float]:
        return [b[0] - a[1] for a, b in itertools.pairwise(self.bursts)]

    def summary(self, grace_s: float) -> str:
        n = len(self.arrivals)
        large = sum(a.model == LARGE for a in self.arrivals)
        big = sum(a.rows == BIG_ROWS for a in self.arrivals)
        gaps = self.gaps
        return (
            f"trace: {n} requests in {len(self.bursts)} bursts over {self.bursts[-1][1]:.1f} s; "
            f"{n - large} small ({100 * (n - large) / n:.0f}%), {large} large ({100 * large / n:.0f}%); "
            f"{big} batches of {BIG_ROWS} rows, the rest 1-4 rows; idle gaps {min(gaps, default=0):.1f}-"
            f"{max(gaps, default=0):.1f} s, {sum(g > grace_s for g in gaps)} of {len(gaps)} longer than the "
            f"idle grace of {grace_s:g} s"
        )


def make_trace(mode: Mode, seed: int, duration_s: float, rate: float, large_share: float) -> Trace:
    """Bursts of Poisson arrivals separated by idle gaps, deterministic for ``seed``; the first burst starts at
    0 and no burst starts after ``duration_s``."""
    rng = np.random.default_rng(seed)
    arrivals: list[Arrival] = []
    bursts: list[tuple[float, float]] = []
    start = 0.0
    while start < duration_s:
        end = start + float(rng.uniform(*mode.burst_s))
        t = start + float(rng.exponential(1 / rate))
        while t < end:
            model = LARGE if rng.random() < large_share else SMALL
            rows = BIG_ROWS if rng.random() < BIG_SHARE else int(rng.integers(1, 5))
            arrivals.append(Arrival(t, model, rows, len(bursts)))
            t += float(rng.exponential(1 / rate))
        bursts.append((start, end))
        start = end + float(rng.uniform(*mode.gap_s))
    return Trace(tuple(arrivals), tuple(bursts))


def bucket(rows: int) -> str:
    return "big" if rows >= BIG_ROWS else "small"


# -- the models and their requests ---------------------------------------------------------------------------
@dataclasses.dataclass
class Model:
    key: str  # SMALL or LARGE
    name: str  # the function's name on the gateway
    onnx: bytes
    width: int
    figures: ModelFigures
    rows_pool: np.ndarray | None = None  # the small model's inputs: digits test images

    def inputs(self, index: int, rows: int) -> np.ndarray:
        if self.rows_pool is not None:
            picks = (np.arange(rows) + 7 * index) % len(self.rows_pool)
            return np.ascontiguousarray(self.rows_pool[picks], dtype=np.float32)
        return np.random.default_rng(index).standard_normal((rows, self.width)).astype(np.float32)


def make_models(mode: Mode, sizes: tuple[int, ...]) -> dict[str, Model]:
    digits, x_test, _ = train_digits()
    dense = dense_model(sizes)
    models = {
        SMALL: Model(SMALL, "digits", digits, 64, measure(digits), np.asarray(x_test, np.float32)),
        LARGE: Model(LARGE, "dense", dense, sizes[0], measure(dense)),
    }
    if not models[SMALL].figures.bytes < mode.tier_pod_bytes < models[LARGE].figures.bytes:
        raise RuntimeError(f"tier_pod_bytes {mode.tier_pod_bytes} must lie between the two models' sizes")
    return models


def encode(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 request in the binary tensor extension, answered in binary too."""
    head = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "parameters": {"binary_data_output": True},
    }
    raw = json.dumps(head, separators=(",", ":")).encode()
    return raw + x.tobytes(), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(raw))}


def decode(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    if header_length is None:
        raise ValueError(f"expected a binary response, got {body[:200]!r}")
    offset = int(header_length)
    out = {}
    for o in json.loads(body[:offset])["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(body[offset : offset + size], NUMPY[o["datatype"]]).reshape(o["shape"])
        offset += size
    return out


class Oracle:
    """onnxruntime's answer to each request of the trace, computed once."""

    def __init__(self, models: Mapping[str, Model], trace: Trace) -> None:
        import onnxruntime as ort

        self.models = models
        self.trace = trace
        self.sessions = {k: ort.InferenceSession(m.onnx, providers=["CPUExecutionProvider"]) for k, m in models.items()}
        self._expected: dict[int, dict[str, np.ndarray]] = {}

    def expected(self, index: int) -> dict[str, np.ndarray]:
        if index not in self._expected:
            a = self.trace.arrivals[index]
            session = self.sessions[a.model]
            x = self.models[a.model].inputs(index, a.rows)
            names = [o.name for o in session.get_outputs()]
            self._expected[index] = dict(zip(names, session.run(None, {"input": x}), strict=True))
        return self._expected[index]

    def wrong(self, index: int, body: bytes, header_length: str | None) -> str | None:
        """None when the answer matches onnxruntime's, else what differs."""
        try:
            got = decode(body, header_length)
        except (ValueError, KeyError) as exc:
            return f"undecodable answer: {exc}"
        for name, want in self.expected(index).items():
            have = got.get(name)
            if have is None or have.shape != want.shape:
                return f"{name}: shape {None if have is None else have.shape}, expected {want.shape}"
            same = np.array_equal(have, want) if want.dtype.kind == "i" else np.allclose(have, want, 1e-4, 1e-5)
            if not same:
                return f"{name}: {have.ravel()[:3]}..., onnxruntime says {want.ravel()[:3]}..."
        return None


# -- one policy's gateway, and the replay -------------------------------------------------------------------
class TraceGateway(PodGateway):
    """A fresh ``wasm serve`` with both models pushed the policy's way. Readiness and the pod tier's at-zero
    check are ``PodGateway``'s; only the start differs (this bench's settings, two models, a policy)."""

    def __init__(
        self, stack: contextlib.ExitStack, tmp: Path, policy: Policy, env: Mapping[str, str], paths: Mapping[str, Path]
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp / f"gateway-{policy.key}.log"
        data = tmp / f"data-{policy.key}"
        cmd = [*WASM, "serve", "--port", str(port), "--data-dir", str(data), "--log-level", "warning"]
        self.proc = stack.enter_context(spawned(cmd, self.log, clean_env(**env)))
        self.client = stack.enter_context(httpx.Client(timeout=10, trust_env=False))
        wait_until(self._ready, "the gateway to start", self.proc, self.log)
        for name, path in paths.items():
            push = [*WASM, "push", str(path), "--name", name, *policy.flags, "--gateway", self.url]
            done = subprocess.run(push, capture_output=True, text=True, timeout=TIMEOUT_S, env=clean_env())
            if done.returncode != 0:
                raise RuntimeError(f"wasm push {name} failed: {done.stderr.strip()}")

    def replica_seconds(self) -> float:
        return metric(self.client.get(f"{self.url}/metrics").text, "wasmgate_pod_replica_seconds_total")


class RunnerClock:
    """Runner process-seconds: the gateway's runner children, counted every ``SAMPLE_S`` and integrated."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runner-clock", daemon=True)

    def __enter__(self) -> RunnerClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(SAMPLE_S):
            now = time.monotonic()
            self.seconds += len(runner_children(self.pid)) * (now - last)
            last = now


@dataclasses.dataclass
class Result:
    index: int
    status: int  # 0: no HTTP answer (see error)
    latency_s: float  # scheduled send -> whole response
    lag_s: float  # how late the client sent it
    tier: str
    reason: str
    cold: bool
    error: str = ""
    body: bytes = b""  # a 200's, until it is checked against onnxruntime (after the replay, off the clock)
    header_length: str | None = None


async def _replay(url: str, trace: Trace, models: Mapping[str, Model]) -> list[Result]:
    bodies = [encode(models[a.model].inputs(i, a.rows)) for i, a in enumerate(trace.arrivals)]
    results: list[Result] = []
    # Idle connections are dropped well before the server's keep-alive timeout (uvicorn's 5 s, as httpx's own
    # default), so the client never sends on a connection the server is closing at that moment.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits, trust_env=False) as client:

        async def one(i: int, due: float) -> None:
            lag = time.perf_counter() - due
            a = trace.arrivals[i]
            body, headers = bodies[i]
            try:
                r = await client.post(f"{url}/v2/models/{models[a.model].name}/infer", content=body, headers=headers)
            except httpx.HTTPError as exc:
                results.append(Result(i, 0, time.perf_counter() - due, lag, "", "", False, repr(exc)))
                return
            latency = time.perf_counter() - due
            h = r.headers
            result = Result(
                i, r.status_code, latency, lag, h.get("x-wasmgate-tier", ""), h.get("x-wasmgate-reason", ""),
                h.get("x-wasmgate-cold-start") == "true",
            )  # fmt: skip
            if r.status_code == 200:
                result.body, result.header_length = r.content, h.get(HEADER_LENGTH)
            else:
                result.error = r.text[:300]
            results.append(result)

        tasks = []
        t0 = time.perf_counter() + 0.2
        for i, a in enumerate(trace.arrivals):
            due = t0 + a.t
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
    return sorted(results, key=lambda r: r.index)


def warm_up(gateway: TraceGateway, models: Mapping[str, Model]) -> None:
    """One untimed request per model, then the pod tier back at zero."""
    for m in models.values():
        body, headers = encode(m.inputs(0, 1))
        r = gateway.client.post(f"{gateway.url}/v2/models/{m.name}/infer", content=body, headers=headers, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"warm-up of {m.name} answered {r.status_code}: {r.text[:300]}")
    gateway.wait_for_zero()
    time.sleep(TICK_S * 2)  # the activator's last tick has reported the replica-seconds


@dataclasses.dataclass
class Outcome:
    """One policy's numbers, from a replay or a simulation."""

    policy: str
    statuses: list[int]
    latencies_ms: list[float]  # answered (200) requests only
    tiers: list[str]
    reasons: list[str]
    replica_seconds: float
    process_seconds: float | None = None
    wrong: int = 0
    max_lag_ms: float = 0.0
    first_errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(s != 200 for s in self.statuses)

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def pod_share(self) -> float:
        return sum(t == "pod" for t in self.tiers) / max(1, len(self.tiers))

    def decision_counts(self) -> collections.Counter[str]:
        return collections.Counter(f"{t}/{r}" for t, r in zip(self.tiers, self.reasons, strict=True) if t)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"errors": self.errors, "p50_ms": self.p(50), "p99_ms": self.p(99)}


def run_policy(
    tmp: Path,
    policy: Policy,
    env: Mapping[str, str],
    paths: Mapping[str, Path],
    trace: Trace,
    models: Mapping[str, Model],
    oracle: Oracle,
    calibration: tuple[int, int] | None,
) -> tuple[Outcome, list[Result], Calibration | None]:
    """Replay the trace on a fresh gateway for ``policy``; then, given ``calibration`` (how many requests of
    1-4 rows and of a big batch), measure the service times on it."""
    with contextlib.ExitStack() as own:
        gateway = TraceGateway(own, tmp, policy, env, paths)
        warm_up(gateway, models)
        before = gateway.replica_seconds()
        with RunnerClock(gateway.proc.pid) as clock:
            gc.collect()
            gc.disable()  # no collection of this client's garbage in the middle of the replay
            try:
                results = asyncio.run(_replay(gateway.url, trace, models))
            finally:
                gc.enable()
            gateway.wait_for_zero()  # every policy pays its tail
            time.sleep(TICK_S * 2)
        replica_seconds = gateway.replica_seconds() - before
        measured = None if calibration is None else calibrate(gateway, models, *calibration)
    for r in results:
        if r.status == 200:
            wrong = oracle.wrong(r.index, r.body, r.header_length)
            if wrong is not None:
                r.error = "wrong answer: " + wrong
            r.body = b""
    outcome = Outcome(
        policy.key,
        [r.status for r in results],
        [r.latency_s * 1000 for r in results if r.status == 200],
        [r.tier for r in results],
        [r.reason for r in results],
        replica_seconds,
        clock.seconds,
        sum(r.error.startswith("wrong answer") for r in results),
        max(r.lag_s for r in results) * 1000,
        [f"#{r.index} {r.status}: {r.error}" for r in results if r.error][:3],
    )
    return outcome, results, measured


# -- service times, measured -------------------------------------------------------------------------------
Kind = tuple[str, str, str]  # (tier, model, bucket)


@dataclasses.dataclass
class Calibration:
    samples: dict[Kind, list[float]]  # ms
    firsts: list[tuple[str, str, float]]  # (model, bucket, ms) of a model's first request on a runner


def calibrate(gateway: TraceGateway, models: Mapping[str, Model], n_small: int, n_big: int) -> Calibration:
    """Service times: requests one at a time on the warm, otherwise idle gateway after its replay, with the
    replay's client, each (tier, model, batch) pinned with the ``x-wasmgate-tier`` hint, the kinds in turn (so
    that noise from elsewhere on the machine falls on all of them alike). Not samples: a request held while the
    pod tier scaled up, and a model's first request on a runner (``x-wasmgate-replica``), which loads it."""
    return asyncio.run(_calibrate(gateway.url, models, n_small, n_big))


async def _calibrate(url: str, models: Mapping[str, Model], n_small: int, n_big: int) -> Calibration:
    result = Calibration(collections.defaultdict(list), [])
    seen: set[tuple[str, str]] = set()  # (replica, model)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False) as client:
        for k in range(n_small):
            for b, tier, m in itertools.product(("small", "big"), ("wasm", "pod"), models.values()):
                if b == "big" and k >= n_big:
                    continue
                body, headers = encode(m.inputs(k, 1 + k % 4 if b == "small" else BIG_ROWS))
                t0 = time.perf_counter()
                r = await client.post(
                    f"{url}/v2/models/{m.name}/infer", content=body, headers=headers | {"x-wasmgate-tier": tier}
                )
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code != 200 or r.headers.get("x-wasmgate-tier") != tier:
                    raise RuntimeError(f"calibrating {tier}/{m.name}: {r.status_code} {r.text[:300]}")
                where = (r.headers.get("x-wasmgate-replica", ""), m.key)
                if r.headers.get("x-wasmgate-cold-start") == "true":
                    seen.add(where)  # held while a runner started, and loaded the model: neither sample
                elif tier == "pod" and where not in seen:
                    seen.add(where)
                    result.firsts.append((m.key, b, ms))
                else:
                    result.samples[tier, m.key, b].append(ms)
    return result


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

    def wasm_s(self, model: str, rows: int, rng: np.random.Generator) -> float:
        return float(rng.choice(self.samples["wasm", model, bucket(rows)])) / 1000

    def pod_parts(self, model: str, rows: int, speedup: float, rng: np.random.Generator) -> tuple[float, float]:
        """(device seconds, other seconds) of one request on a pod replica: a measured pod time, whose compute
        part runs on the device ``speedup`` times faster (the large model only), the rest (the edge, the hop,
        the jitter) as measured."""
        b = bucket(rows)
        total = float(rng.choice(self.samples["pod", model, b]))
        compute = min(total, self.compute_ms(model, b))
        device = compute / (speedup if model == LARGE else 1.0)
        return device / 1000, (total - compute) / 1000


def service_times(calibration: Calibration, pod_results: Sequence[Result], trace: Trace) -> ServiceTimes:
    """The calibration's samples; a runner's load of each model, from the model's first requests on a runner
    less the median service time of their kind (0 when the calibration saw none: the small model's first
    request brings the runner up, so its load stays in the scale-up time); and the pod tier's scale from zero
    to a first answer, from always pod's first held request of each burst, less its service time and load."""
    times = ServiceTimes(calibration.samples, {})
    for key in models_of(calibration):
        loads = [ms - times.median("pod", m, b) for m, b, ms in calibration.firsts if m == key]
        times.load_s[key] = max(0.0, float(np.median(loads))) / 1000 if loads else 0.0
    firsts: dict[int, Result] = {}
    for r in pod_results:
        burst = trace.arrivals[r.index].burst
        if r.status == 200 and r.cold and (burst not in firsts or r.index < firsts[burst].index):
            firsts[burst] = r
    ups = []
    for r in firsts.values():
        a = trace.arrivals[r.index]
        ups.append(r.latency_s - times.median("pod", a.model, bucket(a.rows)) / 1000 - times.load_s[a.model])
    if not ups:
        raise RuntimeError("always pod never scaled from zero; cannot measure the scale-up time")
    times.scale_up_s, times.scale_up_bursts = float(np.median(ups)), len(ups)
    return times


def models_of(calibration: Calibration) -> list[str]:
    return sorted({model for _, model, _ in calibration.samples})


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
    seed: int  # for the draws of service times

    @classmethod
    def from_settings(cls, settings: Settings, gpu_speedup: float, seed: int) -> SimConfig:
        from gateway.pods import thresholds

        scale = ScalePolicy(
            settings.pod_min_replicas,
            settings.pod_max_replicas,
            settings.pod_target_in_flight,
            settings.pod_idle_grace_s,
        )
        return cls(
            scale, thresholds(settings), PoolSettings(), settings.worker_threads, settings.pod_max_held,
            settings.pod_hold_timeout_s, gpu_speedup, seed,
        )  # fmt: skip


@dataclasses.dataclass(eq=False)
class _Req:
    index: int
    arrival: Arrival
    decision: Decision | None = None
    tier: str = ""
    reason: str = ""
    held: bool = False
    status: int = 0
    latency_s: float = 0.0
    started_s: float = 0.0  # when its service began (a Wasm slot, or its forwarding)


@dataclasses.dataclass(eq=False)
class _Pod:
    replica: Replica
    ready: bool = False
    device_free_at: float = 0.0
    loaded_at: dict[str, float] = dataclasses.field(default_factory=dict)  # model -> when its load is done
    admitted: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # by model


class Simulation:
    """The trace through the product's policy and scaling rules, with measured service times (module docstring).

    Events are (time, sequence, kind, item) on a heap. The pod tier's scaling runs as the activator's loop does:
    at once when it is kicked (a request held, a masked request, a held request done, the last request in flight
    done), else ``TICK_S`` after its last run."""

    def __init__(
        self, trace: Trace, policy: Policy, models: Mapping[str, Model], times: ServiceTimes, cfg: SimConfig
    ) -> None:
        self.trace, self.policy, self.models, self.times, self.cfg = trace, policy, models, times, cfg
        self.rng = np.random.default_rng(cfg.seed)
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
        # The pod tier: the activator's state.
        self.pods: list[_Pod] = []
        self.in_flight: dict[str, int] = collections.defaultdict(int)
        self.holders: dict[str, set[str]] = collections.defaultdict(set)
        self.held: collections.deque[_Req] = collections.deque()
        self.wanted = 0
        self.below_since: float | None = None
        self.demand_elsewhere_at = -float("inf")
        self.replica_seconds = 0.0
        self._integrated_to = 0.0
        # What the gateway has measured per function, tier and size (gateway.routing feeds the same book).
        self.figures = Figures(cfg.thresholds.spill_batch_rows)

    def _at(self, t: float, kind: str, item: Any = None) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, item))
        self._pending += kind != "tick"

    def run(self) -> Outcome:
        for i, a in enumerate(self.trace.arrivals):
            self._at(a.t, "arrive", _Req(i, a))
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
        pod = PodState(True, ready, warm, in_flight, len(self.held), pod_ms, self.times.scale_up_s)
        p = self.policy
        inputs = RouteInputs(
            p.tier, model.figures, True, p.spill, p.mask_cold_start, req.arrival.rows, None, None, True, wasm, pod,
            self.cfg.thresholds, self.figures.other_size(fn, 1, rows),
        )  # fmt: skip
        d = req.decision = decide(inputs)
        req.tier, req.reason = d.tier, d.reason
        if d.scale_pod:  # gateway.routing: Activator.note_demand, then PodTier.preload
            self.demand_elsewhere_at = self.now
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
        self._at(self.now + self.times.wasm_s(req.arrival.model, req.arrival.rows, self.rng), "wasm_done", req)

    def _wasm_done(self, req: _Req) -> None:
        fn = req.arrival.model
        self.threads_busy -= 1
        self.w_in_flight[fn] -= 1
        self.figures.observe(fn, 1, "wasm", req.arrival.rows, (self.now - req.started_s) * 1000)
        self._finish(req, 200)
        if self.thread_queue:
            self._wasm_start(self.thread_queue.popleft())
        if self.w_queue[fn]:
            self._wasm_admit(self.w_queue[fn].popleft())

    def _wasm_timeout(self, req: _Req) -> None:
        queue = self.w_queue[req.arrival.model]
        if req in queue:
            queue.remove(req)
            self._not_run(req, 503)

    def _not_run(self, req: _Req, status: int) -> None:
        """Refused by admission, so it never ran: gateway.routing retries it once on the other candidate (a
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
            self._at(self.now + self.cfg.hold_timeout_s, "hold_timeout", req)
            self._at(self.now, "kick")

    def _dispatch(self, req: _Req, pod: _Pod) -> None:
        """Forward to ``pod``, whose own admission (the pool defaults, as in the gateway) answers 429 past
        ``concurrency + max_queue`` requests of a function (the gateway retries those on the Wasm tier, once),
        and 503 to one that would wait past ``queue_timeout_s`` (passed on: an answer is never retried)."""
        a, pool = req.arrival, self.cfg.pool
        self.in_flight[pod.replica.id] += 1
        req.started_s = self.now
        if pod.admitted[a.model] >= pool.effective_concurrency + pool.max_queue:
            self._at(self.now, "pod_done", (req, pod, 429))
            return
        if a.model not in pod.loaded_at:  # the first request of a model on a runner loads it; others wait
            pod.loaded_at[a.model] = self.now + self.times.load_s[a.model]
        device_s, other_s = self.times.pod_parts(a.model, a.rows, self.cfg.gpu_speedup, self.rng)
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
        if self.in_flight[pod.replica.id] <= 0:
            del self.in_flight[pod.replica.id]
        if status == 200 and not req.held:
            self.figures.observe(fn, 1, "pod", req.arrival.rows, (self.now - req.started_s) * 1000)
        if status == 429:
            self._not_run(req, 429)
        else:
            self._finish(req, status)
        if req.held or not self.in_flight:
            self._at(self.now, "kick")

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
        policy = self.cfg.scale
        demand = sum(self.in_flight.values()) + len(self.held)
        if self.now - self.demand_elsewhere_at < policy.idle_grace_s:
            demand = max(demand, 1)
        current = self.wanted
        if needed_replicas(policy, demand) >= current:
            self.below_since = None
        elif self.below_since is None:
            self.below_since = self.now
        below_for = 0.0 if self.below_since is None else self.now - self.below_since
        want = desired_replicas(policy, demand, current, below_for)
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
        self.below_since = None


# -- the report ------------------------------------------------------------------------------------------------
def table(outcomes: Sequence[Outcome], measured: bool) -> list[str]:
    labels = {p.key: p.label for p in POLICIES}
    extra = " runner process-seconds |" if measured else ""
    lines = [
        f"| policy | requests | errors | p50 ms | p99 ms | pod replica-seconds |{extra} share of requests on pod |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if measured else "") + "---:|",
    ]
    for o in outcomes:
        proc = f" {o.process_seconds:.1f} |" if measured and o.process_seconds is not None else ""
        lines.append(
            f"| {labels[o.policy]} | {len(o.statuses)} | {o.errors} | {o.p(50):.1f} | {o.p(99):.1f} "
            f"| {o.replica_seconds:.1f} |{proc} {100 * o.pod_share:.0f}% |"
        )
    return lines


def verdicts(outcomes: Sequence[Outcome]) -> list[str]:
    by = {o.policy: o for o in outcomes}
    ours = by["wasmgate"]
    best = all(ours.p(99) < o.p(99) for o in outcomes if o is not ours)
    cheaper = ours.replica_seconds <= by["pod"].replica_seconds
    return [
        f"wasmgate best p99: {'yes' if best else 'no'} ({', '.join(f'{o.policy} {o.p(99):.1f} ms' for o in outcomes)})",
        f"replica-seconds <= always pod: {'yes' if cheaper else 'no'} "
        f"(wasmgate {ours.replica_seconds:.1f}, always pod {by['pod'].replica_seconds:.1f})",
    ]


def decisions(outcome: Outcome) -> str:
    counts = outcome.decision_counts()
    return "decisions, wasmgate (tier/reason: requests): " + ", ".join(f"{k} {v}" for k, v in counts.most_common())


def service_table(times: ServiceTimes, speedup: float) -> list[str]:
    lines = [
        "| tier | model | batch | n | p50 ms | p90 ms | GPU pod (simulated): compute ms on the device |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (tier, model, b), ms in sorted(times.samples.items()):
        gpu = ""
        if tier == "pod":
            compute = times.compute_ms(model, b)
            gpu = f"{compute / (speedup if model == LARGE else 1.0):.2f} (of {compute:.2f})"
        label = f"{BIG_ROWS} rows" if b == "big" else "1-4 rows"
        lines.append(
            f"| {tier} | {model} | {label} | {len(ms)} | {np.median(ms):.1f} | {np.percentile(ms, 90):.1f} | {gpu} |"
        )
    lines.append(
        f"\npod tier scale from zero to a first answer: {times.scale_up_s:.2f} s (median of always pod's first held "
        f"request in {times.scale_up_bursts} bursts, less its service time and model load); a runner's load of the "
        f"large model at its first request: {times.load_s[LARGE] * 1000:.0f} ms"
    )
    return lines


def print_section(title: str, lines: Iterable[str]) -> None:
    print(f"\n## {title}\n", flush=True)
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds of trace per policy (default 50; quick 3)")
    parser.add_argument("--rate", type=float, help="Poisson arrivals per second within a burst (default 25)")
    parser.add_argument("--seed", type=int, default=7, help="the trace's seed (default 7)")
    parser.add_argument("--large-share", type=float, default=0.3, help="share of requests for the large model")
    parser.add_argument("--sizes", help="the large MLP's layer widths, comma-separated (default 256,1024,1024,1024,10)")
    parser.add_argument("--gpu-speedup", type=float, default=10.0, help="ASSUMED large-model speed-up on a GPU pod")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--quick", action="store_true", help="a few seconds of trace, a small MLP: a smoke test")
    args = parser.parse_args()
    # A SIGTERM unwinds like a Ctrl-C, so every gateway (and its runners) this script started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    mode = QUICK if args.quick else FULL
    duration = args.duration if args.duration is not None else mode.duration_s
    rate = args.rate if args.rate is not None else mode.rate
    trace = make_trace(mode, args.seed, duration, rate, args.large_share)
    env = {
        "WASMGATE_ACCELERATORS": "yes",
        "WASMGATE_TIER_POD_BYTES": str(mode.tier_pod_bytes),
        "WASMGATE_POD_IDLE_GRACE_S": str(mode.idle_grace_s),
        "WASMGATE_POD_MAX_REPLICAS": "2",
        "WASMGATE_DRAIN_TIMEOUT_S": "2",
    }
    settings = Settings.from_env(env)
    sizes = tuple(int(w) for w in args.sizes.split(",")) if args.sizes else mode.sizes
    models = make_models(mode, sizes)
    oracle = Oracle(models, trace)
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-routing-trace-"))
    paths = {}
    for m in models.values():
        paths[m.name] = tmp / f"{m.name}.onnx"
        paths[m.name].write_bytes(m.onnx)
    print(trace.summary(mode.idle_grace_s))
    print(
        f"models: small = digits logistic regression ({models[SMALL].figures.bytes / 1e3:.0f} KB), large = MLP "
        f"{sizes} ({models[LARGE].figures.bytes / 1e6:.1f} MB, {models[LARGE].figures.flops_per_row / 1e6:.1f} "
        "MFLOP per row); settings: " + " ".join(f"{k}={v}" for k, v in env.items()),
        flush=True,
    )
    replays: dict[str, tuple[Outcome, list[Result]]] = {}
    measured_times: Calibration | None = None
    for policy in POLICIES:
        started = time.monotonic()
        calibration = (QUICK_CALIBRATION if args.quick else CALIBRATION) if policy.key == "wasmgate" else None
        outcome, results, measured_here = run_policy(tmp, policy, env, paths, trace, models, oracle, calibration)
        replays[policy.key] = outcome, results
        measured_times = measured_here or measured_times
        print(
            f"replayed {policy.label}: {len(outcome.statuses)} requests, {outcome.errors} errors, "
            f"{time.monotonic() - started:.0f} s with start-up, tail" + (" and calibration" if calibration else ""),
            flush=True,
        )
    measured = [replays[p.key][0] for p in POLICIES]
    assert measured_times is not None
    times = service_times(measured_times, replays["pod"][1], trace)

    def simulate(speedup: float) -> list[Outcome]:
        cfg = SimConfig.from_settings(settings, speedup, args.seed)
        return [Simulation(trace, p, models, times, cfg).run() for p in POLICIES]

    simulated, check = simulate(args.gpu_speedup), simulate(1.0)

    print_section(
        "Measured on this machine (CPU only: a pod is a CPU runner process, the same onnxruntime as the sandbox "
        "behind one more HTTP hop, so it cannot be faster than the sandbox for compute)",
        [*table(measured, True), "", decisions(measured[2]), *verdicts(measured)],
    )
    for o in measured:
        if o.first_errors:
            print(f"{o.policy}: {', '.join(o.first_errors)}")
    lags = ", ".join(f"{o.policy} {o.max_lag_ms:.1f} ms" for o in measured)
    print(f"client lag (latest send after its scheduled time, counted in the latency): {lags}")
    print_section(
        "Service times the simulation draws from (measured on the wasmgate gateway after its replay: one request at "
        "a time, pinned to each tier with the x-wasmgate-tier hint)",
        service_table(times, args.gpu_speedup),
    )
    print_section(
        f"Simulated (router.policy.decide and router.pod_policy on the same trace, the service times above; "
        f"ASSUMED, not measured: the large model runs {args.gpu_speedup:g}x faster on a GPU pod)",
        [*table(simulated, False), "", decisions(simulated[2]), *verdicts(simulated)],
    )
    print_section(
        "Simulation check: speed-up 1 (a CPU pod, as measured), to compare with the measured table",
        [*table(check, False), "", *verdicts(check)],
    )
    if args.json:
        raw = {
            "trace": {
                "seed": args.seed,
                "duration_s": duration,
                "rate": rate,
                "large_share": args.large_share,
                "bursts": trace.bursts,
                "arrivals": [dataclasses.asdict(a) for a in trace.arrivals],
            },
            "settings": env,
            "gpu_speedup": args.gpu_speedup,
            "measured": [o.to_json() for o in measured],
            "service_ms": {"/".join(k): v for k, v in times.samples.items()},
            "model_load_s": times.load_s,
            "scale_up_s": times.scale_up_s,
            "simulated": [o.to_json() for o in simulated],
            "simulated_speedup_1": [o.to_json() for o in check],
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    wrong = sum(o.wrong for o in measured)
    if wrong:
        raise SystemExit(f"{wrong} answers differ from onnxruntime's; logs in {tmp}")
    shutil.rmtree(tmp, ignore_errors=True)  # kept when anything failed, for its logs


if __name__ == "__main__":
    main()

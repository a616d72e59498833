"""Routing under a bursty trace: the same seeded trace replayed against three placement policies in one run, and
simulated for the same three, with p50 and p99 latency and the pod tier's replica-seconds (its GPU cost).

    python -m bench.routing_trace [--duration 50] [--rate 25] [--seed 7] [--large-share 0.3]
        [--sizes 256,4096,4096,4096,10] [--tier-pod-bytes N] [--gpu-speedup 10] [--idle-grace 3]
        [--sim-traces 20] [--json OUT] [--quick]

**The trace** (seeded, the same for every policy). Bursts of 2-6 s whose arrivals are Poisson at ``--rate``
requests per second, separated by idle gaps of 1-8 s, most longer than the pod tier's idle grace (3 s), so the
tier goes cold between bursts. Each request asks the small model (``gateway.cli.demo.train_digits``: a 4 KB logistic
regression, rows of 64 floats) or, with probability ``--large-share``, the large one (``gateway.cli.demo.dense_model``:
a 34.7 M-parameter MLP of 138.6 MB, rows of 256 floats, past the product's default ``tier_pod_bytes`` of 64 MiB;
``--sizes`` for another, with ``--tier-pod-bytes`` between the two models' sizes). A request carries 1-4 rows, or
with probability 3% a batch of 512 rows (past ``spill_batch_rows``, so spill-over has work). Bodies use OIP v2's
binary tensor extension both ways, so JSON encoding is not what is measured.

**The policies** are placements the product offers at push, nothing bench-only. Each gets a fresh
``wasm serve`` with the same settings, and its own store, so no policy inherits another's warm state:

- *always pod*: ``wasm push MODEL --tier pod --no-mask-cold-start --no-spill``;
- *always Wasm*: ``wasm push MODEL --tier wasm --no-spill`` (both models fit the sandbox: ``wasm_fit_bytes``
  is 256 MiB);
- *wasmgate*: ``wasm push MODEL`` (tier ``auto``, spill-over and cold-start masking on).

Settings, all three: ``WASMGATE_ACCELERATORS=yes``, so that ``auto`` places the large model on the pod tier on this
machine, which has no accelerator (with ``accelerators=none`` it would keep every model that fits in the sandbox);
``WASMGATE_TIER_POD_BYTES`` (the product's default unless ``--tier-pod-bytes``), ``WASMGATE_POD_IDLE_GRACE_S=3``,
``WASMGATE_POD_MAX_REPLICAS=2``, ``WASMGATE_DRAIN_TIMEOUT_S=2``; the local scaler (runner processes on this
machine); the rest the product's defaults (the keep-alive among them). Policies run one after another on the same
trace. Before each replay one untimed request per model pays the gateway's one-time costs (the guest's compile, the
first model load), then the bench waits until the pod tier is back at zero.

**Measured** (the replay). Open loop: every request is sent at its scheduled time whatever earlier ones are
doing (asyncio, one connection per request in flight). Latency runs from the scheduled time to the whole
response, so a late client counts against the policy, not for it (the client's lag is printed). Every answer
is checked against onnxruntime in this process; non-200 answers are counted and reported, and p50/p99 are over
the answered ones. Replica-seconds are the increase of ``wasmgate_pod_replica_seconds_total`` on ``/metrics``
(replicas asked of the scaler, integrated over time) from the start of the replay until the tier is back at zero,
so every policy pays its tail. Runner process-seconds are the gateway's runner processes, sampled every 0.2 s.
On this CPU-only machine a "pod" is a CPU runner process: the same onnxruntime as the sandbox behind one more
HTTP hop, so it cannot be faster than the sandbox for compute; what the replay shows is the cost of cold starts
and hops, not what a GPU pod buys. The gateway is pinned to the first half of the CPUs this process may use and
its runners (setting ``runner_cpus``) to the rest, as a gateway node and a pod node would be, so that a runner's
start-up and model load do not take the CPU the Wasm tier serves on (on two cores: one each). The client shares
the gateway's CPUs, under every policy alike: the pod node's CPUs are the runners' alone. ``--shared-cpus`` runs
them all on every CPU.

**Simulated.** A discrete-event simulation of the same trace for the same policies, with the product's own
routing and scaling rules and inputs measured in this run: ``bench.routing_sim`` says what it models and how.
One trace's p99 rests on its slowest 1% (six or seven requests of 650), so the simulation also runs
``--sim-traces`` traces of the same process (the replayed one and the next seeds) and reports every request
pooled, and how often the target held trace by trace.

``--quick`` replays a few seconds of trace with a 1.2 MB MLP (and a 512 KiB threshold) and a 1 s idle grace,
and simulates three traces, for a smoke test; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from bench.http_load import SERVE, WASM
from bench.pod_cold_start import TIMEOUT_S, PodGateway, clean_env, runner_children, spawned_server
from bench.routing_measure import HEADER_LENGTH, Calibration, Oracle, Result, calibrate, encode, service_times
from bench.routing_report import decisions, per_trace, print_section, service_table, table, verdicts
from bench.routing_sim import SimConfig, Simulation
from bench.routing_workload import (
    FULL,
    LARGE,
    POLICIES,
    QUICK,
    SMALL,
    TICK_S,
    Model,
    Outcome,
    Policy,
    Trace,
    make_models,
    make_trace,
)
from gateway.settings import Settings
from tests.support import metric

SAMPLE_S = 0.2  # runner process-seconds sampling
CALIBRATION, QUICK_CALIBRATION = (40, 8), (4, 1)  # service-time requests of 1-4 rows, and of BIG_ROWS


# -- one policy's gateway, and the replay -------------------------------------------------------------------
class TraceGateway(PodGateway):
    """A fresh ``wasm serve`` with both models pushed the policy's way. Readiness and the pod tier's at-zero
    check are ``PodGateway``'s; only the start differs (this bench's settings, two models, a policy)."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        tmp: Path,
        policy: Policy,
        env: Mapping[str, str],
        paths: Mapping[str, Path],
        cpus: frozenset[int] | None,
    ) -> None:
        """``cpus``: pin the gateway there (its runners go where ``env``'s WASMGATE_RUNNER_CPUS says)."""
        self.log = tmp / f"gateway-{policy.key}.log"
        data = tmp / f"data-{policy.key}"

        def cmd(port: int) -> list[str]:
            return [*SERVE, "--port", str(port), "--data-dir", str(data), "--log-level", "warning"]

        def pin(proc: subprocess.Popen[bytes]) -> None:
            if cpus is not None:  # at once, before the interpreter has started a thread: its threads inherit it
                os.sched_setaffinity(proc.pid, cpus)

        self.client = stack.enter_context(httpx.Client(timeout=10, trust_env=False))
        started = spawned_server(cmd, self.log, clean_env(**env), self._ready, started=pin)
        self.proc, self.url = stack.enter_context(started)
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


def run_policy(
    tmp: Path,
    policy: Policy,
    env: Mapping[str, str],
    paths: Mapping[str, Path],
    trace: Trace,
    models: Mapping[str, Model],
    oracle: Oracle,
    calibration: tuple[int, int] | None,
    cpus: frozenset[int] | None,
) -> tuple[Outcome, list[Result], Calibration | None]:
    """Replay the trace on a fresh gateway for ``policy``; then, given ``calibration`` (how many requests of
    1-4 rows and of a big batch), measure the service times on it."""
    with contextlib.ExitStack() as own:
        gateway = TraceGateway(own, tmp, policy, env, paths, cpus)
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
        measured = None if calibration is None else calibrate(gateway.url, models, *calibration)
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
        [trace.arrivals[r.index].model for r in results if r.status == 200],
        [r.tier for r in results],
        [r.reason for r in results],
        replica_seconds,
        clock.seconds,
        sum(r.error.startswith("wrong answer") for r in results),
        max(r.lag_s for r in results) * 1000,
        [f"#{r.index} {r.status}: {r.error}" for r in results if r.error][:3],
    )
    return outcome, results, measured


def split_cpus() -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """(the gateway's CPUs, its runners'): the first half of those this process may use, and the rest, as a
    gateway node and a pod node would be; (None, None) with fewer than two, or without Linux's affinity calls."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return frozenset(cpus[:half]), frozenset(cpus[half:])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, help="seconds of trace per policy (default 50; quick 3)")
    parser.add_argument("--rate", type=float, help="Poisson arrivals per second within a burst (default 25)")
    parser.add_argument("--seed", type=int, default=7, help="the trace's seed (default 7)")
    parser.add_argument("--large-share", type=float, default=0.3, help="share of requests for the large model")
    parser.add_argument("--sizes", help="the large MLP's layer widths, comma-separated (default 256,4096,4096,4096,10)")
    parser.add_argument("--tier-pod-bytes", type=int, help="setting tier_pod_bytes (default the product's, 64 MiB)")
    parser.add_argument("--gpu-speedup", type=float, default=10.0, help="ASSUMED large-model speed-up on a GPU pod")
    parser.add_argument("--idle-grace", type=float, help="the pod tier's pod_idle_grace_s (default 3; quick 1)")
    parser.add_argument("--sim-traces", type=int, help="traces simulated, the replayed one first (default 20; quick 3)")
    parser.add_argument(
        "--shared-cpus", action="store_true", help="run the gateway and its runners on all CPUs (default: split)"
    )
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--quick", action="store_true", help="a few seconds of trace, a small MLP: a smoke test")
    args = parser.parse_args()
    # A SIGTERM unwinds like a Ctrl-C, so every gateway (and its runners) this script started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    mode = QUICK if args.quick else FULL
    duration = args.duration if args.duration is not None else mode.duration_s
    rate = args.rate if args.rate is not None else mode.rate
    grace = args.idle_grace if args.idle_grace is not None else mode.idle_grace_s
    traces = [
        make_trace(mode, args.seed + k, duration, rate, args.large_share)
        for k in range(args.sim_traces if args.sim_traces is not None else mode.sim_traces)
    ]
    trace = traces[0]
    tier_pod_bytes = args.tier_pod_bytes if args.tier_pod_bytes is not None else mode.tier_pod_bytes
    env = {
        "WASMGATE_ACCELERATORS": "yes",
        "WASMGATE_TIER_POD_BYTES": str(tier_pod_bytes),
        "WASMGATE_POD_IDLE_GRACE_S": str(grace),
        "WASMGATE_POD_MAX_REPLICAS": "2",
        "WASMGATE_DRAIN_TIMEOUT_S": "2",
    }
    gateway_cpus, runner_cpus = (None, None) if args.shared_cpus else split_cpus()
    if gateway_cpus is not None and runner_cpus is not None:
        env["WASMGATE_RUNNER_CPUS"] = ",".join(map(str, sorted(runner_cpus)))
        os.sched_setaffinity(0, gateway_cpus)  # the client too: the runners' CPUs are the pod node's alone
    settings = Settings.from_env(env)
    sizes = tuple(int(w) for w in args.sizes.split(",")) if args.sizes else mode.sizes
    models = make_models(sizes, tier_pod_bytes)
    oracle = Oracle(models, trace)
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-routing-trace-"))
    paths = {}
    for m in models.values():
        paths[m.name] = tmp / f"{m.name}.onnx"
        paths[m.name].write_bytes(m.onnx)
    print(trace.summary(grace))
    print(
        f"models: small = digits logistic regression ({models[SMALL].figures.bytes / 1e3:.0f} KB), large = MLP "
        f"{sizes} ({models[LARGE].figures.bytes / 1e6:.1f} MB, {models[LARGE].figures.flops_per_row / 1e6:.1f} "
        "MFLOP per row); settings: " + " ".join(f"{k}={v}" for k, v in env.items()),
        flush=True,
    )
    if gateway_cpus is not None and runner_cpus is not None:
        print(f"CPUs: the gateway and this client on {sorted(gateway_cpus)}, its runners on {sorted(runner_cpus)}")
    replays: dict[str, tuple[Outcome, list[Result]]] = {}
    measured_times: Calibration | None = None
    for policy in POLICIES:
        started = time.monotonic()
        calibration = (QUICK_CALIBRATION if args.quick else CALIBRATION) if policy.key == "wasmgate" else None
        outcome, results, measured_here = run_policy(
            tmp, policy, env, paths, trace, models, oracle, calibration, gateway_cpus
        )
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

    def simulate(speedup: float, k: int = 0) -> list[Outcome]:
        cfg = SimConfig.from_settings(settings, speedup, args.seed + k, len(gateway_cpus or os.sched_getaffinity(0)))
        return [Simulation(traces[k], p, models, times, cfg).run() for p in POLICIES]

    simulated, check = simulate(args.gpu_speedup), simulate(1.0)
    many = [simulated] + [simulate(args.gpu_speedup, k) for k in range(1, len(traces))]
    pooled = [Outcome.pooled([run[i] for run in many]) for i in range(len(POLICIES))]

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
        f"Simulated on {len(traces)} traces (seeds {args.seed}-{args.seed + len(traces) - 1}, the first the one "
        f"replayed; the same process, service times and assumption), every request pooled",
        [*table(pooled, False), "", decisions(pooled[2]), *verdicts(pooled), *per_trace(many)],
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
            "simulated_traces": [[o.to_json() for o in run] for run in many],
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    wrong = sum(o.wrong for o in measured)
    if wrong:
        raise SystemExit(f"{wrong} answers differ from onnxruntime's; logs in {tmp}")
    shutil.rmtree(tmp, ignore_errors=True)  # kept when anything failed, for its logs


if __name__ == "__main__":
    main()

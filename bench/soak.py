"""Soak: one real ``wasm serve`` under mixed traffic, hostile functions included, bounded in time and in requests;
it reports unexpected answers, the gateway's memory, open file descriptors and threads.

    python -m bench.soak [--duration 600] [--max-requests 1000000] [--workers 4] [--warm-up S]
        [--sample-every 2] [--seed 1] [--json OUT]

**The gateway.** One ``wasm serve`` (a single process) on a free port with a temporary data directory and the
hostile tests' sandbox limits (``WASMGATE_DEADLINE_MS=200``, ``WASMGATE_MEMORY_LIMIT_BYTES=16777216``, from
``tests/test_hostile.py``), so every hostile call ends fast. ``WASMGATE_POD_SCALER=none`` and
``WASMGATE_ACCELERATORS=none``: every function pushed here fits the sandbox, so the pod tier would carry none
of this traffic, and without it nothing is forked, so the process sampled is the whole gateway and the two
CPUs of a small machine go to the traffic. Pool settings are the defaults.

**The functions.** Healthy: ``digits`` (``gateway.cli.demo.train_digits``, bare, behind the passthrough),
``digits-top3`` (the ``digits_topk`` guest with that model) and ``dense`` (``gateway.cli.demo.dense_model``'s
default MLP, 2.37 M parameters). Hostile, built from source by ``guest_modules/build.py``: every fixture of
guest_modules/hostile/README.md that ``wasm push`` accepts, with ``nn_abuse`` pushed with the digits model.

**The traffic.** ``--workers`` client threads, each with its own keep-alive ``httpx.Client``, send requests
back to back (closed loop) until ``--duration`` seconds have passed or ``--max-requests`` were sent, whichever
comes first. Each request is drawn (seeded) by class: 80 % healthy (JSON bodies of 1 to 16 rows), 15 %
hostile, 5 % malformed; within a class, uniformly among its kinds. Every answer is classified against what its
request was:

- *healthy*: 200, and the outputs equal onnxruntime's in this process (labels exactly, floats to 1e-4);
- *hostile*: the status and message fragments README's table documents (the cases of
  ``tests/test_hostile.py``: 504 for the infinite loop, 500 for traps, ABI breaches and every WASI-NN misuse
  reported, 400 for a guest rejecting its input, 200 with the denied errnos for ``escape``, 200 for case 0);
- *malformed*: 400 with an ``{"error": ...}`` body (bad JSON, no inputs, wrong shape, datatype or name, a
  truncated binary body, an unknown output, a pixel out of range that the guest itself rejects).

Anything else (another status, a wrong result, a transport error, the gateway exiting) is an unexpected error.

**Sampling.** Every ``--sample-every`` seconds the gateway process's VmRSS and thread count (``/proc/<pid>/
status``) and open file descriptors (entries of ``/proc/<pid>/fd``). The RSS baseline is the first sample
after the warm-up (default 10 % of the duration, at least 5 s and at most 60 s): the first seconds of traffic
make one-time allocations (instance pools filling up to their limits, onnxruntime sessions and their arenas,
the allocator's and CPython's free lists growing to the working set), which are footprint, not a leak; growth
is measured from there. Targets: unexpected errors 0; RSS growth, end over baseline, under 10 %; fds stable,
i.e. at the end at most ``FD_SLACK`` above the baseline (the client's keep-alive connections may be reopened;
a leak of one descriptor per request, or per discarded instance, would add thousands). The gateway's log is
scanned for tracebacks. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.http_load import BENCH, SERVE
from bench.pod_cold_start import clean_env, spawned_server
from gateway.cli.client import AdminClient
from gateway.cli.demo import dense_model, train_digits
from tests.support import BAD_ALLOC, EBADF, ENOENT, ENOTSOCK, NN_MISUSE, REFUSED, SETTINGS, TRAPS, Misbehaviour

MiB = 1024 * 1024
JSON = {"content-type": "application/json"}
#: Share of requests per class; within a class each kind is equally likely.
MIX = {"healthy": 0.80, "hostile": 0.15, "malformed": 0.05}
#: The WASI-NN misuses sent (of the 27 in nn_abuse.c): a 4 GiB model, a model not pushed with the function,
#: a wrong tensor type, a 1 TiB tensor, compute before set_input, a too-small output buffer.
NN_CASES = (3, 9, 16, 18, 20, 26)
#: The fds the end may be above the baseline and still count as stable.
FD_SLACK = 8
RSS_TARGET = 0.10
#: Unexpected answers kept with their bodies for the report (all of them are counted).
KEEP_UNEXPECTED = 20
CLIENT_TIMEOUT_S = 30.0

Check = Callable[[httpx.Response], str | None]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of request: its class, a label, where it goes, its bodies, the status it must get, and a check
    of the answer beyond the status (None when it is right, else what is wrong)."""

    cls: str
    label: str
    function: str
    bodies: tuple[bytes, ...]
    status: int
    check: Check
    headers: dict[str, str] = dataclasses.field(default_factory=lambda: dict(JSON))


def output(response: httpx.Response, name: str) -> Any:
    return next(o["data"] for o in response.json()["outputs"] if o["name"] == name)


def error_with(*fragments: str) -> Check:
    def check(response: httpx.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return "the body is not JSON"
        if set(body) != {"error"} or not body["error"]:
            return "the body is not {'error': ...}"
        missing = [f for f in fragments if f not in body["error"]]
        return f"the message lacks {missing}" if missing else None

    return check


def infer_body(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


# -- what is sent, and what must come back -----------------------------------------------------------------------
def healthy_kinds(digits: bytes, x: np.ndarray, dense: bytes, rng: np.random.Generator) -> list[Kind]:
    """The three healthy functions, each with bodies of 1 to 16 rows and onnxruntime's answers to them."""
    import onnxruntime as ort

    digits_session = ort.InferenceSession(digits, providers=["CPUExecutionProvider"])
    dense_session = ort.InferenceSession(dense, providers=["CPUExecutionProvider"])
    # digits-top3 ranks probabilities: only rows whose top four are well apart, so float noise cannot reorder.
    probs = digits_session.run(None, {"input": x})[1]
    ranked = np.sort(probs, axis=1)[:, ::-1]
    clear = x[(np.diff(ranked[:, :4], axis=1) < -1e-3).all(axis=1)]
    kinds = []
    for rows in (1, 4, 16):
        picks = [rng.choice(len(x), rows, replace=False) for _ in range(4)]
        digit_cases = [(x[p], *digits_session.run(None, {"input": x[p]})) for p in picks]
        kinds.append(_digits_kind(f"digits-{rows}", digit_cases))
        top_rows = [clear[rng.choice(len(clear), rows, replace=False)] for _ in range(4)]
        kinds.append(
            _top3_kind(f"digits-top3-{rows}", [(r, digits_session.run(None, {"input": r})[1]) for r in top_rows])
        )
        dense_x = [rng.standard_normal((rows, 256)).astype(np.float32) for _ in range(4)]
        kinds.append(_dense_kind(f"dense-{rows}", [(d, dense_session.run(None, {"input": d})[0]) for d in dense_x]))
    return kinds


def _by_body(cases: list[tuple[bytes, Callable[[httpx.Response], str | None]]]) -> tuple[tuple[bytes, ...], Check]:
    """Bodies, and one check that finds each answer's expectation by the request it answers."""
    checks = {body: check for body, check in cases}

    def check(response: httpx.Response) -> str | None:
        return checks[response.request.content](response)

    return tuple(checks), check


def _digits_kind(label: str, cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Kind:
    def one(labels: np.ndarray, probs: np.ndarray) -> Check:
        def check(response: httpx.Response) -> str | None:
            got_p = np.asarray(output(response, "probabilities"), np.float32).reshape(probs.shape)
            if output(response, "label") != labels.tolist():
                return f"labels {output(response, 'label')}, onnxruntime says {labels.tolist()}"
            return None if np.allclose(got_p, probs, rtol=1e-4, atol=1e-6) else "probabilities differ"

        return check

    bodies, check = _by_body(
        [(infer_body([_tensor("input", r, "FP32")]), one(labels, probs)) for r, labels, probs in cases]
    )
    return Kind("healthy", label, "digits", bodies, 200, check)


def _top3_kind(label: str, cases: list[tuple[np.ndarray, np.ndarray]]) -> Kind:
    def one(probs: np.ndarray) -> Check:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :3]
        want_p = np.take_along_axis(probs, order, axis=1)

        def check(response: httpx.Response) -> str | None:
            got = np.asarray(output(response, "labels")).reshape(order.shape)
            got_p = np.asarray(output(response, "probabilities"), np.float32).reshape(order.shape)
            if not (got == order).all():
                return f"labels {got.tolist()}, onnxruntime says {order.tolist()}"
            return None if np.allclose(got_p, want_p, rtol=1e-4, atol=1e-6) else "probabilities differ"

        return check

    raw = [(np.rint(r * 16).astype(np.uint8), p) for r, p in cases]
    bodies, check = _by_body([(infer_body([_tensor("images", r, "UINT8")]), one(p)) for r, p in raw])
    return Kind("healthy", label, "digits-top3", bodies, 200, check)


def _dense_kind(label: str, cases: list[tuple[np.ndarray, np.ndarray]]) -> Kind:
    def one(want: np.ndarray) -> Check:
        def check(response: httpx.Response) -> str | None:
            got = np.asarray(output(response, "output"), np.float32).reshape(want.shape)
            return None if np.allclose(got, want, rtol=1e-4, atol=1e-5) else "outputs differ from onnxruntime's"

        return check

    bodies, check = _by_body([(infer_body([_tensor("input", d, "FP32")]), one(want)) for d, want in cases])
    return Kind("healthy", label, "dense", bodies, 200, check)


def _tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}


def hostile_kinds() -> list[Kind]:
    """README's documented outcomes, as tests/test_hostile.py states them, plus each fixture behaving."""

    def case(n: int) -> bytes:
        return infer_body([{"name": "case", "shape": [1], "datatype": "INT32", "data": [n]}])

    def from_test(m: Misbehaviour) -> Kind:
        return Kind(
            "hostile", f"{m.function}-{m.case}", m.function, (case(m.case),), m.status, error_with(*m.fragments)
        )

    def values(expected: list[int] | None) -> Check:
        def check(response: httpx.Response) -> str | None:
            got = output(response, "out")
            if expected is None:  # case 0: how many requests this instance has served
                return None if len(got) == 1 and got[0] >= 1 else f"served count {got}"
            return None if got == expected else f"errnos {got}, expected {expected}"

        return check

    kinds = [from_test(m) for m in TRAPS]
    kinds += [from_test(m) for m in NN_MISUSE if m.case in NN_CASES]
    for fixture, fragments in BAD_ALLOC.items():
        function = fixture.replace("_", "-")
        kinds.append(Kind("hostile", f"{function}-0", function, (case(0),), 500, error_with(*fragments)))
    denied = [ENOENT, ENOENT, ENOENT, EBADF, EBADF, 0, 0, 0, EBADF, ENOTSOCK, ENOTSOCK]
    kinds.append(Kind("hostile", "escape-1", "escape", (case(1),), 200, values(denied)))
    for function in ("infinite-loop", "memory-bomb", "trap", "nn-abuse"):
        kinds.append(Kind("hostile", f"{function}-0", function, (case(0),), 200, values(None)))
    return kinds


def malformed_kinds() -> list[Kind]:
    good = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    head = json.dumps({"inputs": [{**{k: good[k] for k in ("name", "shape", "datatype")},
                                   "parameters": {"binary_data_size": 256}}]}).encode()  # fmt: skip
    bad = error_with()
    pixel_17 = infer_body([{"name": "images", "shape": [1, 64], "datatype": "UINT8", "data": [17] * 64}])
    cases = [
        ("not-json", "digits", b'{"inputs": [', JSON),
        ("no-inputs", "digits", b'{"outputs": []}', JSON),
        ("wrong-shape", "digits", infer_body([{**good, "shape": [1, 63], "data": [0.0] * 63}]), JSON),
        ("wrong-datatype", "digits", infer_body([{**good, "datatype": "FP64"}]), JSON),
        ("data-vs-shape", "dense", infer_body([{**good, "shape": [2, 256], "data": [0.0] * 256}]), JSON),
        ("unknown-input", "digits", infer_body([{**good, "name": "nope"}]), JSON),
        ("unknown-output", "digits", infer_body([good], outputs=[{"name": "nope"}]), JSON),
        ("truncated-binary", "digits", head + b"\0" * 100, {"inference-header-content-length": str(len(head))}),
        ("pixel-17", "digits-top3", pixel_17, JSON),
    ]
    return [Kind("malformed", label, fn, (body,), 400, bad, headers) for label, fn, body, headers in cases]


# -- the gateway ---------------------------------------------------------------------------------------------
GUEST_MODULES = BENCH.parent / "guest_modules"
GATEWAY_ENV = {**SETTINGS, "WASMGATE_POD_SCALER": "none", "WASMGATE_ACCELERATORS": "none"}


@contextlib.contextmanager
def soak_gateway(tmp: Path, digits: bytes, dense: bytes) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A ``wasm serve`` with every function pushed: (its URL, its process, its log). Stopped however it ends."""
    if str(GUEST_MODULES) not in sys.path:
        sys.path.insert(0, str(GUEST_MODULES))
    import build  # guest_modules/build.py

    guests, hostile = build.build(["digits_topk"]), build.build_hostile()
    log = tmp / "gateway.log"

    def cmd(port: int) -> list[str]:
        return [*SERVE, "--port", str(port), "--data-dir", str(tmp / "data"), "--log-level", "warning"]

    with httpx.Client(trust_env=False) as probe:

        def ready(url: str) -> bool:
            try:
                return probe.get(f"{url}/v2/health/ready").status_code == 200
            except httpx.TransportError:
                return False

        with spawned_server(cmd, log, clean_env(**GATEWAY_ENV), ready) as (proc, url):
            with AdminClient(url) as admin:
                admin.push("digits", None, {"model": digits})
                admin.push("digits-top3", guests["digits_topk"].read_bytes(), {"digits": digits})
                admin.push("dense", None, {"model": dense})
                for fixture, path in hostile.items():
                    if fixture in REFUSED:  # refused at push; tests/test_hostile.py covers them
                        continue
                    models = {"digits": digits} if fixture == "nn_abuse" else {}
                    admin.push(fixture.replace("_", "-"), path.read_bytes(), models)
            yield url, proc, log


# -- traffic and sampling ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Tally:
    """What the client workers saw, shared under one lock."""

    limit: int
    sent: int = 0
    by_kind: collections.Counter[tuple[str, str, str]] = dataclasses.field(default_factory=collections.Counter)
    unexpected: int = 0
    first_unexpected: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def take(self) -> bool:
        with self.lock:
            if self.sent >= self.limit:
                return False
            self.sent += 1
            return True

    def record(self, kind: Kind, status: str, problem: str | None, t: float, body: str) -> None:
        with self.lock:
            self.by_kind[(kind.cls, kind.label, status)] += 1
            if problem is not None:
                self.unexpected += 1
                if len(self.first_unexpected) < KEEP_UNEXPECTED:
                    self.first_unexpected.append(
                        {"t_s": round(t, 2), "kind": kind.label, "status": status, "problem": problem,
                         "body": body[:400]}
                    )  # fmt: skip


def client_worker(url: str, kinds: list[Kind], seed: int, tally: Tally, stop: threading.Event, t0: float) -> None:
    rng = random.Random(seed)
    classes = {c: [k for k in kinds if k.cls == c] for c in MIX}
    names, weights = list(MIX), list(MIX.values())
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S, trust_env=False) as client:
        while not stop.is_set() and tally.take():
            kind = rng.choice(classes[rng.choices(names, weights)[0]])
            body = rng.choice(kind.bodies)
            try:
                response = client.post(f"/v2/models/{kind.function}/infer", content=body, headers=kind.headers)
            except httpx.TransportError as exc:
                tally.record(kind, type(exc).__name__, f"transport error: {exc!r}", time.monotonic() - t0, "")
                continue
            problem = None
            if response.status_code != kind.status:
                problem = f"expected {kind.status}"
            else:
                try:
                    problem = kind.check(response)
                except Exception as exc:  # whatever the answer was, it was not the right one
                    problem = f"unreadable answer: {exc!r}"
            text = response.text if problem else ""
            tally.record(kind, str(response.status_code), problem, time.monotonic() - t0, text)


def sample(pid: int) -> dict[str, int]:
    """VmRSS (bytes), thread count and open file descriptors of ``pid`` (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


@dataclasses.dataclass
class Result:
    """The run's raw figures and its verdicts (what the test asserts on)."""

    config: dict[str, Any]
    elapsed_s: float
    sent: int
    by_kind: dict[tuple[str, str, str], int]
    unexpected: int
    first_unexpected: list[dict[str, Any]]
    samples: list[dict[str, float]]
    baseline: dict[str, float]
    end: dict[str, float]
    tracebacks: int
    interrupted: bool

    @property
    def rss_growth(self) -> float:
        return self.end["rss"] / self.baseline["rss"] - 1

    @property
    def fds_stable(self) -> bool:
        return self.end["fds"] <= self.baseline["fds"] + FD_SLACK

    def peak(self, key: str) -> float:
        return max(s[key] for s in self.samples)

    def rss_windows(self) -> tuple[float, float]:
        """Median RSS over the warm-up's length right after it, and over the same length at the end. Context for
        the target, which compares single samples: one sample swings by whatever discarded instances are alive
        at that moment (a memory bomb's is 16 MiB), a median of many much less."""
        w = self.config["warm_up_s"]
        first = [s["rss"] for s in self.samples if w <= s["t_s"] < 2 * w] or [self.baseline["rss"]]
        last = [s["rss"] for s in self.samples if s["t_s"] >= self.end["t_s"] - w]
        return float(np.median(first)), float(np.median(last))

    def rss_trend(self) -> float:
        """Least-squares slope of RSS over the samples after the warm-up, in bytes per minute (0 with fewer than
        two samples)."""
        after = [(s["t_s"], s["rss"]) for s in self.samples if s["t_s"] >= self.config["warm_up_s"]]
        if len(after) < 2:
            return 0.0
        t, rss = np.array(after).T
        return float(np.polyfit(t, rss, 1)[0] * 60)


def run(duration: float, max_requests: int, workers: int = 4, warm_up: float | None = None,
        sample_every: float = 2.0, seed: int = 1) -> Result:  # fmt: skip
    """Start a gateway, drive the traffic, sample it, stop it; the gateway is stopped however this ends."""
    warm_up = min(60.0, max(5.0, duration / 10)) if warm_up is None else warm_up
    config = {"duration_s": duration, "max_requests": max_requests, "workers": workers, "warm_up_s": warm_up,
              "sample_every_s": sample_every, "seed": seed, "gateway_env": GATEWAY_ENV, "mix": MIX}  # fmt: skip
    digits, x_test, _ = train_digits()
    dense = dense_model()
    kinds = healthy_kinds(digits, x_test, dense, np.random.default_rng(seed)) + hostile_kinds() + malformed_kinds()
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-soak-"))
    tally = Tally(max_requests)
    stop = threading.Event()
    samples: list[dict[str, float]] = []
    interrupted = False
    with soak_gateway(tmp, digits, dense) as (url, proc, log):
        t0 = time.monotonic()
        threads = [threading.Thread(target=client_worker, args=(url, kinds, seed * 1000 + i, tally, stop, t0),
                                    name=f"soak-client-{i}", daemon=True) for i in range(workers)]  # fmt: skip
        for t in threads:
            t.start()
        try:
            while True:
                now = time.monotonic() - t0
                if proc.poll() is not None:
                    tally.record(Kind("gateway", "process", "", (), 0, error_with()), "exited",
                                 f"the gateway exited with {proc.returncode}; see {log}", now, "")  # fmt: skip
                    break
                samples.append({"t_s": round(now, 2), "requests": tally.sent, **sample(proc.pid)})
                if now >= duration or not any(t.is_alive() for t in threads):
                    break
                time.sleep(min(sample_every, max(0.0, duration - now)))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stop.set()
            for t in threads:
                t.join(CLIENT_TIMEOUT_S + 5)
        elapsed = time.monotonic() - t0
        if proc.poll() is None:
            samples.append({"t_s": round(elapsed, 2), "requests": tally.sent, **sample(proc.pid)})
    tracebacks = log.read_text(errors="replace").count("Traceback (most recent call last)")
    after = [s for s in samples if s["t_s"] >= warm_up] or samples[-1:]
    result = Result(config, elapsed, tally.sent, dict(tally.by_kind), tally.unexpected, tally.first_unexpected,
                    samples, after[0], samples[-1], tracebacks, interrupted)  # fmt: skip
    if not result.unexpected and not tracebacks:
        shutil.rmtree(tmp, ignore_errors=True)  # kept otherwise, for the gateway's log
    else:
        result.config["kept"] = str(tmp)
    return result


# -- the report ----------------------------------------------------------------------------------------------
def report(r: Result) -> str:
    c = r.config
    lines = [
        f"soak: {r.elapsed_s:.0f} s of mixed traffic (bounds {c['duration_s']:.0f} s, {c['max_requests']} requests), "
        f"{c['workers']} client workers, warm-up {c['warm_up_s']:.0f} s{' (interrupted)' if r.interrupted else ''}; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, wasmgate {importlib.metadata.version('wasmgate')}",
        "gateway: " + " ".join(f"{k}={v}" for k, v in GATEWAY_ENV.items()),
        f"requests: {r.sent} ({r.sent / max(r.elapsed_s, 1e-9):.0f}/s)",
        "",
        "| class | status | requests |",
        "|---|---|---:|",
    ]
    by_class: collections.Counter[tuple[str, str]] = collections.Counter()
    for (cls, _, status), n in r.by_kind.items():
        by_class[(cls, status)] += n
    lines += [f"| {cls} | {status} | {n} |" for (cls, status), n in sorted(by_class.items())]
    lines += ["", "| request | status | requests |", "|---|---|---:|"]
    lines += [f"| {cls}/{label} | {status} | {n} |" for (cls, label, status), n in sorted(r.by_kind.items())]
    lines.append("")
    lines.append(f"unexpected errors: {r.unexpected} (target 0): {'holds' if r.unexpected == 0 else 'MISSED'}")
    for u in r.first_unexpected[:5]:
        lines.append(f"  at {u['t_s']} s {u['kind']} -> {u['status']}: {u['problem']}; body {u['body']!r}")
    lines.append(f"gateway log tracebacks: {r.tracebacks}")
    b, e = r.baseline, r.end
    growth = r.rss_growth
    lines.append(
        f"RSS: after warm-up {b['rss'] / MiB:.1f} MiB (at {b['t_s']:.0f} s), max {r.peak('rss') / MiB:.1f} MiB, "
        f"end {e['rss'] / MiB:.1f} MiB; first sample {r.samples[0]['rss'] / MiB:.1f} MiB"
    )
    lines.append(
        f"RSS growth: {growth:+.1%} (target < {RSS_TARGET:.0%}): {'holds' if growth < RSS_TARGET else 'MISSED'}"
    )
    first, last = r.rss_windows()
    lines.append(
        f"RSS context: median {first / MiB:.1f} MiB over the {c['warm_up_s']:.0f} s after warm-up, "
        f"{last / MiB:.1f} MiB over the last {c['warm_up_s']:.0f} s ({last / first - 1:+.1%}); "
        f"trend after warm-up {r.rss_trend() / MiB:+.2f} MiB/min"
    )
    lines.append(f"fds: after warm-up {b['fds']:.0f}, end {e['fds']:.0f}, max {r.peak('fds'):.0f}; "
                 f"first sample {r.samples[0]['fds']:.0f}")  # fmt: skip
    lines.append(f"fds stable: {'yes' if r.fds_stable else 'no'} (end <= after warm-up + {FD_SLACK})")
    lines.append(f"threads: after warm-up {b['threads']:.0f}, end {e['threads']:.0f}, max {r.peak('threads'):.0f}")
    if "kept" in c:
        lines.append(f"gateway log kept in {c['kept']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="at most this many (default 1000000)")
    parser.add_argument("--workers", type=int, default=4, help="client threads, keep-alive each (default 4)")
    parser.add_argument("--warm-up", type=float, help="seconds left out of the RSS and fd baselines "
                        "(default 10 %% of --duration, 5 to 60 s)")  # fmt: skip
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the raw samples and counts here")
    args = parser.parse_args()
    # A SIGTERM unwinds like a Ctrl-C, so the gateway this script started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    result = run(args.duration, args.max_requests, args.workers, args.warm_up, args.sample_every, args.seed)
    print(report(result), flush=True)
    if args.json:
        raw = dataclasses.asdict(result)
        raw["by_kind"] = [
            {"class": c, "request": k, "status": s, "count": n} for (c, k, s), n in result.by_kind.items()
        ]
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    sys.exit(0 if result.unexpected == 0 and not result.interrupted else 1)


if __name__ == "__main__":
    main()

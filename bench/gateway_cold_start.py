"""Cold starts of real-sized models through a real ``wasm serve``: the Wasm tier back from zero, the first
request after a push, and the pod tier from zero against KServe's process cold start. Run from
``python -m bench.model_cold_start --http``, whose docstring says what each number includes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from bench.http_load import SERVE, WASM, free_port, kserve_command
from bench.pod_cold_start import clean_env, runner_children, spawned, spawned_server, wait_until
from tests.support import metric

HEADERS = {"content-type": "application/json"}
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
TIMEOUT_S = 120.0
DEADLINE_MS = "60000"  # these measure cold starts: no request may be cut by a deadline on a loaded machine
Model = tuple[str, bytes, dict[str, np.ndarray]]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def body(feeds: dict[str, np.ndarray]) -> bytes:
    inputs = [
        {"name": n, "shape": list(v.shape), "datatype": DATATYPES[v.dtype], "data": v.ravel().tolist()}
        for n, v in feeds.items()
    ]
    return json.dumps({"inputs": inputs}).encode()


class Served:
    """A running ``wasm serve`` with its own data dir and environment."""

    def __init__(self, stack: contextlib.ExitStack, tmp: Path, label: str, **env: str) -> None:
        self.log = tmp / f"{label}.log"
        data = tmp / f"data-{label}"

        def cmd(port: int) -> list[str]:
            return [*SERVE, "--port", str(port), "--data-dir", str(data), "--log-level", "warning"]

        self.client = stack.enter_context(httpx.Client(timeout=TIMEOUT_S, trust_env=False))
        self.proc, self.url = stack.enter_context(spawned_server(cmd, self.log, clean_env(**env), self._ready))

    def _ready(self, url: str) -> bool:
        try:
            return self.client.get(f"{url}/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    def push(self, path: Path, name: str, *flags: str) -> float:
        cmd = [*WASM, "push", str(path), "--name", name, "--deadline-ms", DEADLINE_MS, *flags, "--gateway", self.url]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=clean_env())
        if done.returncode != 0:
            raise RuntimeError(f"wasm push failed: {done.stderr.strip()}")
        return time.perf_counter() - t0

    def infer(self, name: str, payload: bytes) -> tuple[float, httpx.Response]:
        """Seconds to a whole answer over a new connection, and the answer (which must be a 200)."""
        with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as client:
            t0 = time.perf_counter()
            r = client.post(f"{self.url}/v2/models/{name}/infer", content=payload, headers=HEADERS)
            elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"{name} answered {r.status_code}: {r.text[:300]}")
        return elapsed, r

    def metrics(self) -> str:
        return self.client.get(f"{self.url}/metrics").text

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        wait_until(condition, what, self.proc, self.log)


def wasm_tier(models: list[tuple[Model, Path]], tmp: Path, trials: int) -> list[str]:
    lines = [
        "",
        f"Wasm tier through wasm serve, {trials} trials per model, interleaved (ms):",
        "| model | warm p50 | warm p99 | cold - warm p50 | cold - warm p99 | cold p50 / warm p50 | "
        "push (s) p50 | first after push p50 | first after push / warm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    env = {"WASMGATE_REAP_INTERVAL_S": "0.05", "WASMGATE_WASM_FIT_FLOPS_PER_ROW": str(10**12)}
    with contextlib.ExitStack() as stack:
        gw = Served(stack, tmp, "wasm-tier", **env)
        flags = ("--tier", "wasm", "--idle-timeout", "0.3", "--no-spill")
        zeros: dict[str, float] = {}  # scale-to-zero count while each function was last unloaded
        for (name, _, feeds), path in models:
            gw.push(path, name, *flags)
            zeros[name] = metric(gw.metrics(), "wasmgate_scale_to_zero_total", function=name)
            gw.infer(name, body(feeds))  # loaded once, so that the reaper has something to scale to zero
        cold: dict[str, list[float]] = {m[0][0]: [] for m in models}
        warm: dict[str, list[float]] = {m[0][0]: [] for m in models}
        first: dict[str, list[float]] = {m[0][0]: [] for m in models}
        push: dict[str, list[float]] = {m[0][0]: [] for m in models}
        for t in range(trials):
            for (name, _, feeds), path in models:
                payload = body(feeds)
                gw.wait(lambda n=name: metric(gw.metrics(), "wasmgate_scale_to_zero_total", function=n) > zeros[n],
                        f"{name} to scale to zero")  # fmt: skip
                zeros[name] = metric(gw.metrics(), "wasmgate_scale_to_zero_total", function=name)
                time.sleep(0.1)  # the reaper's collection done: time the request, not the clean-up
                c, r = gw.infer(name, payload)
                if r.headers.get("x-wasmgate-cold-start") != "true":
                    raise RuntimeError(f"{name}: expected a cold start, got {dict(r.headers)}")
                w, r = gw.infer(name, payload)
                if "x-wasmgate-cold-start" in r.headers:
                    raise RuntimeError(f"{name}: expected a warm request")
                cold[name].append(c * 1e3)
                warm[name].append(w * 1e3)
                if t < max(1, trials // 3):  # fewer: each one is a push of the whole model
                    fresh = f"{name}-push{t}"
                    push[name].append(gw.push(path, fresh, *flags))
                    first[name].append(gw.infer(fresh, payload)[0] * 1e3)
                    subprocess.run([*WASM, "rm", fresh, "--gateway", gw.url], capture_output=True, env=clean_env(),
                                   timeout=TIMEOUT_S, check=True)  # fmt: skip
            print(f"wasm tier round {t + 1}/{trials} done", flush=True)
    for (name, _, _), _ in models:
        extra = [c - w for c, w in zip(cold[name], warm[name], strict=True)]
        base = pct(warm[name], 50)
        lines.append(
            f"| {name} | {base:.1f} | {pct(warm[name], 99):.1f} | {pct(extra, 50):.1f} | {pct(extra, 99):.1f} "
            f"| {pct(cold[name], 50) / base:.2f}x | {pct(push[name], 50):.2f} | {pct(first[name], 50):.1f} "
            f"| {pct(first[name], 50) / base:.2f}x |"
        )
    return lines


def pod_tier(models: list[tuple[Model, Path]], tmp: Path, trials: int, kserve_python: str | None) -> list[str]:
    lines = [
        "",
        f"Pod tier from zero to its first answer, {trials} trials per model (s); KServe interleaved:",
        "| model | wasmgate min | wasmgate p50 | wasmgate max | warm after (p50) | KServe process p50 "
        "| wasmgate p50 / KServe p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    env = {
        "WASMGATE_POD_IDLE_GRACE_S": "1",
        "WASMGATE_DRAIN_TIMEOUT_S": "2",
        "WASMGATE_POD_MAX_REPLICAS": "1",
        "WASMGATE_POD_HOLD_TIMEOUT_S": str(TIMEOUT_S),
        "WASMGATE_DEADLINE_MS": DEADLINE_MS,
    }
    for (name, _, feeds), path in models:
        payload = body(feeds)
        kserve = kserve_python is not None and len(feeds) == 1
        cold, warm, ks = [], [], []
        with contextlib.ExitStack() as stack:
            gw = Served(stack, tmp, f"pod-{name}", **env)
            gw.push(path, name, "--tier", "pod", "--no-mask-cold-start")

            def at_zero(gw: Served = gw) -> bool:
                text = gw.metrics()
                up = metric(text, "wasmgate_pod_replicas", state="ready") + metric(
                    text, "wasmgate_pod_replicas", state="wanted"
                )
                return up == 0 and not runner_children(gw.proc.pid)

            for t in range(trials + 1):  # the first round is untimed: files into the page cache
                gw.wait(at_zero, "the pod tier to scale to zero")
                time.sleep(0.2)  # the stopped runner collected: time the request, not that
                c, r = gw.infer(name, payload)
                if r.headers.get("x-wasmgate-cold-start") != "true" or r.headers.get("x-wasmgate-tier") != "pod":
                    raise RuntimeError(f"{name}: expected a pod-tier cold start, got {dict(r.headers)}")
                w, _ = gw.infer(name, payload)
                gw.wait(at_zero, "the pod tier to scale to zero")  # quiet before KServe is timed
                k = kserve_start(kserve_python, path, name, payload, tmp) if kserve and kserve_python else None
                if t > 0:
                    cold.append(c)
                    warm.append(w)
                    if k is not None:
                        ks.append(k)
                shown = f", KServe {k:.3f} s" if k is not None else ""
                print(f"pod tier {name} round {t if t else 'untimed'}: {c:.3f} s{shown}", flush=True)
        ks_cols = f"{pct(ks, 50):.3f} | {pct(cold, 50) / pct(ks, 50):.2f}x" if ks else "not run | -"
        lines.append(
            f"| {name} | {min(cold):.3f} | {pct(cold, 50):.3f} | {max(cold):.3f} | {pct(warm, 50):.3f} | {ks_cols} |"
        )
    return lines


def kserve_start(python: str, path: Path, name: str, payload: bytes, tmp: Path) -> float:
    """Seconds from spawning KServe's server to its first 200 for ``payload`` (polled every 5 ms)."""
    cmd, env = kserve_command(python, path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
    with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as client:
        t0 = time.perf_counter()
        with spawned([*cmd, str(port)], tmp / "kserve.log", clean_env(**(env | {"KSERVE_MODEL": name}))) as proc:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.post(url, content=payload, headers=HEADERS).status_code == 200:
                        return time.perf_counter() - t0
                if proc.poll() is not None:
                    raise RuntimeError(f"KServe exited with {proc.returncode}; see {tmp / 'kserve.log'}")
                if time.perf_counter() - t0 > TIMEOUT_S:
                    raise RuntimeError("KServe did not answer")
                time.sleep(0.005)


def run_all(found: list[Model], tmp: Path, trials: int, pod_trials: int, kserve_python: str | None) -> None:
    models = []
    for name, model, feeds in found:
        path = tmp / f"{name}.onnx"
        path.write_bytes(model)
        models.append(((name, model, feeds), path))
    if kserve_python is None:
        print("KServe: no --kserve-python given; its process cold start is not measured")
    lines = wasm_tier(models, tmp, trials)
    lines += pod_tier(models, tmp, pod_trials, kserve_python)
    print("\n".join(lines), flush=True)

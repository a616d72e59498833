"""Cold starts: a function scaled to zero up to its first response, and a server process up to its first
served inference.

    python -m bench.cold_start [--trials 60] [--process-trials 5] [--kserve-python PATH]

1. Scale from zero. A gateway runs with a 50 ms reaper; the digits function has ``idle_timeout`` 0.3 s. Each
   trial waits until the reaper has unloaded the function (its instances and onnxruntime session), then times
   one request (it must carry ``x-wasmgate-cold-start: true``) and, right after, one warm request on the same
   connection. Reported: p50 and p99 of both, and of their difference, the cost of the cold start itself.
2. Process start. The time from spawning a server process to its first successful inference response, for
   ``wasm serve`` (digits already in its store), the plain starlette + onnxruntime server, and KServe when
   ``--kserve-python`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.http_load import BENCH, SERVE, WASM, free_port, kserve_command, server
from gateway.cli.demo import train_digits
from tests.support import metric


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def scale_from_zero(model_path: Path, body: bytes, trials: int, tmp: Path) -> None:
    port = free_port()
    env = {"WASMGATE_REAP_INTERVAL_S": "0.05"}
    cmd = [*SERVE, "--port", str(port), "--data-dir", str(tmp / "data"), "--log-level", "warning"]
    push = [*WASM, "push", str(model_path), "--name", "digits", "--idle-timeout", "0.3"]
    with server(cmd, port, "wasmgate", body, pin=None, env=env, setup=[push]) as url, httpx.Client() as client:
        infer = f"{url}/v2/models/digits/infer"
        headers = {"content-type": "application/json"}
        cold, warm = [], []
        client.post(infer, content=body, headers=headers).raise_for_status()  # loaded, so it can be unloaded
        for _ in range(trials):
            before = metric(client.get(f"{url}/metrics").text, "wasmgate_scale_to_zero_total", function="digits")
            deadline = time.monotonic() + 10
            while (
                metric(client.get(f"{url}/metrics").text, "wasmgate_scale_to_zero_total", function="digits") <= before
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the function was not scaled to zero")
                time.sleep(0.05)
            time.sleep(0.1)  # let the reaper's collection finish: time the request, not the clean-up
            t0 = time.perf_counter()
            r = client.post(infer, content=body, headers=headers)
            t1 = time.perf_counter()
            r.raise_for_status()
            if r.headers.get("x-wasmgate-cold-start") != "true":
                raise RuntimeError("expected a cold start")
            w = client.post(infer, content=body, headers=headers)
            t2 = time.perf_counter()
            w.raise_for_status()
            if "x-wasmgate-cold-start" in w.headers:
                raise RuntimeError("expected a warm request")
            cold.append((t1 - t0) * 1e3)
            warm.append((t2 - t1) * 1e3)
    extra = [c - w for c, w in zip(cold, warm, strict=True)]
    print(f"scale from zero, {trials} trials (client-side, ms, over HTTP on loopback):")
    print(f"  cold request   p50 {pct(cold, 50):6.2f}  p99 {pct(cold, 99):6.2f}")
    print(f"  warm request   p50 {pct(warm, 50):6.2f}  p99 {pct(warm, 99):6.2f}")
    print(f"  cold - warm    p50 {pct(extra, 50):6.2f}  p99 {pct(extra, 99):6.2f}   (the cold start itself)")
    print(f"  cold / warm    p50 {pct(cold, 50) / pct(warm, 50):.2f}x")


def process_start(name: str, cmd: list[str], port: int, body: bytes, env: dict[str, str] | None = None) -> float:
    url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        with httpx.Client() as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}")
                try:
                    if client.post(url, content=body, headers={"content-type": "application/json"}).status_code == 200:
                        return time.perf_counter() - t0
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--process-trials", type=int, default=5)
    parser.add_argument("--kserve-python", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-cold-"))
    model, x_test, _ = train_digits()
    model_path = tmp / "digits.onnx"
    model_path.write_bytes(model)
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x_test[0].tolist()}]}
    ).encode()

    scale_from_zero(model_path, body, args.trials, tmp)

    # A store with digits in it, for the gateway's process-start trials.
    port = free_port()
    data = str(tmp / "data-proc")
    cmd = [*SERVE, "--port", str(port), "--data-dir", data, "--log-level", "warning"]
    with server(cmd, port, "wasmgate", body, pin=None, setup=[[*WASM, "push", str(model_path), "--name", "digits"]]):
        pass
    candidates: list[tuple[str, list[str], dict[str, str] | None]] = [
        ("wasmgate", [*SERVE, "--data-dir", data, "--log-level", "warning", "--port"], None),
        ("plain", [sys.executable, str(BENCH / "plain_server.py"), str(model_path)], None),
    ]
    if args.kserve_python:
        ks, env = kserve_command(args.kserve_python, model_path)
        candidates.append(("kserve", ks, env))
    print(f"\nprocess start to first served inference, median of {args.process_trials} (s):")
    medians = {}
    for name, base, env in candidates:
        times = []
        for _ in range(args.process_trials):
            port = free_port()
            times.append(process_start(name, [*base, str(port)], port, body, env))
        medians[name] = float(np.median(times))
        print(f"  {name:9s} {medians[name]:6.3f}  (min {min(times):.3f}, max {max(times):.3f})", flush=True)
    for other in ("plain", "kserve"):
        if other in medians:
            print(f"  wasmgate / {other}: {medians['wasmgate'] / medians[other]:.2f}x")


if __name__ == "__main__":
    main()

"""Throughput over HTTP with a real load generator: wasmgate against a plain starlette + onnxruntime endpoint
(no sandbox) and KServe's Python model server, on the same model, body and load.

    python -m bench.http_load [--duration 10] [--concurrency 1,8,32] [--kserve-python PATH]

Each server is pinned to core 0 with ``taskset`` and ``wrk`` runs on core 1, so the figures are one core's
worth of serving. Every server answers the same JSON request (one row of sklearn's digits) and each answer is
checked against onnxruntime before it is timed. Then wasmgate runs unpinned with ``--workers 2`` against
itself with one worker, at the highest concurrency.

KServe is not a wasmgate dependency: give ``--kserve-python`` a Python with ``kserve`` and ``onnxruntime``
installed (``python3 -m venv /tmp/kserve && /tmp/kserve/bin/pip install kserve onnxruntime``), or it is
skipped. Needs Debian's ``wrk`` and util-linux's ``taskset``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from gateway.cli.demo import train_digits

BENCH = Path(__file__).resolve().parent
WASM = [str(Path(sys.executable).parent / "wasm")]
#: ``wasm serve`` as the benches run it: HTTP only (they measure HTTP), so that a bench's gateways never contend
#: for the gRPC port's default.
SERVE = [*WASM, "serve", "--grpc-port", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    cmd: list[str],
    port: int,
    name: str,
    body: bytes,
    pin: str | None,
    env: dict[str, str] | None = None,
    setup: list[list[str]] | None = None,
) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    full = (["taskset", "-c", pin] if pin else []) + cmd
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        full, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {log.name}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log.name}")
            time.sleep(0.1)
        for step in setup or []:
            subprocess.run([*step, "--gateway", url], check=True, capture_output=True)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wrk(url: str, body: bytes, connections: int, duration: int, pin: str | None) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        script.write(f"wrk.body = {json.dumps(body.decode())}\n")
    cmd = (["taskset", "-c", pin] if pin else []) + [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def kserve_command(python: str, model_path: Path) -> tuple[list[str], dict[str, str]]:
    """KServe's server for the digits model; the port goes last (``--http_port`` is the final flag)."""
    cmd = [python, str(BENCH / "kserve_server.py"), "--enable_latency_logging", "false",
           "--configure_logging", "false", "--http_port"]  # fmt: skip
    return cmd, {"KSERVE_MODEL": "digits", "KSERVE_MODEL_PATH": str(model_path)}


def check(url: str, name: str, body: bytes, expected: list[int]) -> None:
    r = httpx.post(f"{url}/v2/models/digits/infer", content=body, headers={"content-type": "application/json"})
    r.raise_for_status()
    label = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"]
    if label != expected:
        raise RuntimeError(f"{name} answered {label}, onnxruntime says {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--kserve-python", default=None)
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk util-linux)")
    levels = [int(c) for c in args.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))
    model, x_test, _ = train_digits()
    model_path = tmp / "digits.onnx"
    model_path.write_bytes(model)
    row = x_test[:1]
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.ravel().tolist()}]}
    ).encode()
    import onnxruntime as ort

    expected = ort.InferenceSession(model).run(None, {"input": row})[0].tolist()

    def wasmgate_cmd(port: int, data: str, workers: int = 1) -> list[str]:
        return [
            *SERVE,
            "--port",
            str(port),
            "--data-dir",
            data,
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ]

    push = [*WASM, "push", str(model_path), "--name", "digits"]
    servers: list[tuple[str, list[str], dict[str, str] | None, list[list[str]] | None]] = []
    port = free_port()
    servers.append(("plain", [sys.executable, str(BENCH / "plain_server.py"), str(model_path), str(port)], None, None))
    servers.append(("wasmgate", wasmgate_cmd(0, str(tmp / "data")), None, [push]))
    if args.kserve_python:
        ks, env = kserve_command(args.kserve_python, model_path)
        servers.append(("kserve", ks, env, None))
    else:
        print("kserve: skipped (no --kserve-python)")

    results: dict[str, dict[int, dict[str, float]]] = {}
    for name, cmd, env, setup in servers:
        port = free_port()
        if name == "wasmgate":
            cmd = wasmgate_cmd(port, str(tmp / "data"))
        elif name == "plain":
            cmd = [*cmd[:-1], str(port)]
        else:
            cmd = [*cmd, str(port)]
        with server(cmd, port, name, body, pin="0", env=env, setup=setup) as url:
            check(url, name, body, expected)
            endpoint = f"{url}/v2/models/digits/infer"
            wrk(endpoint, body, 8, 2, pin="1")  # warm-up
            results[name] = {}
            for c in levels:
                results[name][c] = r = wrk(endpoint, body, c, args.duration, pin="1")
                print(
                    f"{name:9s} c={c:<3d} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                    f"  non-2xx {int(r['non2xx'])}",
                    flush=True,
                )

    print("\nwasmgate relative to the others, same run (req/s ratio):")
    for c in levels:
        parts = [f"c={c:<3d}"]
        for other in ("plain", "kserve"):
            if other in results:
                parts.append(f"vs {other}: {results['wasmgate'][c]['rps'] / results[other][c]['rps']:.2f}x")
        print("  " + "  ".join(parts))

    top = max(levels)
    scale = {}
    for workers in (1, 2):
        port = free_port()
        data = str(tmp / f"data-w{workers}")
        with server(
            wasmgate_cmd(port, data, workers), port, f"wasmgate-w{workers}", body, pin=None, setup=[push]
        ) as url:
            check(url, "wasmgate", body, expected)
            endpoint = f"{url}/v2/models/digits/infer"
            wrk(endpoint, body, top, 2, pin=None)
            scale[workers] = r = wrk(endpoint, body, top, args.duration, pin=None)
            print(
                f"wasmgate --workers {workers} (unpinned) c={top}: {r['rps']:.0f} req/s  p99 {r['p99_ms']:.2f} ms"
                f"  non-2xx {int(r['non2xx'])}",
                flush=True,
            )
    print(f"--workers 2 / --workers 1: {scale[2]['rps'] / scale[1]['rps']:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)
    _ = np  # numpy is imported for onnxruntime's inputs above


if __name__ == "__main__":
    main()

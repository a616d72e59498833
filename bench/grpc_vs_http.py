"""OIP v2 over gRPC against OIP v2 over HTTP, same gateway, same model: what the gRPC edge costs per request.

``python -m bench.grpc_vs_http [--requests 100] [--blocks 10] [--rows 1 64] [--quick]``: one ``wasm serve`` with
its gRPC service, the digits model pushed; sequential requests (concurrency 1) from ``tritonclient.grpc`` and from
``tritonclient.http`` in binary mode (the baseline), taking turns in blocks, each on one kept-alive connection.
Every answer is checked against the first HTTP answer, bit for bit. Prints p50 and p99 per protocol and rows,
and the ratio gRPC / HTTP of each.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from bench.http_load import WASM, free_port, server
from gateway.cli.demo import train_digits


def timed(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="requests per block and protocol")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--quick", action="store_true", help="5 requests of 1 row: that it runs (the smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.blocks, args.rows = 5, 1, [1]
    model, x_test, _ = train_digits()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.onnx"
        path.write_bytes(model)
        port, grpc_port = free_port(), free_port()
        cmd = [*WASM, "serve", "--port", str(port), "--grpc-port", str(grpc_port), "--data-dir", f"{tmp}/data"]
        setup = [[*WASM, "push", str(path), "--name", "digits"]]
        with server([*cmd, "--log-level", "warning"], port, "wasmgate", b"", pin=None, setup=setup):
            http = triton_http.InferenceServerClient(f"127.0.0.1:{port}")
            grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            print(f"{'rows':>4} {'protocol':>8} {'p50 us':>8} {'p99 us':>8}   gRPC/HTTP p50, p99")
            for rows in args.rows:
                x = np.ascontiguousarray(np.resize(x_test, (rows, 64)), dtype=np.float32)
                hx = triton_http.InferInput("input", list(x.shape), "FP32")
                hx.set_data_from_numpy(x, binary_data=True)
                wanted = [triton_http.InferRequestedOutput("probabilities", binary_data=True)]
                gx = triton_grpc.InferInput("input", list(x.shape), "FP32")
                gx.set_data_from_numpy(x)
                expected = http.infer("digits", [hx], outputs=wanted).as_numpy("probabilities")
                got = grpc.infer("digits", [gx]).as_numpy("probabilities")
                assert np.array_equal(got, expected), "gRPC and HTTP answers differ"
                calls = {
                    "http": functools.partial(http.infer, "digits", [hx], outputs=wanted),
                    "grpc": functools.partial(grpc.infer, "digits", [gx]),
                }
                samples: dict[str, list[float]] = {"http": [], "grpc": []}
                for _ in range(args.blocks):
                    for name, call in calls.items():
                        samples[name] += timed(call, args.requests)
                figures = {}
                for name, values in samples.items():
                    cuts = statistics.quantiles(values, n=100)
                    figures[name] = (statistics.median(values) * 1e6, cuts[98] * 1e6)
                for name in ("http", "grpc"):
                    p50, p99 = figures[name]
                    ratio = ""
                    if name == "grpc":
                        r50, r99 = (g / h for g, h in zip(figures["grpc"], figures["http"], strict=True))
                        ratio = f"   {r50:.2f}, {r99:.2f}"
                    print(f"{rows:>4} {name:>8} {p50:>8.0f} {p99:>8.0f}{ratio}")
            http.close()
            grpc.close()


if __name__ == "__main__":
    main()

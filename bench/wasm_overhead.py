"""What isolation costs: the warm Wasm path against a bare ``InferenceSession.run``, same model, same input.

    python -m bench.wasm_overhead [--iterations N] [--rows R] [--models digits,topk,dense] [--paths python,compiled]

For each model, a bare run and the Wasm path on each host path (wasm_host.compiled: the pure-Python host and the
compiled one) run in the same process, interleaved in blocks so that drift on a noisy machine hits all alike.
The Wasm path is everything a request pays inside the gateway below HTTP: encoding the request into the guest
ABI, a pooled instance, ``alloc`` and ``handle``, the guest's WASI-NN calls (``set_input``, ``compute``,
``get_output`` per output) and decoding the response. The bare passthrough computes every output of the model,
as the bare run does.

Models: ``digits`` (logistic regression on sklearn's digits, 3.7 KB), ``topk`` (the custom function
digits_topk on the same model: uint8 images in, its top 3 out; the bare run gets the same rows as floats) and
``dense`` (a 3-layer float MLP built with onnx.helper, about 10 MB of weights). Last, the thread test: requests
per second of 1 and 2 threads calling ``handle`` on one pool, per host path (``--threads-seconds``).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.cli.demo import dense_model, train_digits
from wasm_host.engine import SandboxLimits
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef
from wasm_host.passthrough import PASSTHROUGH_ALIAS, passthrough_module, passthrough_signature
from wasm_host.pool import InstancePool, PoolSettings
from wasm_host.tensors import Tensor, TensorSpec


def timings(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


#: The host paths (wasm_host.compiled), each measured against the same bare baseline in the same run.
PATHS = ("python", "compiled")
#: The custom function measured beside the bare models: its guest, built by guest_modules/build.py.
TOPK_WASM = Path(__file__).resolve().parent.parent / "guest_modules" / "build" / "digits_topk.wasm"


def _function(host: Host, model: bytes, tmp: Path, custom: bytes | None) -> tuple[InstancePool, list[TensorSpec], str]:
    """A pool of the bare passthrough serving ``model`` (or of the ``custom`` guest loading it as "digits"),
    the outputs its requests ask for, and the name of its input."""
    digest = hashlib.sha256(model).hexdigest()
    model_path = tmp / f"{digest}.onnx"
    tmp.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(model)
    ref = ModelRef(digest, model_path)
    graph = host.backend.load(model, digest)
    if custom is None:
        _, outputs = passthrough_signature(graph)
        wasm, models, name = passthrough_module(), {PASSTHROUGH_ALIAS: ref}, graph.inputs[0].name
    else:
        wasm, models, outputs, name = custom, {"digits": ref}, [], "images"
    image = host.prepare(wasm, hashlib.sha256(wasm).hexdigest(), models)
    return InstancePool(image, PoolSettings()), outputs, name


def run(
    name: str,
    model: bytes,
    x: np.ndarray,
    iterations: int,
    blocks: int = 10,
    custom: bytes | None = None,
    paths: tuple[str, ...] = PATHS,
) -> dict[str, float]:
    """Median and p99 of a bare run and of each host path's warm request, interleaved in blocks; each path's
    overhead over the bare run. ``custom``: a custom function's guest (digits_topk, fed ``x`` as uint8
    images) instead of the bare passthrough; the bare baseline runs the model on the same rows as floats."""
    with tempfile.TemporaryDirectory() as tmp:
        hosts = {p: Host(SandboxLimits(), Path(tmp) / p, host_path=p).start() for p in paths}
        try:
            calls: dict[str, Callable[[], object]] = {}
            answers = []
            for p, host in hosts.items():
                assert host.host_path == p, f"the {p} host path is not available here"
                pool, outputs, input_name = _function(host, model, Path(tmp) / p, custom)
                data = x if custom is None else np.rint(x * 16).astype(np.uint8)
                inputs = [Tensor.from_numpy(input_name, data)]

                def wasm_path(pool: InstancePool = pool, inputs: list[Tensor] = inputs, outputs=outputs) -> object:  # type: ignore[no-untyped-def]
                    with pool.instance() as inst:
                        return inst.handle(inputs, outputs)

                calls[p] = wasm_path
                answers.append([(t.name, t.shape, t.data) for t in wasm_path()])  # type: ignore[attr-defined]

            # The bare baseline uses its own session with the same options the backend uses.
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            bare_session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            feed = {bare_session.get_inputs()[0].name: x if custom is None else np.rint(x * 16) / 16}

            def bare() -> object:
                return bare_session.run(None, feed)

            # Same answers, or the comparison means nothing: every path alike, and a bare model's as onnxruntime's.
            assert all(a == answers[0] for a in answers), "the host paths answered differently"
            if custom is None:
                got = {n: d for n, _, d in answers[0]}
                for out, ref in zip(bare_session.get_outputs(), bare(), strict=True):  # type: ignore[call-overload]
                    assert got[out.name] == np.ascontiguousarray(ref).tobytes(), out.name
            for fn in (bare, *calls.values()):  # warm up
                timings(fn, max(50, iterations // 20))
            times: dict[str, list[float]] = {"bare": [], **{p: [] for p in calls}}
            for _ in range(blocks):
                times["bare"] += timings(bare, iterations // blocks)
                for p, fn in calls.items():
                    times[p] += timings(fn, iterations // blocks)
        finally:
            for host in hosts.values():
                host.close()
    result = {"bare_p50": statistics.median(times["bare"]), "bare_p99": pct(times["bare"], 99)}
    line = f"{name:8s} rows={x.shape[0]:<3d} bare p50 {result['bare_p50']:7.1f} us p99 {result['bare_p99']:7.1f}"
    for path in calls:
        p50, p99 = statistics.median(times[path]), pct(times[path], 99)
        result |= {f"{path}_p50": p50, f"{path}_p99": p99, f"{path}_overhead_p50": p50 - result["bare_p50"]}
        line += (
            f" | {path} p50 {p50:7.1f} p99 {p99:7.1f}, over bare p50 {p50 - result['bare_p50']:+6.1f} us"
            f" ({p50 / result['bare_p50']:.2f}x)"
        )
    print(line, flush=True)
    return result


def scaling(model: bytes, x: np.ndarray, seconds: float, rounds: int = 3, paths: tuple[str, ...] = PATHS) -> None:
    """Requests per second of one process with 1 and with 2 threads calling ``handle`` on one pool, per host
    path, in alternating rounds of ``seconds``: whether a request releases the interpreter enough for a second
    core to help."""
    with tempfile.TemporaryDirectory() as tmp:
        hosts = {p: Host(SandboxLimits(), Path(tmp) / p, host_path=p).start() for p in paths}
        try:
            pools = {p: _function(h, model, Path(tmp) / p, None) for p, h in hosts.items()}
            rates: dict[tuple[str, int], list[float]] = {}
            for _ in range(rounds):
                for path, (pool, outputs, input_name) in pools.items():
                    inputs = [Tensor.from_numpy(input_name, x)]
                    for threads in (1, 2):
                        rates.setdefault((path, threads), []).append(
                            _throughput(pool, inputs, outputs, threads, seconds)
                        )
        finally:
            for host in hosts.values():
                host.close()
    for path in pools:
        one, two = statistics.median(rates[(path, 1)]), statistics.median(rates[(path, 2)])
        print(f"threads  {path:8s} 1 thread {one:8.0f} req/s | 2 threads {two:8.0f} req/s | 2/1 {two / one:.2f}x")


def _throughput(
    pool: InstancePool, inputs: list[Tensor], outputs: list[TensorSpec], threads: int, seconds: float
) -> float:
    done = threading.Event()
    counts = [0] * threads

    def work(k: int) -> None:
        while not done.is_set():
            with pool.instance() as inst:
                inst.handle(inputs, outputs)
            counts[k] += 1

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    done.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--models", default="digits,topk,dense")
    parser.add_argument("--paths", default=",".join(PATHS), help="host paths to measure (wasm_host.compiled)")
    parser.add_argument("--threads-seconds", type=float, default=2.0, help="per round of the thread test; 0: skip")
    args = parser.parse_args()
    chosen = args.models.split(",")
    paths = tuple(args.paths.split(","))
    model, x_test, _ = train_digits()
    digits_x = np.ascontiguousarray(x_test[: args.rows])
    if "digits" in chosen:
        run("digits", model, digits_x, args.iterations, paths=paths)
    if "topk" in chosen:
        run("topk", model, digits_x, args.iterations, custom=TOPK_WASM.read_bytes(), paths=paths)
    if "dense" in chosen:
        x = np.random.default_rng(1).standard_normal((args.rows, 256)).astype(np.float32)
        run("dense", dense_model(), x, max(500, args.iterations // 5), paths=paths)
    if args.threads_seconds > 0:
        scaling(model, digits_x, args.threads_seconds, paths=paths)


if __name__ == "__main__":
    main()

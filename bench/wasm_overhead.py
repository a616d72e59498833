"""What isolation costs: the warm Wasm path against a bare ``InferenceSession.run``, same model, same input.

    python -m bench.wasm_overhead [--iterations N] [--rows R]

For each model, both paths run in the same process, interleaved in blocks so that drift on a noisy machine
hits both alike. The Wasm path is everything a request pays inside the gateway below HTTP: encoding the request
into the guest ABI, a pooled instance, ``alloc`` and ``handle``, the passthrough guest's WASI-NN calls
(``set_input``, ``compute``, ``get_output`` per output) and decoding the response. Both paths compute every
output of the model.

Models: ``digits`` (logistic regression on sklearn's digits, 3.7 KB) and ``dense`` (a 3-layer float MLP built
with onnx.helper, about 10 MB of weights).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
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
from wasm_host.tensors import Tensor


def timings(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run(name: str, model: bytes, x: np.ndarray, iterations: int, blocks: int = 10) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(SandboxLimits(), Path(tmp)).start()
        try:
            digest = hashlib.sha256(model).hexdigest()
            model_path = Path(tmp) / "model.onnx"
            model_path.write_bytes(model)
            graph = host.backend.load(model, digest)
            _, outputs = passthrough_signature(graph)
            wasm = passthrough_module()
            image = host.prepare(
                wasm, hashlib.sha256(wasm).hexdigest(), {PASSTHROUGH_ALIAS: ModelRef(digest, model_path)}
            )
            pool = InstancePool(image, PoolSettings())
            inputs = [Tensor.from_numpy(graph.inputs[0].name, x)]

            # The bare baseline uses its own session with the same options the backend uses.
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            bare_session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            feed = {graph.inputs[0].name: x}

            def bare() -> object:
                return bare_session.run(None, feed)

            def wasm_path() -> object:
                with pool.instance() as inst:
                    return inst.handle(inputs, outputs)

            # Same answers, or the comparison means nothing.
            got = {t.name: t.to_numpy() for t in wasm_path()}  # type: ignore[attr-defined]
            for out, ref in zip(graph.outputs, bare(), strict=True):  # type: ignore[call-overload]
                np.testing.assert_array_equal(got[out.name], ref)
            for fn in (bare, wasm_path):  # warm up
                timings(fn, max(50, iterations // 20))
            bare_t: list[float] = []
            wasm_t: list[float] = []
            for _ in range(blocks):
                bare_t += timings(bare, iterations // blocks)
                wasm_t += timings(wasm_path, iterations // blocks)
        finally:
            host.close()
    result = {
        "bare_p50": statistics.median(bare_t),
        "bare_p99": p(bare_t, 99),
        "wasm_p50": statistics.median(wasm_t),
        "wasm_p99": p(wasm_t, 99),
    }
    result["overhead_p50"] = result["wasm_p50"] - result["bare_p50"]
    result["overhead_p99"] = result["wasm_p99"] - result["bare_p99"]
    result["ratio_p50"] = result["wasm_p50"] / result["bare_p50"]
    print(
        f"{name:8s} rows={x.shape[0]:<3d} bare p50 {result['bare_p50']:8.1f} us  p99 {result['bare_p99']:8.1f} us | "
        f"wasm p50 {result['wasm_p50']:8.1f} us  p99 {result['wasm_p99']:8.1f} us | "
        f"overhead p50 {result['overhead_p50']:+7.1f} us  p99 {result['overhead_p99']:+7.1f} us | "
        f"wasm/bare {result['ratio_p50']:.2f}x",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--models", default="digits,dense")
    args = parser.parse_args()
    chosen = args.models.split(",")
    if "digits" in chosen:
        model, x_test, _ = train_digits()
        run("digits", model, np.ascontiguousarray(x_test[: args.rows]), args.iterations)
    if "dense" in chosen:
        x = np.random.default_rng(1).standard_normal((args.rows, 256)).astype(np.float32)
        run("dense", dense_model(), x, max(500, args.iterations // 5))


if __name__ == "__main__":
    main()

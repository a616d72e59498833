"""``wasm demo``: serve the gateway with demo functions already pushed, and print how to call them.

The demo model is a logistic regression trained on scikit-learn's bundled digits data (8x8 images, pixel
values 0-16, scaled to 0-1) and converted with skl2onnx, so the demo needs the ``dev`` extra and no network.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gateway.auth import check_bind
from gateway.cli.client import AdminClient
from gateway.server import configure_logging, tune_interpreter, uvicorn_server
from gateway.settings import Settings
from wasm_host.errors import ClientError

GUEST_BUILD = Path(__file__).resolve().parents[2] / "guest_modules" / "build"  # the checkout's built guests


def dense_model(sizes: tuple[int, ...] = (256, 1024, 1024, 1024, 10), seed: int = 0) -> bytes:
    """A float MLP (Gemm + ReLU layers) made with ``onnx.helper``: input ``input`` FP32 [N, sizes[0]], output
    ``output`` FP32 [N, sizes[-1]]. The default is 2.37 M parameters, about 9.5 MB: a model the router would
    send to the pod tier. Needs the dev extra (onnx)."""
    import itertools

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "input"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}")
        bias = numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")
        inits += [w, bias]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], ["output" if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
        prev = "output" if last else f"h{i}"
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


#: The inputs of :func:`encoder_model`, in graph order: INT64 ``[batch, sequence]`` each.
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Its outputs, in graph order: FP32 ``[batch, sequence, hidden]`` and ``[batch, hidden]``.
ENCODER_OUTPUTS = ("last_hidden_state", "pooler_output")


def encoder_model(vocab: int = 64, hidden: int = 16, seed: int = 0) -> bytes:
    """A tiny ONNX model shaped like a BERT encoder, made with ``onnx.helper``: a transformer's names, types and
    dynamic shapes in a few kilobytes, for tests (and a model zoo) that need them without a real transformer.

    - Inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: INT64 ``[batch, sequence]``, both dims
      dynamic (``dim_param``). Token ids must be below ``vocab``, token types 0 or 1.
    - Outputs ``last_hidden_state``: FP32 ``[batch, sequence, hidden]``, and ``pooler_output``: FP32
      ``[batch, hidden]``: two outputs with more than one dynamic dim or with a dynamic dim before a fixed one.

    The math: word plus token-type embeddings (Gather), masked positions zeroed (Mul by the cast mask), then a
    dense layer with tanh (MatMul, Add, Tanh); the pooler is a dense layer with tanh over each row's first token,
    as BERT's is. The weights are random, from ``seed``.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weights(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32), name)

    inits = [
        weights("word_embeddings", vocab, hidden),
        weights("token_type_embeddings", 2, hidden),
        weights("encoder_w", hidden, hidden),
        weights("encoder_b", hidden),
        weights("pooler_w", hidden, hidden),
        weights("pooler_b", hidden),
        numpy_helper.from_array(np.array([2], np.int64), "last_axis"),
        numpy_helper.from_array(np.array(0, np.int64), "first_token"),
    ]
    node = helper.make_node
    nodes = [
        node("Gather", ["word_embeddings", "input_ids"], ["words"]),
        node("Gather", ["token_type_embeddings", "token_type_ids"], ["types"]),
        node("Add", ["words", "types"], ["embedded"]),
        node("Cast", ["attention_mask"], ["mask"], to=onnx.TensorProto.FLOAT),
        node("Unsqueeze", ["mask", "last_axis"], ["mask3"]),
        node("Mul", ["embedded", "mask3"], ["masked"]),
        node("MatMul", ["masked", "encoder_w"], ["encoded"]),
        node("Add", ["encoded", "encoder_b"], ["encoded_b"]),
        node("Tanh", ["encoded_b"], ["last_hidden_state"]),
        node("Gather", ["last_hidden_state", "first_token"], ["first"], axis=1),
        node("MatMul", ["first", "pooler_w"], ["pooled"]),
        node("Add", ["pooled", "pooler_b"], ["pooled_b"]),
        node("Tanh", ["pooled_b"], ["pooler_output"]),
    ]
    int64, fp32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info(name, int64, ["batch", "sequence"]) for name in ENCODER_INPUTS],
        [
            helper.make_tensor_value_info("last_hidden_state", fp32, ["batch", "sequence", hidden]),
            helper.make_tensor_value_info("pooler_output", fp32, ["batch", hidden]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def train_digits() -> tuple[bytes, Any, Any]:
    """(ONNX bytes, X_test as float32 scaled to 0-1, y_test) for a classifier of sklearn's digits.

    The model has input ``input`` FP32 [-1, 64] and outputs ``label`` INT64 [-1] and ``probabilities``
    FP32 [-1, 10]. Deterministic: a fixed split and a deterministic solver."""
    try:
        import numpy as np
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ClientError(f"the demo model needs the dev extra (pip install -e '.[dev]'): {exc}") from exc
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0)
    clf = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    onx = to_onnx(clf, x_train[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    onx.graph.input[0].name = "input"
    for node in onx.graph.node:
        node.input[:] = ["input" if i == "X" else i for i in node.input]
    return onx.SerializeToString(), x_test, y_test


def run_demo(settings: Settings) -> int:
    configure_logging(settings)
    tune_interpreter(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo's own pushes are not news
    model, x_test, y_test = train_digits()
    check_bind(settings)
    server = uvicorn_server(settings)
    thread = threading.Thread(target=server.run, name="wasmgate-server")
    thread.start()
    while not server.started:
        if not thread.is_alive():
            print("error: the gateway failed to start (see the log above)", file=sys.stderr)
            return 1
        time.sleep(0.05)
    url = f"http://{settings.host}:{settings.port}"
    try:
        with AdminClient(url, settings.admin_token) as client:
            client.push("digits", None, {"model": model})
            top3 = GUEST_BUILD / "digits_topk.wasm"
            if top3.exists():
                client.push("digits-top3", top3.read_bytes(), {"digits": model})
        _explain(url, x_test, y_test, top3.exists())
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join()
    return 0


def _explain(url: str, x_test: Any, y_test: Any, has_top3: bool) -> None:
    row = [round(float(v), 4) for v in x_test[0]]
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]}
    print(f"\nwasmgate demo is serving at {url}  (Ctrl-C stops it)\n")
    print(f"digits: a bare ONNX classifier behind the passthrough guest. A test image of a {int(y_test[0])}:")
    print(f"  curl -s {url}/v2/models/digits/infer -H 'content-type: application/json' \\\n    -d '{json.dumps(body)}'")
    if has_top3:
        raw = [round(float(v) * 16) for v in x_test[0]]
        body = {"inputs": [{"name": "images", "shape": [1, 64], "datatype": "UINT8", "data": raw}]}
        print("\ndigits-top3: a custom C function (raw 0-16 pixels in, top-3 labels and probabilities out):")
        print(
            f"  curl -s {url}/v2/models/digits-top3/infer -H 'content-type: application/json' \\\n"
            f"    -d '{json.dumps(body)}'"
        )
    else:
        print("\n(build the example functions with `python guest_modules/build.py` to get digits-top3 too)")
    print(f"\nMetadata: curl -s {url}/v2/models/digits    Functions: wasm ls --gateway {url}\n", flush=True)

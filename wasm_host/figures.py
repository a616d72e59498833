"""What a model costs, read from its ONNX graph at push: bytes, parameters, and an estimate of FLOPs per row.

The router places functions by these figures (``router.policy``). They are estimates, meant to tell a 4 KB
classifier from a 500 MB network, not to predict latency:

- ``params``: the elements of every initializer, of every ``Constant`` node's tensor, and of the numeric list
  attributes of classic-ML operators (a ``LinearClassifier`` keeps its coefficients in attributes).
- ``flops_per_row``: the sum over nodes, with one row in the batch (every dimension the graph leaves
  symbolic counts as 1): ``2 * M * N * K`` for ``MatMul``/``Gemm``, ``2 * output elements * kernel elements
  per output`` for ``Conv``, twice a node's attribute parameters for classic-ML operators, and one operation
  per output element for everything else. Shapes come from ONNX shape inference; a node whose shapes cannot
  be inferred counts what it can (its attribute parameters), so a graph with custom operators is
  under-estimated, never refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

#: Operators whose multiply-adds are the product of their output and the inner dimension of their inputs.
MATMUL_OPS = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"})
CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv"})


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    bytes: int = 0
    params: int = 0
    flops_per_row: int = 0

    def __add__(self, other: ModelFigures) -> ModelFigures:
        """A function with several models costs their sum (a guest may run each of them per request)."""
        return ModelFigures(
            self.bytes + other.bytes, self.params + other.params, self.flops_per_row + other.flops_per_row
        )

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelFigures:
        return cls(int(doc.get("bytes", 0)), int(doc.get("params", 0)), int(doc.get("flops_per_row", 0)))


def measure(model: bytes, proto: onnx.ModelProto | None = None) -> ModelFigures:
    """The figures of one ONNX model; ``proto``, when given, is those bytes parsed already (a push parses them
    once). Raises ValueError when the bytes are not an ONNX model."""
    import onnx
    import onnx.shape_inference

    if proto is None:
        try:
            proto = onnx.load_model_from_string(model)
        except Exception as exc:  # protobuf raises its own DecodeError, and others for truncated input
            raise ValueError(f"not an ONNX model: {exc}") from exc
    # Custom operators, or a graph onnxruntime runs but the checker dislikes: count what needs no shapes.
    with contextlib.suppress(Exception):
        proto = onnx.shape_inference.infer_shapes(proto)
    graph = proto.graph
    shapes: dict[str, list[int]] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims]
    params = 0
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
        params += math.prod(init.dims)
    flops = 0
    for node in graph.node:
        attribute_params = _attribute_params(node)
        params += attribute_params
        flops += _node_flops(node.op_type, node.input, node.output, shapes, attribute_params)
    return ModelFigures(len(model), params, flops)


def _attribute_params(node: Any) -> int:
    count = 0
    for attr in node.attribute:
        if attr.type == attr.TENSOR:
            count += math.prod(attr.t.dims)
        elif node.domain == "ai.onnx.ml" and attr.type in (attr.FLOATS, attr.INTS):
            count += len(attr.floats) + len(attr.ints)
    return count


def _node_flops(
    op: str, inputs: Sequence[str], outputs: Sequence[str], shapes: Mapping[str, list[int]], attribute_params: int
) -> int:
    out = shapes.get(outputs[0]) if outputs else None
    if op in MATMUL_OPS and out is not None and inputs and inputs[0] in shapes:
        a = shapes[inputs[0]]
        # Gemm may transpose A; the inner dimension is then A's first. MatMul's is always A's last.
        k = a[0] if op == "Gemm" and _is_transposed(a, out) else (a[-1] if a else 1)
        return 2 * math.prod(out) * k
    if op in CONV_OPS and out is not None and len(inputs) > 1 and inputs[1] in shapes:
        kernel = shapes[inputs[1]]
        return 2 * math.prod(out) * math.prod(kernel[1:])
    if attribute_params:
        return 2 * attribute_params
    return math.prod(out) if out is not None else 0


def _is_transposed(a: list[int], out: list[int]) -> bool:
    """Whether Gemm's A enters transposed: its first dimension is not the output's rows."""
    return len(a) == 2 and len(out) == 2 and a[0] != out[0] and a[1] == out[0]

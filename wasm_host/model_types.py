"""The types a model declares at its edges, read from its ONNX graph, and which of them WASI-NN can carry.

WASI-NN's ``tensor_type`` names six element types (:data:`WASI_NN_DATATYPES`), and its tensors are dense: no
strings, no sequences or maps, no bool or int8. So:

- an **input** of any other type can never be fed by ``set_input``: a model that declares one is refused at
  push, whether it is pushed bare or with a function of its own;
- an **output** of any other type cannot be read by ``get_output``: a bare model, whose built-in passthrough
  returns every output, is refused at push; a function's own guest reads only the outputs it chooses, so its
  models may declare others (``get_output`` of a sequence, map or string output is ``unsupported_operation``).

The types are read from the graph with the ``onnx`` package, before onnxruntime builds the model, so that the
refusal is the same on every machine whatever onnxruntime would make of the model (its StringNormalizer, for
one, fails to build on a machine without the ``en_US.UTF-8`` locale). Types are written as onnxruntime writes
them: ``tensor(float)``, ``seq(map(int64,tensor(float)))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from wasm_host.errors import InvalidFunction
from wasm_host.tensors import ONNX_TYPES
from wasm_host.wasi_nn import TENSOR_TYPES

if TYPE_CHECKING:
    import onnx

#: The OIP datatypes WASI-NN's ``tensor_type`` can name: the only ones a tensor can cross WASI-NN in.
WASI_NN_DATATYPES = frozenset(t[0] for t in TENSOR_TYPES.values())
#: The same, as ONNX element types ("float16, float, ... and int64"), for messages.
CARRIED = [onnx_type[len("tensor(") : -1] for onnx_type, oip in ONNX_TYPES.items() if oip in WASI_NN_DATATYPES]

#: The fixes a refusal names, by what the edge is.
ZIPMAP_FIX = "for a scikit-learn classifier, convert with options={'zipmap': False}"
TEXT_INPUT_FIX = (
    "tokenize or vectorize the text in a function with pre-processing (see guest_modules/), and push the "
    "numeric part of the model with it"
)
TEXT_OUTPUT_FIX = (
    "return numbers (class ids, say) and map them to text in a function with post-processing (see "
    "guest_modules/); for a scikit-learn classifier, train it on integer labels"
)
CAST_FIX = "cast it in the graph to one of these types (a Cast node)"
NOT_A_TENSOR_FIX = "make it a dense tensor in the graph"


@dataclasses.dataclass(frozen=True)
class Edge:
    """One input or output of a graph: its name, and its type as onnxruntime writes it."""

    kind: Literal["input", "output"]
    name: str
    onnx_type: str


def parse_model(model: bytes) -> onnx.ModelProto:
    """The model's protobuf. Raises ValueError when the bytes are not an ONNX model."""
    import onnx

    try:
        return onnx.load_model_from_string(model)
    except Exception as exc:  # protobuf raises its own DecodeError, and others for truncated input
        raise ValueError(f"not a valid ONNX model: {exc}") from exc


def graph_edges(model: onnx.ModelProto) -> list[Edge]:
    """The inputs a caller feeds (a graph input with an initializer is a default, not fed) and the outputs, in
    graph order, as onnxruntime lists them."""
    graph = model.graph
    defaults = {init.name for init in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    inputs = [Edge("input", v.name, type_name(v.type)) for v in graph.input if v.name not in defaults]
    return inputs + [Edge("output", v.name, type_name(v.type)) for v in graph.output]


def type_name(t: onnx.TypeProto) -> str:
    """A type as onnxruntime writes it: ``tensor(int64)``, ``seq(map(int64,tensor(float)))``."""
    which = t.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({_element(t.tensor_type.elem_type)})"
    if which == "sparse_tensor_type":
        return f"sparse_tensor({_element(t.sparse_tensor_type.elem_type)})"
    if which == "sequence_type":
        return f"seq({type_name(t.sequence_type.elem_type)})"
    if which == "map_type":
        return f"map({_element(t.map_type.key_type)},{type_name(t.map_type.value_type)})"
    if which == "optional_type":
        return f"optional({type_name(t.optional_type.elem_type)})"
    return "an undeclared type"


def _element(code: int) -> str:
    import onnx

    names = onnx.TensorProto.DataType
    return names.Name(code).lower() if code in names.values() else f"element type {code}"


def check_carried(edges: Iterable[Edge], outputs: bool, context: str = "") -> None:
    """Refuse what WASI-NN cannot carry: every input, and with ``outputs`` every output too (a bare model's).
    Raises :class:`InvalidFunction` naming each such edge and its fix; ``context`` starts the message."""
    problems = [
        f"{e.kind} {e.name!r} is {e.onnx_type} ({_fix(e)})"
        for e in edges
        if (outputs or e.kind == "input") and ONNX_TYPES.get(e.onnx_type) not in WASI_NN_DATATYPES
    ]
    if problems:
        carried = ", ".join(CARRIED[:-1]) + f" and {CARRIED[-1]}"
        raise InvalidFunction(f"{context}WASI-NN carries only tensors of {carried}: " + "; ".join(problems))


def _fix(edge: Edge) -> str:
    if edge.onnx_type == "tensor(string)":
        return TEXT_INPUT_FIX if edge.kind == "input" else TEXT_OUTPUT_FIX
    if edge.onnx_type.startswith("tensor("):
        return CAST_FIX
    if edge.kind == "output" and edge.onnx_type.startswith("seq(map("):
        return ZIPMAP_FIX
    return NOT_A_TENSOR_FIX

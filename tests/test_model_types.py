"""What a model declares at its edges, read from its ONNX graph (wasm_host/model_types.py), and the push's
refusal of what WASI-NN cannot carry: the same type names onnxruntime writes, and a message that names each
input or output and its fix. The zoo's refusals end to end are in tests/test_zoo.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from tests.support import cnn_model, encoder_model, fp16_model, tree_classifier_model, zipmap_classifier_model
from wasm_host.errors import InvalidFunction
from wasm_host.model_types import Edge, check_carried, graph_edges, parse_model

F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def one_node(op: str, x: onnx.ValueInfoProto, y: onnx.ValueInfoProto, opset: int = 18, **attrs: Any) -> bytes:
    """A graph of one node from input ``x`` to output ``y``; ``ai.onnx.ml`` operators are found by name."""
    domain = "ai.onnx.ml" if op == "DictVectorizer" else ""
    node = helper.make_node(op, [x.name], [y.name], domain=domain, **attrs)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(helper.make_graph([node], op, [x], [y]), opset_imports=opsets)
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def tensor(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["batch", 2])


def typed(name: str, t: onnx.TypeProto) -> onnx.ValueInfoProto:
    return helper.make_value_info(name, t)


FLOATS = helper.make_tensor_type_proto(F, None)
BOOL_INPUT = one_node("Cast", tensor("flags", onnx.TensorProto.BOOL), tensor("y", F), to=F)
INT8_OUTPUT = one_node("Cast", tensor("x", F), tensor("codes", onnx.TensorProto.INT8), to=onnx.TensorProto.INT8)
SEQUENCE_INPUT = one_node(
    "SequenceLength",
    typed("parts", helper.make_sequence_type_proto(FLOATS)),
    helper.make_tensor_value_info("n", I64, []),
)
MAP_INPUT = one_node(
    "DictVectorizer",
    typed("features", helper.make_map_type_proto(I64, FLOATS)),
    helper.make_tensor_value_info("dense", F, ["batch", 2]),
    int64_vocabulary=[1, 2],
)
OPTIONAL_INPUT = one_node(
    "OptionalHasElement",
    typed("maybe", helper.make_optional_type_proto(FLOATS)),
    helper.make_tensor_value_info("present", onnx.TensorProto.BOOL, []),
)


ODD_MODELS = {
    "bool-input": BOOL_INPUT,
    "int8-output": INT8_OUTPUT,
    "sequence-input": SEQUENCE_INPUT,
    "map-input": MAP_INPUT,
    "optional-input": OPTIONAL_INPUT,
}
ZOO = [encoder_model, cnn_model, fp16_model, tree_classifier_model, zipmap_classifier_model]


@pytest.mark.parametrize(
    "build",
    [*ZOO, *(lambda model=model: model for model in ODD_MODELS.values())],
    ids=[*(build.__name__ for build in ZOO), *ODD_MODELS],
)
def test_the_graph_declares_the_names_and_types_onnxruntime_lists(build: Callable[[], bytes]) -> None:
    model = build()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    listed = [Edge("input", x.name, x.type) for x in session.get_inputs()]
    listed += [Edge("output", x.name, x.type) for x in session.get_outputs()]
    assert graph_edges(parse_model(model)) == listed


@pytest.mark.parametrize(
    ("model", "refusal", "a_function_may_push_it"),
    [
        (BOOL_INPUT, "input 'flags' is tensor(bool) (cast it in the graph to one of these types", False),
        (INT8_OUTPUT, "output 'codes' is tensor(int8) (cast it in the graph to one of these types", True),
        (SEQUENCE_INPUT, "input 'parts' is seq(tensor(float)) (make it a dense tensor in the graph)", False),
        (MAP_INPUT, "input 'features' is map(int64,tensor(float)) (make it a dense tensor in the graph)", False),
        (OPTIONAL_INPUT, "input 'maybe' is optional(tensor(float)) (make it a dense tensor in the graph)", False),
    ],
    ids=list(ODD_MODELS),
)
def test_what_wasi_nn_cannot_carry_is_refused_by_name_with_its_fix(
    model: bytes, refusal: str, a_function_may_push_it: bool
) -> None:
    edges = graph_edges(parse_model(model))
    with pytest.raises(InvalidFunction) as bare:
        check_carried(edges, outputs=True)
    assert str(bare.value).startswith(
        "WASI-NN carries only tensors of float16, float, double, uint8, int32 and int64: "
    )
    assert refusal in str(bare.value)
    # A function's own guest reads only the outputs it asks for: only its models' inputs are checked.
    if a_function_may_push_it:
        check_carried(edges, outputs=False, context="model 'm': ")
    else:
        with pytest.raises(InvalidFunction) as own:
            check_carried(edges, outputs=False, context="model 'm': ")
        assert str(own.value).startswith("model 'm': WASI-NN carries only tensors")


def test_bytes_that_are_not_onnx_are_refused_before_anything_reads_them() -> None:
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        parse_model(b"garbage, not onnx")

"""The built-in passthrough guest: how a bare ONNX model is served. Its module forwards the request's tensors to
WASI-NN and returns the model's outputs; its signature is the model's own, read from the graph."""

from __future__ import annotations

from importlib.resources import files

import wasmtime

from wasm_host.errors import InvalidFunction
from wasm_host.onnx_backend import OnnxGraph
from wasm_host.tensors import TensorSpec
from wasm_host.wasi_nn import TENSOR_TYPES

#: The alias the passthrough guest loads its one model by.
PASSTHROUGH_ALIAS = "model"
WASI_NN_DATATYPES = {t[0] for t in TENSOR_TYPES.values()}


def passthrough_module() -> bytes:
    """The built-in passthrough guest, compiled from its WebAssembly text source."""
    return bytes(wasmtime.wat2wasm(files("wasm_host").joinpath("passthrough.wat").read_text()))


def passthrough_signature(graph: OnnxGraph) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The signature of a bare model served through WASI-NN; refuses what WASI-NN cannot carry."""
    problems = []
    for kind, ios in (("input", graph.inputs), ("output", graph.outputs)):
        for io in ios:
            if io.datatype not in WASI_NN_DATATYPES:
                hint = (
                    " (for a scikit-learn classifier, convert with options={'zipmap': False})"
                    if (io.onnx_type.startswith("seq"))
                    else ""
                )
                problems.append(f"{kind} {io.name!r} is {io.onnx_type}{hint}")
    if problems:
        raise InvalidFunction(
            "WASI-NN carries only tensors of float16, float, double, uint8, int32 and int64: " + "; ".join(problems)
        )
    return [io.spec() for io in graph.inputs], [io.spec() for io in graph.outputs]

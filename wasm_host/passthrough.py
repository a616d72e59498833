"""The built-in passthrough guest: how a bare ONNX model is served. Its module forwards the request's tensors to
WASI-NN and returns the model's outputs; its signature is the model's own, read from the graph."""

from __future__ import annotations

from importlib.resources import files

import wasmtime

from wasm_host.model_types import Edge, check_carried
from wasm_host.onnx_backend import OnnxGraph
from wasm_host.tensors import TensorSpec

#: The alias the passthrough guest loads its one model by.
PASSTHROUGH_ALIAS = "model"


def passthrough_module() -> bytes:
    """The built-in passthrough guest, compiled from its WebAssembly text source."""
    return bytes(wasmtime.wat2wasm(files("wasm_host").joinpath("passthrough.wat").read_text()))


def passthrough_signature(graph: OnnxGraph) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The signature of a bare model served through WASI-NN; refuses what WASI-NN cannot carry, every input and
    every output (the passthrough returns them all), as a push does (wasm_host.model_types)."""
    edges = [Edge("input", io.name, io.onnx_type) for io in graph.inputs]
    check_carried(edges + [Edge("output", io.name, io.onnx_type) for io in graph.outputs], outputs=True)
    return [io.spec() for io in graph.inputs], [io.spec() for io in graph.outputs]

"""A ModelInferRequest as the OIP v2 request it stands for, and an OIP v2 answer as a ModelInferResponse.

A gRPC request takes the path every inference request takes (``Dispatcher.run``) as an OIP v2 body in the
binary extension (``gateway.codec.encode_request``): each input's data in binary, every output asked for in
binary. That body is what a pod-tier runner is sent, and it is parsed, and so checked, as any body is. What is
checked here is what only gRPC can get wrong:

- ``raw_input_contents`` is empty, or has one entry per input, in the order of ``inputs``; an input with
  ``contents`` in a request that carries raw contents is refused, as is a request whose inputs have neither;
- typed ``contents`` are read from the field of the input's datatype (``int_contents`` for INT8, INT16 and
  INT32; ``uint_contents`` for UINT8, UINT16 and UINT32; ...), must hold one value per element, and must fit
  the datatype (300 is no UINT8). FP16 and BF16 have no typed field: they travel raw;
- raw contents of a fixed-size datatype must have the shape's size in bytes.

Request parameters go into the body's ``parameters`` (``tier``, the routing hint, among them); tensor
parameters are not used: the binary encoding here is the only one. The answer is always ``raw_output_contents``
(as Triton answers), whatever the request used, one entry per output in the order of ``outputs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.codec import HEADER_LENGTH, encode_request, parse_response
from gateway.oip_grpc.messages import ModelInferResponse
from wasm_host.errors import GuestFailure, InvalidRequest, WasmgateError
from wasm_host.tensors import DTYPES, Tensor, expected_nbytes, join_bytes

#: Each datatype's field of InferTensorContents (its values are stored as wasm_host.tensors.DTYPES says).
CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def request_body(request: Any, routing: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """The OIP v2 request (a binary-extension body and its headers) that ``request``, a ModelInferRequest,
    stands for; ``routing`` (the caller's routing metadata) is added to the headers. Raises InvalidRequest
    naming the input and the field to fix (see the module docstring)."""
    raw = list(request.raw_input_contents)
    inputs = list(request.inputs)
    if raw and len(raw) != len(inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs: send one per input, in the "
            "order of inputs, or none and each input's contents"
        )
    tensors = []
    for i, tensor in enumerate(inputs):
        where = f"input {tensor.name!r}"
        shape = tuple(tensor.shape)
        if raw:
            if tensor.contents.ByteSize():
                raise InvalidRequest(f"{where} has contents while the request has raw_input_contents: send one")
            data = raw[i]
            _check_raw_size(where, tensor.datatype, shape, len(data))
        else:
            data = _typed(where, tensor.datatype, shape, tensor.contents)
        tensors.append(Tensor(tensor.name, tensor.datatype, shape, data))
    outputs = [o.name for o in request.outputs] or None
    parameters = {k: _value(v) for k, v in request.parameters.items()}
    body, headers = encode_request(tensors, outputs, request.id or None, parameters)
    return body, {**routing, **headers}


def _check_raw_size(where: str, datatype: str, shape: tuple[int, ...], size: int) -> None:
    if datatype not in DTYPES or min(shape, default=0) < 0:
        return  # the codec refuses these, naming the datatype or the shape
    needed = expected_nbytes(datatype, shape)
    if needed is not None and size != needed:
        raise InvalidRequest(
            f"{where}: raw_input_contents has {size} bytes; shape {list(shape)} of {datatype} takes {needed}"
        )


def _typed(where: str, datatype: str, shape: tuple[int, ...], contents: Any) -> bytes:
    """The raw bytes of an input's typed contents."""
    if datatype not in CONTENTS:
        if datatype in DTYPES:  # FP16, BF16
            raise InvalidRequest(f"{where}: {datatype} has no typed contents; send it in raw_input_contents")
        raise InvalidRequest(f"{where}: unknown datatype {datatype!r}; use one of {', '.join(DTYPES)}")
    field = CONTENTS[datatype]
    values = getattr(contents, field)
    numel = math.prod(shape) if min(shape, default=0) >= 0 else None
    if numel is not None and len(values) != numel:
        raise InvalidRequest(
            f"{where}: {len(values)} values in contents.{field} for shape {list(shape)} ({numel} elements; "
            f"{datatype} is read from contents.{field})"
        )
    if datatype == "BYTES":
        return join_bytes(list(values))
    target = np.dtype(DTYPES[datatype].numpy)
    if target.kind in "iu" and target.itemsize < 8 and len(values):
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(target)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise InvalidRequest(f"{where}: a value in contents.{field} is out of range for {datatype}")
    return np.asarray(values, dtype=target).tobytes()


def _value(parameter: Any) -> object:
    """An InferParameter's value, as the JSON value of an OIP v2 parameter."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def infer_response(
    name: str, version: int, request_id: str, body: bytes, headers: Mapping[str, str], max_tensor_bytes: int
) -> Any:
    """The ModelInferResponse for an OIP v2 answer (``body`` and its ``headers``) of function ``name`` at
    ``version``: its outputs as ``raw_output_contents``. An answer that does not parse is the function's
    failure (GuestFailure)."""
    try:
        outputs = parse_response(body, headers.get(HEADER_LENGTH), max_tensor_bytes)
    except WasmgateError as exc:
        raise GuestFailure(f"{name!r} answered something that is not an OIP v2 response: {exc}") from None
    response = ModelInferResponse(model_name=name, model_version=str(version), id=request_id)
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.data)
    return response

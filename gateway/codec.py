"""The Open Inference Protocol v2 codec: JSON tensors and Triton's binary tensor extension, in and out.

Parsing treats every body as hostile. Each failure is an :class:`InvalidRequest` whose message names the input
and what to change; nothing here raises anything else for bad input. Answers are read too
(:func:`parse_response`): the OpenAI-compatible endpoint reads the OIP v2 answer to the request it made.

Binary extension (as Triton and ``tritonclient.http`` speak it): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw input tensors in input order; an input carries
``"parameters": {"binary_data_size": N}`` instead of ``data``. An output is answered in binary when it asks for
``"parameters": {"binary_data": true}`` or the request sets ``"binary_data_output": true``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np
import orjson

from gateway.requests import json_object
from wasm_host.compiled import packers
from wasm_host.errors import GuestFailure, InvalidRequest, TooLarge
from wasm_host.tensors import DTYPES, Tensor, TensorSpec, expected_nbytes, join_bytes, split_bytes

HEADER_LENGTH = "inference-header-content-length"
MAX_DIMS = 8


# The request's parts are values, never changed once parsed; not frozen (see wasm_host.tensors.Tensor).
@dataclasses.dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: not said per output; the request-level default applies


@dataclasses.dataclass(slots=True)
class RequestHead:
    """What routing needs of a request without decoding its tensors: its parameters and its batch size
    (the first dimension of its first input; 1 when it has none)."""

    parameters: dict[str, Any]
    batch: int


@dataclasses.dataclass(slots=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: every output

    @property
    def binary_default(self) -> bool:
        return self.parameters.get("binary_data_output") is True

    @property
    def head(self) -> RequestHead:
        shape = self.inputs[0].shape
        return RequestHead(self.parameters, int(shape[0]) if shape else 1)


def peek_request(body: bytes, header_length: str | None) -> RequestHead:
    """The head of a request that is forwarded as it is: only the JSON part is read (for a binary body, only
    its header), and only as far as routing needs. Raises InvalidRequest for a body that is not OIP JSON."""
    head, _ = _split(body, header_length)
    doc = _head_doc(head)
    inputs = doc.get("inputs")
    batch = 1
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        shape = inputs[0].get("shape")
        if isinstance(shape, list) and shape and isinstance(shape[0], int) and shape[0] > 0:
            batch = shape[0]
    return RequestHead(_parameters(doc), batch)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON head and the binary rest of a body, by its Inference-Header-Content-Length."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidRequest(f"Inference-Header-Content-Length {header_length[:40]!r} is not an integer") from None
    if not 0 < n <= len(body):
        raise InvalidRequest(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _head_doc(head: bytes, what: str = "request", tensors: str = "inputs") -> dict[str, Any]:
    return json_object(
        head,
        f"{what} body",
        f"{what} body must be a JSON object with an {tensors!r} list",
        fast=True,
        parse_constant=_refuse_constant,
    )


#: Where a JSON body's NaN or Infinity is refused, what to do instead.
NON_FINITE_HINT = "JSON has no NaN or Infinity: send non-finite values in a binary tensor"


def _refuse_constant(token: str) -> object:
    """``json.loads``'s hook for the ``NaN``, ``Infinity`` and ``-Infinity`` tokens Python's parser accepts and
    strict JSON does not: refused, so that a body means the same to every parser."""
    raise ValueError(f"{token} is not a JSON number; {NON_FINITE_HINT}")


def _parameters(doc: Mapping[str, Any]) -> dict[str, Any]:
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be an object")
    return parameters


def parse_request(body: bytes, header_length: str | None, max_tensor_bytes: int) -> InferRequest:
    """Parse an infer request body. ``header_length`` is the Inference-Header-Content-Length header, if any."""
    head, binary = _split(body, header_length)
    doc = _head_doc(head)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    parameters = _parameters(doc)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")
    inputs: list[Tensor] = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, used = _parse_input(i, raw, binary[offset:], max_tensor_bytes)
        offset += used
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidRequest(
            f"the binary section has {len(binary)} bytes but the inputs' binary_data_size add up to {offset}"
        )
    if len(inputs) > 1:
        names = [t.name for t in inputs]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"input names must be unique, got {names}")
    return InferRequest(request_id, parameters, inputs, _parse_outputs(doc.get("outputs")))


def _parse_input(
    i: int, raw: object, binary: memoryview, max_tensor_bytes: int, kind: str = "input"
) -> tuple[Tensor, int]:
    """One tensor of a request's ``inputs`` (or, ``kind="output"``, of a response's ``outputs``): the tensor,
    and how many bytes of ``binary`` it took."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{kind}s[{i}] must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{kind}s[{i}] needs a non-empty string 'name'")
    where = f"{kind} {name!r}"
    datatype = raw.get("datatype")
    if datatype not in DTYPES:
        raise InvalidRequest(f"{where}: unknown datatype {datatype!r}; use one of {', '.join(DTYPES)}")
    shape = raw.get("shape")
    if not _is_shape(shape):
        raise InvalidRequest(f"{where}: 'shape' must be a list of at most {MAX_DIMS} non-negative integers")
    dims = tuple(shape)
    numel = math.prod(dims)
    nbytes = expected_nbytes(datatype, dims)
    if nbytes is not None and nbytes > max_tensor_bytes:
        raise TooLarge(f"{where}: {nbytes} bytes exceeds the {max_tensor_bytes}-byte tensor limit")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest(f"{where}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest(f"{where}: binary_data_size must be a non-negative integer")
        if size > len(binary):
            raise InvalidRequest(
                f"{where}: binary_data_size is {size} but only {len(binary)} bytes of binary data remain"
            )
        data = bytes(binary[:size])
        if nbytes is not None and size != nbytes:
            raise InvalidRequest(
                f"{where}: binary_data_size is {size}, shape {list(dims)} of {datatype} needs {nbytes}"
            )
        if nbytes is None:
            try:
                split_bytes(data, numel)
            except ValueError as exc:
                raise InvalidRequest(f"{where}: {exc}") from None
        return Tensor(name, datatype, dims, data), size
    if "data" not in raw:
        raise InvalidRequest(f"{where}: needs 'data' (or parameters.binary_data_size with a binary body)")
    return Tensor(name, datatype, dims, _json_data(where, datatype, dims, numel, raw["data"])), 0


def _is_shape(shape: object) -> TypeGuard[list[int]]:
    """A list of at most MAX_DIMS non-negative ints. (A loop, not all() over a generator: every input of every
    request passes here.)"""
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        return False
    for d in shape:  # noqa: SIM110  # a loop, not all() over a generator
        if type(d) is not int or d < 0:  # type(): a bool is not a dimension (JSON's true would pass isinstance)
            return False
    return True


def encode_request(
    inputs: Sequence[Tensor],
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An infer request in the binary extension, as a client writes one, and the headers it needs: every input's
    data in binary, and every output asked for in binary (``outputs``: those named; None: all of them). For
    requests that come in by another protocol and take the OIP v2 path from here (``gateway.openai_api``,
    ``gateway.oip_grpc``); what it makes is parsed, and so checked, as any request is."""
    doc: dict[str, Any] = {}
    if request_id:
        doc["id"] = request_id
    doc["parameters"] = {**(parameters or {}), "binary_data_output": True}
    doc["inputs"] = [
        {
            "name": t.name,
            "shape": list(t.shape),
            "datatype": t.datatype,
            "parameters": {"binary_data_size": len(t.data)},
        }
        for t in inputs
    ]
    if outputs is not None:
        doc["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    head = orjson.dumps(doc)
    body = b"".join([head, *(t.data for t in inputs)])
    return body, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def parse_response(body: bytes, header_length: str | None, max_tensor_bytes: int) -> list[Tensor]:
    """The outputs of an infer response body, JSON or binary (``header_length``: its
    Inference-Header-Content-Length), as a client reads them. Raises InvalidRequest naming what is malformed:
    the caller decides whose fault that is."""
    head, binary = _split(body, header_length)
    doc = _head_doc(head, "response", "outputs")
    raw_outputs = doc.get("outputs")
    if not isinstance(raw_outputs, list):
        raise InvalidRequest("'outputs' must be a list of tensors")
    outputs: list[Tensor] = []
    offset = 0
    for i, raw in enumerate(raw_outputs):
        tensor, used = _parse_input(i, raw, binary[offset:], max_tensor_bytes, "output")
        offset += used
        outputs.append(tensor)
    if offset != len(binary):
        raise InvalidRequest(
            f"the binary section has {len(binary)} bytes but the outputs' binary_data_size add up to {offset}"
        )
    return outputs


def _json_data(where: str, datatype: str, dims: Sequence[int], numel: int, data: object) -> bytes:
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != numel:
            raise InvalidRequest(f"{where}: {len(flat)} elements of data for shape {list(dims)}")
        strings = [x for x in flat if isinstance(x, str)]
        if len(strings) != len(flat):
            raise InvalidRequest(f"{where}: BYTES data must be strings")
        return join_bytes([x.encode() for x in strings])
    kind = _PACK_KINDS.get(datatype)
    if kind is not None and _pack is not None:
        packed = _pack(data, kind, numel)
        if packed is not None:  # the common case, in one pass; anything else is numpy's below, errors included
            return packed
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidRequest(f"{where}: data is not a rectangular array of numbers") from None
    if arr.size != numel:
        raise InvalidRequest(f"{where}: {arr.size} elements of data for shape {list(dims)} ({numel} elements)")
    kind = arr.dtype.kind if arr.size else "i"
    if datatype == "BOOL":
        ok = kind == "b"
    elif datatype in ("FP16", "FP32", "FP64", "BF16"):
        ok = kind in "iuf"
    else:
        ok = kind in "iu"
    if not ok:
        want = {"BOOL": "true/false"}.get(datatype, "integers" if datatype[0] in "IU" else "numbers")
        raise InvalidRequest(f"{where}: {datatype} data must be {want}")
    if datatype in FLOAT_LARGEST and arr.size and not _plainly_in_range(arr, datatype):
        # Two reductions for both checks: the largest or the smallest is NaN or infinite when a value is (1e999
        # parses to infinity; the NaN and Infinity tokens are refused earlier), and past the type's largest when a
        # finite value would turn into infinity, refused as an integer out of range is.
        high, low = float(arr.max()), float(arr.min())  # NaN when any value is
        if not (math.isfinite(high) and math.isfinite(low)):
            raise InvalidRequest(f"{where}: a number is too large to be finite; {NON_FINITE_HINT}")
        if max(high, -low) > FLOAT_LARGEST[datatype]:
            raise InvalidRequest(f"{where}: a value is out of range for {datatype}")
    if datatype == "BF16":
        bits = np.asarray(arr, dtype="<f4").reshape(-1).view("<u4")
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
        return bytes(rounded.astype("<u2").tobytes())
    target = np.dtype(DTYPES[datatype].numpy)
    if target.kind in "iu" and arr.size:
        info = np.iinfo(target)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise InvalidRequest(f"{where}: a value is out of range for {datatype}")
    return np.ascontiguousarray(arr, dtype=target).tobytes()


#: The datatypes the compiled converters take (wasm_host.compiled.packers), by their kind letter.
_PACK_KINDS = {"FP32": "f", "FP64": "d", "INT32": "i", "INT64": "q"}
_pack, _unpack = packers() or (None, None)

#: The largest finite value of each floating datatype (BF16 is converted through FP32, whose range it shares).
FLOAT_LARGEST = {
    "FP16": float(np.finfo(np.float16).max),
    "FP32": float(np.finfo(np.float32).max),
    "BF16": float(np.finfo(np.float32).max),
    "FP64": math.inf,
}
#: The bound on a float array's sum of squares under which every value is finite and within its datatype's range.
_SQUARES_BOUND = {k: min(v * v, float(np.finfo(np.float64).max)) for k, v in FLOAT_LARGEST.items()}


def _plainly_in_range(arr: np.ndarray[Any, Any], datatype: str) -> bool:
    """True when one dot product shows every value of a float array finite and within ``datatype``'s range: its
    sum of squares is at most the largest value's square (NaN or infinity make it NaN or infinite). False says
    only "look closer" (the two reductions of the caller, which find which value and why): integers, and sums
    that overflow a double from finite values, take that path."""
    return arr.dtype.kind == "f" and float(np.vdot(arr, arr)) <= _SQUARES_BOUND[datatype]


def _flatten(data: object) -> list[object]:
    if not isinstance(data, list):
        return [data]
    out: list[object] = []
    stack: list[object] = [data]
    while stack:  # iterative: a deeply nested body must not exhaust Python's recursion limit
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _parse_outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidRequest("'outputs' must be a list of {name, parameters}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"outputs[{i}] must be an object with a string 'name'")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidRequest(f"outputs[{i}]: 'parameters' must be an object")
        binary = params.get("binary_data")
        out.append(RequestedOutput(item["name"], binary if isinstance(binary, bool) else None))
    return out


def bind_inputs(name: str, declared: Sequence[TensorSpec] | None, inputs: list[Tensor]) -> list[Tensor]:
    """Check a request's inputs against the function's declared inputs and put them in declared order.
    A function that declares nothing gets the inputs as sent."""
    if declared is None:
        return inputs
    ordered = inputs  # sent in declared order, as clients mostly do: nothing to look up
    if len(inputs) != len(declared):
        ordered = _declared_order(name, declared, inputs)
    else:
        for t, s in zip(inputs, declared):  # noqa: B905  # same length
            if t.name != s.name:
                ordered = _declared_order(name, declared, inputs)
                break
    for spec, t in zip(declared, ordered):  # noqa: B905  # one each, by name
        if t.datatype != spec.datatype:
            raise InvalidRequest(f"input {t.name!r} of {name!r} takes {spec.datatype}, got {t.datatype}")
        if not spec.matches(t.shape):
            raise InvalidRequest(
                f"input {t.name!r} of {name!r} takes shape {list(spec.shape)} (-1: any size), got {list(t.shape)}"
            )
    return ordered


def _declared_order(name: str, declared: Sequence[TensorSpec], inputs: list[Tensor]) -> list[Tensor]:
    """``inputs`` in ``declared``'s order, or InvalidRequest naming the missing and unexpected ones."""
    by_name = {t.name: t for t in inputs}
    wanted = [s.name for s in declared]
    missing = [n for n in wanted if n not in by_name]
    extra = [n for n in by_name if n not in wanted]
    if missing or extra:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        raise InvalidRequest(f"{name!r} takes inputs {wanted}: {', '.join(parts)}")
    return [by_name[spec.name] for spec in declared]


def select_outputs(produced: Sequence[Tensor], request: InferRequest) -> list[tuple[Tensor, bool]]:
    """The outputs to answer with, each with whether it goes in binary. Unknown names are a 400."""
    default = request.binary_default
    if request.outputs is None:
        return [(t, default) for t in produced]
    by_name = {t.name: t for t in produced}
    unknown = [o.name for o in request.outputs if o.name not in by_name]
    if unknown:
        raise InvalidRequest(f"unknown output(s) {unknown}; this function produces {list(by_name)}")
    return [(by_name[o.name], default if o.binary is None else o.binary) for o in request.outputs]


#: The most bytes one element of each datatype takes in a JSON response: the longest number Python writes for
#: it (a float as the double it widens to), and its comma. A BYTES element is counted from its length.
JSON_ELEMENT_BYTES = {
    "BOOL": 6,
    "UINT8": 4,
    "UINT16": 6,
    "UINT32": 11,
    "UINT64": 21,
    "INT8": 5,
    "INT16": 7,
    "INT32": 12,
    "INT64": 21,
    "FP16": 25,
    "FP32": 25,
    "FP64": 25,
    "BF16": 25,
}
#: A BYTES element in JSON: each byte at most a ``\uXXXX`` escape, plus its quotes and comma.
JSON_BYTES_PER_BYTE, JSON_STRING_OVERHEAD = 6, 3


def response_bytes(outputs: Sequence[tuple[Tensor, bool]]) -> int:
    """At most how many bytes the tensors of a response take encoded (each with whether it goes in binary):
    counted from their sizes alone, before anything is encoded. The JSON head's names and shapes are not
    counted; they are bounded by the function's signature."""
    total = 0
    for tensor, binary in outputs:
        if binary:
            total += len(tensor.data)
        elif tensor.datatype == "BYTES":
            total += JSON_BYTES_PER_BYTE * len(tensor.data) + JSON_STRING_OVERHEAD * tensor.numel
        else:
            total += JSON_ELEMENT_BYTES[tensor.datatype] * tensor.numel
    return total


def check_response_size(name: str, outputs: Sequence[tuple[Tensor, bool]], limit: int) -> None:
    """Refuse a response past ``limit`` bytes (setting ``max_response_bytes``) before it is encoded: a function
    answering a huge tensor must not make the gateway build its JSON text. Raises GuestFailure."""
    size = response_bytes(outputs)
    if size > limit:
        as_json = [t.name for t, binary in outputs if not binary]
        hint = f"; ask for {', '.join(as_json)} in binary, which JSON text does not inflate" if as_json else ""
        raise GuestFailure(
            f"{name!r} answered a response of up to {size} bytes, over the limit of {limit} "
            f"(setting max_response_bytes){hint}"
        )


def encode_response(
    model_name: str, model_version: str, request: InferRequest, outputs: Sequence[tuple[Tensor, bool]]
) -> tuple[bytes, Mapping[str, str]]:
    """The response body and the headers it needs (Content-Type, and the header length when binary)."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    raw: list[bytes] = []
    entries = []
    for tensor, binary in outputs:  # shapes are tuples, which orjson writes as arrays
        if binary:
            params = {"binary_data_size": len(tensor.data)}
            entries.append(
                {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape, "parameters": params}
            )
            raw.append(tensor.data)
        else:
            data = _to_json_data(tensor)
            entries.append({"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape, "data": data})
    doc["outputs"] = entries
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return head, JSON_HEADERS
    return head + b"".join(raw), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


JSON_HEADERS: Mapping[str, str] = {"content-type": "application/json"}

#: Up to this many elements, a tensor goes to orjson as a list of Python numbers (``tolist``: one call, and the
#: quicker for few values); past it, as a numpy array, with no Python object per value.
LIST_ELEMENTS = 4096


def _to_json_data(tensor: Tensor) -> list[Any] | np.ndarray[Any, Any]:
    """A tensor's elements as orjson writes them (``OPT_SERIALIZE_NUMPY``): numbers as a flat list or array,
    floats widened to double first, so the text is the shortest that reads back as that double, as Python's own repr
    writes it. Strict JSON has no NaN or Infinity: orjson writes such a value as null, as KServe's server writes
    it; the exact value travels in a binary output."""
    if tensor.datatype == "BYTES":
        return [x.decode(errors="replace") for x in split_bytes(tensor.data)]
    kind = _PACK_KINDS.get(tensor.datatype)
    if kind is not None and _unpack is not None and len(tensor.data) <= LIST_ELEMENTS * DTYPES[tensor.datatype].size:
        listed = _unpack(tensor.data, kind)  # tolist()'s numbers, without an array on the way
        if listed is not None:
            return listed
    arr = np.frombuffer(tensor.data, dtype=DTYPES[tensor.datatype].numpy)
    if tensor.datatype == "BF16":
        arr = (arr.astype("<u4") << 16).view("<f4")
    if arr.size <= LIST_ELEMENTS:
        return arr.tolist()  # type: ignore[no-any-return]  # floats as the doubles they widen to, exactly
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)

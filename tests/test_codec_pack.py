"""The compiled converters of JSON tensor data (wasm_host/csrc/pack.c) against the numpy path they short-cut.

``gateway.codec`` hands a JSON input's numbers to the packer first and to numpy only when the packer declines.
Every body below is parsed both ways (the packer, and the codec with the packer off): the tensors' bytes must be
identical, and so must every error. The packer must also take the common bodies, or the test of its speed-up
would pass on a packer that declines everything. An answer's tensors go to JSON through ``unpack``: the text
must be the numpy path's, byte for byte."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import codec
from wasm_host.compiled import packers
from wasm_host.errors import WasmgateError
from wasm_host.tensors import DTYPES, Tensor

pack, unpack = packers() or (None, None)
pytestmark = pytest.mark.skipif(pack is None, reason="the compiled extension is not built")

KINDS = {"FP32": "f", "FP64": "d", "INT32": "i", "INT64": "q"}


def body(data: object, datatype: str, shape: list[int]) -> bytes:
    """An infer body with one input; ``data`` as JSON text when it is a ``Raw``, else as Python's json writes it."""
    text = data.text if isinstance(data, Raw) else json.dumps(data)
    head = json.dumps({"name": "x", "datatype": datatype, "shape": shape})
    return f'{{"inputs": [{head[:-1]}, "data": {text}}}]}}'.encode()


class Raw:
    """JSON text as it is: numbers Python's json would not write (1e999, which a parser reads as infinity)."""

    def __init__(self, text: str) -> None:
        self.text = text


def both_ways(converter: str, run: Callable[[], bytes | str]) -> tuple[bytes | str, bytes | str]:
    """``run()`` with the codec's compiled ``converter`` (``_pack`` or ``_unpack``) in place, then without it."""
    saved = getattr(codec, converter)
    results = []
    for value in (saved, None):
        setattr(codec, converter, value)
        try:
            results.append(run())
        finally:
            setattr(codec, converter, saved)
    return results[0], results[1]


def parsed(raw: bytes) -> bytes | str:
    """The parsed input's bytes, or the error's words."""
    try:
        return codec.parse_request(raw, None, 1 << 30).inputs[0].data
    except WasmgateError as exc:
        return f"{type(exc).__name__}: {exc}"


def same_both_ways(data: object, datatype: str, shape: list[int]) -> bytes | str:
    raw = body(data, datatype, shape)
    fast, reference = both_ways("_pack", lambda: parsed(raw))
    assert fast == reference
    return fast


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "expected"),
    [
        ([0.5, -1.25, 3.0, 1e-30], "FP32", [4], struct.pack("<4f", 0.5, -1.25, 3.0, 1e-30)),
        ([[1, 2.5], [3, 4]], "FP32", [2, 2], struct.pack("<4f", 1, 2.5, 3, 4)),
        ([[[0.1]], [[0.2]]], "FP64", [2, 1, 1], struct.pack("<2d", 0.1, 0.2)),
        ([1, -2, 2**31 - 1, -(2**31)], "INT32", [4], struct.pack("<4i", 1, -2, 2**31 - 1, -(2**31))),
        ([[2**62, -(2**63)]], "INT64", [1, 2], struct.pack("<2q", 2**62, -(2**63))),
        ([3.4028234663852886e38, -3.4028234663852886e38], "FP32", [2], struct.pack("<2f", 3.4028235e38, -3.4028235e38)),
        ([2**53, -(2**53)], "FP32", [2], struct.pack("<2f", 2**53, -(2**53))),
    ],
)
def test_common_bodies_are_packed_to_numpys_bytes(
    data: object, datatype: str, shape: list[int], expected: bytes
) -> None:
    assert pack is not None
    numel = math.prod(shape)
    assert pack(json.loads(json.dumps(data)), KINDS[datatype], numel) == expected  # taken, not declined
    assert same_both_ways(data, datatype, shape) == expected


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([1.0, 2.0], "FP32", [3], "2 elements of data for shape [3]"),
        ([[1.0, 2.0], [3.0]], "FP32", [3], "not a rectangular array"),
        ([[1.0, 2.0], 3.0], "FP32", [3], "not a rectangular array"),
        ([True, 1.0], "FP32", [2], None),  # numpy's verdict, whatever it is: the packer leaves bools to it
        ([1.5, 2], "INT64", [2], "INT64 data must be integers"),
        ([2**31], "INT32", [1], "out of range for INT32"),
        ([2**64], "INT64", [1], None),
        ([1e39], "FP32", [1], "out of range for FP32"),
        (Raw("[1e999, 1.0]"), "FP64", [2], "too large to be finite"),
        (Raw("[-1e999]"), "FP32", [1], "too large to be finite"),
        ([2**53 + 1, 0.5], "FP32", [2], None),  # past 2^53: numpy's single rounding, not the packer's two
        (["1.0"], "FP32", [1], "must be numbers"),
        ([None], "FP64", [1], None),
        ([], "FP32", [0], None),
        ([[[[[[[[[1.0]]]]]]]]], "FP32", [1], None),  # nine levels: past the packer's depth
    ],
)
def test_what_the_packer_declines_is_numpys_to_convert_or_refuse(
    data: object, datatype: str, shape: list[int], message: str | None
) -> None:
    assert pack is not None
    if datatype in KINDS:
        parsed = codec._head_doc(body(data, datatype, shape))["inputs"][0]["data"]  # as the codec's parser reads it
        assert pack(parsed, KINDS[datatype], math.prod(shape)) is None
    result = same_both_ways(data, datatype, shape)
    if message is not None:
        assert isinstance(result, str)
        assert message in result


def test_the_packer_checks_its_arguments() -> None:
    assert pack is not None
    with pytest.raises(ValueError, match="kind"):
        pack([1.0], "x", 1)
    assert pack((1.0,), "f", 1) is None  # a tuple is not what a JSON parser makes
    assert pack([1.0], "f", -1) is None


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(-(2**70), 2**70),
    st.integers(-1000, 1000),
    st.booleans(),
)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[object, list[int]]:
    """Nested lists of numbers, mostly rectangular, sometimes ragged, with a shape that mostly fits."""
    dims = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))

    def build(level: int) -> object:
        if level == len(dims):
            return draw(numbers)
        n = dims[level] if draw(st.integers(0, 9)) else dims[level] + 1  # now and then a ragged row
        return [build(level + 1) for _ in range(n)]

    shape = dims if draw(st.integers(0, 9)) else [math.prod(dims) + 1]
    return build(0), shape


@settings(max_examples=400, deadline=None)
@given(tensors(), st.sampled_from(sorted(KINDS)))
def test_any_data_parses_the_same_with_the_packer_and_without(tensor: tuple[object, list[int]], datatype: str) -> None:
    data, shape = tensor
    same_both_ways(data, datatype, shape)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(KINDS)),
    st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=40),
)
def test_an_answer_encodes_to_the_same_text_with_unpack_and_without(datatype: str, words: list[int]) -> None:
    """Any bit pattern (NaN, infinities, subnormals, extremes), as JSON text both ways."""
    dtype = np.dtype(DTYPES[datatype].numpy)
    raw = b"".join(w.to_bytes(8, "little") for w in words)
    raw = raw[: len(raw) - len(raw) % dtype.itemsize]
    tensor = Tensor("y", datatype, (len(raw) // dtype.itemsize,), raw)
    request = codec.parse_request(body([1.0], "FP32", [1]), None, 1 << 30)
    fast, reference = both_ways("_unpack", lambda: codec.encode_response("m", "1", request, [(tensor, False)])[0])
    assert fast == reference
    assert unpack is not None
    assert unpack(raw, KINDS[datatype]) is not None  # taken, not left to numpy


def test_unpack_declines_what_is_not_whole_elements() -> None:
    assert unpack is not None
    assert unpack(b"\0\0\0", "f") is None
    assert unpack(struct.pack("<2i", -1, 7), "i") == [-1, 7]
    with pytest.raises(ValueError, match="kind"):
        unpack(b"", "x")

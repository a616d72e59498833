"""The OIP v2 codec: JSON and binary bodies, in and out, and the 400s for bad ones."""

from __future__ import annotations

import contextlib
import json
import re
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codec import HEADER_LENGTH, encode_response, parse_request, parse_response, select_outputs
from wasm_host.errors import InvalidRequest, TooLarge
from wasm_host.tensors import Tensor, join_bytes, split_bytes

LIMIT = 1 << 20


def body(*inputs: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def test_json_nested_and_flat_data_are_the_same() -> None:
    flat = parse_request(body({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}), None, LIMIT)
    nested = parse_request(
        body({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}), None, LIMIT
    )
    assert flat.inputs == nested.inputs
    np.testing.assert_array_equal(flat.inputs[0].to_numpy(), [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT64", [1, -2], np.array([1, -2], "<i8")),
        ("UINT8", [0, 255], np.array([0, 255], "u1")),
        ("BOOL", [True, False], np.array([True, False])),
        ("FP16", [0.5, 2], np.array([0.5, 2], "<f2")),
        ("FP64", [1.25, 3], np.array([1.25, 3], "<f8")),
    ],
)
def test_json_datatypes(datatype: str, data: list[object], expected: np.ndarray) -> None:
    req = parse_request(body({"name": "x", "shape": [2], "datatype": datatype, "data": data}), None, LIMIT)
    np.testing.assert_array_equal(req.inputs[0].to_numpy(), expected)


def test_bytes_and_bf16_round_trip() -> None:
    req = parse_request(
        body(
            {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["héllo", ""]},
            {"name": "b", "shape": [2], "datatype": "BF16", "data": [1.0, -2.5]},
        ),
        None,
        LIMIT,
    )
    assert split_bytes(req.inputs[0].data) == ["héllo".encode(), b""]
    payload, _ = encode_response("m", "1", req, [(t, False) for t in req.inputs])
    out = json.loads(payload)["outputs"]
    assert out[0]["data"] == ["héllo", ""]
    assert out[1]["data"] == [1.0, -2.5]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (body(), "non-empty list"),
        (body({"name": "x", "shape": [2], "datatype": "FP33", "data": [1, 2]}), "unknown datatype"),
        (
            body({"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}),
            "2 elements of data for shape",
        ),
        (body({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}), "non-negative"),
        (body({"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}), "must be integers"),
        (body({"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}), "out of range"),
        (body({"name": "x", "shape": [1], "datatype": "FP32", "data": [3.4028235677973366e38]}), "out of range"),
        (body({"name": "x", "shape": [1], "datatype": "FP16", "data": [70000]}), "out of range"),
        (body({"name": "x", "shape": [1], "datatype": "BF16", "data": [-1e39]}), "out of range"),
        (body({"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}), "rectangular"),
        (body({"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}), "must be numbers"),
        (body({"name": "x", "shape": [1], "datatype": "FP32"}), "needs 'data'"),
        (
            body(
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
            ),
            "unique",
        ),
        (body({"shape": [1], "datatype": "FP32", "data": [1]}), "needs a non-empty string 'name'"),
    ],
)
def test_bad_json_bodies(doc: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_request(doc, None, LIMIT)


def test_tensor_limit_is_413() -> None:
    with pytest.raises(TooLarge):
        parse_request(body({"name": "x", "shape": [1 << 20], "datatype": "FP32", "data": []}), None, LIMIT)


def binary_body(sizes: list[int], raw: bytes) -> tuple[bytes, str]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": f"x{i}",
                    "shape": [n // 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": n},
                }
                for i, n in enumerate(sizes)
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return head + raw, str(len(head))


def test_binary_inputs() -> None:
    raw = np.arange(6, dtype="<f4").tobytes()
    doc, n = binary_body([8, 16], raw)
    req = parse_request(doc, n, LIMIT)
    np.testing.assert_array_equal(req.inputs[1].to_numpy(), [2, 3, 4, 5])
    assert req.outputs is not None
    assert req.outputs[0].binary is True


@pytest.mark.parametrize(
    ("sizes", "raw_len", "header_delta", "message"),
    [
        ([8], 4, 0, "only 4 bytes"),  # truncated body
        ([8], 12, 0, "binary section has 12 bytes"),  # trailing garbage
        ([6], 6, 0, "needs"),  # size not a whole number of FP32 elements for the shape
        ([8], 8, 5, "not valid JSON"),  # header length past the JSON
        ([8], 8, 10**6, "body has"),
    ],
)
def test_binary_sizes_that_disagree(sizes: list[int], raw_len: int, header_delta: int, message: str) -> None:
    doc, n = binary_body(sizes, b"\0" * raw_len)
    with pytest.raises(InvalidRequest, match=message):
        parse_request(doc, str(int(n) + header_delta), LIMIT)


def test_binary_output_encoding() -> None:
    req = parse_request(
        body(
            {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
            parameters={"binary_data_output": True},
        ),
        None,
        LIMIT,
    )
    y = Tensor.from_numpy("y", np.array([[1.5, 2.5]], np.float32))
    payload, headers = encode_response("m", "3", req, select_outputs([y], req))
    n = int(headers[HEADER_LENGTH])
    head = json.loads(payload[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert struct.unpack("<2f", payload[n:]) == (1.5, 2.5)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_response_reads_back_as_the_tensors_it_encoded(binary: bool) -> None:
    req = parse_request(
        body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, parameters={"binary_data_output": binary}),
        None,
        LIMIT,
    )
    outputs = [
        Tensor.from_numpy("y", np.array([[1.5, -2.25], [0.1, 3e38]], np.float32)),
        Tensor("s", "BYTES", (2,), join_bytes([b"ab", "\u00e9".encode()])),
    ]
    payload, headers = encode_response("m", "3", req, select_outputs(outputs, req))
    assert parse_response(payload, headers.get(HEADER_LENGTH), LIMIT) == outputs


@pytest.mark.parametrize(
    ("raw", "header", "message"),
    [
        (b"[]", None, "response body must be a JSON object with an 'outputs' list"),
        (b'{"outputs": 1}', None, "'outputs' must be a list of tensors"),
        (b'{"outputs": [{"name": "y", "shape": [1], "datatype": "FP32"}]}', None, "output 'y': needs 'data'"),
        (b'{"outputs": [7]}', None, "outputs[0] must be an object"),
        (b'{"outputs": []}abcd', "15", "the binary section has 4 bytes but the outputs' binary_data_size add up to 0"),
    ],
)
def test_a_malformed_response_is_refused_naming_what_is_wrong(raw: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        parse_response(raw, header, LIMIT)


def test_unknown_requested_output() -> None:
    req = parse_request(
        body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, outputs=[{"name": "nope"}]),
        None,
        LIMIT,
    )
    with pytest.raises(InvalidRequest, match="unknown output"):
        select_outputs([Tensor.from_numpy("y", np.zeros(1, np.float32))], req)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.one_of(st.none(), st.integers(-5, 500).map(str), st.text(max_size=5)))
def test_arbitrary_bodies_only_raise_invalid_request(raw: bytes, header: str | None) -> None:
    with contextlib.suppress(InvalidRequest, TooLarge):
        parse_request(raw, header, LIMIT)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["x", "y", ""]),
                        "shape": st.lists(st.integers(-2, 4), max_size=3) | json_values,
                        "datatype": st.sampled_from(["FP32", "INT8", "UINT64", "BOOL", "BYTES", "BF16", "nope"]),
                        "data": json_values,
                    }
                ),
                max_size=3,
            )
        },
        optional={"outputs": json_values, "parameters": json_values, "id": json_values},
    )
)
def test_structured_junk_only_raises_invalid_request(doc: dict[str, object]) -> None:
    with contextlib.suppress(InvalidRequest, TooLarge):
        parse_request(json.dumps(doc).encode(), None, LIMIT)


# -- non-finite numbers: refused in JSON requests, null in JSON responses, untouched in binary ----------------


def strict_json(raw: bytes) -> object:
    """Parse as a strict JSON parser does: no NaN or Infinity tokens."""

    def refuse(token: str) -> object:
        raise AssertionError(f"the body holds the non-JSON token {token}")

    return json.loads(raw, parse_constant=refuse)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "BF16"])
def test_non_finite_json_input_is_refused_pointing_at_binary(value: str, datatype: str) -> None:
    raw = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "%s", "data": [1, %s]}]}' % (
        datatype.encode(),
        value.encode(),
    )
    with pytest.raises(InvalidRequest, match="send non-finite values in a binary tensor"):
        parse_request(raw, None, LIMIT)


def test_non_finite_binary_input_travels_untouched() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    head = body({"name": "x", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": values.nbytes}})
    req = parse_request(head + values.tobytes(), str(len(head)), LIMIT)
    assert req.inputs[0].data == values.tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_non_finite_json_output_is_null_and_exact_in_binary(dtype: type[np.floating[Any]]) -> None:
    values = np.array([[np.nan, np.inf], [-np.inf, 0.5]], dtype)
    y = Tensor.from_numpy("y", values)
    as_json = parse_request(body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}), None, LIMIT)
    payload, _ = encode_response("m", "1", as_json, select_outputs([y], as_json))
    doc = strict_json(payload)
    assert isinstance(doc, dict)
    assert doc["outputs"][0]["data"] == [None, None, None, 0.5]
    as_binary = parse_request(
        body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, parameters={"binary_data_output": True}),
        None,
        LIMIT,
    )
    payload, headers = encode_response("m", "1", as_binary, select_outputs([y], as_binary))
    assert payload[int(headers[HEADER_LENGTH]) :] == values.tobytes()

"""The OIP v2 gRPC service (gateway/oip_grpc/): the descriptor set is what protoc makes of the proto; a request's
tensors, raw or typed, become the OIP v2 body they stand for, and what cannot be served is refused naming the
field; and end to end, a real ``wasm serve`` driven by ``tritonclient.grpc`` and KServe's
``InferenceGRPCClient``, unchanged (each in a process of its own: tests/oip_grpc_client.py says why), compared
with onnxruntime run directly, with errors as gRPC statuses, the gateway's metrics, and a request the pod tier
serves."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from gateway.codec import HEADER_LENGTH, parse_request
from gateway.http_errors import ERRORS, UNMAPPED
from gateway.oip_grpc.messages import ModelInferRequest, ModelInferResponse
from gateway.oip_grpc.status import CODES, code_of
from gateway.oip_grpc.tensors import request_body
from tests.support import LOOPBACK, Digits, Gateway, metric, onnx_predict, wasm_command
from wasm_host.errors import DeadlineExceeded, InvalidRequest, NotFound, TooManyRequests
from wasm_host.tensors import join_bytes

PROTO_DIR = Path(__file__).resolve().parent.parent / "gateway" / "oip_grpc"
TOKEN = "s3cret"
LABELS = b"zero\none\ntwo\n"
MAX_BODY = 65536


def test_the_checked_in_descriptor_set_is_what_protoc_makes_of_the_proto(tmp_path: Path) -> None:
    from grpc_tools import protoc  # the dev extra's grpcio-tools, with the command the .proto states

    out = tmp_path / "made.binpb"
    args = ["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", "grpc_predict_v2.proto"]
    assert protoc.main(args) == 0
    assert out.read_bytes() == (PROTO_DIR / "grpc_predict_v2.binpb").read_bytes()


# -- a ModelInferRequest as an OIP v2 body ------------------------------------------------------------------------


def typed_request() -> Any:
    request = ModelInferRequest(model_name="m", id="r1")
    x = request.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    x.contents.fp32_contents.extend([0.5, -1.25, 3.0, 1e-3])
    n = request.inputs.add(name="n", datatype="INT64", shape=[3])
    n.contents.int64_contents.extend([-(2**40), 0, 7])
    u = request.inputs.add(name="u", datatype="UINT8", shape=[2])
    u.contents.uint_contents.extend([0, 255])
    s = request.inputs.add(name="s", datatype="BYTES", shape=[2])
    s.contents.bytes_contents.extend([b"h\xc3\xa9", b""])
    request.parameters["tier"].string_param = "wasm"
    return request


def parsed(request: Any) -> Any:
    body, headers = request_body(request, {})
    return parse_request(body, headers[HEADER_LENGTH], 1 << 20)


def test_every_status_an_error_is_answered_with_has_its_grpc_code() -> None:
    statuses = {row.status for row in ERRORS} | {UNMAPPED.status}
    assert statuses <= set(CODES)
    assert code_of(NotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert code_of(TooManyRequests("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED  # its 429, not Unavailable's 503
    assert code_of(DeadlineExceeded("x")) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_typed_and_raw_contents_make_the_same_tensors() -> None:
    typed = typed_request()
    raw = ModelInferRequest()
    raw.CopyFrom(typed)
    for tensor in raw.inputs:
        tensor.ClearField("contents")
    raw.raw_input_contents.extend(
        [
            np.array([0.5, -1.25, 3.0, 1e-3], "<f4").tobytes(),
            np.array([-(2**40), 0, 7], "<i8").tobytes(),
            bytes([0, 255]),
            join_bytes([b"h\xc3\xa9", b""]),
        ]
    )
    a, b = parsed(typed), parsed(raw)
    assert a.inputs == b.inputs
    assert [(t.name, t.datatype, t.shape) for t in a.inputs] == [
        ("x", "FP32", (2, 2)),
        ("n", "INT64", (3,)),
        ("u", "UINT8", (2,)),
        ("s", "BYTES", (2,)),
    ]
    assert np.frombuffer(a.inputs[1].data, "<i8").tolist() == [-(2**40), 0, 7]
    assert a.id == "r1"
    assert a.parameters["tier"] == "wasm"  # the routing hint travels as OIP v2's parameter
    assert a.binary_default  # every output is answered in binary, for raw_output_contents


def test_a_value_out_of_its_datatypes_range_is_refused_naming_the_field() -> None:
    request = ModelInferRequest()
    x = request.inputs.add(name="x", datatype="INT8", shape=[2])
    x.contents.int_contents.extend([1, 300])
    with pytest.raises(InvalidRequest, match=r"input 'x': a value in contents.int_contents is out of range for INT8"):
        request_body(request, {})


def test_a_wrong_count_of_typed_values_names_the_field_its_datatype_is_read_from() -> None:
    request = ModelInferRequest()
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    x.contents.int_contents.extend([1, 2, 3])  # FP32 is read from fp32_contents
    with pytest.raises(InvalidRequest, match=r"0 values in contents.fp32_contents for shape \[1, 3\] \(3 elements"):
        request_body(request, {})


def test_fp16_has_no_typed_contents_and_is_asked_for_raw() -> None:
    request = ModelInferRequest()
    request.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidRequest, match="FP16 has no typed contents; send it in raw_input_contents"):
        request_body(request, {})


def test_raw_contents_must_match_the_inputs_in_count_and_size() -> None:
    request = ModelInferRequest()
    request.inputs.add(name="a", datatype="FP32", shape=[2])
    request.inputs.add(name="b", datatype="FP32", shape=[2])
    request.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(InvalidRequest, match="raw_input_contents has 1 entries for 2 inputs"):
        request_body(request, {})
    request.raw_input_contents.append(b"\0" * 7)
    with pytest.raises(InvalidRequest, match=r"input 'b': raw_input_contents has 7 bytes; shape \[2\] of FP32 takes 8"):
        request_body(request, {})


# -- end to end -------------------------------------------------------------------------------------------------


def typed_model() -> bytes:
    """``doubled = a + a`` (INT64 [n]) and ``same = b`` (UINT8 [m]): the integer types on the wire."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "a"], ["doubled"]), helper.make_node("Identity", ["b"], ["same"])],
        "typed",
        [
            helper.make_tensor_value_info("a", onnx.TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("b", onnx.TensorProto.UINT8, ["m"]),
        ],
        [
            helper.make_tensor_value_info("doubled", onnx.TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("same", onnx.TensorProto.UINT8, ["m"]),
        ],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


@pytest.fixture(scope="module")
def grpc_gateway(
    tmp_path_factory: pytest.TempPathFactory, digits: Digits, guests: dict[str, Path]
) -> Iterator[Gateway]:
    """A ``wasm serve`` with gRPC, a small request limit, and functions of every datatype the tests send:
    ``digits`` (FP32 in; INT64 and FP32 out), ``typed`` (INT64, UINT8), ``reader`` (BYTES), ``secret`` (digits
    behind an inference token) and ``digits-pod`` (digits on the pod tier)."""
    tmp = tmp_path_factory.mktemp("grpc")
    env = {"WASMGATE_MAX_BODY_BYTES": str(MAX_BODY), "WASMGATE_POD_HOLD_TIMEOUT_S": "60"}
    gw = Gateway(tmp / "data", tmp / "gateway.log", env=env, grpc=True)
    gw.start()
    (tmp / "typed.onnx").write_bytes(typed_model())
    (tmp / "labels.txt").write_bytes(LABELS)
    pushes = [
        (str(digits.path), "--name", "digits"),
        (str(tmp / "typed.onnx"), "--name", "typed"),
        (str(guests["read_file"]), "--name", "reader", "--file", f"labels={tmp / 'labels.txt'}"),
        (str(digits.path), "--name", "secret", "--inference-token", TOKEN),
        (str(digits.path), "--name", "digits-pod", "--tier", "pod", "--no-mask-cold-start"),
    ]
    for push in pushes:
        r = gw.cli("push", *push)
        assert r.returncode == 0, r.stderr
    yield gw
    gw.stop()


def run_client(client: str, gateway: Gateway, calls: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """Make ``calls`` with ``client`` (tests/oip_grpc_client.py) in a process of its own; one result per call."""
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    args = [client, gateway.grpc_address, str(tmp_path / "calls.json"), str(tmp_path / "results.json")]
    done = subprocess.run(
        [sys.executable, "-m", "tests.oip_grpc_client", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == len(calls)
    return results


def fp32(name: str, x: np.ndarray) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}


def infer(model: str, *inputs: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"op": "infer", "model": model, "inputs": list(inputs), **more}


TYPED_INPUTS = (
    {"name": "a", "datatype": "INT64", "shape": [3], "data": [1, -(2**40), 7]},
    {"name": "b", "datatype": "UINT8", "shape": [2], "data": [0, 255]},
)
READ_LABELS = {"name": "alias", "datatype": "BYTES", "shape": [1], "data": ["labels"]}


def error(result: dict[str, Any]) -> str:
    assert "error" in result, result
    code: str = result["error"]["code"]
    return code


def assert_digits(result: dict[str, Any], model: bytes, x: np.ndarray) -> None:
    assert "outputs" in result, result
    labels, probs = onnx_predict(model, x)
    out = result["outputs"]
    assert out["label"]["datatype"] == "INT64"
    assert out["label"]["data"] == labels.tolist()
    assert out["probabilities"]["shape"] == [len(x), 10]
    np.testing.assert_array_equal(np.array(out["probabilities"]["data"], np.float32).reshape(-1, 10), probs)


def assert_typed(result: dict[str, Any]) -> None:
    assert result["outputs"] == {
        "doubled": {"datatype": "INT64", "shape": [3], "data": [2, -(2**41), 14]},
        "same": {"datatype": "UINT8", "shape": [2], "data": [0, 255]},
    }


def assert_labels(result: dict[str, Any]) -> None:
    assert result["outputs"] == {"contents": {"datatype": "BYTES", "shape": [1], "data": [LABELS.decode()]}}


def requests_total(gateway: Gateway, **labels: str) -> float:
    return metric(httpx.get(f"{gateway.url}/metrics").text, "wasmgate_requests_total", **labels)


@pytest.mark.e2e
def test_tritonclient_grpc_unchanged_health_metadata_every_datatype_and_errors_as_statuses(
    grpc_gateway: Gateway, digits: Digits, tmp_path: Path
) -> None:
    x = digits.x_test[:5]
    too_big = np.zeros((MAX_BODY // 256 + 1, 64), np.float32)  # 256 bytes a row: past max_body_bytes
    served, refused = (requests_total(grpc_gateway, function="digits", status=s) for s in ("200", "400"))
    calls = [
        {"op": "live"},
        {"op": "ready"},
        {"op": "server_metadata"},
        {"op": "model_ready", "model": "digits"},
        {"op": "model_metadata", "model": "digits"},
        infer("digits", fp32("input", x)),
        infer("digits", fp32("input", x), outputs=["label"]),
        infer("typed", *TYPED_INPUTS),
        infer("reader", READ_LABELS),
        infer("nope", fp32("input", x)),
        infer("digits", fp32("input", x.reshape(10, 32))),
        infer("secret", fp32("input", x)),
        {"op": "model_metadata", "model": "secret"},
        infer("secret", fp32("input", x), headers={"authorization": "Bearer wrong"}),
        infer("secret", fp32("input", x), headers={"authorization": f"Bearer {TOKEN}"}),
        infer("digits", fp32("input", too_big)),
        infer("reader", {**READ_LABELS, "data": ["../etc"]}),
        infer("digits", fp32("input", x), version="1", id="req-7"),
        infer("digits", fp32("input", x), version="2"),
        infer("digits", fp32("input", x), headers={"x-wasmgate-tier": "gpu"}),
        infer("digits", fp32("input", x), parameters={"tier": "gpu"}),
    ]
    results = run_client("triton", grpc_gateway, calls, tmp_path)
    live, ready, server, model_ready, metadata, *answers = results
    assert live == {"value": True}
    assert ready == {"value": True}
    assert server["value"]["name"] == "wasmgate"
    assert model_ready == {"value": True}
    http_metadata = httpx.get(f"{grpc_gateway.url}/v2/models/digits").json()
    assert metadata["value"]["name"] == "digits"
    assert metadata["value"]["versions"] == ["1"]
    assert metadata["value"]["platform"] == "onnxruntime_onnx"
    # The same signature as HTTP's (proto3's JSON writes int64 as strings).
    for side in ("inputs", "outputs"):
        got = [{**t, "shape": [int(d) for d in t["shape"]]} for t in metadata["value"][side]]
        assert got == http_metadata[side]
    full, label_only, typed, labels, unknown, bad_shape, *more = answers
    no_token, no_token_metadata, wrong, right, big, bad, versioned, no_version, bad_hint, bad_parameter = more
    assert_digits(full, digits.model, x)
    assert list(label_only["outputs"]) == ["label"]
    assert_typed(typed)
    assert_labels(labels)
    assert error(unknown) == "NOT_FOUND"
    assert "'nope' not found" in unknown["error"]["message"]
    assert error(bad_shape) == "INVALID_ARGUMENT"
    assert "takes shape [-1, 64]" in bad_shape["error"]["message"]
    assert error(no_token) == "UNAUTHENTICATED"
    assert "Authorization: Bearer" in no_token["error"]["message"]
    assert error(no_token_metadata) == "UNAUTHENTICATED"
    assert error(wrong) == "UNAUTHENTICATED"
    assert_digits(right, digits.model, x)
    assert error(big) == "RESOURCE_EXHAUSTED"
    assert error(bad) == "INVALID_ARGUMENT"  # the guest's own refusal (400), as a status
    assert_digits(versioned, digits.model, x)
    assert (versioned["id"], versioned["version"]) == ("req-7", "1")
    assert error(no_version) == "NOT_FOUND"
    assert "has no version '2' (current: 1)" in no_version["error"]["message"]
    # The routing metadata and parameters reach the dispatch as HTTP's headers and parameters do.
    assert error(bad_hint) == "INVALID_ARGUMENT"
    assert "x-wasmgate-tier 'gpu' must be one of wasm, pod" in bad_hint["error"]["message"]
    assert error(bad_parameter) == "INVALID_ARGUMENT"
    assert "parameters.tier 'gpu' must be one of wasm, pod" in bad_parameter["error"]["message"]
    # Counted as HTTP's requests are: three answered, three refused for their shape or routing (the unknown
    # function, the missing token and the unknown version are refused before they are counted, as on HTTP).
    assert requests_total(grpc_gateway, function="digits", status="200") == served + 3
    assert requests_total(grpc_gateway, function="digits", status="400") == refused + 3


@pytest.mark.e2e
def test_kserve_grpc_client_unchanged_with_raw_and_typed_contents(
    grpc_gateway: Gateway, digits: Digits, tmp_path: Path
) -> None:
    x = digits.x_test[5:12]
    calls = [
        {"op": "live"},
        {"op": "ready"},
        {"op": "model_ready", "model": "typed"},
        infer("digits", fp32("input", x)),
        infer("digits", fp32("input", x), raw=True),
        infer("typed", *TYPED_INPUTS),
        infer("typed", *TYPED_INPUTS, raw=True),
        infer("reader", READ_LABELS),
        infer("reader", READ_LABELS, raw=True),
        infer("secret", fp32("input", x), headers={"authorization": f"Bearer {TOKEN}"}),
        infer("nope", fp32("input", x)),
        infer("digits", fp32("input", x.reshape(-1, 32))),
        infer("secret", fp32("input", x)),
        {"op": "model_ready", "model": "nope"},
    ]
    live, ready, model_ready, *answers = run_client("kserve", grpc_gateway, calls, tmp_path)
    assert (live, ready, model_ready) == ({"value": True}, {"value": True}, {"value": True})
    typed_digits, raw_digits, typed, raw_typed, labels, raw_labels, secret, *errors = answers
    for result in (typed_digits, raw_digits, secret):
        assert_digits(result, digits.model, x)
    for result in (typed, raw_typed):
        assert_typed(result)
    for result in (labels, raw_labels):
        assert_labels(result)
    assert [error(e) for e in errors] == ["NOT_FOUND", "INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND"]


@pytest.mark.e2e
def test_a_pod_tier_function_is_forwarded_to_a_runner_and_says_where_it_ran(
    grpc_gateway: Gateway, digits: Digits, tmp_path: Path
) -> None:
    x = digits.x_test[:3]
    before = requests_total(grpc_gateway, function="digits-pod", backend="pod", status="200")
    calls = [infer("digits-pod", fp32("input", x)), infer("digits-pod", fp32("input", x.reshape(-1, 32)))]
    result, refused_there = run_client("triton", grpc_gateway, calls, tmp_path)
    assert_digits(result, digits.model, x)
    assert requests_total(grpc_gateway, function="digits-pod", backend="pod", status="200") == before + 1
    # The runner's own error answer (it checks the signature), raised again as the status it stands for.
    assert error(refused_there) == "INVALID_ARGUMENT"
    assert "takes shape [-1, 64]" in refused_there["error"]["message"]
    assert requests_total(grpc_gateway, function="digits-pod", backend="pod", status="400") == 1
    # Where it ran is trailing metadata (the clients above do not show it: a plain gRPC call here does).
    request = ModelInferRequest(model_name="digits-pod", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    with grpc.insecure_channel(grpc_gateway.grpc_address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=ModelInferRequest.SerializeToString,
            response_deserializer=ModelInferResponse.FromString,
        )
        response, done = call.with_call(request, timeout=120)
        where = dict(done.trailing_metadata())
        assert [o.name for o in response.outputs] == ["label", "probabilities"]
        assert where["x-wasmgate-tier"] == "pod"
        assert where["x-wasmgate-replica"].startswith("runner-")
        # A call of the service the gateway does not serve.
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics")(b"", timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.e2e
def test_a_grpc_port_in_use_or_equal_to_the_http_port_fails_the_start_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*wasm_command(), "serve", "--port", "0", "--grpc-port", str(port), "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert f"cannot serve gRPC on {LOOPBACK}:{port} (setting grpc_port; 0 turns it off)" in done.stderr
    assert "Address already in use" in done.stderr
    same = subprocess.run(
        [*wasm_command(), "serve", "--port", "18123", "--grpc-port", "18123", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert same.returncode == 2
    assert "error: WASMGATE_GRPC_PORT=18123 is also the HTTP port" in same.stderr

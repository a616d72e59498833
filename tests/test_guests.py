"""The shipped guests (built-in passthrough and digits_topk) against the real host: correct answers, and a
clean status 1 (never a trap) for malformed request buffers."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from tests.support import ENCODER_INPUTS, ENCODER_OUTPUTS, Digits, Encoder, encoder_inputs, onnx_predict
from wasm_host.abi import MAGIC, STATUS_INVALID, encode_request, unpack_result
from wasm_host.errors import GuestFailure
from wasm_host.guest import GuestInstance
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef
from wasm_host.passthrough import PASSTHROUGH_ALIAS, passthrough_module, passthrough_signature
from wasm_host.tensors import Tensor, TensorSpec


@pytest.fixture
def passthrough(host: Host, digits: Digits) -> GuestInstance:
    wasm = passthrough_module()
    refs = {PASSTHROUGH_ALIAS: ModelRef(digits.digest, digits.path)}
    return host.prepare(wasm, hashlib.sha256(wasm).hexdigest(), refs).instantiate()


@pytest.fixture
def top3(host: Host, digits: Digits, guests: dict[str, Path]) -> GuestInstance:
    wasm = guests["digits_topk"].read_bytes()
    refs = {"digits": ModelRef(digits.digest, digits.path)}
    return host.prepare(wasm, hashlib.sha256(wasm).hexdigest(), refs).instantiate()


def raw_handle(inst: GuestInstance, request: bytes) -> tuple[int, bytes]:
    ptr = inst.call("alloc", len(request)) & 0xFFFFFFFF
    assert ptr != 0
    inst.memory.write(ptr, request)
    status, out, n = unpack_result(inst.call("handle", ptr, len(request)))
    return status, inst.memory.read(out, n)


def test_passthrough_matches_onnxruntime_across_batch_sizes(passthrough: GuestInstance, digits: Digits) -> None:
    graph = passthrough.nn.backend.load_ref(ModelRef(digits.digest, digits.path))
    _, outputs = passthrough_signature(graph)
    for n in (1, 7, 64, len(digits.x_test)):
        x = digits.x_test[:n]
        got = {t.name: t.to_numpy() for t in passthrough.handle([Tensor.from_numpy("input", x)], outputs)}
        labels, probs = onnx_predict(digits.model, x)
        np.testing.assert_array_equal(got["label"], labels)
        np.testing.assert_array_equal(got["probabilities"], probs)
    assert passthrough.healthy


def serve_bare(host: Host, model: bytes, directory: Path) -> tuple[GuestInstance, list[TensorSpec]]:
    """The passthrough serving ``model`` (written into ``directory``) as a bare push does, and the output specs
    its requests carry."""
    wasm = passthrough_module()
    digest = hashlib.sha256(model).hexdigest()
    path = directory / f"{digest}.onnx"
    path.write_bytes(model)
    ref = ModelRef(digest, path)
    inst = host.prepare(wasm, hashlib.sha256(wasm).hexdigest(), {PASSTHROUGH_ALIAS: ref}).instantiate()
    _, outputs = passthrough_signature(inst.nn.backend.load_ref(ref))
    return inst, outputs


def test_passthrough_answers_outputs_with_several_dynamic_dims_in_their_actual_shape(
    host: Host, encoder: Encoder, tmp_path: Path
) -> None:
    inst, outputs = serve_bare(host, encoder.model, tmp_path)
    assert [s.shape for s in outputs] == [(-1, -1, 16), (-1, 16)]  # two unknown dims: the host cannot infer them
    for batch, sequence in ((2, 5), (3, 7), (1, 1)):
        x = encoder_inputs(batch, sequence)
        got = {t.name: t.to_numpy() for t in inst.handle([Tensor.from_numpy(k, v) for k, v in x.items()], outputs)}
        want = encoder.expected(x)
        assert got["last_hidden_state"].shape == (batch, sequence, 16)
        assert got["pooler_output"].shape == (batch, 16)
        for name in ENCODER_OUTPUTS:
            np.testing.assert_array_equal(got[name], want[name])  # the same session math: exact
    assert inst.healthy


def test_passthrough_fails_clearly_on_an_output_of_another_rank_than_its_spec(host: Host, tmp_path: Path) -> None:
    # The graph declares output "y" as rank 3; a Reshape to a shape given at run time leaves onnxruntime (and the
    # saved optimized graph) nothing better to report, so the spec keeps rank 3 while the actual output has two.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        "misdeclared",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("s", onnx.TensorProto.INT64, ["k"]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["a", "b", "c"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    inst, outputs = serve_bare(host, model, tmp_path)
    assert [len(s.shape) for s in outputs] == [3]
    x = Tensor.from_numpy("x", np.zeros((2, 4), np.float32))
    shape = Tensor.from_numpy("s", np.array([2, 4], np.int64))
    with pytest.raises(GuestFailure, match="a model output has a different rank than its output spec"):
        inst.handle([x, shape], outputs)


def test_top3_signature_and_results(top3: GuestInstance, digits: Digits) -> None:
    signature = top3.signature()
    assert signature is not None
    inputs, outputs = signature
    assert [(s.name, s.datatype, s.shape) for s in inputs] == [("images", "UINT8", (-1, 64))]
    assert [s.name for s in outputs] == ["labels", "probabilities"]
    raw = np.rint(digits.x_test[:10] * 16).astype(np.uint8)
    got = {t.name: t.to_numpy() for t in top3.handle([Tensor.from_numpy("images", raw)], outputs)}
    _, probs = onnx_predict(digits.model, raw.astype(np.float32) / 16)
    np.testing.assert_array_equal(got["labels"], np.argsort(-probs, axis=1, kind="stable")[:, :3])


def test_sentence_embedding_pools_the_token_embeddings_it_returns_with_their_actual_dims(
    host: Host, encoder: Encoder, guests: dict[str, Path]
) -> None:
    # The C example built on the SDK's wg_response_add_nn_output_actual and wg_nn_get_output_dims.
    wasm = guests["sentence_embedding"].read_bytes()
    refs = {"encoder": ModelRef(encoder.digest, encoder.path)}
    inst = host.prepare(wasm, hashlib.sha256(wasm).hexdigest(), refs).instantiate()
    signature = inst.signature()
    assert signature is not None
    inputs, outputs = signature
    assert [s.name for s in inputs] == list(ENCODER_INPUTS)
    for batch, sequence in ((2, 5), (3, 7)):
        x = encoder_inputs(batch, sequence)
        got = {t.name: t.to_numpy() for t in inst.handle([Tensor.from_numpy(k, x[k]) for k in ENCODER_INPUTS], outputs)}
        tokens = encoder.expected(x)["last_hidden_state"]
        np.testing.assert_array_equal(got["token_embeddings"], tokens)
        mask = x["attention_mask"][:, :, None].astype(np.float64)
        pooled = (tokens * mask).sum(axis=1) / mask.sum(axis=1)
        assert got["sentence_embedding"].shape == (batch, 16)
        # float32 sums in the guest against float64 here
        np.testing.assert_allclose(got["sentence_embedding"], pooled, rtol=1e-5, atol=1e-6)
    assert inst.healthy


requests = st.one_of(
    st.binary(max_size=300),
    # A valid header followed by junk, so the fuzzing reaches the entry parser.
    st.tuples(st.integers(0, 70), st.integers(0, 70), st.binary(max_size=300)).map(
        lambda t: struct.pack("<IIII", MAGIC, t[0], t[1], 0) + t[2]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests)
def test_malformed_requests_never_trap_the_passthrough(passthrough: GuestInstance, request: bytes) -> None:
    status, _ = raw_handle(passthrough, request)
    assert passthrough.healthy
    assert status != 0 or request[:4] == struct.pack("<I", MAGIC)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests)
def test_malformed_requests_never_trap_top3(top3: GuestInstance, request: bytes) -> None:
    raw_handle(top3, request)
    assert top3.healthy


def test_truncated_valid_request_is_status_1(passthrough: GuestInstance, digits: Digits) -> None:
    request = encode_request([Tensor.from_numpy("input", digits.x_test[:2])], [])
    for cut in (3, 16, 20, 40, len(request) - 9):
        status, message = raw_handle(passthrough, request[:cut])
        assert status == STATUS_INVALID, cut
        assert message

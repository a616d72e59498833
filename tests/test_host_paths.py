"""The two host paths (wasm_host.compiled) give the same answers and the same errors, word for word: the shipped
guests, a bare model whose run fails inside onnxruntime, and every hostile guest's misbehaviour, side by side
on a Python host and a compiled one. (The tests that take the ``host`` fixture run on both paths as well.)"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from tests.support import Digits, Encoder, encoder_inputs, require_compiled_host
from wasm_host.abi import decode_response, encode_request
from wasm_host.engine import SandboxLimits
from wasm_host.errors import GuestFailure, WasmgateError
from wasm_host.guest import FunctionImage
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef
from wasm_host.passthrough import PASSTHROUGH_ALIAS, passthrough_module, passthrough_signature
from wasm_host.tensors import DTYPES, DType, Tensor, TensorSpec

#: Hostile fixtures served in process, with the request cases each one answers (guest_modules/hostile).
HOSTILE_CASES = {
    "trap": range(10),
    "abi_oob": range(9),
    "nn_abuse": range(28),
    "sleeper": range(4),
    "infinite_loop": range(2),
    "memory_bomb": range(2),
    "recursion": range(2),
    "alloc_misaligned": range(2),
    "alloc_oob": range(2),
    "huge_response": range(2),
}

Outcome = tuple[str, object]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[dict[str, Host]]:
    require_compiled_host("compiled")
    limits = SandboxLimits(deadline_ms=200, memory_limit_bytes=16 * 1024 * 1024)
    made = {path: Host(limits, tmp_path / path, host_path=path).start() for path in ("python", "compiled")}
    assert {h.host_path for h in made.values()} == {"python", "compiled"}, "the compiled host did not load"
    yield made
    for h in made.values():
        h.close()


def outcome(image: FunctionImage, inputs: list[Tensor], outputs: list[TensorSpec]) -> Outcome:
    """What one request to a fresh instance gives: its tensors, or its error's type and message."""
    try:
        inst = image.instantiate()
        answer = inst.handle(inputs, outputs)
    except WasmgateError as exc:
        return type(exc).__name__, str(exc)
    return "answer", [(t.name, t.datatype, t.shape, t.data) for t in answer]


def both(hosts: dict[str, Host], wasm: bytes, models: dict[str, ModelRef]) -> dict[str, FunctionImage]:
    digest = hashlib.sha256(wasm).hexdigest()
    return {path: h.prepare(wasm, digest, models) for path, h in hosts.items()}


def assert_same(images: dict[str, FunctionImage], inputs: list[Tensor], outputs: list[TensorSpec]) -> Outcome:
    python, compiled = (outcome(images[p], inputs, outputs) for p in ("python", "compiled"))
    assert compiled == python
    return python


def bare(hosts: dict[str, Host], model: bytes, tmp_path: Path) -> tuple[dict[str, FunctionImage], list[TensorSpec]]:
    digest = hashlib.sha256(model).hexdigest()
    path = tmp_path / f"{digest}.onnx"
    path.write_bytes(model)
    ref = ModelRef(digest, path)
    images = both(hosts, passthrough_module(), {PASSTHROUGH_ALIAS: ref})
    _, outputs = passthrough_signature(hosts["python"].backend.load_ref(ref))
    return images, outputs


def test_the_shipped_guests_answer_alike(hosts: dict[str, Host], digits: Digits, guests: dict[str, Path]) -> None:
    refs = {"digits": ModelRef(digits.digest, digits.path)}
    topk = both(hosts, guests["digits_topk"].read_bytes(), refs)
    passthrough = both(hosts, passthrough_module(), {PASSTHROUGH_ALIAS: refs["digits"]})
    _, outputs = passthrough_signature(hosts["python"].backend.load_ref(refs["digits"]))
    for n in (1, 5, 64):
        images = np.rint(digits.x_test[:n] * 16).astype(np.uint8)
        assert assert_same(topk, [Tensor.from_numpy("images", images)], [])[0] == "answer"
        assert assert_same(passthrough, [Tensor.from_numpy("input", digits.x_test[:n])], outputs)[0] == "answer"
    # Refused inputs: the wrong datatype and the wrong feature count, each in the guest's and the host's words.
    for wrong in (digits.x_test[:2].astype(np.float64), digits.x_test[:2, :32]):
        kind, message = assert_same(passthrough, [Tensor.from_numpy("input", wrong)], outputs)
        assert kind == "InvalidRequest"
        assert "(wasi-nn: set_input: input 0 ('input') takes " in str(message)


def test_outputs_with_dynamic_dims_answer_alike(hosts: dict[str, Host], encoder: Encoder, tmp_path: Path) -> None:
    images, outputs = bare(hosts, encoder.model, tmp_path)
    for batch, sequence in ((2, 5), (1, 1)):
        x = [Tensor.from_numpy(name, value) for name, value in encoder_inputs(batch, sequence).items()]
        assert assert_same(images, x, outputs)[0] == "answer"


def test_one_instance_answers_alike_as_its_input_shapes_change(
    hosts: dict[str, Host], encoder: Encoder, tmp_path: Path
) -> None:
    """One instance per path, requests in turn: the compiled host's set_input reuses its checks and tensor for an
    input described as last time, and must notice every change, even one that keeps the byte count
    ([2, 6] then [3, 4] tokens)."""
    images, outputs = bare(hosts, encoder.model, tmp_path)
    instances = {path: image.instantiate() for path, image in images.items()}
    for batch, sequence in ((2, 6), (2, 6), (3, 4), (3, 4), (1, 1), (2, 6)):
        x = [Tensor.from_numpy(name, value) for name, value in encoder_inputs(batch, sequence).items()]
        answers = {
            path: [(t.name, t.shape, t.data) for t in inst.handle(x, outputs)] for path, inst in instances.items()
        }
        assert answers["compiled"] == answers["python"]
        assert answers["python"][0][1][:2] == (batch, sequence)


def test_a_run_that_onnxruntime_refuses_fails_alike(hosts: dict[str, Host], tmp_path: Path) -> None:
    """A MatMul whose inner dims disagree only at run time: onnxruntime's own error, worded the same."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", "k"])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    images, outputs = bare(hosts, model.SerializeToString(), tmp_path)
    good = [Tensor.from_numpy("x", np.ones((2, 4), np.float32))]
    assert assert_same(images, good, outputs)[0] == "answer"
    kind, message = assert_same(images, [Tensor.from_numpy("x", np.ones((2, 5), np.float32))], outputs)
    assert kind == "GuestFailure"
    assert "(wasi-nn: compute: onnxruntime: [ONNXRuntimeError] : " in str(message)


def test_a_stored_model_on_the_compiled_host_holds_one_session_until_python_runs_it(
    hosts: dict[str, Host], digits: Digits
) -> None:
    """Requests run on the compiled host's session, so the Python one is let go once its descriptions are read
    (the weights held once); a Python import that runs the graph anyway (a guest computing outside a request)
    gets it made again, with the same answers."""
    ref = ModelRef(digits.digest, digits.path)
    graph = hosts["compiled"].backend.load_ref(ref)
    assert graph.native is not None
    assert graph.session is None
    assert graph.providers == ["CPUExecutionProvider"]
    x = digits.x_test[:5].astype(np.float32)
    want = hosts["python"].backend.load_ref(ref).run([x])
    got = graph.run([x])
    assert graph.session is not None
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("fixture", sorted(HOSTILE_CASES))
def test_hostile_guests_fail_alike(
    hosts: dict[str, Host], digits: Digits, hostile_guests: dict[str, Path], fixture: str
) -> None:
    images = both(hosts, hostile_guests[fixture].read_bytes(), {"digits": ModelRef(digits.digest, digits.path)})
    for case in HOSTILE_CASES[fixture]:
        assert_same(images, [Tensor.from_numpy("case", np.array([case], np.int32))], [])


def test_without_the_extension_auto_serves_on_python_with_a_warning_and_compiled_is_refused(tmp_path: Path) -> None:
    """A machine where the extension was not built (no C compiler at install): a fresh interpreter that cannot
    import it."""
    script = f"""
import logging, sys
sys.modules["wasm_host._chost"] = None  # what an install without a C compiler leaves: no extension
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from pathlib import Path
from wasm_host.engine import SandboxLimits
from wasm_host.errors import Unavailable
from wasm_host.host import Host
print("auto:", Host(SandboxLimits(), Path({str(tmp_path)!r}) / "a", host_path="auto").host_path)
try:
    Host(SandboxLimits(), Path({str(tmp_path)!r}) / "c", host_path="compiled")
except Unavailable as exc:
    print("compiled:", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert "auto: python" in done.stdout
    assert "compiled: the compiled host cannot be loaded" in done.stdout
    assert done.stderr.count("WARNING the compiled host cannot be loaded") == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=3), max_size=3),
    codes=st.lists(st.sampled_from([d for d in DTYPES.values() if d.size]), min_size=3, max_size=3),
    unknown=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
)
def test_the_compiled_response_parser_agrees_with_decode_response(
    hosts: dict[str, Host],
    shapes: list[list[int]],
    codes: list[DType],
    unknown: list[int],
    flips: list[tuple[int, int]],
) -> None:
    """Where the compiled host parses a response itself, it reads exactly what decode_response reads; anything
    else (damaged, BYTES, an unknown dim that does not resolve) it leaves to decode_response."""
    native = hosts["compiled"].nn_host.native
    assert native is not None
    tensors = []
    for i, (shape, d) in enumerate(zip(shapes, codes, strict=False)):
        nbytes = d.size * int(np.prod(shape))
        # One dim sent as unknown (0xFFFFFFFF), for the reader to resolve from the data's length.
        sent = tuple(-1 if k == unknown[i] else n for k, n in enumerate(shape))
        tensors.append(Tensor(f"t{i}", d.name, sent, bytes(k % 251 for k in range(nbytes))))
    body = bytearray(encode_request(tensors, []))
    for at, value in flips:
        if at < len(body):
            body[at] = value
    parsed = native.parse(bytes(body))
    resolvable = all(0 not in (n for n, d in zip(t.shape, shape, strict=True) if n != -1) or -1 not in t.shape
                     for t, shape in zip(tensors, shapes, strict=False))  # fmt: skip
    if not flips and resolvable:
        assert parsed is not None  # a regular response is the compiled host's to read
    if parsed is not None:
        assert [Tensor(*t) for t in parsed] == decode_response(bytes(body))
    else:
        with contextlib.suppress(GuestFailure):
            decode_response(bytes(body))

"""The WASI-NN host, driven by an inline WAT guest that forwards raw arguments to each import.

These exercise the host's promises directly: every failure is an errno (never a trap or a Python exception),
every pointer is bounds-checked, and models load only from the function's allowlist.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tests.support import ENCODER_INPUTS, Digits, Encoder, encoder_inputs, onnx_predict, prepare_wat
from wasm_host.guest import GuestInstance
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef
from wasm_host.wasi_nn import NnErrno

PROBE = """
(module
  (import "wasi_ephemeral_nn" "load" (func $load (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "load_by_name" (func $lbn (param i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "init_execution_context" (func $init (param i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "set_input" (func $set (param i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "compute" (func $compute (param i32) (result i32)))
  (import "wasi_ephemeral_nn" "get_output" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasmgate_nn" "get_output_dims" (func $dims (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
  (func (export "load") (param i32 i32 i32 i32 i32) (result i32)
    (call $load (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "load_by_name") (param i32 i32 i32) (result i32)
    (call $lbn (local.get 0) (local.get 1) (local.get 2)))
  (func (export "init_execution_context") (param i32 i32) (result i32)
    (call $init (local.get 0) (local.get 1)))
  (func (export "set_input") (param i32 i32 i32) (result i32)
    (call $set (local.get 0) (local.get 1) (local.get 2)))
  (func (export "compute") (param i32) (result i32) (call $compute (local.get 0)))
  (func (export "get_output") (param i32 i32 i32 i32 i32) (result i32)
    (call $get (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "get_output_dims") (param i32 i32 i32 i32 i32) (result i32)
    (call $dims (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
)
"""

NAME_AT, OUT_AT, TENSOR_AT, DIMS_AT, DATA_AT, RESULT_AT = 0, 64, 128, 192, 1024, 65536 * 2
MEM = 4 * 65536


@pytest.fixture
def probe(host: Host, digits: Digits, encoder: Encoder) -> GuestInstance:
    models = {"digits": ModelRef(digits.digest, digits.path), "encoder": ModelRef(encoder.digest, encoder.path)}
    return prepare_wat(host, PROBE, models).instantiate()


def u32(inst: GuestInstance, ptr: int) -> int:
    return inst.memory.read_u32s(ptr, 1)[0]


def load_digits_graph(inst: GuestInstance) -> int:
    inst.memory.write(NAME_AT, b"digits")
    assert inst.call("load_by_name", NAME_AT, 6, OUT_AT) == NnErrno.SUCCESS
    return u32(inst, OUT_AT)


def put_tensor(inst: GuestInstance, dims: list[int], ttype: int, data: bytes, data_len: int | None = None) -> None:
    inst.memory.write(DIMS_AT, struct.pack(f"<{len(dims)}I", *dims))
    inst.memory.write(DATA_AT, data)
    n = len(data) if data_len is None else data_len
    inst.memory.write(TENSOR_AT, struct.pack("<IIB3xII", DIMS_AT, len(dims), ttype, DATA_AT, n))


def new_context(inst: GuestInstance) -> int:
    graph = load_digits_graph(inst)
    assert inst.call("init_execution_context", graph, OUT_AT) == NnErrno.SUCCESS
    return u32(inst, OUT_AT)


def test_full_inference_matches_onnxruntime(probe: GuestInstance, digits: Digits) -> None:
    ctx = new_context(probe)
    x = digits.x_test[:5]
    put_tensor(probe, [5, 64], 1, x.tobytes())
    assert probe.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.SUCCESS
    assert probe.call("compute", ctx) == NnErrno.SUCCESS
    assert probe.call("get_output", ctx, 1, RESULT_AT, 4096, OUT_AT) == NnErrno.SUCCESS
    written = u32(probe, OUT_AT)
    assert written == 5 * 10 * 4
    got = np.frombuffer(probe.memory.read(RESULT_AT, written), dtype="<f4").reshape(5, 10)
    np.testing.assert_array_equal(got, onnx_predict(digits.model, x)[1])


def test_load_from_guest_bytes_shares_the_session(probe: GuestInstance, digits: Digits, host: Host) -> None:
    by_name = load_digits_graph(probe)
    probe.memory.write(DATA_AT, digits.model)
    probe.memory.write(TENSOR_AT, struct.pack("<II", DATA_AT, len(digits.model)))
    assert probe.call("load", TENSOR_AT, 1, 1, 0, OUT_AT) == NnErrno.SUCCESS
    by_bytes = u32(probe, OUT_AT)
    assert by_bytes != by_name
    assert probe.nn.graphs[by_bytes] is probe.nn.graphs[by_name]  # one session per model digest


@pytest.mark.parametrize(
    ("encoding", "builders", "errno"),
    [(0, 1, NnErrno.INVALID_ENCODING), (2, 1, NnErrno.INVALID_ENCODING), (1, 2, NnErrno.INVALID_ARGUMENT)],
)
def test_load_rejects_other_encodings_and_builder_counts(
    probe: GuestInstance, digits: Digits, encoding: int, builders: int, errno: NnErrno
) -> None:
    probe.memory.write(DATA_AT, digits.model)
    probe.memory.write(TENSOR_AT, struct.pack("<II", DATA_AT, len(digits.model)) * 2)
    assert probe.call("load", TENSOR_AT, builders, encoding, 0, OUT_AT) == errno


def test_load_garbage_bytes_is_a_runtime_error(probe: GuestInstance) -> None:
    probe.memory.write(DATA_AT, b"definitely not onnx")
    probe.memory.write(TENSOR_AT, struct.pack("<II", DATA_AT, 19))
    assert probe.call("load", TENSOR_AT, 1, 1, 0, OUT_AT) == NnErrno.RUNTIME_ERROR
    assert probe.nn.last_error is not None
    assert "ONNX" in probe.nn.last_error


def test_load_claiming_4gb_is_too_large_or_out_of_bounds(probe: GuestInstance) -> None:
    probe.memory.write(TENSOR_AT, struct.pack("<II", DATA_AT, 0xFFFFFFFF))
    assert probe.call("load", TENSOR_AT, 1, 1, 0, OUT_AT) == NnErrno.TOO_LARGE


def test_load_by_name_only_allows_pushed_models(probe: GuestInstance) -> None:
    probe.memory.write(NAME_AT, b"secret-model")
    assert probe.call("load_by_name", NAME_AT, 12, OUT_AT) == NnErrno.NOT_FOUND
    assert probe.nn.last_error is not None
    assert "--model secret-model=" in probe.nn.last_error  # the denial says how to fix it


@pytest.mark.parametrize(
    ("export", "args"),
    [
        ("load", (MEM - 4, 1, 1, 0, OUT_AT)),  # builder array straddles the end of memory
        ("load", (-8, 1, 1, 0, OUT_AT)),  # negative i32 is a huge u32
        ("load_by_name", (MEM - 2, 6, OUT_AT)),
        ("load_by_name", (NAME_AT, 6, MEM)),  # out-pointer past the end
        ("init_execution_context", (0, -1)),
        ("set_input", (0, 0, MEM - 10)),
        ("get_output", (0, 1, MEM - 8, 4096, OUT_AT)),
        ("get_output", (0, 1, RESULT_AT, 4096, MEM - 2)),
    ],
)
def test_out_of_bounds_pointers_are_invalid_argument(probe: GuestInstance, export: str, args: tuple[int, ...]) -> None:
    ctx = new_context(probe)
    put_tensor(probe, [1, 64], 1, np.zeros((1, 64), np.float32).tobytes())
    assert probe.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.SUCCESS
    assert probe.call("compute", ctx) == NnErrno.SUCCESS
    if export == "load_by_name":
        probe.memory.write(NAME_AT, b"digits")
    assert probe.call(export, *args) == NnErrno.INVALID_ARGUMENT
    assert probe.healthy  # an errno, not a trap


def test_out_of_bounds_dims_and_data_pointers(probe: GuestInstance) -> None:
    ctx = new_context(probe)
    probe.memory.write(DIMS_AT, struct.pack("<II", 1, 64))
    for dims_ptr, data_ptr in ((MEM - 4, DATA_AT), (DIMS_AT, MEM - 100), (DIMS_AT, 0xFFFFFFF0)):
        probe.memory.write(TENSOR_AT, struct.pack("<IIB3xII", dims_ptr, 2, 1, data_ptr, 256))
        assert probe.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.INVALID_ARGUMENT


def test_bad_handles(probe: GuestInstance) -> None:
    assert probe.call("init_execution_context", 7, OUT_AT) == NnErrno.INVALID_ARGUMENT
    assert probe.call("set_input", 3, 0, TENSOR_AT) == NnErrno.INVALID_ARGUMENT
    assert probe.call("compute", 99) == NnErrno.INVALID_ARGUMENT
    assert probe.call("get_output", -1, 0, RESULT_AT, 10, OUT_AT) == NnErrno.INVALID_ARGUMENT


def test_state_misuse(probe: GuestInstance) -> None:
    ctx = new_context(probe)
    assert probe.call("compute", ctx) == NnErrno.UNSUPPORTED_OPERATION  # no input set
    assert probe.call("get_output", ctx, 0, RESULT_AT, 10, OUT_AT) == NnErrno.UNSUPPORTED_OPERATION


@pytest.mark.parametrize(
    ("dims", "ttype", "nbytes", "why"),
    [
        ([1, 64], 5, 512, "INT64 into a float input"),
        ([1, 64], 9, 256, "unknown tensor type"),
        ([1, 32], 1, 128, "wrong fixed dim"),
        ([64], 1, 256, "wrong rank"),
        ([1, 64], 1, 100, "data_len disagrees with dims"),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9], 1, 4, "too many dims"),
    ],
)
def test_set_input_checks_type_and_dims(
    probe: GuestInstance, dims: list[int], ttype: int, nbytes: int, why: str
) -> None:
    ctx = new_context(probe)
    put_tensor(probe, dims, ttype, b"\0" * nbytes)
    assert probe.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.INVALID_ARGUMENT, why
    assert probe.call("set_input", ctx, 5, TENSOR_AT) == NnErrno.INVALID_ARGUMENT  # no input 5


def test_get_output_too_small_buffer_writes_nothing(probe: GuestInstance) -> None:
    ctx = new_context(probe)
    put_tensor(probe, [2, 64], 1, np.zeros((2, 64), np.float32).tobytes())
    assert probe.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.SUCCESS
    assert probe.call("compute", ctx) == NnErrno.SUCCESS
    probe.memory.write(RESULT_AT, b"\xaa" * 16)
    assert probe.call("get_output", ctx, 1, RESULT_AT, 79, OUT_AT) == NnErrno.TOO_LARGE
    assert probe.memory.read(RESULT_AT, 16) == b"\xaa" * 16
    assert probe.call("get_output", ctx, 2, RESULT_AT, 4096, OUT_AT) == NnErrno.INVALID_ARGUMENT  # no output 2


def test_tensor_limit_applies_before_copying(host: Host, digits: Digits) -> None:
    from wasm_host.engine import SandboxLimits

    small = Host(
        SandboxLimits(deadline_ms=200, max_tensor_bytes=1024), host.engine.cache_dir.parent, host_path=host.host_path
    )
    inst = prepare_wat(small.start(), PROBE, {"digits": ModelRef(digits.digest, digits.path)}).instantiate()
    try:
        ctx = new_context(inst)
        put_tensor(inst, [8, 64], 1, np.zeros((8, 64), np.float32).tobytes())
        assert inst.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.TOO_LARGE
    finally:
        small.close()


def test_calls_outside_a_request_are_busy_not_a_crash(probe: GuestInstance, host: Host) -> None:
    # The imports route by thread-local binding; a call with no binding must still return an errno.
    entry = host.nn_host._entry("compute")
    assert entry(0) == NnErrno.BUSY


# -- wasmgate_nn.get_output_dims ---------------------------------------------------------------------------------
DIMS_OUT_AT = 256  # the dims get_output_dims writes; 8 slots, then NDIM_AT
NDIM_AT = DIMS_OUT_AT + 32


def computed_encoder(inst: GuestInstance, batch: int, sequence: int, ctx: int | None = None) -> int:
    """An execution context of the encoder model, computed on inputs of shape [batch, sequence]."""
    if ctx is None:
        inst.memory.write(NAME_AT, b"encoder")
        assert inst.call("load_by_name", NAME_AT, 7, OUT_AT) == NnErrno.SUCCESS
        assert inst.call("init_execution_context", u32(inst, OUT_AT), OUT_AT) == NnErrno.SUCCESS
        ctx = u32(inst, OUT_AT)
    inputs = encoder_inputs(batch, sequence)
    for index, name in enumerate(ENCODER_INPUTS):
        put_tensor(inst, [batch, sequence], 5, inputs[name].tobytes())
        assert inst.call("set_input", ctx, index, TENSOR_AT) == NnErrno.SUCCESS
    assert inst.call("compute", ctx) == NnErrno.SUCCESS
    return ctx


def output_dims(inst: GuestInstance, ctx: int, index: int, dims_max: int = 8) -> tuple[int, ...]:
    assert inst.call("get_output_dims", ctx, index, DIMS_OUT_AT, dims_max, NDIM_AT) == NnErrno.SUCCESS
    return inst.memory.read_u32s(DIMS_OUT_AT, u32(inst, NDIM_AT))


def test_get_output_dims_gives_each_outputs_actual_dims_however_many_are_dynamic(
    probe: GuestInstance, encoder: Encoder
) -> None:
    ctx = computed_encoder(probe, 2, 5)
    assert output_dims(probe, ctx, 0) == (2, 5, 16)  # last_hidden_state [batch, sequence, hidden]
    assert output_dims(probe, ctx, 1) == (2, 16)  # pooler_output [batch, hidden]
    # They describe the bytes get_output gives, which equal onnxruntime's answer in that shape.
    assert probe.call("get_output", ctx, 0, RESULT_AT, 65536, OUT_AT) == NnErrno.SUCCESS
    got = np.frombuffer(probe.memory.read(RESULT_AT, u32(probe, OUT_AT)), "<f4").reshape(2, 5, 16)
    np.testing.assert_array_equal(got, encoder.expected(encoder_inputs(2, 5))["last_hidden_state"])
    # The same context computed again on another shape: the dims follow the latest compute.
    computed_encoder(probe, 3, 7, ctx)
    assert output_dims(probe, ctx, 0) == (3, 7, 16)
    assert output_dims(probe, ctx, 1) == (3, 16)


def test_get_output_dims_before_compute_is_unsupported_operation(probe: GuestInstance) -> None:
    ctx = new_context(probe)
    assert probe.call("get_output_dims", ctx, 0, DIMS_OUT_AT, 8, NDIM_AT) == NnErrno.UNSUPPORTED_OPERATION
    assert probe.nn.last_error == "get_output_dims: get_output_dims before compute"
    # A new input makes the last outputs stale: they are gone until the next compute.
    ctx = computed_encoder(probe, 1, 3)
    put_tensor(probe, [1, 3], 5, np.zeros((1, 3), np.int64).tobytes())
    assert probe.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.SUCCESS
    assert probe.call("get_output_dims", ctx, 0, DIMS_OUT_AT, 8, NDIM_AT) == NnErrno.UNSUPPORTED_OPERATION


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ((99, 0, DIMS_OUT_AT, 8, NDIM_AT), "no execution context with handle 99"),
        ((-1, 0, DIMS_OUT_AT, 8, NDIM_AT), "no execution context with handle 4294967295"),
        ((0, 2, DIMS_OUT_AT, 8, NDIM_AT), "output index 2: the graph has 2"),
        ((0, -1, DIMS_OUT_AT, 8, NDIM_AT), "output index 4294967295: the graph has 2"),
        ((0, 0, MEM - 8, 3, NDIM_AT), "is outside its"),  # dims array straddles the end of memory
        ((0, 0, -8, 3, NDIM_AT), "is outside its"),  # negative i32 is a huge u32
        ((0, 0, DIMS_OUT_AT, -1, NDIM_AT), "is outside its"),  # claims 4 billion slots
        ((0, 0, DIMS_OUT_AT, 8, MEM - 2), "is outside its"),  # ndim out-pointer past the end
        ((0, 0, DIMS_OUT_AT, 8, -4), "is outside its"),
    ],
)
def test_get_output_dims_bad_handle_index_or_pointer_is_invalid_argument_and_writes_nothing(
    probe: GuestInstance, args: tuple[int, ...], why: str
) -> None:
    assert computed_encoder(probe, 2, 5) == 0
    probe.memory.write(DIMS_OUT_AT, b"\xaa" * 36)
    probe.memory.write(MEM - 8, b"\xaa" * 8)
    assert probe.call("get_output_dims", *args) == NnErrno.INVALID_ARGUMENT
    assert probe.nn.last_error is not None
    assert why in probe.nn.last_error
    assert probe.memory.read(DIMS_OUT_AT, 36) == b"\xaa" * 36
    assert probe.memory.read(MEM - 8, 8) == b"\xaa" * 8
    assert probe.healthy  # an errno, not a trap


def test_get_output_dims_with_too_few_slots_is_too_large_and_gives_the_rank_only(probe: GuestInstance) -> None:
    ctx = computed_encoder(probe, 2, 5)
    probe.memory.write(DIMS_OUT_AT, b"\xaa" * 32)
    assert probe.call("get_output_dims", ctx, 0, DIMS_OUT_AT, 2, NDIM_AT) == NnErrno.TOO_LARGE
    assert probe.memory.read(DIMS_OUT_AT, 32) == b"\xaa" * 32
    assert u32(probe, NDIM_AT) == 3
    assert probe.nn.last_error == "get_output_dims: output 0 has 3 dims, the buffer 2"
    # dims_max = 0 asks for the rank alone; exactly the rank's slots suffice.
    assert probe.call("get_output_dims", ctx, 1, DIMS_OUT_AT, 0, NDIM_AT) == NnErrno.TOO_LARGE
    assert u32(probe, NDIM_AT) == 2
    assert output_dims(probe, ctx, 0, dims_max=3) == (2, 5, 16)


# -- host memory a guest makes the host hold: counted before the work (setting max_nn_memory_bytes) ------------


def test_the_graph_cap_is_checked_before_any_model_is_read(probe: GuestInstance) -> None:
    for _ in range(16):
        load_digits_graph(probe)
    probe.memory.write(DATA_AT, b"not a model")  # would be a runtime_error, had it been read and built
    probe.memory.write(TENSOR_AT, struct.pack("<II", DATA_AT, 11))
    assert probe.call("load", TENSOR_AT, 1, 1, 0, OUT_AT) == NnErrno.TOO_LARGE
    probe.memory.write(NAME_AT, b"nope")
    assert probe.call("load_by_name", NAME_AT, 4, OUT_AT) == NnErrno.TOO_LARGE  # not not_found: nothing looked up
    assert "at most 16 graphs" in (probe.nn.take_error() or "")


def budgeted(host: Host, limit: int, digits: Digits) -> tuple[Host, GuestInstance, GuestInstance]:
    """A host whose functions may make it hold ``limit`` bytes through WASI-NN, and two instances of one
    function (one image: they share its model budget)."""
    from wasm_host.engine import SandboxLimits

    small = Host(
        SandboxLimits(deadline_ms=200, max_nn_memory_bytes=limit),
        host.engine.cache_dir.parent,
        host_path=host.host_path,
    ).start()
    image = prepare_wat(small, PROBE, {"digits": ModelRef(digits.digest, digits.path)})
    return small, image.instantiate(), image.instantiate()


def load_bytes(inst: GuestInstance, model: bytes) -> int:
    inst.memory.write(DATA_AT, model)
    inst.memory.write(TENSOR_AT, struct.pack("<II", DATA_AT, len(model)))
    return inst.call("load", TENSOR_AT, 1, 1, 0, OUT_AT)


def test_models_loaded_from_guest_memory_count_against_the_functions_budget(
    host: Host, digits: Digits, encoder: Encoder
) -> None:
    small, first, second = budgeted(host, len(digits.model) + len(encoder.model) // 2, digits)
    try:
        assert load_bytes(first, digits.model) == NnErrno.SUCCESS
        assert load_bytes(second, digits.model) == NnErrno.SUCCESS  # the same model: counted once
        sessions = small.backend.cached()
        assert load_bytes(second, encoder.model) == NnErrno.TOO_LARGE
        assert "setting max_nn_memory_bytes" in (second.nn.take_error() or "")
        assert small.backend.cached() == sessions  # refused before its session was built
    finally:
        small.close()


def test_tensors_held_in_contexts_count_against_the_instances_budget(host: Host, digits: Digits) -> None:
    small, inst, _ = budgeted(host, 4096, digits)
    try:
        ctx = new_context(inst)
        put_tensor(inst, [8, 64], 1, np.zeros((8, 64), np.float32).tobytes())  # 2048 bytes: fits
        assert inst.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.SUCCESS
        other = new_context(inst)
        put_tensor(inst, [12, 64], 1, np.zeros((12, 64), np.float32).tobytes())  # 3072 more: over 4096
        assert inst.call("set_input", other, 0, TENSOR_AT) == NnErrno.TOO_LARGE
        assert "setting max_nn_memory_bytes" in (inst.nn.take_error() or "")
        put_tensor(inst, [2, 64], 1, np.zeros((2, 64), np.float32).tobytes())  # replacing frees the old one
        assert inst.call("set_input", ctx, 0, TENSOR_AT) == NnErrno.SUCCESS
        assert inst.call("set_input", other, 0, TENSOR_AT) == NnErrno.SUCCESS
        assert inst.call("compute", ctx) == NnErrno.SUCCESS  # its outputs fit beside the inputs
        outputs = inst.nn.graphs[0].run([np.zeros((2, 64), np.float32)])  # what the context holds after compute
        assert inst.nn.held_bytes == 2 * 512 + sum(o.nbytes for o in outputs if isinstance(o, np.ndarray))
    finally:
        small.close()

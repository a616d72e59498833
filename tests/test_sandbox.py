"""The sandbox's limits and the ABI checks, with inline WAT guests.

Each hostile guest must fail with the right exception from the one tree, and the instance must be marked
unhealthy so the pool throws it away.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from gateway.functions.push import Publisher
from gateway.settings import Settings
from gateway.store.local import LocalStore
from tests.support import prepare_wat
from wasm_host.abi import DYNAMIC_DIM, MAGIC
from wasm_host.errors import DeadlineExceeded, GuestFailure, GuestTrap, InvalidFunction, InvalidRequest
from wasm_host.host import Host
from wasm_host.tensors import Tensor, TensorSpec

ABI = """
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
"""


def guest(body: str, extra: str = "") -> str:
    return f'(module {ABI} {extra} (func (export "handle") (param i32 i32) (result i64) {body}))'


X = [Tensor("x", "FP32", (1,), b"\0\0\0\0")]


def test_infinite_loop_hits_the_deadline(host: Host) -> None:
    inst = prepare_wat(host, guest("(loop $l (br $l)) (i64.const 0)")).instantiate()
    with pytest.raises(DeadlineExceeded, match="deadline"):
        inst.handle(X, [])
    assert not inst.healthy


def test_deadline_is_per_call_not_per_instance(host: Host) -> None:
    # A guest that returns in time on many consecutive calls must not accumulate towards the deadline. (It
    # answers "invalid input", the one non-ok answer that keeps an instance healthy.)
    inst = prepare_wat(host, guest("(i64.or (i64.shl (i64.const 1) (i64.const 62)) (i64.const 0))")).instantiate()
    for _ in range(50):
        with pytest.raises(InvalidRequest, match="rejected the request"):
            inst.handle(X, [])
    assert inst.healthy


def test_initialize_that_loops_is_interrupted(host: Host) -> None:
    image = prepare_wat(host, guest("(i64.const 0)", '(func (export "_initialize") (loop $l (br $l)))'))
    with pytest.raises(DeadlineExceeded, match="_initialize"):
        image.instantiate()


def test_memory_bomb_is_refused_by_the_limit(host: Host) -> None:
    # Grows by 1 page until memory.grow fails; the limit (16 MiB in the fixture) stops it, then it traps.
    body = (
        "(block $done (loop $l (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1))) (br $l)))"
        " (unreachable)"
    )
    inst = prepare_wat(host, guest(body)).instantiate()
    with pytest.raises(GuestTrap, match="unreachable"):
        inst.handle(X, [])
    assert inst.memory.size <= host.limits.memory_limit_bytes


def test_unbounded_recursion_is_a_stack_overflow_trap(host: Host) -> None:
    extra = "(func $r (param i32) (result i32) (i32.add (call $r (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))"
    inst = prepare_wat(host, guest("(drop (call $r (i32.const 0))) (i64.const 0)", extra)).instantiate()
    with pytest.raises(GuestTrap, match="stack overflow"):
        inst.handle(X, [])


def test_result_pointer_outside_memory_is_a_guest_failure(host: Host) -> None:
    # status 0, length 100, pointer 0xFFFFFF00: must be refused, not read out of bounds.
    inst = prepare_wat(host, guest("(i64.const 0x64FFFFFF00)")).instantiate()
    with pytest.raises(GuestFailure, match="outside its memory"):
        inst.handle(X, [])
    assert not inst.healthy


def test_alloc_returning_a_bad_pointer(host: Host) -> None:
    wat = """(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 65528))
      (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))"""
    inst = prepare_wat(host, wat).instantiate()
    with pytest.raises(GuestFailure, match="invalid buffer"):
        inst.handle(X, [])


def test_alloc_returning_a_misaligned_buffer(host: Host) -> None:
    """The ABI asks ``alloc`` for 8-byte alignment: the guest reads tensors in place as ``int64_t*``."""
    inst = prepare_wat(host, guest("(i64.const 0)").replace("(i32.const 1024)", "(i32.const 1028)")).instantiate()
    with pytest.raises(GuestFailure, match="alloc returned the misaligned buffer 0x404; the ABI requires 8-byte"):
        inst.handle(X, [])
    assert not inst.healthy


def test_an_undefined_status_is_a_guest_failure(host: Host) -> None:
    inst = prepare_wat(host, guest("(i64.shl (i64.const 3) (i64.const 62))")).instantiate()
    with pytest.raises(GuestFailure, match="the undefined status 3"):
        inst.handle(X, [])
    assert not inst.healthy


def test_guest_reported_invalid_input_is_invalid_request(host: Host) -> None:
    extra = '(data (i32.const 200) "pixel out of range")'
    inst = prepare_wat(host, guest("(i64.const 0x40000012000000C8)", extra)).instantiate()
    with pytest.raises(InvalidRequest, match="pixel out of range"):
        inst.handle(X, [])
    assert inst.healthy


@pytest.mark.parametrize(
    ("wat", "why"),
    [
        ('(module (memory (export "memory") 1))', "missing export 'alloc'"),
        (
            f'(module {ABI} (func (export "handle") (param i32) (result i32) (i32.const 0)))',
            "export 'handle' must",
        ),
        (
            f'(module (import "env" "sneaky" (func)) {ABI} (func (export "handle") (param i32 i32) (result i64) '
            "(i64.const 0)))",
            "import env.sneaky is not allowed",
        ),
        (
            f'(module (import "wasi_ephemeral_nn" "compute" (func (param i64) (result i32))) {ABI} '
            '(func (export "handle") (param i32 i32) (result i64) (i64.const 0)))',
            "wasi_ephemeral_nn.compute has the wrong type",
        ),
        (
            f'(module (import "wasmgate_nn" "get_output_dims" (func (param i32 i32 i32 i32) (result i32))) {ABI} '
            '(func (export "handle") (param i32 i32) (result i64) (i64.const 0)))',
            "wasmgate_nn.get_output_dims has the wrong type",
        ),
        (
            f'(module (import "wasmgate_nn" "get_output_type" (func (param i32 i32 i32) (result i32))) {ABI} '
            '(func (export "handle") (param i32 i32) (result i64) (i64.const 0)))',
            "import wasmgate_nn.get_output_type is not allowed",
        ),
        (
            f'(module (import "wasi_snapshot_preview1" "no_such_call" (func)) {ABI} '
            '(func (export "handle") (param i32 i32) (result i64) (i64.const 0)))',
            "cannot be linked",
        ),
    ],
)
def test_abi_violations_are_refused_with_a_reason(host: Host, wat: str, why: str) -> None:
    with pytest.raises(InvalidFunction, match=why):
        prepare_wat(host, wat)


def answering(response: bytes) -> str:
    """A guest that answers every request with ``response`` (status 0), as a guest written before
    ``wasmgate_nn.get_output_dims`` does: it imports nothing, and its dims are whatever it wrote."""
    data = "".join(f"\\{b:02x}" for b in response)
    return guest(
        f"(i64.or (i64.shl (i64.const {len(response)}) (i64.const 32)) (i64.const 2048))",
        f'(data (i32.const 2048) "{data}")',
    )


def response_with_dims(*dims: int) -> bytes:
    """A WGT1 response of one FP32 tensor "y" of 24 elements (0..23) with ``dims`` written as given."""
    return b"".join(
        (
            struct.pack("<IIII", MAGIC, 1, 0, 0),
            struct.pack("<IIII", 1, 1, len(dims), 24 * 4),
            struct.pack(f"<{len(dims)}I", *dims).ljust((4 * len(dims) + 7) & ~7, b"\0"),
            b"y".ljust(8, b"\0"),
            np.arange(24, dtype="<f4").tobytes(),
        )
    )


@pytest.mark.parametrize(
    "dims", [(DYNAMIC_DIM, 3, 4), (2, DYNAMIC_DIM, 4), (2, 3, 4)], ids=["first", "middle", "none-unknown"]
)
def test_a_response_with_at_most_one_unknown_dim_is_resolved_from_its_data(host: Host, dims: tuple[int, ...]) -> None:
    inst = prepare_wat(host, answering(response_with_dims(*dims))).instantiate()
    (y,) = inst.handle(X, [])
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y.to_numpy(), np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    assert inst.healthy


@pytest.mark.parametrize(
    ("dims", "why"),
    [
        ((DYNAMIC_DIM, DYNAMIC_DIM, 4), "output 'y' has more than one unknown dimension"),
        ((2, 3, 5), "output 'y': 24 elements of data for shape [2, 3, 5]"),
        ((DYNAMIC_DIM, 5, 4), "output 'y': 24 elements do not fit dims [4294967295, 5, 4]"),
    ],
)
def test_a_response_with_dims_its_data_cannot_fill_is_malformed(host: Host, dims: tuple[int, ...], why: str) -> None:
    # A guest that does not ask the host for its outputs' dims still cannot leave two of them unknown.
    inst = prepare_wat(host, answering(response_with_dims(*dims))).instantiate()
    with pytest.raises(GuestFailure, match=re.escape(f"the function returned a malformed response: {why}")):
        inst.handle(X, [])
    assert not inst.healthy


@pytest.mark.parametrize(
    ("declared", "why"),
    [
        (TensorSpec("y", "FP32", (-1, 3, 4)), None),
        (TensorSpec("y", "FP32", (2, 12)), "output 'y' with shape [2, 3, 4]; its signature declares [2, 12]"),
        (TensorSpec("y", "FP32", (2, 3, 5)), "output 'y' with shape [2, 3, 4]; its signature declares [2, 3, 5]"),
        (TensorSpec("y", "INT64", (2, 3, 4)), "output 'y' as FP32; its signature declares INT64"),
        (TensorSpec("z", "FP32", (2, 3, 4)), "the undeclared output 'y'; its signature declares 'z'"),
    ],
    ids=["matches", "rank", "fixed dim", "datatype", "name"],
)
def test_an_answer_is_held_to_the_signature(host: Host, declared: TensorSpec, why: str | None) -> None:
    inst = prepare_wat(host, answering(response_with_dims(2, 3, 4))).instantiate()
    if why is None:
        (y,) = inst.handle(X, [declared])
        assert y.shape == (2, 3, 4)
        assert inst.healthy
        return
    with pytest.raises(GuestFailure, match=re.escape(f"the function answered {why}")):
        inst.handle(X, [declared])
    assert not inst.healthy


def test_garbage_is_not_a_module(host: Host) -> None:
    with pytest.raises(InvalidFunction, match="not a valid WebAssembly module"):
        host.prepare(b"\0asm\x01\0\0\0garbage", "ab" * 32, {})


def test_compile_cache_is_reused_and_corruption_is_rebuilt(host: Host, tmp_path: Path) -> None:
    wasm = bytes(wasmtime.wat2wasm(guest("(i64.const 0)")))
    digest = hashlib.sha256(wasm).hexdigest()
    host.prepare(wasm, digest, {})
    entry = host.engine.cache_dir / f"{digest}.cwasm"
    assert entry.exists()
    assert host.engine.load_cached(digest) is not None
    # Flip one byte of the compiled code: the checksum must catch it before deserialize runs it.
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    entry.write_bytes(bytes(blob))
    assert host.engine.load_cached(digest) is None
    assert not entry.exists()
    host.prepare(wasm, digest, {})  # rebuilt
    assert host.engine.load_cached(digest) is not None


def test_no_filesystem_or_environment(host: Host) -> None:
    # path_open on fd 3 (the first preopen, if there were one) must fail with EBADF (8); environ_sizes_get
    # must report zero variables.
    wat = """(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "etc/passwd")
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
      (func (export "try_open") (result i32)
        (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 10) (i32.const 0)
                    (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
      (func (export "env_count") (result i32)
        (drop (call $env (i32.const 300) (i32.const 304))) (i32.load (i32.const 300))))"""
    inst = prepare_wat(host, wat).instantiate()
    assert inst.call("try_open") == 8  # EBADF: there is no preopened directory
    assert inst.call("env_count") == 0


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("(loop $l (br $l)) (i32.const 0)", "the function's signature() failed: the function ran past its deadline"),
        ("(unreachable)", "the function's signature() failed: the function trapped in signature: unreachable"),
    ],
    ids=["loops", "traps"],
)
def test_a_signature_that_fails_is_a_refused_push(host: Host, tmp_path: Path, body: str, why: str) -> None:
    """A push runs ``signature`` under the deadline; its trap or timeout is the pushed code's fault: 400."""
    wat = guest("(i64.const 0)", f'(func (export "signature") (result i32) {body})')
    wasm = bytes(wasmtime.wat2wasm(wat))
    store = LocalStore(tmp_path / "data")
    publisher = Publisher(store, host, Settings(data_dir=tmp_path / "data"))
    digest = store.stage(wasm)
    with pytest.raises(InvalidFunction, match=re.escape(why)):
        publisher.validate("sig", digest, {}, {})


def test_trap_messages_carry_their_cause(host: Host) -> None:
    wat = """(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
      (func (export "quit") (result i32) (call $exit (i32.const 3)) (i32.const 0))
      (func (export "too_random") (result i32) (call $random (i32.const 0) (i32.const 100000000))))"""
    image = prepare_wat(host, wat)
    with pytest.raises(GuestTrap, match=re.escape("the function exited in quit: proc_exit(3)")):
        image.instantiate().call("quit")
    with pytest.raises(GuestTrap, match="trapped in too_random: failed to call `get-random-bytes`: requested len"):
        image.instantiate().call("too_random")

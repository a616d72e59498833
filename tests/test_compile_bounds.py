"""Compiles are bounded (wasm_host/engine.py): a module's code is counted before it compiles, and a large module
compiles in a child process held to a time and an address-space limit, whose refusals are 413s naming the
setting. The modules are generated WAT; the bounds are set low so that each refusal is certain, not timed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime

from wasm_host.engine import IN_PROCESS_COMPILE_BYTES, MiB, SandboxLimits
from wasm_host.errors import InvalidRequest, TooLarge
from wasm_host.guest import FunctionImage
from wasm_host.host import Host
from wasm_host.tensors import Tensor
from wasm_host.wasm_sections import Malformed, code_shape

ABI = """
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.shl (i64.const 1) (i64.const 62)))
"""


def module(functions: int = 0, body_nops: int = 0) -> bytes:
    """The ABI's two functions, plus ``functions`` more of ``body_nops`` nops each."""
    extra = "".join(f"(func $f{i} {'nop ' * body_nops})" for i in range(functions))
    return bytes(wasmtime.wat2wasm(f"(module {ABI} {extra})"))


def large_module() -> bytes:
    """A module past the in-process size, made of small functions within every other limit."""
    wasm = module(functions=300, body_nops=1000)
    assert len(wasm) > IN_PROCESS_COMPILE_BYTES
    return wasm


@pytest.fixture
def host_with(tmp_path: Path) -> Iterator[Callable[..., Host]]:
    hosts: list[Host] = []

    def make(**limits: float) -> Host:
        h = Host(SandboxLimits(deadline_ms=1000, **limits), tmp_path / f"cache{len(hosts)}").start()  # type: ignore[arg-type]
        hosts.append(h)
        return h

    yield make
    for h in hosts:
        h.close()


def prepare(host: Host, wasm: bytes) -> FunctionImage:
    return host.prepare(wasm, hashlib.sha256(wasm).hexdigest(), {})


def test_the_code_section_is_counted() -> None:
    assert code_shape(module()).functions == 2
    shape = code_shape(module(functions=5, body_nops=100))
    assert shape.functions == 7
    assert 100 <= shape.largest_body < 110  # the nops, a locals count and `end`
    with pytest.raises(Malformed):
        code_shape(b"\0asm\x01\0\0\0\x0a\xff\xff\xff\xff\x0f")  # a code section longer than the module


def test_too_many_functions_are_refused_before_compiling(host_with: Callable[..., Host]) -> None:
    host = host_with(max_module_functions=10)
    with pytest.raises(TooLarge, match=r"defines 11 functions, more than 10 \(setting max_module_functions\)"):
        prepare(host, module(functions=9))
    prepare(host, module(functions=8))


def test_a_function_too_large_is_refused_before_compiling(host_with: Callable[..., Host]) -> None:
    host = host_with(max_function_body_bytes=1000)
    with pytest.raises(TooLarge, match=r"more than 1000 \(setting max_function_body_bytes\)"):
        prepare(host, module(functions=1, body_nops=2000))
    prepare(host, module(functions=1, body_nops=900))


def test_a_large_module_compiles_in_a_child_and_serves(host_with: Callable[..., Host]) -> None:
    host = host_with()
    wasm = large_module()
    image = prepare(host, wasm)
    assert host.engine.load_cached(hashlib.sha256(wasm).hexdigest()) is not None  # the child wrote it
    instance = image.instantiate()
    with pytest.raises(InvalidRequest, match="rejected the request"):
        instance.handle([Tensor("x", "FP32", (1,), b"\0\0\0\0")], [])


def test_a_compile_past_its_time_is_refused(host_with: Callable[..., Host]) -> None:
    host = host_with(compile_timeout_s=0.01)  # less than the child's start-up
    with pytest.raises(TooLarge, match=r"longer than 0.01 s to compile \(setting compile_timeout_s\)"):
        prepare(host, large_module())


def test_a_compile_past_its_memory_is_refused(host_with: Callable[..., Host]) -> None:
    host = host_with(compile_memory_bytes=64 * MiB)  # less than the interpreter holds
    with pytest.raises(TooLarge, match=r"more than 64 MiB to compile \(setting compile_memory_bytes\)"):
        prepare(host, large_module())

"""One guest: checking a module against the function ABI, and running requests through an instance of it.

An instance owns one wasmtime ``Store`` and must be used by one thread at a time. After a trap, a reported
failure or a response the host cannot read, it is marked unhealthy and must be discarded: its memory may hold a
half-written state. Only answers the host accepted (a response, or "invalid input") leave it healthy.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi

from wasm_host.abi import STATUS_FAILED, STATUS_INVALID, STATUS_OK, decode_response, encode_request, unpack_result
from wasm_host.engine import WasmEngine
from wasm_host.errors import DeadlineExceeded, GuestFailure, GuestTrap, InvalidFunction, InvalidRequest
from wasm_host.memory import GuestMemory, OutOfBounds
from wasm_host.onnx_backend import ModelRef, OnnxBackend
from wasm_host.rawcall import RawExport
from wasm_host.tensors import Tensor, TensorSpec
from wasm_host.wasi_nn import EXTENSION_MODULE, EXTENSION_SIGNATURES, IMPORTS, NnBudget, NnState, WasiNnHost
from wasm_host.wasi_nn import MODULE as NN_MODULE

log = logging.getLogger("wasmgate.guest")

WASI_MODULE = "wasi_snapshot_preview1"
MAX_MESSAGE = 4096
MAX_SIGNATURE = 64 * 1024
#: What ``alloc`` must align a request buffer to (ABI.md): its tensors' data is read in place by the guest.
REQUEST_ALIGN = 8
#: What a refused import is told it may use instead.
_ALLOWED_IMPORTS = f"only {WASI_MODULE}, the six {NN_MODULE} functions and " + ", ".join(
    f"{EXTENSION_MODULE}.{name}" for name in EXTENSION_SIGNATURES
)

#: Required and optional exports: name -> (params, results) as wasm value type names; None for the memory.
REQUIRED_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]] | None] = {
    "memory": None,
    "alloc": (("i32",), ("i32",)),
    "handle": (("i32", "i32"), ("i64",)),
}
OPTIONAL_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "_initialize": ((), ()),
    "signature": ((), ("i32",)),
}


def _functype(ty: object) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if not isinstance(ty, wasmtime.FuncType):
        return None
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


FuncSig = tuple[tuple[str, ...], tuple[str, ...]]


def check_abi(module: wasmtime.Module) -> dict[str, FuncSig]:
    """Refuse a module that does not follow the function ABI, naming every problem at once. Returns its
    callable exports (i32/i64 parameters, at most one result) with their signatures."""
    problems: list[str] = []
    for imp in module.imports:
        if imp.module == WASI_MODULE:
            continue
        arity = IMPORTS.get(imp.module, {}).get(imp.name or "")  # the binding types a name as optional
        if arity is not None:
            if _functype(imp.type) != (("i32",) * arity, ("i32",)):
                problems.append(f"import {imp.module}.{imp.name} has the wrong type")
            continue
        problems.append(f"import {imp.module}.{imp.name} is not allowed ({_ALLOWED_IMPORTS})")
    exports = {e.name: e.type for e in module.exports}
    for name, want in REQUIRED_EXPORTS.items():
        if name not in exports:
            problems.append(f"missing export {name!r}")
        elif want is None:
            if not isinstance(exports[name], wasmtime.MemoryType):
                problems.append(f"export {name!r} must be a memory")
        elif _functype(exports[name]) != want:
            problems.append(f"export {name!r} must have type {_show(want)}")
    for name, want in OPTIONAL_EXPORTS.items():
        if name in exports and _functype(exports[name]) != want:
            problems.append(f"export {name!r} must have type {_show(want)}")
    if problems:
        raise InvalidFunction("module does not follow the wasmgate function ABI: " + "; ".join(problems))
    callable_exports = {}
    for name, ty in exports.items():
        sig = _functype(ty)
        if sig is not None and set(sig[0] + sig[1]) <= {"i32", "i64"} and len(sig[1]) <= 1:
            callable_exports[name] = sig
    return callable_exports


#: An absolute host path in an engine's message ("/var/lib/wasmgate/..."): never shown to the caller.
_HOST_PATH = re.compile(r"(?<![\w.])/[\w.\-]+(?:/[\w.\-]*)+")


def trap_cause(exc: wasmtime.WasmtimeError | wasmtime.Trap) -> str:
    """Why a call into a guest failed, for the caller: the trap's kind (``unreachable``, ``stack overflow``),
    else the engine's own causes (a WASI call's error, say), innermost last, with host paths masked. wasmtime
    puts the cause after a backtrace, under "Caused by:"; its first line says only where it happened."""
    code = getattr(exc, "trap_code", None)
    if isinstance(code, wasmtime.TrapCode):
        return code.name.lower().replace("_", " ")
    lines = str(exc).strip().splitlines()
    if "Caused by:" in lines:
        causes = [_CAUSE_NUMBER.sub("", line).strip() for line in lines[lines.index("Caused by:") + 1 :]]
        text = ": ".join(c for c in causes if c)
    else:
        text = lines[0] if lines else ""
    return _HOST_PATH.sub("<host path>", text)[:MAX_MESSAGE] or type(exc).__name__


_CAUSE_NUMBER = re.compile(r"^\s*\d+:\s*")


def check_answer(produced: Sequence[Tensor], declared: Sequence[TensorSpec]) -> None:
    """Hold a function's answer to its signature, so the metadata it serves cannot lie: every output declared
    (by name), with the declared datatype, rank and fixed dimensions. No declared outputs (no ``signature``):
    nothing to hold it to. Raises GuestFailure naming the first mismatch. A declared output may be absent
    (a function may answer a subset); the caller's request for it is then refused as unknown."""
    if not declared:
        return
    for tensor in produced:
        # A scan (a loop, no generator), not a dict: a function declares a few outputs, and this runs for every
        # answer.
        spec = None
        for s in declared:
            if s.name == tensor.name:
                spec = s
                break
        if spec is None:
            raise GuestFailure(
                f"the function answered the undeclared output {tensor.name!r}; its signature declares "
                f"{', '.join(repr(s.name) for s in declared)}"
            )
        if tensor.datatype != spec.datatype:
            raise GuestFailure(
                f"the function answered output {tensor.name!r} as {tensor.datatype}; its signature declares "
                f"{spec.datatype}"
            )
        if not spec.matches(tensor.shape):
            raise GuestFailure(
                f"the function answered output {tensor.name!r} with shape {list(tensor.shape)}; its signature "
                f"declares {list(spec.shape)}"
            )


def _show(sig: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    return f"({', '.join(sig[0])}) -> ({', '.join(sig[1])})"


class FunctionImage:
    """A compiled, ABI-checked function, ready to instantiate many times: its ``InstancePre``, the models it
    may load by name, and the directory of its data files that each instance sees read-only at ``/files``
    (None: no files, and no preopened directory at all)."""

    def __init__(
        self,
        engine: WasmEngine,
        nn_host: WasiNnHost,
        backend: OnnxBackend,
        pre: wasmtime.InstancePre,
        models: Mapping[str, ModelRef],
        func_exports: Mapping[str, FuncSig],
        files: Path | None = None,
    ) -> None:
        #: Exported functions with i32/i64 parameters and at most one result: name -> (params, results).
        self.func_exports = dict(func_exports)
        self.engine = engine
        self.nn_host = nn_host
        self.backend = backend
        self.pre = pre
        self.models = dict(models)
        self.files = files
        #: What the function's guests load through WASI-NN from their own memory, for all its instances.
        self.nn_budget = NnBudget(engine.limits.max_nn_memory_bytes)

    def instantiate(self) -> GuestInstance:
        return GuestInstance(self)


class GuestInstance:
    """A live instance. Construction runs ``_initialize`` under the deadline."""

    def __init__(self, image: FunctionImage) -> None:
        self.limits = image.engine.limits
        self.healthy = True
        self.requests = 0
        self._nn_host = image.nn_host
        self._native = image.nn_host.native  # the compiled host (wasm_host.compiled), or None
        self._store = image.engine.new_store(image.files)
        self.nn = NnState(image.backend, image.models, self.limits, image.nn_host.watchdog, image.nn_budget)
        self._arm()
        try:
            instance = image.pre.instantiate(self._store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise self._trapped("instantiation", exc) from exc
        exports = instance.exports(self._store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)  # check_abi guarantees it
        self.memory = GuestMemory(self._store, memory)
        self.nn.attach(self.memory)
        self._funcs: dict[str, RawExport] = {}
        for name, (params, results) in image.func_exports.items():
            func = exports[name]
            assert isinstance(func, wasmtime.Func)
            self._funcs[name] = RawExport(self._store, func, params, results[0] if results else None)
        self._alloc = self._funcs["alloc"]
        self._handle = self._funcs["handle"]
        self._signature = self._funcs.get("signature")
        if "_initialize" in self._funcs:
            self._call("_initialize", self._funcs["_initialize"])  # under the instantiation's deadline

    # -- calling into the guest ----------------------------------------------------------------------------
    def _arm(self, deadline_ms: int | None = None, engine: bool = True) -> int:
        """Start a deadline: the guest calls made until the next ``_arm`` share it. Returns it in epoch ticks.
        ``engine=False`` (a compiled host's request) arms only the Python imports' deadline: the request sets the
        store's ticks and its compiled imports' deadline (at ``nn.deadline.at``) itself."""
        self._deadline_ms = self.limits.deadline_ms if deadline_ms is None else deadline_ms
        ticks = self.limits.deadline_ticks(self._deadline_ms)
        if engine:
            self._store.set_epoch_deadline(ticks)
            self.nn.arm(self._deadline_ms)  # the same deadline for its host calls (wasm_host.waits)
        else:
            self.nn.deadline.arm(self._deadline_ms)
        return ticks

    def _call(self, what: str, func: RawExport, *args: int) -> int:
        previous = self._nn_host.bind(self.nn)
        try:
            return func(*args)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self.nn.sync_expired()
            raise self._trapped(what, exc) from exc
        finally:
            self._nn_host.bind(previous)

    def _trapped(self, what: str, exc: wasmtime.WasmtimeError | wasmtime.Trap) -> GuestFailure:
        """The error for a trap (or engine error) in ``what``; the instance is unusable from here on."""
        self.healthy = False
        text = str(exc).strip()
        if self.nn.deadline.expired or (
            isinstance(exc, wasmtime.Trap) and exc.trap_code == wasmtime.TrapCode.INTERRUPT
        ):
            return self._past_deadline(what)
        log.info("guest trapped in %s: %s", what, text)
        if isinstance(exc, wasmtime.ExitTrap):
            return GuestTrap(f"the function exited in {what}: proc_exit({exc.code})")
        return GuestTrap(f"the function trapped in {what}: {trap_cause(exc)}")

    def _past_deadline(self, what: str) -> DeadlineExceeded:
        self.healthy = False
        where = self.nn.deadline.expired
        return DeadlineExceeded(
            f"the function ran past its deadline ({self._deadline_ms} ms) in {what}"
            + (f", in {where}" if where else "")
        )

    def call(self, export: str, *args: int) -> int:
        """Call any exported function (i32/i64 parameters, at most one result) under a fresh deadline, with
        traps translated (for tools and tests)."""
        self._arm()
        return self._call(export, self._funcs[export], *args)

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        """The function's declared (inputs, outputs), from its optional ``signature`` export."""
        if self._signature is None:
            return None
        self._arm()
        ptr = self._call("signature", self._signature)
        raw = self._read_cstring(ptr, MAX_SIGNATURE)
        try:
            doc = json.loads(raw)
            inputs = [TensorSpec.from_json(x) for x in doc.get("inputs", [])]
            outputs = [TensorSpec.from_json(x) for x in doc.get("outputs", [])]
        except (ValueError, AttributeError, TypeError) as exc:
            raise InvalidFunction(f"the module's signature() is not a valid signature document: {exc}") from exc
        return inputs, outputs

    def handle(
        self, inputs: Sequence[Tensor], outputs: Sequence[TensorSpec], deadline_ms: int | None = None
    ) -> list[Tensor]:
        """Serve one request. Raises InvalidRequest (the function rejected the input), GuestFailure,
        GuestTrap or DeadlineExceeded."""
        request = encode_request(inputs, outputs)
        self.requests += 1
        # One deadline for the whole request: alloc, then handle.
        ticks = self._arm(deadline_ms, engine=self._native is None)
        if self._native is None:
            self.nn.take_error()  # the compiled host's request forgets the last failure itself
            result, body = self._run(request), None
        else:
            result, body = self._run_compiled(request, ticks)
        if self.nn.deadline.expired:  # a host call stopped at the deadline; whatever the guest made of it
            raise self._past_deadline("handle")
        status, out_ptr, out_len = unpack_result(result)
        if body is None:
            try:
                body = self.memory.read(out_ptr, out_len)
            except OutOfBounds as exc:
                self.healthy = False
                raise GuestFailure(f"the function returned a result outside its memory: {exc}") from exc
        if status == STATUS_OK:
            try:
                parsed = None if self._native is None else self._native.parse(body)
                produced = decode_response(body) if parsed is None else [Tensor(*t) for t in parsed]
                check_answer(produced, outputs)
            except GuestFailure:
                self.healthy = False  # it broke the ABI: nothing it holds can be trusted for the next request
                raise
            return produced
        if status not in (STATUS_INVALID, STATUS_FAILED):
            self.healthy = False
            raise GuestFailure(f"the function returned the undefined status {status} (0, 1 and 2 are defined)")
        message = body[:MAX_MESSAGE].decode(errors="replace") or "no message"
        cause = self.nn.take_error()
        if cause:
            message = f"{message} (wasi-nn: {cause})"
        if status == STATUS_INVALID:
            raise InvalidRequest(f"the function rejected the request: {message}")  # the caller's fault: kept
        # The function says it failed: whatever state led there may still be in its memory. A fresh instance
        # costs one instantiation, which the pool makes in the background.
        self.healthy = False
        raise GuestFailure(f"the function failed: {message}")

    def _run(self, request: bytes) -> int:
        """The request's two guest entries on the Python host: ``alloc``, the write, ``handle``."""
        ptr = self._call("alloc", self._alloc, len(request)) & 0xFFFFFFFF
        self._place(ptr, request)
        return self._call("handle", self._handle, ptr, len(request))

    def _run_compiled(self, request: bytes, ticks: int) -> tuple[int, bytes | None]:
        """The same on the compiled host, in one call that releases the GIL: the store's epoch deadline, the
        compiled imports' deadline (armed by :meth:`_arm`), no failure left from the request before, both entries,
        the write, and the copy of the result buffer (None when it lies outside memory)."""
        assert self._native is not None
        previous = self._nn_host.bind_python(self.nn)  # for the Python imports; the call binds the compiled ones
        try:
            code, value, body, expired = self._native.request(
                self.nn.native, self._alloc.address, self._handle.address, request, ticks, self.nn.deadline.at
            )
        finally:
            self._nn_host.bind_python(previous)
        if expired:
            self.nn.sync_expired()
        if code == 0:
            return int(value), body
        if code == 5:  # alloc's pointer does not take the request: the same checks word the error
            self._place(value & 0xFFFFFFFF, request)
            raise AssertionError("the compiled host refused a buffer the Python host accepts")
        exc: wasmtime.WasmtimeError | wasmtime.Trap
        if code in (1, 3):
            exc = wasmtime.Trap._from_ptr(ctypes.cast(value, ctypes.POINTER(ffi.wasm_trap_t)))
        else:
            exc = wasmtime.WasmtimeError._from_ptr(ctypes.cast(value, ctypes.POINTER(ffi.wasmtime_error_t)))
        raise self._trapped("alloc" if code in (1, 2) else "handle", exc) from exc

    def _place(self, ptr: int, request: bytes) -> None:
        """Write the request at the buffer ``alloc`` returned, after the ABI's checks on it."""
        if ptr == 0:
            raise GuestFailure(f"the function could not allocate {len(request)} bytes for the request")
        if ptr & (REQUEST_ALIGN - 1):
            self.healthy = False  # its allocator broke the ABI: the next buffer would be no better
            raise GuestFailure(
                f"the function's alloc returned the misaligned buffer {ptr:#x}; the ABI requires {REQUEST_ALIGN}-byte"
                " alignment"
            )
        try:
            self.memory.write(ptr, request)
        except OutOfBounds as exc:
            self.healthy = False
            raise GuestFailure(f"the function's alloc returned an invalid buffer: {exc}") from exc

    def _read_cstring(self, ptr: int, limit: int) -> str:
        try:
            size = self.memory.size
            ptr &= 0xFFFFFFFF
            chunk = self.memory.read(ptr, min(limit, max(0, size - ptr)))
        except OutOfBounds as exc:
            raise InvalidFunction(f"signature() returned an invalid pointer: {exc}") from exc
        end = chunk.find(b"\0")
        if end < 0:
            raise InvalidFunction(f"signature() did not return a NUL-terminated string within {limit} bytes")
        return chunk[:end].decode(errors="replace")

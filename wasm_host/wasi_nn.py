"""The host side of WASI-NN (``wasi_ephemeral_nn``, witx), implemented on onnxruntime.

Semantics and the errno chosen for each failure are in ``guest_modules/ABI.md``. Two rules hold everywhere:

- Every guest pointer and length is masked to u32 and checked against the current memory size before use
  (wasmtime-py's raw memory access is not bounds-checked).
- No Python exception crosses into the guest. Each import returns an ``nn_errno``; the real cause is kept in
  :attr:`NnState.last_error` for the logs and for the error the caller sees. (A raising host function would
  also leave its exception in a process-wide slot of wasmtime-py, where another thread could pick it up.)

Besides the six witx imports, the host defines wasmgate's one extension, ``wasmgate_nn.get_output_dims``: witx
``get_output`` returns an output's bytes only, while the WIT wasi-nn ``tensor`` carries its dimensions too, and a
guest needs them to describe an output with more than one dimension not fixed by the graph (a transformer's
``[batch, sequence, hidden]``). It lives in an import module of its own, so ``wasi_ephemeral_nn`` stays the
standard set, and follows the same rules as the six.

Handles (graphs, execution contexts) live in the :class:`NnState` of one instance. The imports are defined once
on a shared linker; which instance a call belongs to is looked up in :class:`WasiNnHost`'s thread-local
binding, which the instance sets around each call into the guest.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np
import wasmtime

from wasm_host.engine import SandboxLimits
from wasm_host.memory import U32, GuestMemory, OutOfBounds
from wasm_host.onnx_backend import ModelRef, OnnxBackend, OnnxGraph
from wasm_host.rawcall import RawLinkerFuncs
from wasm_host.waits import Deadline, Watchdog

log = logging.getLogger("wasmgate.wasi_nn")

MODULE = "wasi_ephemeral_nn"
MAX_GRAPHS = 16  # per instance
MAX_CONTEXTS = 64  # per instance
MAX_NAME = 1024
MAX_DIMS = 8
LITTLE_ENDIAN = sys.byteorder == "little"


class NnErrno(enum.IntEnum):
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    INVALID_ENCODING = 2
    MISSING_MEMORY = 3
    BUSY = 4
    RUNTIME_ERROR = 5
    UNSUPPORTED_OPERATION = 6
    TOO_LARGE = 7
    NOT_FOUND = 8


ENCODING_ONNX = 1
ENCODING_AUTODETECT = 5
TARGETS = {0: "cpu", 1: "gpu", 2: "tpu"}

#: WASI-NN tensor_type (current witx / wasmtime numbering) -> (OIP datatype, numpy dtype, element size).
TENSOR_TYPES: dict[int, tuple[str, str, int]] = {
    0: ("FP16", "<f2", 2),
    1: ("FP32", "<f4", 4),
    2: ("FP64", "<f8", 8),
    3: ("UINT8", "u1", 1),
    4: ("INT32", "<i4", 4),
    5: ("INT64", "<i8", 8),
}

#: The six imports and their core-wasm arity (every parameter and the result are i32).
SIGNATURES: dict[str, int] = {
    "load": 5,
    "load_by_name": 3,
    "init_execution_context": 2,
    "set_input": 3,
    "compute": 1,
    "get_output": 5,
}

#: wasmgate's extension of WASI-NN (ABI.md "WASI-NN"), in an import module of its own: the same rules, the same
#: per-instance state and errno values as the six.
EXTENSION_MODULE = "wasmgate_nn"
EXTENSION_SIGNATURES: dict[str, int] = {"get_output_dims": 5}

#: Every import module the host defines, with its imports and their arity.
IMPORTS: dict[str, dict[str, int]] = {MODULE: SIGNATURES, EXTENSION_MODULE: EXTENSION_SIGNATURES}


_TENSOR = struct.Struct("<IIB3xII")


class _Failure(Exception):
    """Internal: aborts an import with an errno and a cause. Never leaves this module."""

    def __init__(self, errno: NnErrno, cause: str) -> None:
        super().__init__(cause)
        self.errno = errno


class _Context:
    __slots__ = ("graph", "inputs", "out_bytes", "outputs")

    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph
        self.inputs: list[np.ndarray | None] = [None] * len(graph.inputs)
        self.outputs: list[object] | None = None
        self.out_bytes = 0  # what ``outputs`` hold, counted against the instance's budget


class NnBudget:
    """What one function's guests make the host hold through WASI-NN (setting ``max_nn_memory_bytes``): the
    models they loaded from their own memory, by digest, counted once for all its instances while the function
    is loaded. (Models pushed with the function, loaded by name, are the gateway's to count.)"""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._models: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit_model(self, digest: str, nbytes: int) -> None:
        """Count a model before its session is built. Raises _Failure(TOO_LARGE) past the budget."""
        with self._lock:
            if digest in self._models:
                return
            held = sum(self._models.values())
            if held + nbytes > self.limit:
                raise _Failure(
                    NnErrno.TOO_LARGE,
                    f"a model of {nbytes} bytes beside the {held} bytes of models this function loaded already "
                    f"would pass its {self.limit}-byte budget (setting max_nn_memory_bytes)",
                )
            self._models[digest] = nbytes


class NnState:
    """WASI-NN state of one guest instance: its memory, its handles, and the models it may load by name."""

    def __init__(
        self,
        backend: OnnxBackend,
        models: Mapping[str, ModelRef],
        limits: SandboxLimits,
        watchdog: Watchdog,
        budget: NnBudget | None = None,
    ) -> None:
        self.backend = backend
        self.models = models
        self.limits = limits
        self.watchdog = watchdog
        self.budget = budget or NnBudget(limits.max_nn_memory_bytes)
        self._held_bytes = 0  # the tensors this instance's contexts hold (inputs set, outputs computed)
        #: The instance's deadline, which its host calls (a run here, a sleep in poll_oneoff) are held to.
        self.deadline = Deadline()
        self.graphs: list[OnnxGraph] = []
        self.contexts: list[_Context] = []
        self._last_error: str | None = None
        self.mem: GuestMemory | None = None
        #: On the compiled host (wasm_host.compiled): this instance's state there, which holds its execution
        #: contexts, tensors, byte count and last error; made when the memory is attached.
        self.native: Any = None

    @property
    def last_error(self) -> str | None:
        """The cause of the last failed import (``"<import>: <cause>"``), None when none failed."""
        if self.native is not None:
            cause: str | None = self.native.peek_error()
            return cause
        return self._last_error

    @last_error.setter
    def last_error(self, cause: str | None) -> None:
        if self.native is not None:
            self.native.set_error(cause)
        else:
            self._last_error = cause

    @property
    def held_bytes(self) -> int:
        """Bytes of tensors this instance's execution contexts hold (counted against max_nn_memory_bytes)."""
        return int(self.native.held_bytes) if self.native is not None else self._held_bytes

    @held_bytes.setter
    def held_bytes(self, value: int) -> None:
        self._held_bytes = value

    def take_error(self) -> str | None:
        """The cause of the last failed import since the previous call, and forget it."""
        if self.native is not None:
            taken: str | None = self.native.take_error()
            return taken
        cause, self._last_error = self._last_error, None
        return cause

    def attach(self, memory: GuestMemory) -> None:
        self.mem = memory
        chost = self.backend.native
        if chost is not None:
            ctx, mem = memory.addresses()
            self.native = chost.State(ctx, mem, self.limits.max_tensor_bytes, self.budget.limit)

    def arm(self, deadline_ms: int) -> None:
        """Start a deadline for this instance's host calls (wasm_host.waits)."""
        self.deadline.arm(deadline_ms)
        if self.native is not None:
            self.native.arm(self.deadline.at)

    def sync_expired(self) -> None:
        """After a call into the guest on the compiled host: record in :attr:`deadline` what its watchdog
        stopped, in wasm_host.wasi_nn's words."""
        if self.native is not None and (code := self.native.expired):
            self.deadline.expired = _EXPIRED[code]

    def _memory(self) -> GuestMemory:
        if self.mem is None:
            raise _Failure(NnErrno.MISSING_MEMORY, "the module exports no memory")
        return self.mem

    # Guest memory access. An out-of-bounds range raises OutOfBounds, which the import's entry point turns
    # into invalid_argument, the one errno for a bad pointer.
    def _span(self, ptr: int, length: int) -> None:
        self._memory().address(ptr, length)

    def read(self, ptr: int, length: int) -> bytes:
        return self._memory().read(ptr, length)

    def read_u32s(self, ptr: int, count: int) -> tuple[int, ...]:
        return self._memory().read_u32s(ptr, count)

    def write(self, ptr: int, data: bytes) -> None:
        self._memory().write(ptr, data)

    def write_u32(self, ptr: int, value: int) -> None:
        self._memory().write_u32(ptr, value)

    # -- handles -------------------------------------------------------------------------------------------
    def _graph(self, handle: int) -> OnnxGraph:
        handle &= U32
        if handle >= len(self.graphs):
            raise _Failure(NnErrno.INVALID_ARGUMENT, f"no graph with handle {handle}")
        return self.graphs[handle]

    def _context(self, handle: int) -> _Context:
        handle &= U32
        if handle >= len(self.contexts):
            raise _Failure(NnErrno.INVALID_ARGUMENT, f"no execution context with handle {handle}")
        return self.contexts[handle]

    def _check_graph_room(self) -> None:
        """Before any work towards another graph: the per-instance cap."""
        if len(self.graphs) >= MAX_GRAPHS:
            raise _Failure(NnErrno.TOO_LARGE, f"an instance may load at most {MAX_GRAPHS} graphs")

    def _charge(self, delta: int) -> None:
        """Count ``delta`` more bytes of tensors held by this instance, before they are copied or kept."""
        if self.held_bytes + delta > self.budget.limit:
            raise _Failure(
                NnErrno.TOO_LARGE,
                f"{delta} more bytes of tensors beside the {self.held_bytes} this instance holds would pass its "
                f"{self.budget.limit}-byte budget (setting max_nn_memory_bytes)",
            )
        self.held_bytes += delta

    def _add_graph(self, graph: OnnxGraph, out_ptr: int) -> None:
        self._check_graph_room()
        self.graphs.append(graph)
        if self.native is not None:
            self.native.add_graph(graph.native)
        self.write_u32(out_ptr, len(self.graphs) - 1)

    # -- the six imports -----------------------------------------------------------------------------------
    def load(self, builders_ptr: int, builders_len: int, encoding: int, target: int, graph_out: int) -> None:
        encoding &= U32
        target &= U32
        if encoding not in (ENCODING_ONNX, ENCODING_AUTODETECT):
            raise _Failure(NnErrno.INVALID_ENCODING, f"encoding {encoding} is not supported; use onnx (1)")
        if target not in TARGETS:
            raise _Failure(NnErrno.INVALID_ARGUMENT, f"unknown execution target {target}")
        if builders_len & U32 != 1:
            raise _Failure(NnErrno.INVALID_ARGUMENT, "an ONNX graph takes exactly one builder (the model bytes)")
        self._span(graph_out, 4)
        self._check_graph_room()
        model_ptr, model_len = self.read_u32s(builders_ptr, 2)
        if model_len > self.limits.max_model_bytes:
            raise _Failure(
                NnErrno.TOO_LARGE,
                f"model of {model_len} bytes exceeds the {self.limits.max_model_bytes}-byte limit",
            )
        model = self.read(model_ptr, model_len)
        digest = hashlib.sha256(model).hexdigest()
        self.budget.admit_model(digest, model_len)
        try:
            graph = self.backend.load(model, digest)
        except Exception as exc:
            raise _Failure(NnErrno.RUNTIME_ERROR, str(exc)) from exc
        self._add_graph(graph, graph_out)

    def load_by_name(self, name_ptr: int, name_len: int, graph_out: int) -> None:
        name_len &= U32
        if name_len > MAX_NAME:
            raise _Failure(NnErrno.INVALID_ARGUMENT, f"model name longer than {MAX_NAME} bytes")
        self._span(graph_out, 4)
        self._check_graph_room()
        try:
            name = self.read(name_ptr, name_len).decode()
        except UnicodeDecodeError as exc:
            raise _Failure(NnErrno.INVALID_ARGUMENT, "model name is not UTF-8") from exc
        ref = self.models.get(name)
        if ref is None:
            allowed = ", ".join(sorted(self.models)) or "none"
            raise _Failure(
                NnErrno.NOT_FOUND,
                f"model {name!r} was not pushed with this function (it may load: {allowed}); "
                f"push it with --model {name}=FILE.onnx",
            )
        try:
            graph = self.backend.load_ref(ref)
        except Exception as exc:
            raise _Failure(NnErrno.RUNTIME_ERROR, f"loading model {name!r}: {exc}") from exc
        self._add_graph(graph, graph_out)

    def init_execution_context(self, graph: int, ctx_out: int) -> None:
        g = self._graph(graph)
        self._span(ctx_out, 4)
        if len(self.contexts) >= MAX_CONTEXTS:
            raise _Failure(NnErrno.TOO_LARGE, f"an instance may create at most {MAX_CONTEXTS} contexts")
        self.contexts.append(_Context(g))
        self.write_u32(ctx_out, len(self.contexts) - 1)

    def set_input(self, ctx: int, index: int, tensor_ptr: int) -> None:
        c = self._context(ctx)
        index &= U32
        dims_ptr, dims_len, ttype, data_ptr, data_len = _TENSOR.unpack(self.read(tensor_ptr, 20))
        if index >= len(c.graph.inputs):
            raise _Failure(NnErrno.INVALID_ARGUMENT, f"input index {index}: the graph has {len(c.graph.inputs)}")
        want = c.graph.inputs[index]
        if ttype not in TENSOR_TYPES:
            raise _Failure(NnErrno.INVALID_ARGUMENT, f"input {index}: unknown tensor type {ttype}")
        datatype, np_dtype, size = TENSOR_TYPES[ttype]
        if datatype != want.datatype:
            raise _Failure(
                NnErrno.INVALID_ARGUMENT,
                f"input {index} ({want.name!r}) takes {want.onnx_type}, the guest passed {datatype}",
            )
        if dims_len > MAX_DIMS:
            raise _Failure(NnErrno.INVALID_ARGUMENT, f"input {index}: {dims_len} dims (at most {MAX_DIMS})")
        dims = self.read_u32s(dims_ptr, dims_len)
        if want.shape and not want.accepts(dims):
            raise _Failure(
                NnErrno.INVALID_ARGUMENT,
                f"input {index} ({want.name!r}) takes shape {list(want.shape)}, the guest passed {list(dims)}",
            )
        nbytes = size * math.prod(dims)
        if nbytes > self.limits.max_tensor_bytes:
            raise _Failure(NnErrno.TOO_LARGE, f"input {index}: {nbytes} bytes exceeds the tensor limit")
        if data_len != nbytes:
            raise _Failure(
                NnErrno.INVALID_ARGUMENT,
                f"input {index}: data_len {data_len} but dims {list(dims)} need {nbytes}",
            )
        old = c.inputs[index]
        self._charge(data_len - (old.nbytes if old is not None else 0) - c.out_bytes)
        c.inputs[index] = np.frombuffer(self.read(data_ptr, data_len), dtype=np_dtype).reshape(dims)
        c.outputs, c.out_bytes = None, 0

    def compute(self, ctx: int) -> None:
        c = self._context(ctx)
        for x in c.inputs:
            if x is None:
                missing = [c.graph.inputs[i].name for i, y in enumerate(c.inputs) if y is None]
                raise _Failure(NnErrno.UNSUPPORTED_OPERATION, f"compute before set_input of {missing}")
        with self.watchdog.watch(self.deadline) as options:
            try:
                outputs = c.graph.run(c.inputs, options)  # type: ignore[arg-type]  # None excluded just above
            except Exception as exc:
                if self.deadline.expired:
                    self.deadline.expired = "wasi-nn compute (onnxruntime stopped)"
                    raise _Failure(NnErrno.RUNTIME_ERROR, "onnxruntime was stopped at the deadline") from exc
                raise _Failure(NnErrno.RUNTIME_ERROR, f"onnxruntime: {str(exc).strip()[:500]}") from exc
        # The outputs' size is known only now: counted before they are kept, and dropped if they do not fit.
        out_bytes = sum(o.nbytes for o in outputs if isinstance(o, np.ndarray))
        previous, c.outputs, c.out_bytes = c.out_bytes, None, 0
        self.held_bytes -= previous
        self._charge(out_bytes)
        c.outputs, c.out_bytes = outputs, out_bytes

    def _output(self, call: str, ctx: int, index: int) -> np.ndarray:
        """Output ``index`` of a computed context, as a numeric tensor (what both output imports read)."""
        c = self._context(ctx)
        index &= U32
        if c.outputs is None:
            raise _Failure(NnErrno.UNSUPPORTED_OPERATION, f"{call} before compute")
        if index >= len(c.outputs):
            raise _Failure(NnErrno.INVALID_ARGUMENT, f"output index {index}: the graph has {len(c.outputs)}")
        value = c.outputs[index]
        if not isinstance(value, np.ndarray) or value.dtype.kind in "OUS":
            raise _Failure(
                NnErrno.UNSUPPORTED_OPERATION,
                f"output {index} ({c.graph.outputs[index].onnx_type}) is not a numeric tensor",
            )
        return value

    def get_output(self, ctx: int, index: int, out_ptr: int, out_max: int, written_out: int) -> None:
        value = self._output("get_output", ctx, index)
        index &= U32
        out_max &= U32
        self._span(written_out, 4)
        self._span(out_ptr, out_max)  # the whole buffer the guest claims, not only what this output fills
        nbytes = value.nbytes
        if nbytes > self.limits.max_tensor_bytes:
            raise _Failure(NnErrno.TOO_LARGE, f"output {index}: {nbytes} bytes exceeds the tensor limit")
        if nbytes > out_max:
            raise _Failure(NnErrno.TOO_LARGE, f"output {index} has {nbytes} bytes, the buffer {out_max}")
        if not (value.dtype.isnative and LITTLE_ENDIAN):
            value = value.astype(value.dtype.newbyteorder("<"))
        contiguous = np.ascontiguousarray(value)
        self._memory().write_from(out_ptr, contiguous.ctypes.data, nbytes)
        self.write_u32(written_out, nbytes)

    # -- wasmgate's extension ------------------------------------------------------------------------------
    def get_output_dims(self, ctx: int, index: int, dims_ptr: int, dims_max: int, ndim_out: int) -> None:
        """Output ``index``'s actual dims, as ``ndim`` u32 values at ``dims_ptr``, and ``ndim`` at ``ndim_out``.

        The whole ``dims_max``-entry array the guest claims must lie in its memory. When the output has more
        than ``dims_max`` dims, or a dim that does not fit a u32 below 0xFFFFFFFF (the ABI's "unknown"; possible
        only for an empty tensor), the errno is too_large and only the rank is written, so a guest may ask for
        the rank alone with ``dims_max = 0``."""
        value = self._output("get_output_dims", ctx, index)
        index &= U32
        dims_max &= U32
        self._span(ndim_out, 4)
        self._span(dims_ptr, 4 * dims_max)
        shape = value.shape
        self.write_u32(ndim_out, len(shape))
        if len(shape) > dims_max:
            raise _Failure(NnErrno.TOO_LARGE, f"output {index} has {len(shape)} dims, the buffer {dims_max}")
        for d in shape:
            if d >= U32:
                raise _Failure(NnErrno.TOO_LARGE, f"output {index}: dimension {d} does not fit a u32")
        if shape:
            self._memory().write(dims_ptr, struct.pack(f"<{len(shape)}I", *shape))


#: What the compiled host's ticker stopped (State.expired), as :meth:`NnState.compute` words it.
_EXPIRED = {1: "wasi-nn compute", 2: "wasi-nn compute (onnxruntime stopped)"}


class WasiNnHost:
    """Defines the six imports and wasmgate's extension (:data:`IMPORTS`) on a linker, and routes each call to
    the instance running on this thread. With ``native`` (the compiled host, wasm_host.compiled), the imports it
    implements are its callbacks; ``load`` and ``load_by_name`` stay the Python ones here."""

    def __init__(self, native: ModuleType | None = None) -> None:
        self._local = threading.local()
        self._funcs = RawLinkerFuncs()
        self.native = native
        # Stops the Python host's runs at their deadline; every instance's runs share it. The compiled host's runs
        # are stopped by its own ticker (wasm_host.engine.WasmEngine.start).
        self.watchdog = Watchdog()

    def current(self) -> NnState | None:
        """The state bound to this thread (:meth:`bind`), or None outside a call into a guest."""
        state: NnState | None = getattr(self._local, "state", None)
        return state

    def bind(self, state: NnState | None) -> NnState | None:
        """Route this thread's WASI-NN calls to ``state`` (None: to nothing) while a call into its guest runs.
        Returns the previous binding, to be restored by the caller."""
        previous: NnState | None = getattr(self._local, "state", None)
        self._local.state = state
        if self.native is not None:
            self.native.bind(None if state is None else state.native)
        return previous

    def bind_python(self, state: NnState | None) -> NnState | None:
        """:meth:`bind` for the Python imports only (the compiled host's request binds its own)."""
        previous: NnState | None = getattr(self._local, "state", None)
        self._local.state = state
        return previous

    def define(self, linker: wasmtime.Linker) -> None:
        compiled: dict[str, int] = self.native.callbacks() if self.native is not None else {}
        for module, signatures in IMPORTS.items():
            for name, arity in signatures.items():
                if name in compiled:
                    self._funcs.define_address(linker, module, name, arity, compiled[name])
                else:
                    self._funcs.define(linker, module, name, arity, self._entry(name))

    def _entry(self, name: str) -> Callable[..., int]:
        local = self._local
        method = getattr(NnState, name)  # looked up once, not per call
        ok, busy, invalid = int(NnErrno.SUCCESS), int(NnErrno.BUSY), int(NnErrno.INVALID_ARGUMENT)

        def call(*args: int) -> int:
            state: NnState | None = getattr(local, "state", None)
            if state is None:  # called outside a bound request, e.g. from a start function
                return busy
            try:
                method(state, *args)
            except _Failure as failure:
                state.last_error = f"{name}: {failure}"
                log.debug("wasi-nn %s -> %s: %s", name, failure.errno.name.lower(), failure)
                return int(failure.errno)
            except OutOfBounds as exc:
                state.last_error = f"{name}: {exc}"
                log.debug("wasi-nn %s -> invalid_argument: %s", name, exc)
                return invalid
            except Exception as exc:  # a host bug must still not cross into the guest
                state.last_error = f"{name}: internal error: {exc!r}"
                log.exception("wasi-nn %s failed unexpectedly", name)
                return int(NnErrno.RUNTIME_ERROR)
            return ok

        call.__name__ = f"wasi_nn_{name}"
        return call

"""A lean path across the Wasm boundary, on wasmtime's "unchecked" C API.

wasmtime-py's public ``Func.__call__`` looks up the function type and converts every value through ``Val``
on each call, and its host-function trampoline builds a ``Caller`` and converts arguments the same way. That
costs tens of microseconds per crossing, and one request crosses about six times. Here:

- :class:`RawExport` calls an export through ``wasmtime_func_call_unchecked`` with a preallocated raw buffer;
- :func:`define_raw` defines a host import through ``wasmtime_linker_define_func_unchecked``, whose callback
  reads its i32 arguments straight from the raw buffer;
- :class:`RawMemory` reads the memory's base and size with one FFI call each.

Types are checked once, where the module is validated (``guest.check_abi``), which is what makes skipping the
per-call checks sound. This uses private attributes of wasmtime-py objects (``Store._context()``,
``Func._func``, ``Memory._memory``), so the wasmtime dependency is pinned to one major version.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import wasmtime
from wasmtime import _ffi as ffi

_TrapPtr = ctypes.POINTER(ffi.wasm_trap_t)


class RawExport:
    """One exported function of one instance, callable with i32/i64 arguments and one i32/i64 result."""

    __slots__ = ("_buf", "_ctx", "_func", "_kinds", "_owner")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, params: tuple[str, ...], result: str | None):
        self._owner = func  # keeps the wasmtime_func_t alive
        self._ctx = store._context()
        self._func = ctypes.byref(func._func)
        self._buf = (ffi.wasmtime_val_raw_t * max(len(params), 1))()
        self._kinds = (params, result)

    def __call__(self, *args: int) -> int:
        buf = self._buf
        params, result = self._kinds
        for i, (kind, value) in enumerate(zip(params, args, strict=True)):
            if kind == "i64":
                buf[i].i64 = value
            else:
                buf[i].i32 = value
        trap = _TrapPtr()
        error = ffi.wasmtime_func_call_unchecked(self._ctx, self._func, buf, len(buf), ctypes.byref(trap))
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if trap:
            raise wasmtime.Trap._from_ptr(trap)
        if result is None:
            return 0
        return int(buf[0].i64 if result == "i64" else buf[0].i32)


# Private bindings (``dll[name]`` makes a new function object, so wasmtime-py's own are untouched) that return
# the base address as a plain int rather than a ctypes pointer that must then be cast.
_memory_data = ffi.dll["wasmtime_memory_data"]
_memory_data.restype = ctypes.c_void_p
_memory_data.argtypes = [ctypes.POINTER(ffi.wasmtime_context_t), ctypes.POINTER(ffi.wasmtime_memory_t)]
_memory_size = ffi.dll["wasmtime_memory_data_size"]
_memory_size.restype = ctypes.c_size_t
_memory_size.argtypes = [ctypes.POINTER(ffi.wasmtime_context_t), ctypes.POINTER(ffi.wasmtime_memory_t)]


class RawMemory:
    """Base address and size of one instance's linear memory. Read them again after any guest code ran: the
    memory can move when the guest grows it."""

    __slots__ = ("_ctx", "_mem", "_owner")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._owner = memory
        self._ctx = store._context()
        self._mem = ctypes.byref(memory._memory)

    def size(self) -> int:
        return int(_memory_size(self._ctx, self._mem))

    def base(self) -> int:
        return int(_memory_data(self._ctx, self._mem) or 0)


HostFn = Callable[..., int]


_FINALIZE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _env: None)


class RawLinkerFuncs:
    """Host functions defined on a linker through the unchecked API. Holds the ctypes callbacks alive for as
    long as the linker may call them."""

    def __init__(self) -> None:
        self._callbacks: list[object] = []

    def define(self, linker: wasmtime.Linker, module: str, name: str, arity: int, fn: HostFn) -> None:
        """Define ``module.name`` as ``(i32 x arity) -> i32``. ``fn`` must not raise: an exception here has
        nowhere to go but a crash, so callers catch everything and return an errno."""

        def callback(_env: int, _caller: object, values: ctypes.Array[ffi.wasmtime_val_raw], _n: int) -> int:
            values[0].i32 = fn(*[values[i].i32 for i in range(arity)])
            return 0

        if arity == 1:

            def callback(_env: int, _caller: object, values: ctypes.Array[ffi.wasmtime_val_raw], _n: int) -> int:
                values[0].i32 = fn(values[0].i32)
                return 0

        elif arity == 3:

            def callback(_env: int, _caller: object, values: ctypes.Array[ffi.wasmtime_val_raw], _n: int) -> int:
                values[0].i32 = fn(values[0].i32, values[1].i32, values[2].i32)
                return 0

        elif arity == 5:

            def callback(_env: int, _caller: object, values: ctypes.Array[ffi.wasmtime_val_raw], _n: int) -> int:
                v = values
                values[0].i32 = fn(v[0].i32, v[1].i32, v[2].i32, v[3].i32, v[4].i32)
                return 0

        raw_cb = ffi.wasmtime_func_unchecked_callback_t(callback)
        self._callbacks.append(raw_cb)
        i32 = wasmtime.ValType.i32()
        ty = wasmtime.FuncType([i32] * arity, [i32])
        mod, nm = module.encode(), name.encode()
        error = ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(),
            ctypes.create_string_buffer(mod),
            len(mod),
            ctypes.create_string_buffer(nm),
            len(nm),
            ty.ptr(),
            raw_cb,
            None,
            _FINALIZE,
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)

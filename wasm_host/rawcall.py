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
import struct
from collections.abc import Callable

import wasmtime
from wasmtime import _ffi as ffi

_TrapPtr = ctypes.POINTER(ffi.wasm_trap_t)


class RawExport:
    """One exported function of one instance, callable with i32/i64 arguments and one i32/i64 result.

    The argument/result buffer and the ctypes views of its slots are made once; a call only stores the
    arguments, calls, and loads the result.
    """

    __slots__ = ("_buf", "_ctx", "_func", "_n", "_owner", "_result", "_slots", "_trap", "_trap_ref", "address")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, params: tuple[str, ...], result: str | None):
        self._owner = func  # keeps the wasmtime_func_t alive
        self._ctx = store._context()
        self._func = ctypes.byref(func._func)
        self._n = max(len(params), 1)
        self._buf = (ffi.wasmtime_val_raw_t * self._n)()
        base = ctypes.addressof(self._buf)
        size = ctypes.sizeof(ffi.wasmtime_val_raw_t)
        # Each slot is a union; its i32 and i64 members both start at the slot's first byte (little-endian).
        self._slots = [_SCALAR[kind].from_address(base + i * size) for i, kind in enumerate(params)]
        self._result = _SCALAR[result].from_address(base) if result else None
        self._trap = _TrapPtr()
        self._trap_ref = ctypes.byref(self._trap)
        #: The ``wasmtime_func_t``'s address, for the compiled host (valid while this object lives).
        self.address = ctypes.addressof(func._func)

    def __call__(self, *args: int) -> int:
        for slot, value in zip(self._slots, args, strict=True):
            slot.value = value
        error = ffi.wasmtime_func_call_unchecked(self._ctx, self._func, self._buf, self._n, self._trap_ref)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if self._trap:
            trap = wasmtime.Trap._from_ptr(self._trap)  # takes ownership of the trap object
            self._trap = _TrapPtr()
            self._trap_ref = ctypes.byref(self._trap)
            raise trap
        return 0 if self._result is None else int(self._result.value)


_SCALAR: dict[str, type[ctypes.c_int32] | type[ctypes.c_int64]] = {"i32": ctypes.c_int32, "i64": ctypes.c_int64}

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

    def addresses(self) -> tuple[int, int]:
        """The store context's and the ``wasmtime_memory_t``'s addresses, for the compiled host (valid while
        this object lives)."""
        return int(ctypes.cast(self._ctx, ctypes.c_void_p).value or 0), ctypes.addressof(self._owner._memory)

    def base(self) -> int:
        return int(_memory_data(self._ctx, self._mem) or 0)


HostFn = Callable[..., int]
#: What a host function returns to trap instead of returning to the guest (outside the range of any errno).
TRAP = -(1 << 31)
#: The message of such a trap; the caller knows its cause (wasm_host.waits.Deadline.expired).
TRAP_MESSAGE = b"wasmgate: the host stopped the call"
_TRAP_TEXT = ctypes.create_string_buffer(TRAP_MESSAGE)


_FINALIZE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _env: None)
# wasmtime_func_unchecked_callback_t with plain addresses for the caller and the values.
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class RawLinkerFuncs:
    """Host functions defined on a linker through the unchecked API. Holds the ctypes callbacks alive for as
    long as the linker may call them."""

    def __init__(self) -> None:
        self._callbacks: list[object] = []

    def define(self, linker: wasmtime.Linker, module: str, name: str, arity: int, fn: HostFn) -> None:
        """Define ``module.name`` as ``(i32 x arity) -> i32``. ``fn`` must not raise: an exception here has
        nowhere to go but a crash, so callers catch everything and return an errno, or :data:`TRAP` to trap."""

        # The values arrive as an address (not a POINTER to the union, whose every index would build a ctypes
        # object): i32 argument k sits at byte 16*k, and the i32 result goes in slot 0.
        fmt = struct.Struct("<" + "i12x" * arity)
        stride = ctypes.sizeof(ffi.wasmtime_val_raw_t)
        assert stride == 16, "wasmtime_val_raw_t is expected to be 16 bytes"
        string_at = ctypes.string_at
        from_address = ctypes.c_int32.from_address
        size = stride * arity

        def callback(_env: int, _caller: int, values: int, _n: int) -> int:
            result = fn(*fmt.unpack(string_at(values, size)))
            if result == TRAP:  # the trap's ownership passes to wasmtime with its address
                trap = ffi.wasmtime_trap_new(_TRAP_TEXT, len(TRAP_MESSAGE))
                return ctypes.cast(trap, ctypes.c_void_p).value or 0
            from_address(values).value = result
            return 0

        own_cb = _CALLBACK(callback)
        self._callbacks.append(own_cb)
        self.define_address(linker, module, name, arity, ctypes.cast(own_cb, ctypes.c_void_p).value or 0)

    def define_address(self, linker: wasmtime.Linker, module: str, name: str, arity: int, address: int) -> None:
        """Define ``module.name`` as ``(i32 x arity) -> i32`` with a compiled callback: the address of a
        ``wasmtime_func_unchecked_callback_t`` (wasm_host.compiled), which must live as long as the linker."""
        raw_cb = ctypes.cast(address, ffi.wasmtime_func_unchecked_callback_t)
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

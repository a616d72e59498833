"""Bounds-checked access to a guest's linear memory.

wasmtime-py's raw pointer access is not bounds-checked, so every guest pointer goes through here: masked to u32
(wasm i32 values arrive signed) and checked against the memory's size.
"""

from __future__ import annotations

import ctypes
import struct

import wasmtime

from wasm_host.rawcall import RawMemory

U32 = 0xFFFFFFFF


class OutOfBounds(ValueError):
    """A guest pointer and length outside its memory. Callers turn it into an errno or a GuestFailure."""


class GuestMemory:
    """Bounds-checked reads and writes of one instance's memory.

    Two facts make this cheap and still safe. The engine is configured with ``memory_may_move = False``, so the
    base address is fixed for the instance's life. And a wasm memory never shrinks, so a range that fits the
    size last seen still fits now: the size is read again only when a range does not fit it.
    """

    __slots__ = ("_base", "_raw", "_size")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._raw = RawMemory(store, memory)
        self._base = self._raw.base()
        self._size = self._raw.size()

    def addresses(self) -> tuple[int, int]:
        """The store context's and the memory's addresses, for the compiled host (wasm_host.compiled)."""
        return self._raw.addresses()

    @property
    def size(self) -> int:
        self._size = self._raw.size()
        return self._size

    def address(self, ptr: int, length: int) -> int:
        """The host address of guest bytes [ptr, ptr+length), after checking they lie inside memory."""
        ptr &= U32
        if length < 0 or ptr + length > self._size:
            size = self.size  # the guest may have grown its memory since we last looked
            if length < 0 or ptr + length > size:
                raise OutOfBounds(f"guest range [{ptr}, {ptr}+{length}) is outside its {size}-byte memory")
        return self._base + ptr

    def read(self, ptr: int, length: int) -> bytes:
        return ctypes.string_at(self.address(ptr, length), length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        ctypes.memmove(self.address(ptr, len(data)), data, len(data))

    def write_from(self, ptr: int, source_address: int, length: int) -> None:
        """Copy ``length`` bytes from a host address (a numpy array's buffer, say) into guest memory."""
        ctypes.memmove(self.address(ptr, length), source_address, length)

    def read_u32s(self, ptr: int, count: int) -> tuple[int, ...]:
        return struct.unpack(f"<{count}I", self.read(ptr, 4 * count))

    def write_u32(self, ptr: int, value: int) -> None:
        ctypes.c_uint32.from_address(self.address(ptr, 4)).value = value

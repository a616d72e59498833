"""Bounds-checked access to a guest's linear memory.

wasmtime-py's raw pointer access is not bounds-checked, so every guest pointer goes through here: masked to u32
(wasm i32 values arrive signed) and checked against the memory's size at the moment of access, since the
guest may have grown (and so moved) its memory since the last call.
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
    __slots__ = ("_pinned", "_raw")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._raw = RawMemory(store, memory)
        self._pinned: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return self._raw.size()

    def pin(self) -> None:
        """Read base and size once for the duration of a host call. No guest code runs during a host call, so
        the memory cannot grow or move until :meth:`unpin`."""
        self._pinned = (self._raw.base(), self._raw.size())

    def unpin(self) -> None:
        self._pinned = None

    def address(self, ptr: int, length: int) -> int:
        """The host address of guest bytes [ptr, ptr+length), after checking they lie inside memory."""
        ptr &= U32
        base, size = self._pinned or (self._raw.base(), self._raw.size())
        if length < 0 or ptr + length > size:
            raise OutOfBounds(f"guest range [{ptr}, {ptr}+{length}) is outside its {size}-byte memory")
        return base + ptr

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
        self.write(ptr, struct.pack("<I", value))

"""What a module asks of the compiler, read from its binary before anything compiles it: how many functions it
defines and the size of its largest function body.

Compile time and memory grow with both (a 7 MB module of one 1M-instruction function took minutes and gigabytes
to compile; 200,000 tiny functions half a minute and a gigabyte that stayed resident), so a push is refused on
these counts at once, rather than after the compiler has spent them. Only the section headers and the code
section's body sizes are read (LEB128 lengths, as the binary format defines them); everything else is skipped,
and validation is wasmtime's.
"""

from __future__ import annotations

import dataclasses

MAGIC = b"\0asm"
CODE_SECTION = 10


@dataclasses.dataclass(frozen=True)
class CodeShape:
    """The defined functions of a module and the size in bytes of its largest function body."""

    functions: int = 0
    largest_body: int = 0


class Malformed(ValueError):
    """The bytes are not laid out as a module; wasmtime then says exactly why."""


def code_shape(wasm: bytes) -> CodeShape:
    """The module's code section, counted. Raises Malformed when the sections cannot be walked."""
    if wasm[:4] != MAGIC or len(wasm) < 8:
        raise Malformed("no WebAssembly header")
    pos = 8
    while pos < len(wasm):
        section = wasm[pos]
        size, pos = _leb128(wasm, pos + 1)
        end = pos + size
        if end > len(wasm):
            raise Malformed("a section runs past the end of the module")
        if section == CODE_SECTION:
            return _bodies(wasm, pos, end)
        pos = end
    return CodeShape()


def _bodies(wasm: bytes, pos: int, end: int) -> CodeShape:
    count, pos = _leb128(wasm, pos)
    largest = 0
    for _ in range(count):
        size, pos = _leb128(wasm, pos)
        largest = max(largest, size)
        pos += size
        if pos > end:
            raise Malformed("a function body runs past its section")
    return CodeShape(count, largest)


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 u32 at ``pos``: its value and the position after it."""
    value = shift = 0
    for i in range(5):
        if pos + i >= len(data):
            raise Malformed("a length runs past the end of the module")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise Malformed("a length is longer than five bytes")

"""The function ABI's tensor-list format ("WGT1"), as specified in ``guest_modules/ABI.md``.

The host encodes a request (input tensors, then output specs) into one buffer that is written into guest
memory, and decodes the guest's response buffer. Decoding treats the buffer as hostile: every length is
checked before use, and a malformed response is a :class:`GuestFailure` naming what was wrong.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

from wasm_host.errors import GuestFailure
from wasm_host.tensors import DTYPES, DTYPES_BY_CODE, Tensor, TensorSpec, split_bytes

MAGIC = 0x31544757  # b"WGT1" little-endian
MAX_DIMS = 8
DYNAMIC_DIM = 0xFFFFFFFF

STATUS_OK = 0
STATUS_INVALID = 1  # the request is invalid: the buffer is a UTF-8 message (HTTP 400)
STATUS_FAILED = 2  # the function failed: the buffer is a UTF-8 message (HTTP 500)

_HEADER = struct.Struct("<IIII")
_ENTRY = struct.Struct("<IIII")


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def encode_request(inputs: Sequence[Tensor], outputs: Sequence[TensorSpec]) -> bytes:
    """One request buffer: the inputs with their data, then a data-less spec per declared output."""
    parts = [_HEADER.pack(MAGIC, len(inputs), len(outputs), 0)]
    for t in inputs:
        data = t.data
        parts.append(_entry_head(t.name, t.datatype, t.shape, len(data)))
        parts.append(data)
        parts.append(_PADDING[-len(data) & 7])
    parts.append(_specs(tuple(outputs)))
    return b"".join(parts)


_PADDING = [b"\0" * n for n in range(8)]
_DIMS = [struct.Struct(f"<{n}I") for n in range(MAX_DIMS + 1)]


@functools.lru_cache(maxsize=1024)
def _entry_head(name: str, datatype: str, shape: tuple[int, ...], data_len: int) -> bytes:
    """An entry up to its data: fixed fields, dims and name, each padded to 8. Cached: a function sees the
    same few names, types and shapes request after request."""
    raw_name = name.encode()
    ndim = len(shape)
    dims = struct.pack(f"<{ndim}I", *(DYNAMIC_DIM if d < 0 else d for d in shape))
    return b"".join(
        (
            _ENTRY.pack(len(raw_name), DTYPES[datatype].code, ndim, data_len),
            dims.ljust(_pad8(len(dims)), b"\0"),
            raw_name.ljust(_pad8(len(raw_name)), b"\0"),
        )
    )


@functools.lru_cache(maxsize=256)
def _specs(outputs: tuple[TensorSpec, ...]) -> bytes:
    """The output specs of a request; the same for every request of a function."""
    return b"".join(_entry_head(s.name, s.datatype, s.shape, 0) for s in outputs)


def unpack_result(result: int) -> tuple[int, int, int]:
    """Split ``handle``'s i64 into (status, pointer, length)."""
    r = result & 0xFFFF_FFFF_FFFF_FFFF
    return r >> 62, r & 0xFFFF_FFFF, (r >> 32) & 0x3FFF_FFFF


def decode_response(buf: bytes) -> list[Tensor]:
    """Parse a guest's response. Resolves at most one unknown (0xFFFFFFFF) dim per tensor from its data."""
    end = len(buf)
    if end < _HEADER.size:
        raise _bad("it is shorter than the 16-byte header")
    magic, count, n_specs, _ = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise _bad(f"bad magic 0x{magic:08x}")
    if n_specs != 0:
        raise _bad("n_outputs must be 0 in a response")
    pos = _HEADER.size
    tensors: list[Tensor] = []
    for i in range(count):
        if end - pos < _ENTRY.size:
            raise _bad(f"entry {i} is truncated")
        name_len, code, ndim, data_len = _ENTRY.unpack_from(buf, pos)
        if ndim > MAX_DIMS:
            raise _bad(f"entry {i} has {ndim} dims (at most {MAX_DIMS})")
        dtype = DTYPES_BY_CODE.get(code)
        if dtype is None:
            raise _bad(f"entry {i} has unknown dtype code {code}")
        pos += _ENTRY.size
        dims_end = pos + 4 * ndim
        name_at = pos + _pad8(4 * ndim)
        data_at = name_at + _pad8(name_len)
        next_at = data_at + _pad8(data_len)
        if dims_end > end or data_at + data_len > end:
            raise _bad(f"entry {i} runs past the end of the buffer")
        raw_dims = _DIMS[ndim].unpack_from(buf, pos)
        try:
            name = buf[name_at : name_at + name_len].decode()
        except UnicodeDecodeError as exc:
            raise _bad(f"entry {i} has a name that is not UTF-8") from exc
        data = bytes(buf[data_at : data_at + data_len])
        shape = _resolve_shape(name, dtype.name, raw_dims, data)
        tensors.append(Tensor(name, dtype.name, shape, data))
        pos = next_at
    return tensors


def _resolve_shape(name: str, datatype: str, raw_dims: Sequence[int], data: bytes) -> tuple[int, ...]:
    size = DTYPES[datatype].size
    if datatype == "BYTES":
        numel = len(split_bytes_checked(name, data))
    elif len(data) % size:
        raise _bad(f"output {name!r}: {len(data)} bytes is not a whole number of {datatype} elements")
    else:
        numel = len(data) // size
    unknown = [i for i, d in enumerate(raw_dims) if d == DYNAMIC_DIM]
    if len(unknown) > 1:
        raise _bad(f"output {name!r} has more than one unknown dimension")
    known = 1
    for d in raw_dims:
        known *= 1 if d == DYNAMIC_DIM else d
    if unknown:
        if known == 0 or numel % known:
            raise _bad(f"output {name!r}: {numel} elements do not fit dims {list(raw_dims)}")
        return tuple(numel // known if d == DYNAMIC_DIM else d for d in raw_dims)
    if known != numel:
        raise _bad(f"output {name!r}: {numel} elements of data for shape {list(raw_dims)}")
    return tuple(raw_dims)


def split_bytes_checked(name: str, data: bytes) -> list[bytes]:
    try:
        return split_bytes(data)
    except ValueError as exc:
        raise _bad(f"output {name!r}: {exc}") from exc


def _bad(why: str) -> GuestFailure:
    return GuestFailure(f"the function returned a malformed response: {why}")

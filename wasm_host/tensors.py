"""Tensors as they cross the gateway: OIP datatypes, their wire codes, and raw little-endian data.

A :class:`Tensor` carries its data as raw bytes (row-major, little-endian; BYTES in Triton's layout of a u32
length before each element), which is what the binary protocol, the guest ABI and WASI-NN all move. Conversion
to and from numpy happens only at the edges that need it (JSON, tests).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, slots=True)
class DType:
    name: str  #: the OIP datatype name
    code: int  #: the guest ABI's dtype code; 0-5 equal WASI-NN's tensor_type
    size: int  #: bytes per element; 0 for BYTES (variable)
    numpy: str  #: numpy dtype string; BF16 is carried as raw uint16


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("FP16", 0, 2, "<f2"),
        DType("FP32", 1, 4, "<f4"),
        DType("FP64", 2, 8, "<f8"),
        DType("UINT8", 3, 1, "u1"),
        DType("INT32", 4, 4, "<i4"),
        DType("INT64", 5, 8, "<i8"),
        DType("INT8", 6, 1, "i1"),
        DType("INT16", 7, 2, "<i2"),
        DType("UINT16", 8, 2, "<u2"),
        DType("UINT32", 9, 4, "<u4"),
        DType("UINT64", 10, 8, "<u8"),
        DType("BOOL", 11, 1, "?"),
        DType("BF16", 12, 2, "<u2"),
        DType("BYTES", 13, 0, "O"),
    )
}
DTYPES_BY_CODE: dict[int, DType] = {d.code: d for d in DTYPES.values()}

#: ONNX tensor element types (as onnxruntime names them) for each OIP datatype.
ONNX_TYPES: dict[str, str] = {
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(uint8)": "UINT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}

#: A dimension not known ahead, as OIP metadata writes it.
DYNAMIC = -1


@dataclasses.dataclass(frozen=True, slots=True)
class TensorSpec:
    """A declared tensor: name, OIP datatype, and shape with -1 for a dimension not known ahead."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: object) -> TensorSpec:
        if not isinstance(obj, dict):
            raise ValueError("a tensor spec must be an object with name, datatype and shape")
        name, datatype, shape = obj.get("name"), obj.get("datatype"), obj.get("shape")
        if not isinstance(name, str) or not name:
            raise ValueError("a tensor spec needs a non-empty string 'name'")
        if datatype not in DTYPES:
            raise ValueError(f"tensor {name!r}: unknown datatype {datatype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise ValueError(f"tensor {name!r}: shape must be a list of integers >= -1")
        return cls(name, datatype, tuple(shape))

    def matches(self, shape: Sequence[int]) -> bool:
        """Whether ``shape`` has this spec's rank and its fixed dimensions. (A plain loop: it runs for every
        input and output of every request.)"""
        want = self.shape
        if len(shape) != len(want):
            return False
        for w, got in zip(want, shape):  # noqa: B905, SIM110  # same length; a loop: no generator per call
            if w != got and w != DYNAMIC:
                return False
        return True


@dataclasses.dataclass(slots=True)
class Tensor:
    """A tensor with raw data. ``len(data)`` equals ``numel * size`` except for BYTES. Treated as a value and
    never changed once made; not frozen, because several are made for every request and a frozen dataclass's
    ``__init__`` costs three times as much."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_numpy(self) -> np.ndarray:
        """The data as a numpy array of this shape (BYTES: an object array of ``bytes``)."""
        if self.datatype == "BYTES":
            return np.array(split_bytes(self.data, self.numel), dtype=object).reshape(self.shape)
        return np.frombuffer(self.data, dtype=DTYPES[self.datatype].numpy).reshape(self.shape)

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray, datatype: str | None = None) -> Tensor:
        """A tensor from ``array``; ``datatype`` defaults to the one matching ``array.dtype``."""
        if datatype is None:
            datatype = datatype_of(array.dtype)
        if datatype == "BYTES":
            items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)]
            return cls(name, datatype, tuple(array.shape), join_bytes(items))
        data = np.ascontiguousarray(array, dtype=DTYPES[datatype].numpy).tobytes()
        return cls(name, datatype, tuple(int(d) for d in array.shape), data)


def datatype_of(dtype: np.dtype) -> str:
    """The OIP datatype for a numpy dtype."""
    if dtype.kind in "OSU":
        return "BYTES"
    for d in DTYPES.values():
        if d.name not in ("BF16", "BYTES") and np.dtype(d.numpy) == dtype.newbyteorder("<"):
            return d.name
    raise ValueError(f"no OIP datatype for numpy dtype {dtype}")


def join_bytes(items: Sequence[bytes]) -> bytes:
    """Triton's BYTES layout: each element as a u32 little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def split_bytes(data: bytes, count: int | None = None) -> list[bytes]:
    """Parse Triton's BYTES layout. Raises ValueError when it is truncated or the count differs."""
    out: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise ValueError("BYTES data is truncated inside an element length")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n > end - pos:
            raise ValueError("BYTES data is truncated inside an element")
        out.append(bytes(data[pos : pos + n]))
        pos += n
    if count is not None and len(out) != count:
        raise ValueError(f"BYTES data holds {len(out)} elements, the shape says {count}")
    return out


def expected_nbytes(datatype: str, shape: Sequence[int]) -> int | None:
    """Bytes of data for a fixed-size datatype and shape; None for BYTES."""
    size = DTYPES[datatype].size
    return None if size == 0 else size * math.prod(shape)

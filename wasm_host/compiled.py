"""The host path: the compiled host (``wasm_host._chost``, from wasm_host/csrc/chost.c) or the pure-Python one.

The compiled host runs one request's guest entries (``alloc``, ``handle``) and the WASI-NN imports on the
request path (``init_execution_context``, ``set_input``, ``compute``, ``get_output``, ``get_output_dims``) in C,
with the GIL released, against onnxruntime's C API. The rest stays Python on both paths: loading graphs (a
guest's ``load`` and ``load_by_name`` are Python callbacks that take the GIL), ``poll_oneoff``, instantiation,
``signature``, request encoding and response decoding. Checks, errno values and messages are the same on both
paths (tests/test_host_paths.py compares them).

The extension is linked against neither library: :func:`load` hands it the addresses of the wasmtime functions
it calls (from wasmtime-py's own library) and of onnxruntime's ``OrtGetApiBase`` (from the ``libonnxruntime``
shared library in the onnxruntime wheel). That library is a second copy of onnxruntime in the process (the
Python binding carries its own). A stored model served on the compiled path is opened by the C one for its runs;
the Python binding opens it only to read its descriptions, lets that session go once they are read (made again
only if a Python import runs the graph, see wasm_host.onnx_backend.OnnxGraph), and not at all once they are
saved beside the model's optimized graph (OnnxBackend.load_ref).

Modes (setting ``host_path``, env ``WASMGATE_HOST_PATH``): ``python``; ``compiled`` (refuses to start without the
extension); ``auto`` (compiled when it loads, else Python, with a warning logged once).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from wasm_host.abi import MAGIC, MAX_DIMS
from wasm_host.errors import Unavailable
from wasm_host.tensors import DTYPES

log = logging.getLogger("wasmgate.host")

HOST_PATHS = ("python", "compiled", "auto")


@functools.cache
def _native() -> ModuleType:
    """The extension, initialised with the two libraries' entry points. Raises what went wrong."""
    import onnxruntime
    from wasmtime import _ffi as ffi

    from wasm_host import _chost  # type: ignore[attr-defined]  # built by setup.py; absent: ImportError

    capi = Path(onnxruntime.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
    if not libs:
        raise OSError(f"no libonnxruntime shared library in {capi}")
    ort = ctypes.CDLL(str(libs[0]))
    ort.OrtGetApiBase.restype = ctypes.c_void_p
    ort.OrtGetApiBase.argtypes = []

    def address(name: str) -> int:
        return int(ctypes.cast(ffi.dll[name], ctypes.c_void_p).value or 0)

    version = _chost.init(
        ort.OrtGetApiBase(),
        address("wasmtime_func_call_unchecked"),
        address("wasmtime_memory_data"),
        address("wasmtime_memory_data_size"),
        address("wasmtime_context_set_epoch_deadline"),
        address("wasmtime_engine_increment_epoch"),
    )
    # The response format, from its one definition (wasm_host.abi, wasm_host.tensors), for _chost.parse.
    by_code = {d.code: d for d in DTYPES.values()}
    dtypes = tuple((by_code[c].name, by_code[c].size) for c in range(max(by_code) + 1))
    _chost.configure_response(MAGIC, MAX_DIMS, dtypes)
    _native.library = ort  # type: ignore[attr-defined]  # kept loaded for the process's life
    log.debug("compiled host on onnxruntime %s (%s)", version, libs[0].name)
    return _chost  # type: ignore[no-any-return]


_warned: list[bool] = []


def load(mode: str) -> ModuleType | None:
    """The compiled host for ``mode`` (see the module docstring), or None for the Python one. Raises
    :class:`Unavailable` for ``compiled`` when the extension cannot be loaded."""
    if mode not in HOST_PATHS:
        raise ValueError(f"unknown host path {mode!r}; use one of {', '.join(HOST_PATHS)}")
    if mode == "python":
        return None
    try:
        return _native()
    except Exception as exc:  # not built, or a library that does not match: the Python host serves
        if mode == "compiled":
            raise Unavailable(
                f"the compiled host cannot be loaded ({exc}); use host_path=python or host_path=auto"
            ) from exc
        if not _warned:
            _warned.append(True)
            log.warning("the compiled host cannot be loaded (%s); serving on the pure-Python host", exc)
        return None


#: ``pack(data, kind, numel)`` and ``unpack(data, kind)``: see :func:`packers`.
Pack = Callable[[object, str, int], "bytes | None"]
Unpack = Callable[[bytes, str], "list[float] | list[int] | None"]


def packers() -> tuple[Pack, Unpack] | None:
    """The extension's two converters of a tensor's numbers (wasm_host/csrc/pack.c), or None where it is not
    built; they call neither library, so they need no :func:`load`. ``kind`` is ``f`` (FP32), ``d`` (FP64), ``i``
    (INT32) or ``q`` (INT64). ``pack(data, kind, numel)``: a JSON input's ``numel`` numbers (nested lists) as its
    bytes, exactly as numpy would convert them, or None for anything it does not take, which numpy then converts
    or refuses (gateway.codec). ``unpack(data, kind)``: the bytes as a flat list of Python numbers, as numpy's
    ``tolist()`` makes them."""
    try:
        from wasm_host import _chost  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _chost.pack, _chost.unpack

"""Giving freed memory back to the operating system after models are unloaded.

Dropping a function's onnxruntime sessions frees their weights and their CPU arena (onnxruntime's arena is
per session and goes with it), but into the C allocator, not to the OS: glibc's malloc keeps freed memory in
its per-thread arenas, and a gateway runs sessions on many threads, so the resident set stays near its peak
(measured with all-MiniLM-L6-v2 at batch 8 x 64 on eight threads: 211 MB after the session was dropped, 151 MB
once trimmed, from a 132 MB baseline). :func:`release` collects Python's cycles, so that every session really is
gone, then asks glibc to trim every arena (``malloc_trim(0)``). On other C libraries it only collects.

What was tried instead, and why not (bench/memory.py prints the figures): turning the CPU arena off left more
behind (glibc fragments across threads: 262 MB in the same test) and costs every run; arena shrinkage after
every run lowers the peak while loaded, not what is left after unloading, and costs every run too; both trade
warm latency for nothing that scale to zero needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim  # glibc only: musl and macOS have none
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release() -> None:
    """Collect unreachable Python objects (sessions caught in reference cycles among them), then return the C
    allocator's free memory to the OS where it can (glibc). Costs a full collection and a walk of the heap,
    milliseconds to tens of milliseconds: call it after unloading, never on a request's path. ctypes drops the
    GIL for the trim, so other threads run meanwhile."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

"""Waits a guest controls, bounded by its deadline: sleeps through WASI's ``poll_oneoff``, and WASI-NN's
``compute`` while onnxruntime runs.

The engine's epoch deadline interrupts guest code only: a host call runs to its end first. wasmtime's own
``poll_oneoff`` sleeps as long as the guest asks, so a guest sleeping 30 s held its worker thread for 30 s
whatever its deadline; and onnxruntime runs a session to completion. Both are bounded here:

- :class:`PollHost` replaces ``wasi_snapshot_preview1.poll_oneoff`` (defined over the WASI one, which the
  linker then shadows). A clock subscription sleeps only when its wake-up falls within the deadline; one that
  would wake past it does not sleep at all: the call traps at once, and the request fails as past its deadline
  (a guest that asks to sleep past its deadline would be stopped there anyway; the worker is free sooner).
  File-descriptor subscriptions are reported ready at once: a guest's only descriptors are empty stdio and
  read-only files, which never block. No guest wait holds a worker past its deadline.
- :class:`Watchdog` stops an onnxruntime run at the deadline through the run's ``terminate`` flag, which
  onnxruntime checks between operators: a run ends within one operator of its deadline.

Both report what ran into the deadline through the guest's :class:`Deadline`, so the request fails with a 504
that says where, rather than with whatever the guest makes of an errno.

Clocks (WASI preview 1): realtime (0) is the host's wall clock; monotonic (1) counts from the store's creation,
as wasmtime's WASI clock does, so an absolute monotonic wake-up is read against :attr:`Deadline.clock_origin`.
The CPU-time clocks (2, 3) are refused with ``EINVAL``, as wasmtime refuses them.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import onnxruntime as ort
import wasmtime

from wasm_host.rawcall import TRAP, RawLinkerFuncs

WASI_MODULE = "wasi_snapshot_preview1"
# WASI preview 1 errno values (wasi/api.h).
ESUCCESS, EFAULT, EINVAL, ENOTSUP = 0, 21, 28, 58
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
EVENTTYPE_CLOCK = 0
SUBCLOCKFLAGS_ABSTIME = 1
#: A subscription: userdata u64, tag u8 (then padding), and its union from byte 16: for a clock, id u32 (then
#: padding), timeout u64, precision u64, flags u16; for a descriptor, fd u32.
SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")
#: An event: userdata u64, error u16, type u8 (then padding), nbytes u64, flags u16.
EVENT = struct.Struct("<QHB5xQH6x")
assert SUBSCRIPTION.size == 48
assert EVENT.size == 32
#: The most subscriptions one call may pass (wasi-libc passes one or two); more is refused with EINVAL.
MAX_SUBSCRIPTIONS = 1024
#: How often the watchdog looks for runs past their deadline.
WATCH_INTERVAL_S = 0.005
#: After how long with no run in progress the watchdog's thread sleeps until the next one.
IDLE_AFTER_S = 1.0


class Deadline:
    """One instance's deadline, shared with the host calls it makes: when it falls (a ``time.monotonic``
    value), where its WASI monotonic clock starts (``time.monotonic_ns``), and what ran into it, if anything
    (None until then)."""

    __slots__ = ("at", "clock_origin", "expired")

    def __init__(self) -> None:
        self.at = float("inf")
        self.clock_origin = time.monotonic_ns()
        self.expired: str | None = None

    def arm(self, deadline_ms: int) -> None:
        self.at = time.monotonic() + deadline_ms / 1000
        self.expired = None

    def remaining_s(self) -> float:
        return self.at - time.monotonic()


class Bound(Protocol):
    """The instance a host call on this thread belongs to (``wasm_host.wasi_nn.NnState``): its deadline and its
    memory, or None outside a call into a guest."""

    @property
    def deadline(self) -> Deadline: ...

    def read(self, ptr: int, length: int) -> bytes: ...

    def write(self, ptr: int, data: bytes) -> None: ...


class PollHost:
    """``poll_oneoff`` bounded by the calling instance's deadline (see the module docstring)."""

    def __init__(self, current: Callable[[], Bound | None]) -> None:
        self._current = current
        self._funcs = RawLinkerFuncs()

    def define(self, linker: wasmtime.Linker) -> None:
        """Define ``poll_oneoff`` over the WASI one already on ``linker``."""
        linker.allow_shadowing = True
        try:
            self._funcs.define(linker, WASI_MODULE, "poll_oneoff", 4, self.poll_oneoff)
        finally:
            linker.allow_shadowing = False

    def poll_oneoff(self, subs_ptr: int, events_ptr: int, nsubs: int, nevents_ptr: int) -> int:
        """The import: an errno, or :data:`wasm_host.rawcall.TRAP` when the wait would pass the deadline."""
        bound = self._current()
        if bound is None:  # outside a call into a guest (nothing runs a guest unbound): nothing to wait for
            return ENOTSUP
        nsubs &= 0xFFFFFFFF
        if nsubs == 0 or nsubs > MAX_SUBSCRIPTIONS:
            return EINVAL
        try:
            raw = bound.read(subs_ptr & 0xFFFFFFFF, nsubs * SUBSCRIPTION.size)
        except Exception:  # out of bounds: the guest's pointer, its error
            return EFAULT
        deadline = bound.deadline
        ready: list[bytes] = []
        clocks: list[tuple[float, int]] = []  # (seconds to wait, userdata)
        for i in range(nsubs):
            userdata, tag, clock_id, timeout, _precision, flags = SUBSCRIPTION.unpack_from(raw, i * SUBSCRIPTION.size)
            if tag != EVENTTYPE_CLOCK:  # fd_read or fd_write: stdio and read-only files are always ready
                ready.append(EVENT.pack(userdata, ESUCCESS, tag, 0, 0))
                continue
            wait = _clock_wait(clock_id, timeout, flags, deadline)
            if wait is None:
                ready.append(EVENT.pack(userdata, EINVAL, tag, 0, 0))
                continue
            clocks.append((wait, userdata))
        if not ready:
            wait = min(w for w, _ in clocks)
            if wait > deadline.remaining_s():
                deadline.expired = f"poll_oneoff, asked to sleep {wait * 1000:.0f} ms"
                return TRAP
            if wait > 0:
                time.sleep(wait)
            ready = [EVENT.pack(u, ESUCCESS, EVENTTYPE_CLOCK, 0, 0) for w, u in clocks if w <= wait]
        try:
            bound.write(events_ptr & 0xFFFFFFFF, b"".join(ready))
            bound.write(nevents_ptr & 0xFFFFFFFF, struct.pack("<I", len(ready)))
        except Exception:
            return EFAULT
        return ESUCCESS


def _clock_wait(clock_id: int, timeout: int, flags: int, deadline: Deadline) -> float | None:
    """Seconds until a clock subscription fires (0 if it has), or None for a clock this host does not offer."""
    if not flags & SUBCLOCKFLAGS_ABSTIME:
        return timeout / 1e9 if clock_id in (CLOCK_REALTIME, CLOCK_MONOTONIC) else None
    if clock_id == CLOCK_REALTIME:
        return max(0.0, (timeout - time.time_ns()) / 1e9)
    if clock_id == CLOCK_MONOTONIC:
        return max(0.0, (timeout - (time.monotonic_ns() - deadline.clock_origin)) / 1e9)
    return None


class Watchdog:
    """Stops the Python host's onnxruntime runs at their deadline: :meth:`watch` hands out the run options to run
    with, and one thread sets their ``terminate`` flag once the deadline has passed. The thread starts with the
    first watch, looks every ``interval_s`` while runs are in progress and sleeps while none is (so an idle
    gateway's thread takes no GIL), and stops with :meth:`close`."""

    def __init__(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._runs: dict[int, tuple[float, ort.RunOptions, Deadline]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._sleeping = False  # the thread waits for a run to start (none for a while)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wasmgate-watchdog", daemon=True)
            self._thread.start()

    @contextmanager
    def watch(self, deadline: Deadline) -> Iterator[ort.RunOptions]:
        """Run options for one run that must end by ``deadline``; on the way out, ``deadline.expired`` says
        whether the watchdog stopped it."""
        options = ort.RunOptions()
        key = id(options)
        with self._lock:
            self._runs[key] = (deadline.at, options, deadline)
            self._start()
            if self._sleeping:
                self._changed.notify()
        try:
            yield options
        finally:
            with self._lock:
                del self._runs[key]

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout=1)

    def _run(self) -> None:
        idle_since = time.monotonic()
        with self._lock:
            while not self._stop:
                # Runs in progress, or lately: look again in an interval. None for a second: sleep until one
                # starts (watch wakes it), so an idle process's thread takes no GIL, and a busy one's is never
                # woken per run.
                self._sleeping = not self._runs and time.monotonic() - idle_since > IDLE_AFTER_S
                self._changed.wait(None if self._sleeping else self._interval_s)
                self._sleeping = False
                now = time.monotonic()
                if self._runs:
                    idle_since = now
                for at, options, deadline in self._runs.values():
                    if at <= now and not options.terminate:
                        deadline.expired = "wasi-nn compute"
                        options.terminate = True

"""Admission: how many requests of one function run at once, and how many may wait.

A request takes a slot if one is free; otherwise it waits in a bounded queue, first come first served. Past the
queue it is refused at once with 429 (``TooManyRequests``); a request that waits longer than the queue timeout
is refused with 503 (``Unavailable``). Both carry a Retry-After hint. No request is dropped silently: each one
either runs or gets one of these answers.

Admission state lives on the event loop of one worker process, so the limits are per worker.
"""

from __future__ import annotations

from typing import Protocol

import anyio

from wasm_host.errors import TooManyRequests, Unavailable


class AdmissionObserver(Protocol):
    def queue_depth(self, function: str, depth: int) -> None: ...

    def rejected(self, function: str, reason: str) -> None: ...


class Admission:
    def __init__(
        self,
        name: str,
        limit: int,
        max_queue: int,
        queue_timeout_s: float,
        observer: AdmissionObserver | None = None,
    ) -> None:
        self.observer = observer
        self.name = name
        self.limit = limit
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        # Made by the first request, on the event loop: anyio then gives its backend's semaphore itself, where
        # one made here (a function loads on a worker thread) would be an adapter that finds that semaphore
        # anew on every call.
        self._slots: anyio.Semaphore | None = None
        self.waiting = 0
        self.in_flight = 0
        self.rejected_full = 0
        self.rejected_timeout = 0

    def slot(self) -> Admission:
        """``async with admission.slot():`` runs its block holding one slot: entered at once when a slot is free
        and nobody waits, else after a wait in the queue; refused with TooManyRequests (queue full) or
        Unavailable (waited past the queue timeout). The admission is its own context manager: a slot holds no
        state of its own, and a class's enter and exit cost a fraction of a generator-based one's, on every
        request."""
        return self

    async def __aenter__(self) -> None:
        slots = self._slots
        if slots is None:
            slots = self._slots = anyio.Semaphore(self.limit)
        if self.waiting == 0 and slots.value > 0:
            slots.acquire_nowait()
        else:
            if self.waiting >= self.max_queue:
                self.rejected_full += 1
                if self.observer is not None:
                    self.observer.rejected(self.name, "queue_full")
                raise TooManyRequests(
                    f"function {self.name!r} is at its concurrency limit ({self.limit}) and its queue is full "
                    f"({self.max_queue}); retry later or raise concurrency/max_queue",
                    retry_after=1,
                )
            self._waiting(+1)
            try:
                with anyio.fail_after(self.queue_timeout_s):
                    await slots.acquire()
            except TimeoutError:
                self.rejected_timeout += 1
                if self.observer is not None:
                    self.observer.rejected(self.name, "queue_timeout")
                raise Unavailable(
                    f"function {self.name!r} waited {self.queue_timeout_s:g} s for a free slot "
                    f"(concurrency {self.limit}); retry later",
                    retry_after=max(1.0, self.queue_timeout_s),
                ) from None
            finally:
                self._waiting(-1)
        self.in_flight += 1

    async def __aexit__(self, *exc_info: object) -> None:
        self.in_flight -= 1
        assert self._slots is not None  # made by __aenter__
        self._slots.release()

    def _waiting(self, delta: int) -> None:
        self.waiting += delta
        if self.observer is not None:
            self.observer.queue_depth(self.name, self.waiting)

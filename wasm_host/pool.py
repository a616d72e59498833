"""A pool of ready instances of one function.

Instances are reused across requests (most recently used first, so the warmest memory serves) and one instance
serves one request at a time. An instance that trapped, or whose guest misbehaved at the ABI, is never
returned to the pool. The pool never blocks: when no instance is idle a new one is created on the caller's
thread; how many run at once is bounded by the caller's thread pool.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from wasm_host.guest import FunctionImage, GuestInstance


class InstancePool:
    def __init__(self, image: FunctionImage, max_idle: int) -> None:
        self.image = image
        self.max_idle = max_idle
        self._idle: list[GuestInstance] = []
        self._lock = threading.Lock()
        self.created = 0
        self.discarded = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    def acquire(self) -> GuestInstance:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.created += 1
        return self.image.instantiate()

    def release(self, instance: GuestInstance) -> None:
        with self._lock:
            if instance.healthy and len(self._idle) < self.max_idle:
                self._idle.append(instance)
                return
            if not instance.healthy:
                self.discarded += 1

    @contextlib.contextmanager
    def instance(self) -> Iterator[GuestInstance]:
        inst = self.acquire()
        try:
            yield inst
        finally:
            self.release(inst)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()

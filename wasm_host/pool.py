"""Instance pools: ready instances of one function, refilled in the background.

Two isolation modes:

- ``reuse`` (the default): an instance serves request after request (one at a time), most recently used first
  so the warmest memory serves. It is recycled after ``recycle_after`` requests, and at once after any trap or
  ABI misbehaviour. This is the default because it is what makes a warm request cheap: no instantiation and
  no ``_initialize`` per request, a graph and execution context the guest set up once, and a function's
  instances are only ever reused for that same function.
- ``fresh``: every request gets an instance no other request has touched, and it is thrown away afterwards.
  The pool keeps pre-instantiated instances ready and refills in the background, so the request still does not
  wait for instantiation unless a burst outruns the refill. Use it when requests from different callers must
  not be able to observe each other through guest memory.

The pool never blocks a request on another request: admission (how many run at once) is the caller's job.
When nothing is ready, the request instantiates on its own path, and that is counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from wasm_host.guest import FunctionImage, GuestInstance

log = logging.getLogger("wasmgate.pool")

Isolation = Literal["reuse", "fresh"]


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """Per-function scaling and isolation settings; given at push, changeable later."""

    #: Instances kept ready even without traffic. 0 lets the function scale to zero.
    min_warm: int = 0
    #: Most instances alive at once (ready and busy) in one worker process.
    max_instances: int = 8
    #: Seconds without a request after which the function shrinks to ``min_warm`` (to zero: unloaded).
    idle_timeout_s: float = 300.0
    #: Requests of this function executing at once per worker process (capped at ``max_instances``).
    concurrency: int = 8
    #: Requests that may wait for a slot; more are refused with 429.
    max_queue: int = 64
    #: Seconds a request may wait in the queue before it is refused with 503.
    queue_timeout_s: float = 5.0
    isolation: Isolation = "reuse"
    #: ``reuse`` only: requests an instance serves before it is replaced.
    recycle_after: int = 10_000
    #: This function's deadline per request on the Wasm tier, in milliseconds; 0: the sandbox's (setting
    #: ``deadline_ms``).
    deadline_ms: int = 0
    #: This function's deadline per request on the pod tier (in a runner), in milliseconds; 0: the runners'
    #: (setting ``runner_deadline_ms``). The gateway waits for a replica's answer that much longer too.
    pod_deadline_ms: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "min_warm",
            "max_instances",
            "concurrency",
            "max_queue",
            "recycle_after",
            "deadline_ms",
            "pod_deadline_ms",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be a non-negative integer")
        for name in ("idle_timeout_s", "queue_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be a non-negative number of seconds")
        if self.isolation not in ("reuse", "fresh"):
            problems.append("isolation must be 'reuse' or 'fresh'")
        if not problems:
            if self.max_instances < 1:
                problems.append("max_instances must be at least 1")
            if self.concurrency < 1:
                problems.append("concurrency must be at least 1")
            if self.min_warm > self.max_instances:
                problems.append(f"min_warm ({self.min_warm}) exceeds max_instances ({self.max_instances})")
            if self.recycle_after < 1:
                problems.append("recycle_after must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def effective_concurrency(self) -> int:
        return min(self.concurrency, self.max_instances)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], base: PoolSettings | None = None) -> PoolSettings:
        """Settings from a (partial) JSON object over ``base`` (default: the defaults). Unknown keys and bad
        values raise ValueError naming them."""
        if not isinstance(doc, Mapping):
            raise ValueError("pool settings must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown pool setting(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(base or cls(), **dict(doc))


class InstancePool:
    """Ready instances of one function. Thread-safe."""

    def __init__(
        self,
        image: FunctionImage,
        settings: PoolSettings,
        warmer: Warmer | None = None,
    ) -> None:
        self.image = image
        self.settings = settings
        self._warmer = warmer
        self._ready: list[GuestInstance] = []
        self._lock = threading.Lock()
        self.busy = 0
        self.instantiating = 0
        #: Running average of recent request times in milliseconds, kept by the caller (None: no history).
        self.typical_ms: float | None = None
        #: Running average of recent requests' input bytes, kept with ``typical_ms`` (None: no history).
        self.typical_bytes: float | None = None
        self.closed = False
        #: Counters for metrics and tests.
        self.instantiated = 0
        self.instantiated_on_request = 0
        self.discarded = 0
        self.recycled = 0

    # -- figures -------------------------------------------------------------------------------------------
    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def live(self) -> int:
        return len(self._ready) + self.busy + self.instantiating

    def target_ready(self) -> int:
        """How many instances the pool keeps ready. ``fresh`` keeps at least one while loaded, since every
        request consumes one."""
        s = self.settings
        want = max(s.min_warm, 1 if s.isolation == "fresh" else 0)
        return min(want, s.max_instances)

    # -- serving -------------------------------------------------------------------------------------------
    def acquire(self) -> GuestInstance:
        """An instance for one request: a ready one, or a new one made on this thread."""
        with self._lock:
            self.busy += 1
            instance = self._ready.pop() if self._ready else None
            if instance is None:
                self.instantiating += 1
        try:
            if instance is None:
                try:
                    instance = self.image.instantiate()
                finally:
                    with self._lock:
                        self.instantiating -= 1
                with self._lock:
                    self.instantiated += 1
                    self.instantiated_on_request += 1
        except BaseException:
            with self._lock:
                self.busy -= 1
            raise
        self.refill_soon()
        return instance

    def release(self, instance: GuestInstance) -> None:
        s = self.settings
        keep = instance.healthy and s.isolation == "reuse" and instance.requests < s.recycle_after
        with self._lock:
            self.busy -= 1
            if keep and not self.closed and len(self._ready) + self.busy < s.max_instances:
                self._ready.append(instance)
            elif not instance.healthy:
                self.discarded += 1
            elif s.isolation == "reuse":
                self.recycled += 1
        self.refill_soon()

    @contextlib.contextmanager
    def instance(self) -> Iterator[GuestInstance]:
        inst = self.acquire()
        try:
            yield inst
        finally:
            self.release(inst)

    # -- sizing --------------------------------------------------------------------------------------------
    def refill(self) -> int:
        """Instantiate until ``target_ready`` instances are ready (bounded by ``max_instances``). Runs on the
        warmer's thread. Returns how many it made."""
        made = 0
        while True:
            with self._lock:
                if self.closed or len(self._ready) >= self.target_ready() or self.live >= self.settings.max_instances:
                    break
                self.instantiating += 1
            try:
                instance = self.image.instantiate()
            except Exception as exc:  # a function that cannot start: requests will report why
                log.warning("pre-instantiating failed: %s", exc)
                with self._lock:
                    self.instantiating -= 1
                break
            with self._lock:
                self.instantiating -= 1
                self.instantiated += 1
                if self._is_closed():  # closed while this instance was being made
                    break
                self._ready.append(instance)
            made += 1
        return made

    def shrink(self, keep: int) -> int:
        """Drop ready instances beyond ``keep``. Returns how many were dropped."""
        with self._lock:
            dropped = self._ready[: max(0, len(self._ready) - keep)]
            del self._ready[: len(dropped)]
        return len(dropped)

    def close(self) -> None:
        """Drop every ready instance and stop keeping any; busy ones are dropped when released."""
        with self._lock:
            self.closed = True
            self._ready.clear()

    def _is_closed(self) -> bool:
        return self.closed

    def refill_soon(self) -> None:
        """Ask the warmer (if any) to top the pool up to ``target_ready`` in the background."""
        if self._warmer is None or self.closed:
            return
        s = self.settings
        # With neither, target_ready() is 0: nothing to top up, and no call to find that out.
        if (s.min_warm or s.isolation == "fresh") and len(self._ready) < self.target_ready():
            self._warmer.schedule(self)


class Warmer:
    """One background thread that refills pools, so requests find instances ready."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[InstancePool | None] = queue.SimpleQueue()
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="wasmgate-warmer", daemon=True)
        self._thread.start()

    def schedule(self, pool: InstancePool) -> None:
        with self._lock:
            if id(pool) in self._pending:
                return
            self._pending.add(id(pool))
        self._queue.put(pool)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (pool := self._queue.get()) is not None:
            with self._lock:
                self._pending.discard(id(pool))
            try:
                pool.refill()
            except Exception:  # never let one function's failure stop warming the others
                log.exception("refilling a pool failed")

"""The local Wasm tier: runs a request on an instance from a function's pool, behind its admission.

Where a guest runs is decided per request from how long that function's recent calls took
(``router.inline``, a policy with hysteresis):

- **On a worker thread** (the safe default): the event loop stays free while the guest runs. A function with
  no history yet, or whose recent calls took ``inline_below_ms`` or more, runs here. The limiter bounds how
  many guests execute at once in this process.
- **On the event loop thread**, when the function's recent calls were quick. Handing a sub-millisecond
  call to a thread costs more than the call: the GIL has to move between the loop thread and the worker
  thread twice, which on a multi-core machine measured a 2.5x throughput loss (bench/http_load.py, unpinned).
  The price is that one call of such a function that turns slow holds the loop for at most its deadline; a
  call that runs into its deadline, or a few slow calls in a row, send the function to threads, and one slow
  call alone (a preemption) does not. A request far larger than the function's usual ones (``router.inline``'s
  outsize rule, by input bytes) runs on a thread that once, so a big batch sent to a quick function never holds
  the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Protocol

import anyio
import anyio.to_thread

from router.deadlines import Deadlines
from router.inline import first_placement, next_placement, outsize
from router.latency import ServiceTimes, ewma
from router.policy import Tier, WasmState
from router.tier import Call, Job, NotTaken, Outcome, Servable
from wasm_host.errors import DeadlineExceeded, Unavailable, WasmgateError
from wasm_host.pool import InstancePool
from wasm_host.tensors import Tensor, TensorSpec

#: Outputs of more tensor bytes than this are encoded on a worker thread: a megabyte of FP32 becomes several of
#: JSON text, milliseconds of work that would hold every other request on the event loop.
ENCODE_INLINE_BYTES = 256 * 1024


class Loader(Protocol):
    """Loads a function this process does not hold yet (``gateway.functions.serving.FunctionRegistry``)."""

    def get(self, name: str) -> Servable:
        """The loaded function. Blocking (reads files, creates sessions): called from a worker thread."""


class WasmTier:
    name: Tier = "wasm"

    def __init__(
        self,
        threads: int,
        inline_below_ms: float,
        deadlines: Deadlines,
        loader: Loader | None = None,
        times: ServiceTimes | None = None,
    ) -> None:
        """``deadlines``: the rule of the tier this process runs guests for (a runner's is the pod tier's).
        ``loader`` loads a function the request's :class:`Job` does not carry loaded; ``times`` learns the
        tier's service times (both only for :meth:`run`, which the gateway uses; a runner calls
        :meth:`serve`)."""
        self._limiter = anyio.CapacityLimiter(threads)
        self.deadlines = deadlines
        self.inline_below_ms = inline_below_ms
        self.loader = loader
        self.times = times
        self.replica = f"gateway-{os.getpid()}"  # what x-wasmgate-replica reports for this tier

    # -- the TierBackend protocol (router.tier) -------------------------------------------------------------
    def state(self, job: Job) -> WasmState:
        typical = self.times.typical_ms(job.name, job.version, "wasm", job.rows) if self.times else None
        fn = job.loaded
        if fn is None:
            return WasmState(typical_ms=typical)
        a = fn.admission
        return WasmState(True, fn.pool.ready, a.in_flight, a.waiting, a.limit, typical)

    async def run(self, job: Job, call: Call, retry: bool = False, exclude: Sequence[str] = ()) -> Outcome:
        """Serve ``job`` on its function, loading it first when this process does not hold it. Admission's
        refusal raises NotTaken: the request never ran, so the other tier may take it."""
        fn = job.loaded
        if fn is None:
            assert self.loader is not None, "a WasmTier that runs jobs needs a loader"
            fn = await anyio.to_thread.run_sync(self.loader.get, job.name)
        try:
            outcome, service_ms = await self.serve(fn, call)
        except Unavailable as exc:  # admission refused it (TooManyRequests among them)
            exc.replica = self.replica
            raise NotTaken(exc) from exc
        except WasmgateError as exc:  # it ran here and failed
            exc.replica = self.replica
            raise
        if self.times is not None:
            self.times.observe(job.name, job.version, self.name, job.rows, service_ms)
        return outcome

    def can_retry(self, job: Job, failed: str | None, same_tier: bool) -> bool:
        # As the other candidate it takes the retry (admission queues it); on itself a retry would meet the
        # admission that just refused it.
        return not same_tier

    def expect(self, job: Job) -> None:
        """Nothing to get ready: a function loads at its first request in milliseconds."""

    # -- serving ------------------------------------------------------------------------------------------
    async def serve(self, fn: Servable, call: Call) -> tuple[Outcome, float]:
        """Run one request on ``fn`` once admission gives it a slot: the encoded answer (``cold`` when it is
        the function's first request since it was loaded) and its service time in milliseconds (from the slot
        to the answer, the wait for a slot excluded). Raises TooManyRequests or Unavailable when admission
        refuses it, and the request's or the guest's errors otherwise."""
        cold, fn.cold = fn.cold, False
        fn.last_used = time.monotonic()
        try:
            inputs = call.inputs(fn.name, fn.inputs)
            async with fn.admission.slot():
                started = time.perf_counter()
                pool, outputs = fn.pool, fn.outputs or []
                deadline_ms = self.deadlines.for_pool(pool.settings)
                placement = fn.placement
                if placement is None:
                    placement = first_placement(pool.typical_ms, self.inline_below_ms)
                input_bytes = 0
                for t in inputs:  # a loop, not sum() over a generator: on every request
                    input_bytes += len(t.data)
                inline = placement.inline and not outsize(input_bytes, pool.typical_bytes)
                timed_out = False
                try:
                    if inline:
                        produced = _run(pool, inputs, outputs, deadline_ms)
                    else:
                        produced = await anyio.to_thread.run_sync(
                            _run, pool, inputs, outputs, deadline_ms, limiter=self._limiter
                        )
                except DeadlineExceeded:
                    timed_out = True
                    raise
                finally:
                    service_ms = (time.perf_counter() - started) * 1000
                    pool.typical_bytes = ewma(pool.typical_bytes, input_bytes)
                    if inline == placement.inline:  # an outsize call leaves the placement as it was
                        fn.placement = next_placement(
                            placement, service_ms, pool.typical_ms, timed_out, self.inline_below_ms
                        )
        except DeadlineExceeded as exc:
            raise self.deadlines.explain(fn.name, exc) from exc
        finally:
            fn.last_used = time.monotonic()
        output_bytes = 0
        for t in produced:
            output_bytes += len(t.data)
        if output_bytes > ENCODE_INLINE_BYTES:
            # JSON text of a large tensor takes long to build: off the event loop, so neighbours keep answering.
            body, headers = await anyio.to_thread.run_sync(call.encode, fn.name, fn.version, produced)
        else:
            body, headers = call.encode(fn.name, fn.version, produced)
        return Outcome(200, body, headers, self.replica, cold), service_ms


def _run(pool: InstancePool, inputs: Sequence[Tensor], outputs: Sequence[TensorSpec], deadline_ms: int) -> list[Tensor]:
    started = time.perf_counter()
    try:
        instance = pool.acquire()
        try:  # not pool.instance(): a generator-based context manager costs this hot path several microseconds
            return instance.handle(inputs, outputs, deadline_ms)
        finally:
            pool.release(instance)
    finally:  # failures count too: a guest that ran into its deadline must not look quick
        pool.typical_ms = ewma(pool.typical_ms, (time.perf_counter() - started) * 1000)

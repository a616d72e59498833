"""The local Wasm tier: runs a request on an instance from a function's pool.

Where a guest runs is decided per request from how long that function's recent calls took:

- **On a worker thread** (the safe default): the event loop stays free while the guest runs. A function with
  no history yet, or whose recent calls took ``inline_below_ms`` or more, runs here. The limiter bounds how
  many guests execute at once in this process.
- **On the event loop thread**, when the function's recent calls were all quick. Handing a sub-millisecond
  call to a thread costs more than the call: the GIL has to move between the loop thread and the worker
  thread twice, which on a multi-core machine measured a 2.5x throughput loss (bench/http_load.py, unpinned).
  The price is that one call of such a function that turns slow holds the loop for at most its deadline,
  after which the function's history sends it to threads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import anyio.to_thread

from router.admission import Admission
from wasm_host.pool import InstancePool
from wasm_host.tensors import Tensor, TensorSpec

#: Weight of the newest call in a function's running execution time.
EWMA_WEIGHT = 0.2


def ewma(typical: float | None, sample: float) -> float:
    """A running figure moved toward ``sample`` by ``EWMA_WEIGHT``; the first sample stands alone."""
    return sample if typical is None else typical + EWMA_WEIGHT * (sample - typical)


class WasmTier:
    name = "wasm"

    def __init__(self, threads: int, inline_below_ms: float) -> None:
        self._limiter = anyio.CapacityLimiter(threads)
        self.inline_below_ms = inline_below_ms

    async def infer(
        self, admission: Admission, pool: InstancePool, inputs: Sequence[Tensor], outputs: Sequence[TensorSpec]
    ) -> tuple[list[Tensor], float]:
        """Run one request once admission gives it a slot: its outputs, and its service time in milliseconds
        (from the slot to the answer, the wait for a slot excluded). Raises TooManyRequests or Unavailable
        when admission refuses it, and the guest's errors otherwise."""
        async with admission.slot():
            started = time.perf_counter()
            if runs_inline(pool.typical_ms, self.inline_below_ms):
                produced = _run(pool, inputs, outputs)
            else:
                produced = await anyio.to_thread.run_sync(_run, pool, inputs, outputs, limiter=self._limiter)
            return produced, (time.perf_counter() - started) * 1000


def runs_inline(typical_ms: float | None, inline_below_ms: float) -> bool:
    """The placement policy: inline only for a function known to be quick."""
    return typical_ms is not None and typical_ms < inline_below_ms


def _run(pool: InstancePool, inputs: Sequence[Tensor], outputs: Sequence[TensorSpec]) -> list[Tensor]:
    started = time.perf_counter()
    try:
        with pool.instance() as instance:
            return instance.handle(inputs, outputs, pool.settings.deadline_ms or None)
    finally:  # failures count too: a guest that ran into its deadline must not look quick
        pool.typical_ms = ewma(pool.typical_ms, (time.perf_counter() - started) * 1000)

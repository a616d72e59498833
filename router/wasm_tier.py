"""The local Wasm tier: runs a request on an instance from a function's pool, off the event loop.

Guest execution blocks (wasm and onnxruntime release the GIL; the Python host code between them does not), so
it runs on a bounded thread pool. The limiter's size bounds how many guests execute at once in this process.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.to_thread

from router.admission import Admission
from wasm_host.pool import InstancePool
from wasm_host.tensors import Tensor, TensorSpec


class WasmTier:
    name = "wasm"

    def __init__(self, threads: int) -> None:
        self._limiter = anyio.CapacityLimiter(threads)

    async def infer(
        self, admission: Admission, pool: InstancePool, inputs: Sequence[Tensor], outputs: Sequence[TensorSpec]
    ) -> list[Tensor]:
        """Run one request once admission gives it a slot. Raises TooManyRequests or Unavailable when it
        does not, and the guest's errors otherwise."""
        async with admission.slot():
            return await anyio.to_thread.run_sync(_run, pool, inputs, outputs, limiter=self._limiter)


def _run(pool: InstancePool, inputs: Sequence[Tensor], outputs: Sequence[TensorSpec]) -> list[Tensor]:
    with pool.instance() as instance:
        return instance.handle(inputs, outputs)

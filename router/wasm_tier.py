"""The local Wasm tier: runs a request on an instance from a function's pool, off the event loop.

Guest execution blocks (wasm and onnxruntime release the GIL; the Python host code between them does not), so
it runs on a bounded thread pool. The limiter's size bounds how many guests execute at once in this process.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.to_thread

from wasm_host.pool import InstancePool
from wasm_host.tensors import Tensor, TensorSpec


class WasmTier:
    name = "wasm"

    def __init__(self, threads: int) -> None:
        self._limiter = anyio.CapacityLimiter(threads)

    async def infer(self, pool: InstancePool, inputs: Sequence[Tensor], outputs: Sequence[TensorSpec]) -> list[Tensor]:
        return await anyio.to_thread.run_sync(_run, pool, inputs, outputs, limiter=self._limiter)


def _run(pool: InstancePool, inputs: Sequence[Tensor], outputs: Sequence[TensorSpec]) -> list[Tensor]:
    with pool.instance() as instance:
        return instance.handle(inputs, outputs)

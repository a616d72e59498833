"""Which deadline the sandbox holds a request to, on each tier, and what a 504 tells the caller to change.

A process runs guests for one tier: a gateway for the Wasm tier, a runner for the pod tier. Each tier has its
own default (settings ``deadline_ms`` and ``runner_deadline_ms``: the pod tier exists for the large batches the
Wasm tier should not hold, so its default is sized for them) and its own per-function override (pool settings
``deadline_ms`` and ``pod_deadline_ms``, 0 for the default). A request that runs past its deadline is answered
504 with a message naming both knobs, the function's flag first.
"""

from __future__ import annotations

import dataclasses

from router.policy import Tier
from wasm_host.errors import DeadlineExceeded
from wasm_host.pool import PoolSettings


@dataclasses.dataclass(frozen=True)
class Deadlines:
    """The deadline rule of one tier: ``default_ms`` unless a function's pool setting ``override`` is set."""

    tier: Tier
    default_ms: int
    #: The process-wide setting that ``default_ms`` comes from.
    setting: str
    #: The pool setting that overrides it for one function.
    override: str

    @classmethod
    def wasm(cls, default_ms: int) -> Deadlines:
        """The Wasm tier's rule (a gateway): setting ``deadline_ms``, pool setting ``deadline_ms``."""
        return cls("wasm", default_ms, "deadline_ms", "deadline_ms")

    @classmethod
    def pod(cls, default_ms: int) -> Deadlines:
        """The pod tier's rule (a runner): setting ``runner_deadline_ms``, pool setting ``pod_deadline_ms``."""
        return cls("pod", default_ms, "runner_deadline_ms", "pod_deadline_ms")

    def for_pool(self, pool: PoolSettings) -> int:
        """The deadline in milliseconds for one request of a function with these pool settings."""
        override: int = getattr(pool, self.override)
        return override or self.default_ms

    def explain(self, function: str, exc: DeadlineExceeded) -> DeadlineExceeded:
        """``exc`` again, its message saying which tier's deadline it was and how to raise it."""
        flag = "--" + self.override.replace("_", "-")
        return DeadlineExceeded(
            f"{exc} on the {self.tier} tier; raise it for this function with `wasm scale {function} {flag} N` "
            f"(pool setting {self.override}), or for every function with WASMGATE_{self.setting.upper()}"
        )

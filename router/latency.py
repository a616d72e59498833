"""What each tier has recently taken to serve a function: the figures the router compares (``router.policy``).

One running figure (an exponentially weighted moving average, newest call weighted ``EWMA_WEIGHT``) per
function, per tier, per size class: requests below ``spill_batch_rows`` rows, and requests at or above it,
whose cost is of another order. Only answered requests count, and only their service: a Wasm-tier figure
starts when the request has its admission slot (the policy adds the queue it sees), and a pod-tier figure
counts only requests that found their replica with nothing else in flight: not those held while the tier
scaled up (a cold start is not what a warm replica costs), nor those that queued behind others on it (the
policy adds the backlog it sees, ``PodState.backlog_ms``; a figure learnt behind a long batch would keep a
function off a tier that is in fact quicker for it).

Figures are kept per version and live as long as the gateway process: a function pushed again starts afresh
(its code or model may have changed what it costs).
"""

from __future__ import annotations

from router.policy import Tier

#: Weight of the newest sample in a running figure.
EWMA_WEIGHT = 0.2


def ewma(typical: float | None, sample: float) -> float:
    """A running figure moved toward ``sample`` by ``EWMA_WEIGHT``; the first sample stands alone."""
    return sample if typical is None else typical + EWMA_WEIGHT * (sample - typical)


class ServiceTimes:
    def __init__(self, big_rows: int) -> None:
        #: Requests with at least this many rows are the large size class (setting ``spill_batch_rows``).
        self.big_rows = big_rows
        self._ms: dict[tuple[str, int, Tier, bool], float] = {}

    def observe(self, function: str, version: int, tier: Tier, rows: int, ms: float) -> None:
        key = (function, version, tier, rows >= self.big_rows)
        self._ms[key] = ewma(self._ms.get(key), ms)

    def typical_ms(self, function: str, version: int, tier: Tier, rows: int) -> float | None:
        return self._ms.get((function, version, tier, rows >= self.big_rows))

    def expected_ms(self, function: str, version: int, rows: int) -> float:
        """What a request of ``rows`` rows is expected to take on a pod replica, for the backlog of the one it
        is sent to: its pod figure, else its sandbox figure (an upper bound where the pods are quicker), else 0."""
        pod = self.typical_ms(function, version, "pod", rows)
        if pod is not None:
            return pod
        return self.typical_ms(function, version, "wasm", rows) or 0.0

    def other_size(self, function: str, version: int, rows: int) -> tuple[float | None, float | None]:
        """The (wasm, pod) figures of the size class ``rows`` is not in."""
        big = rows < self.big_rows
        return self._ms.get((function, version, "wasm", big)), self._ms.get((function, version, "pod", big))

    def report(self, function: str, version: int) -> dict[str, dict[str, float]]:
        """The figures of one version, as ``{tier: {"small" | "large": ms}}``, rounded to 0.01 ms."""
        out: dict[str, dict[str, float]] = {}
        for (name, v, tier, big), ms in self._ms.items():
            if name == function and v == version:
                out.setdefault(tier, {})["large" if big else "small"] = round(ms, 2)
        return out

"""The per-request series of a single-process gateway, counted in plain dicts and exposed at a scrape.

Every inference request updates three series: ``wasmgate_requests`` (by function, backend and status),
``wasmgate_request_duration_seconds`` (a histogram, by function and backend) and ``wasmgate_route_decisions``
(by function, tier and reason). prometheus_client's Counter and Histogram take a lock and make four or five
Python calls per update; :class:`RequestTallies` adds to a dict entry instead, and builds the same metric
families (names, help, labels, cumulative buckets, ``_created``) when the registry collects. The exposition is
prometheus_client's own, byte for byte but for the ``_created`` times (tests/test_metrics_tallies.py compares
the two).

Not thread-safe, by design: every update comes from the event loop's thread (HTTP and gRPC requests alike); a
scrape reads the dicts on a worker thread, and a series read mid-update is at most one request behind. With
``--workers``, the series must reach the shared directory, where only prometheus_client's values go:
``gateway.metrics.Metrics`` uses its Counter and Histogram there.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Sequence
from typing import get_args

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from router.policy import Reason, Retry

#: The three series' names and help (gateway.metrics makes prometheus_client's metrics of the same with workers).
REQUESTS = ("wasmgate_requests", "Inference requests by function, backend and HTTP status.")
LATENCY = ("wasmgate_request_duration_seconds", "Inference latency inside the gateway, by function and backend.")
DECISIONS = (
    "wasmgate_route_decisions",
    "Routing decisions by function, the tier chosen and the reason "
    f"({', '.join((*get_args(Reason), *get_args(Retry)))}).",
)


class RequestTallies(Collector):
    """The three series in plain dicts, updated on the event loop, collected at a scrape (see the module doc)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = [*buckets, math.inf]
        self._le = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        # label values -> [count, created]
        self._requests: dict[tuple[str, str, int], list[float]] = {}
        self._decisions: dict[tuple[str, str, str], list[float]] = {}
        # label values -> [per-bucket counts (not cumulative)..., sum, created]
        self._latency: dict[tuple[str, str], list[float]] = {}

    def request(self, function: str, backend: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        counted = self._requests.get((function, backend, status))
        if counted is None:
            counted = self._requests[(function, backend, status)] = [0, time.time()]
        counted[0] += 1
        latency = self._latency.get((function, backend))
        if latency is None:
            latency = self._latency[(function, backend)] = [0] * len(self._bounds) + [0.0, time.time()]
        latency[bisect.bisect_left(self._bounds, seconds)] += 1  # the first bound at or above it, as observe()
        latency[-2] += seconds

    def decided(self, function: str, tier: str, reason: str) -> None:
        """Count one routing decision."""
        counted = self._decisions.get((function, tier, reason))
        if counted is None:
            counted = self._decisions[(function, tier, reason)] = [0, time.time()]
        counted[0] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(*REQUESTS, labels=["function", "backend", "status"])
        for (function, backend, status), (count, created) in list(self._requests.items()):
            requests.add_metric([function, backend, str(status)], count, created=created)
        yield requests
        name, documentation = LATENCY
        latency = HistogramMetricFamily(name, documentation, labels=["function", "backend"])
        n = len(self._bounds)
        for (function, backend), values in list(self._latency.items()):
            counts, total, created = values[:n], values[n], values[n + 1]
            cumulative, buckets = 0.0, []
            for le, count in zip(self._le, counts):  # noqa: B905  # one count per bound
                cumulative += count
                buckets.append((le, cumulative))
            latency.add_metric([function, backend], buckets, total)
            latency.add_sample(f"{name}_created", {"function": function, "backend": backend}, created)
        yield latency
        decisions = CounterMetricFamily(*DECISIONS, labels=["function", "tier", "reason"])
        for (function, tier, reason), (count, created) in list(self._decisions.items()):
            decisions.add_metric([function, tier, reason], count, created=created)
        yield decisions

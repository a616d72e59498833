"""The per-request series of a single-process gateway (gateway.request_tallies) against prometheus_client's own
Counter and Histogram: the same observations give the same exposition text, line for line, but for the
``_created`` times."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import LATENCY_BUCKETS, Metrics
from gateway.request_tallies import DECISIONS, LATENCY, REQUESTS

OBSERVED = [
    ("digits", "wasm", 200, 0.0004),
    ("digits", "wasm", 200, 0.0005),  # on a bucket's bound: counted in that bucket, as observe() does
    ("digits", "wasm", 200, 0.0031),
    ("digits", "pod", 503, 12.5),  # past the last bound: +Inf only
    ("mlp", "wasm", 400, 0.0),
    ("digits", "wasm", 429, 0.02),
]
DECIDED = [("digits", "wasm", "home"), ("digits", "pod", "spill_batch"), ("digits", "wasm", "home")]


def exposition(registry: CollectorRegistry, names: tuple[str, ...]) -> list[str]:
    """The lines of the three series, with the ``_created`` values masked."""
    lines = generate_latest(registry).decode().splitlines()
    kept = [line for line in lines if any(name in line for name in names)]
    return [re.sub(r"(_created\{.*\}) \S+$", r"\1 <time>", line) for line in kept]


def test_the_tallies_expose_what_prometheus_clients_metrics_expose() -> None:
    names = ("wasmgate_requests", "wasmgate_request_duration_seconds", "wasmgate_route_decisions")
    metrics = Metrics()
    assert metrics.tallies is not None  # one process: the tallies serve
    reference = CollectorRegistry()
    requests = Counter(*REQUESTS, ["function", "backend", "status"], registry=reference)
    latency = Histogram(*LATENCY, ["function", "backend"], buckets=LATENCY_BUCKETS, registry=reference)
    decisions = Counter(*DECISIONS, ["function", "tier", "reason"], registry=reference)
    assert exposition(metrics.registry, names) == exposition(reference, names)  # no series yet: help and type
    for function, backend, status, seconds in OBSERVED:
        metrics.observe_request(function, backend, status, seconds, False)
        requests.labels(function, backend, str(status)).inc()
        latency.labels(function, backend).observe(seconds)
    for function, tier, reason in DECIDED:
        metrics.decided(function, tier, reason)
        decisions.labels(function, tier, reason).inc()
    ours, theirs = exposition(metrics.registry, names), exposition(reference, names)
    assert ours == theirs
    assert 'wasmgate_request_duration_seconds_bucket{backend="wasm",function="digits",le="0.0005"} 2.0' in ours
    assert 'wasmgate_route_decisions_total{function="digits",reason="home",tier="wasm"} 2.0' in ours


def test_with_workers_the_series_are_prometheus_clients_own(tmp_path: object) -> None:
    """With a shared directory, the values must reach it: no tallies."""
    metrics = Metrics(multiprocess_dir=str(tmp_path))
    assert metrics.tallies is None
    metrics.observe_request("digits", "wasm", 200, 0.001, True)
    metrics.decided("digits", "wasm", "home")

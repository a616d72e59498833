"""Prometheus metrics, served at ``/metrics``.

Each app owns its own :class:`Metrics` and ``CollectorRegistry`` (no process-wide registry to reset in tests).
With ``wasm serve --workers N`` the workers share a ``PROMETHEUS_MULTIPROC_DIR`` that ``serve`` creates before
they start, and a scrape of any worker aggregates all of them: counters and histograms are summed, and the
instance and queue gauges are summed over live workers (``livesum``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.request_tallies import DECISIONS, LATENCY, REQUESTS, RequestTallies
from wasm_host.pool import InstancePool

INSTANCE_STATES = ("warm", "busy", "instantiating")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._pool_gauges: dict[str, tuple[Gauge, ...]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The three series every request updates: in one process, plain tallies (gateway.request_tallies); with
        # workers, prometheus_client's values, which reach the shared directory.
        self.tallies: RequestTallies | None = None
        if multiprocess_dir:
            self.requests = Counter(*REQUESTS, ["function", "backend", "status"], registry=r)
            self.latency = Histogram(*LATENCY, ["function", "backend"], buckets=LATENCY_BUCKETS, registry=r)
            self.decisions = Counter(*DECISIONS, ["function", "tier", "reason"], registry=r)
        else:
            self.tallies = RequestTallies(LATENCY_BUCKETS)
            r.register(self.tallies)
        self.cold_starts = Counter(
            "wasmgate_cold_starts",
            "Requests that found their function scaled to zero and loaded it.",
            ["function"],
            registry=r,
        )
        self.scale_to_zero = Counter(
            "wasmgate_scale_to_zero",
            "Times a function was unloaded after its idle timeout.",
            ["function"],
            registry=r,
        )
        self.instances = Gauge(
            "wasmgate_instances",
            "Instances per function by state: warm (ready), busy, instantiating.",
            ["function", "state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth_gauge = Gauge(
            "wasmgate_queue_depth",
            "Requests waiting for a concurrency slot, by function.",
            ["function"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejections = Counter(
            "wasmgate_rejections",
            "Requests refused by admission, by function and reason (queue_full, queue_timeout).",
            ["function", "reason"],
            registry=r,
        )
        self.evictions = Counter(
            "wasmgate_evictions",
            "Functions unloaded to keep loaded models within the model memory budget (wasm_model_memory_budget_mb "
            "in the gateway, model_memory_budget_mb in runners), by function.",
            ["function"],
            registry=r,
        )
        self.model_bytes = Gauge(
            "wasmgate_model_bytes_loaded",
            "ONNX bytes of the models of the functions this process holds loaded: what the model memory budget counts.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.execution_provider = Gauge(
            "wasmgate_execution_provider",
            "onnxruntime execution providers sessions are created with: 1 for each, by provider and rank "
            "(0: preferred).",
            ["provider", "rank"],
            registry=r,
            multiprocess_mode="max",
        )
        self.pod_replicas = Gauge(
            "wasmgate_pod_replicas",
            "Pod-tier replicas: ready to serve, and wanted (asked of the scaler).",
            ["state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pod_held = Gauge(
            "wasmgate_pod_held_requests",
            "Requests held by the activator while the pod tier scales up.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pod_in_flight = Gauge(
            "wasmgate_pod_in_flight",
            "Requests forwarded to pod-tier replicas and not yet answered.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pod_keep_alive = Gauge(
            "wasmgate_pod_keep_alive_seconds",
            "How long the last pod-tier replica stays up after the last request: the idle grace, stretched by "
            "the tier's idle gaps (setting pod_keep_alive_max_s).",
            registry=r,
            multiprocess_mode="max",
        )
        self.pod_scale_events = Counter(
            "wasmgate_pod_scale_events",
            "Times the pod tier was asked for a new replica count, by direction (up, down, zero).",
            ["direction"],
            registry=r,
        )
        self.retries = Counter(
            "wasmgate_retries",
            "Requests retried on another candidate after their first backend failed before answering, by the "
            "tier tried first and the tier of the retry.",
            ["from_tier", "to_tier"],
            registry=r,
        )
        self.pod_replica_seconds = Counter(
            "wasmgate_pod_replica_seconds",
            "Pod-tier replicas asked for, integrated over time: the tier's cost (GPU-seconds on a GPU pool).",
            registry=r,
        )
        self.registry_sync_up = Gauge(
            "wasmgate_registry_sync_up",
            "1 when the last sync with the registry store succeeded, 0 while the registry cannot be reached or "
            "refuses (the gateway serves from its cache meanwhile).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.registry_last_sync = Gauge(
            "wasmgate_registry_last_sync_timestamp_seconds",
            "Unix time of the last successful sync with the registry store.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.registry_sync_errors = Counter(
            "wasmgate_registry_sync_errors",
            "Sync passes with the registry store that failed.",
            registry=r,
        )
        self.registry_changes = Counter(
            "wasmgate_registry_sync_changes",
            "Functions the sync installed in the cache or removed from it, by change (installed, removed).",
            ["change"],
            registry=r,
        )
        self._pod_wanted = 0
        self._decisions: dict[tuple[str, str, str], Counter] = {}
        self._replica_seconds = 0.0
        self.instantiations = Counter(
            "wasmgate_instantiations",
            "Instances created, by function and where (background, request).",
            ["function", "where"],
            registry=r,
        )

    def observe_request(self, function: str, backend: str, status: int, seconds: float, cold: bool) -> None:
        if self.tallies is not None:
            self.tallies.request(function, backend, status, seconds)
        else:
            key = (function, backend, status)
            children = self._children.get(key)
            if children is None:  # labels() validates on every call; the hot path reuses bound children
                children = (
                    self.requests.labels(function, backend, str(status)),
                    self.latency.labels(function, backend),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(seconds)
        if cold:
            self.cold_starts.labels(function).inc()

    def decided(self, function: str, tier: str, reason: str) -> None:
        if self.tallies is not None:
            self.tallies.decided(function, tier, reason)
            return
        key = (function, tier, reason)
        counter = self._decisions.get(key)
        if counter is None:  # bound once: labels() validates on every call, and this runs on every request
            counter = self._decisions[key] = self.decisions.labels(function, tier, reason)
        counter.inc()

    def sample(self, pools: Iterable[tuple[str, InstancePool]]) -> None:
        """Copy the pools' figures into the instance gauges and counters. Called at each scrape and by the
        reaper, not per request: a gauge is only ever read at a scrape, so setting it on every acquire and
        release would cost each request for nothing."""
        for function, pool in pools:
            self.observe_pool(function, pool)

    def observe_pool(self, function: str, pool: InstancePool) -> None:
        gauges = self._pool_gauges.get(function)
        if gauges is None:  # called at every scrape and reap: bind the label children once
            gauges = tuple(self.instances.labels(function, s) for s in INSTANCE_STATES)
            self._pool_gauges[function] = gauges
        gauges[0].set(pool.ready)
        gauges[1].set(pool.busy)
        gauges[2].set(pool.instantiating)
        # The pool keeps running totals; count what is new since this pool was last seen.
        made_on_request = pool.instantiated_on_request
        made_ahead = pool.instantiated - made_on_request
        seen = self._seen.get(function)
        if seen == (id(pool), made_ahead, made_on_request):
            return
        ahead_before, request_before = (seen[1], seen[2]) if seen and seen[0] == id(pool) else (0, 0)
        if made_ahead > ahead_before:
            self.instantiations.labels(function, "background").inc(made_ahead - ahead_before)
        if made_on_request > request_before:
            self.instantiations.labels(function, "request").inc(made_on_request - request_before)
        self._seen[function] = (id(pool), made_ahead, made_on_request)

    def queue_depth(self, function: str, depth: int) -> None:
        self.queue_depth_gauge.labels(function).set(depth)

    def rejected(self, function: str, reason: str) -> None:
        self.rejections.labels(function, reason).inc()

    def evicted(self, function: str) -> None:
        self.evictions.labels(function).inc()

    def models_loaded(self, size: int) -> None:
        self.model_bytes.set(size)

    def providers(self, providers: list[str]) -> None:
        for rank, provider in enumerate(providers):
            self.execution_provider.labels(provider, str(rank)).set(1)

    def pod_state(
        self, ready: int, wanted: int, held: int, in_flight: int, replica_seconds: float, keep_alive_s: float
    ) -> None:
        self.pod_replica_seconds.inc(max(0.0, replica_seconds - self._replica_seconds))
        self._replica_seconds = replica_seconds
        self.pod_replicas.labels("ready").set(ready)
        self.pod_replicas.labels("wanted").set(wanted)
        self.pod_held.set(held)
        self.pod_in_flight.set(in_flight)
        self.pod_keep_alive.set(keep_alive_s)

    def pod_scaled(self, replicas: int) -> None:
        direction = "zero" if replicas == 0 else "up" if replicas > self._pod_wanted else "down"
        self._pod_wanted = replicas
        self.pod_scale_events.labels(direction).inc()

    def synced(self, ok: bool, installed: int = 0, removed: int = 0) -> None:
        self.registry_sync_up.set(1 if ok else 0)
        if ok:
            self.registry_last_sync.set_to_current_time()
        else:
            self.registry_sync_errors.inc()
        if installed:
            self.registry_changes.labels("installed").inc(installed)
        if removed:
            self.registry_changes.labels("removed").inc(removed)

    def forget_pool(self, function: str) -> None:
        self._seen.pop(function, None)
        for state in INSTANCE_STATES:
            self.instances.labels(function, state).set(0)

    def close(self) -> None:
        """Drop this process's live gauges from the shared directory (its counters stay in the totals)."""
        if self.multiprocess_dir:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def render(self) -> bytes:
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))

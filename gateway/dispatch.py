"""Running one inference request in the gateway: gather what the policy needs, let it pick the tier
(``router.policy.decide``), run the request there, retry once elsewhere when that backend fails before it has
answered, and report what happened.

Every response says where it ran and why: ``x-wasmgate-tier`` (``wasm`` or ``pod``), ``x-wasmgate-replica``
(this gateway process for the Wasm tier, the replica's id or the endpoint for the pod tier) and
``x-wasmgate-reason`` (the policy's reason, or ``retry``). ``wasmgate_route_decisions_total`` counts the
decisions by function, tier and reason.

Callers steer with two headers: ``x-wasmgate-tier: wasm|pod`` (also accepted as ``"tier"`` in the request's
OIP ``parameters``) keeps only that tier, and ``x-wasmgate-deadline-ms: N`` drops a tier that could not answer
within N ms by its recent figures.

What counts as failing before answering, and so is retried once: a pod replica or endpoint that did not take
the request, and a Wasm-tier request refused by admission (its queue full or timed out). A function that ran
and failed (a trap, a deadline, a bad input) has answered, and is never run again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from gateway.codec import (
    HEADER_LENGTH,
    InferRequest,
    RequestHead,
    bind_inputs,
    encode_response,
    parse_request,
    peek_request,
    select_outputs,
)
from gateway.functions.serving import LoadedFunction
from gateway.http_errors import status_of
from gateway.requests import read_body
from gateway.state import AppState
from gateway.store.manifest import Manifest
from router.pod_tier import Target
from router.policy import Decision, NoRoute, PodState, RouteInputs, Tier, WasmState, decide
from wasm_host.errors import InvalidRequest, ReplicaUnreachable, Unavailable, WasmgateError

HINT_HEADER = "x-wasmgate-tier"
DEADLINE_HEADER = "x-wasmgate-deadline-ms"
HINT_PARAMETER = "tier"
TIERS: tuple[Tier, ...] = ("wasm", "pod")


class _NotRun(Exception):  # control flow: the backend failed before answering
    def __init__(self, cause: WasmgateError, replica: str | None) -> None:
        self.cause = cause
        self.replica = replica


async def infer(request: Request, state: AppState, manifest: Manifest, fn: LoadedFunction | None) -> Response:
    """Serve one request of ``manifest``'s function; ``fn`` is the function if this process has it loaded."""
    started = time.perf_counter()
    try:
        body = await read_body(request, state.settings.max_body_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        parsed = None
        if manifest.kind == "external":
            head = peek_request(body, header_length)
        else:  # the Wasm tier may run it: parse it all now (validation included), once
            parsed = parse_request(body, header_length, state.settings.sandbox.max_tensor_bytes)
            head = parsed.head
        decision = _decide(request, state, manifest, fn, head)
    except WasmgateError as exc:  # refused before it could be placed: counted against its home tier
        home = state.home_tier(manifest)
        state.metrics.observe_request(manifest.name, home, status_of(exc), time.perf_counter() - started, False)
        raise
    state.metrics.decided(manifest.name, decision.tier, decision.reason)
    tier, reason = decision.tier, decision.reason
    rows = head.batch
    try:
        return await _attempt(request, state, manifest, tier, reason, body, parsed, rows, started, ())
    except _NotRun as first:
        retry = _retry_tier(decision, state, manifest, first.replica)
        if retry is None:
            raise first.cause from None
        state.metrics.retries.labels(tier, retry).inc()
        state.metrics.decided(manifest.name, retry, "retry")
        exclude = (first.replica,) if first.replica and retry == "pod" else ()
        try:
            return await _attempt(request, state, manifest, retry, "retry", body, parsed, rows, started, exclude)
        except _NotRun as second:
            raise Unavailable(f"{first.cause}; the retry on the {retry} tier failed too: {second.cause}", 1) from None


def _decide(
    request: Request, state: AppState, manifest: Manifest, fn: LoadedFunction | None, head: RequestHead
) -> Decision:
    times = state.service_times
    name, version, rows = manifest.name, manifest.version, head.batch
    wasm_ms = times.typical_ms(name, version, "wasm", rows)
    if fn is not None:
        a = fn.admission
        wasm = WasmState(True, fn.pool.ready, a.in_flight, a.waiting, a.limit, wasm_ms)
    else:
        wasm = WasmState(typical_ms=wasm_ms)
    pod_ms = times.typical_ms(name, version, "pod", rows)
    pods = state.pods
    if pods is None:
        pod = PodState()
    elif manifest.endpoint is not None:
        pod = PodState(True, 1, 1, 0, 0, pod_ms)
    elif pods.activator is None:
        pod = PodState()
    else:
        act = pods.activator
        pod = PodState(
            True, act.ready, act.warm(name), act.in_flight_total, act.held, pod_ms, act.scale_up_s, act.backlog_ms(name)
        )
    inputs = RouteInputs(
        tier=manifest.tier,
        figures=manifest.figures,
        has_code=manifest.kind != "external",
        spill=manifest.spill,
        mask_cold_start=manifest.mask_cold_start,
        batch=head.batch,
        hint=_hint(request.headers, head.parameters),
        deadline_ms=_deadline(request.headers),
        accelerators=state.accelerators,
        wasm=wasm,
        pod=pod,
        thresholds=state.thresholds,
        other_size=times.other_size(name, version, rows),
    )
    try:
        decision = decide(inputs)
    except NoRoute as exc:
        raise Unavailable(f"{manifest.name!r}: {exc}") from None
    if decision.scale_pod and pods is not None and pods.activator is not None:
        pods.activator.note_demand()  # scale up for the requests that follow
        pods.preload(Target(name, version))  # a ready replica that lacks the model loads it now, not at a request
    return decision


def _retry_tier(decision: Decision, state: AppState, manifest: Manifest, failed: str | None) -> Tier | None:
    """Where the one retry runs: the other candidate, else (the pod tier's runners) another replica; None when
    nothing could take it now (a retry never waits for a replica to start), and the first error stands."""
    if decision.fallback == "wasm":
        return "wasm"
    pods = state.pods
    if pods is None:
        return None
    if decision.fallback == "pod" and manifest.endpoint is not None:
        return "pod"  # the endpoint itself: it has no replicas to count
    on_replicas = decision.fallback == "pod" or (decision.tier == "pod" and manifest.endpoint is None)
    ready = pods.activator.ready if pods.activator is not None else 0
    return "pod" if on_replicas and ready - (1 if failed else 0) > 0 else None


async def _attempt(
    request: Request,
    state: AppState,
    manifest: Manifest,
    tier: Tier,
    reason: str,
    body: bytes,
    parsed: InferRequest | None,
    rows: int,
    started: float,
    exclude: tuple[str, ...],
) -> Response:
    status = 500
    cold = False
    try:
        if tier == "wasm":
            payload, headers, replica, cold, service_ms = await _run_wasm(state, manifest, parsed)
            status = 200
            state.service_times.observe(manifest.name, manifest.version, tier, rows, service_ms)
        else:
            assert state.pods is not None
            target = Target(manifest.name, manifest.version, manifest.endpoint, manifest.endpoint_model)
            expected = state.service_times.expected_ms(manifest.name, manifest.version, rows)
            try:
                # A retry never waits for a replica to start: it runs now, or fails now.
                served = await state.pods.infer(target, body, request.headers, exclude, reason != "retry", expected)
            except ReplicaUnreachable as exc:
                raise _NotRun(exc, exc.replica) from exc
            payload, headers, replica, cold = served.response.body, served.response.headers, served.replica, served.held
            status = served.response.status
            if status == 200 and not cold and served.alone:  # a replica's service, not its queue
                state.service_times.observe(manifest.name, manifest.version, tier, rows, served.elapsed_ms)
    except _NotRun as exc:
        status = status_of(exc.cause)
        raise
    except WasmgateError as exc:
        status = status_of(exc)
        raise
    finally:
        state.metrics.observe_request(manifest.name, tier, status, time.perf_counter() - started, cold)
    extra = {"x-wasmgate-tier": tier, "x-wasmgate-replica": replica, "x-wasmgate-reason": reason}
    if cold:
        extra["x-wasmgate-cold-start"] = "true"
    return Response(payload, status_code=status, headers={**headers, **extra})


async def _run_wasm(
    state: AppState, manifest: Manifest, parsed: InferRequest | None
) -> tuple[bytes, Mapping[str, str], str, bool, float]:
    assert parsed is not None  # the policy sends only functions with code, which were parsed, here
    registry = state.registry
    fn = registry.get_loaded(manifest.name)
    if fn is None:
        fn = await anyio.to_thread.run_sync(registry.get, manifest.name)
    try:
        payload, headers, cold, service_ms = await run_on_wasm(state, fn, parsed)
    except Unavailable as exc:  # admission refused it: it never ran, so it may run elsewhere
        raise _NotRun(exc, None) from exc
    return payload, headers, f"gateway-{os.getpid()}", cold, service_ms


async def run_on_wasm(
    state: AppState, fn: LoadedFunction, parsed: InferRequest
) -> tuple[bytes, Mapping[str, str], bool, float]:
    """Run a parsed request on a loaded function's pool, through its admission: the encoded response, its
    headers, whether this was the function's first request since it was loaded (a cold start), and its
    service time in milliseconds (admission's wait left out)."""
    cold, fn.cold = fn.cold, False
    fn.last_used = time.monotonic()
    try:
        inputs = bind_inputs(fn.name, fn.manifest.inputs, parsed.inputs)
        produced, service_ms = await state.wasm.infer(fn.admission, fn.pool, inputs, fn.manifest.outputs or [])
    finally:
        fn.last_used = time.monotonic()
    payload, headers = encode_response(fn.name, str(fn.manifest.version), parsed, select_outputs(produced, parsed))
    return payload, headers, cold, service_ms


def _hint(headers: Mapping[str, str], parameters: Mapping[str, object]) -> Tier | None:
    raw = headers.get(HINT_HEADER)
    source = HINT_HEADER
    if raw is None:
        value = parameters.get(HINT_PARAMETER)
        if value is None:
            return None
        raw, source = str(value), f"parameters.{HINT_PARAMETER}"
    for tier in TIERS:
        if raw.strip().lower() == tier:
            return tier
    raise InvalidRequest(f"{source} {raw[:20]!r} must be one of {', '.join(TIERS)}")


def _deadline(headers: Mapping[str, str]) -> float | None:
    raw = headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidRequest(f"{DEADLINE_HEADER} {raw[:20]!r} must be a positive number of milliseconds")
    return value

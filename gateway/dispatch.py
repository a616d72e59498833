"""Dispatching one inference request in the gateway: ask each tier for its state, let the policy pick one
(``router.policy.decide``), run the request there, retry once when that tier did not take it, and report what
happened. Both tiers are behind one interface (``router.tier.TierBackend``); nothing here knows which is which.
Every inference request takes this path as an OIP v2 body (:meth:`Dispatcher.run`): one that came in by OIP v2
as it was sent, one that came in by another protocol (``gateway.openai_api``) translated into one first.

Every response says where it ran and why: ``x-wasmgate-tier`` (``wasm`` or ``pod``), ``x-wasmgate-replica``
(this gateway process for the Wasm tier, the replica's id or the endpoint for the pod tier) and
``x-wasmgate-reason`` (the policy's reason, or ``retry``). Error answers of a placed request carry them too
(the replica where one took or refused it; a request held for a replica that never came has none); a request
refused before it was placed (a malformed body, no tier that can take it) ran nowhere and carries none.
``wasmgate_route_decisions_total`` counts the decisions by function, tier and reason.

Callers steer with two headers: ``x-wasmgate-tier: wasm|pod`` (also accepted as ``"tier"`` in the request's
OIP ``parameters``) keeps only that tier, and ``x-wasmgate-deadline-ms: N`` drops a tier that could not answer
within N ms by its recent figures.

What counts as failing before answering, and so is retried once: a pod replica or endpoint that did not take
the request, and a Wasm-tier request refused by admission (its queue full or timed out). A function that ran
and failed (a trap, a deadline, a bad input) has answered, and is never run again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from starlette.responses import Response
from starlette.types import Receive

from gateway.codec import (
    HEADER_LENGTH,
    InferRequest,
    RequestHead,
    bind_inputs,
    check_response_size,
    encode_response,
    parse_request,
    peek_request,
    select_outputs,
)
from gateway.functions.serving import LoadedFunction
from gateway.http_errors import status_of
from gateway.metrics import Metrics
from gateway.requests import receive_body
from gateway.responses import InferResponse
from gateway.store.manifest import Manifest
from router.latency import ServiceTimes
from router.policy import (
    Decision,
    NoRoute,
    OverFit,
    Placement,
    PodState,
    RouteInputs,
    Thresholds,
    Tier,
    WasmState,
    decide,
    home_tier,
    request_flops,
    settled,
)
from router.tier import Job, NotTaken, TierBackend
from wasm_host.errors import InvalidRequest, TooLarge, Unavailable, WasmgateError
from wasm_host.tensors import Tensor, TensorSpec

HINT_HEADER = "x-wasmgate-tier"
DEADLINE_HEADER = "x-wasmgate-deadline-ms"
HINT_PARAMETER = "tier"
TIERS: tuple[Tier, ...] = ("wasm", "pod")


class HttpCall:
    """One HTTP request as the tiers see it (``router.tier.Call``): its body and headers, forwarded as they are
    to a replica, and its tensors, parsed once, for the sandbox (``parsed`` is None for a function served by
    its endpoint alone, whose body is never decoded here)."""

    __slots__ = ("body", "headers", "max_response_bytes", "parsed")

    def __init__(
        self, body: bytes, headers: Mapping[str, str], parsed: InferRequest | None, max_response_bytes: int
    ) -> None:
        self.body = body
        self.headers = headers
        self.parsed = parsed
        self.max_response_bytes = max_response_bytes  # setting max_response_bytes

    # The policy sends only functions with code, whose requests were parsed, to run: ``parsed`` is set for both.
    def inputs(self, name: str, declared: Sequence[TensorSpec] | None) -> list[Tensor]:
        assert self.parsed is not None, _UNPARSED
        return bind_inputs(name, declared, self.parsed.inputs)

    def encode(self, name: str, version: int, outputs: Sequence[Tensor]) -> tuple[bytes, Mapping[str, str]]:
        request = self.parsed
        assert request is not None, _UNPARSED
        selected = select_outputs(outputs, request)
        check_response_size(name, selected, self.max_response_bytes)
        return encode_response(name, str(version), request, selected)


_UNPARSED = "the policy sends only functions with code, which were parsed, to run"


class Dispatcher:
    """Places and runs every inference request of a gateway (see the module docstring)."""

    def __init__(
        self,
        wasm: TierBackend[WasmState],
        pod: TierBackend[PodState],
        times: ServiceTimes,
        metrics: Metrics,
        thresholds: Thresholds,
        accelerators: bool,
        max_body_bytes: int,
        max_tensor_bytes: int,
        max_response_bytes: int,
    ) -> None:
        self.wasm = wasm
        self.pod = pod
        self.tiers: dict[Tier, TierBackend[object]] = {wasm.name: wasm, pod.name: pod}
        self.times = times
        self.metrics = metrics
        self.thresholds = thresholds
        self.accelerators = accelerators  # whether the pod tier has accelerators (setting accelerators, resolved)
        self.max_body_bytes = max_body_bytes
        self.max_tensor_bytes = max_tensor_bytes
        self.max_response_bytes = max_response_bytes

    def home_tier(self, manifest: Manifest) -> Tier:
        """Where the router places ``manifest`` when nothing argues otherwise, on this gateway's settings."""
        has_code = manifest.kind != "external"
        return home_tier(manifest.tier, manifest.figures, has_code, self.accelerators, self.thresholds)

    async def infer(
        self, receive: Receive, headers: Mapping[str, str], manifest: Manifest, fn: LoadedFunction | None
    ) -> Response:
        """Serve one OIP v2 request of ``manifest``'s function, its body read from the ASGI channel ``receive``
        (``headers``: the request's, see ``gateway.requests.header_map``); ``fn`` is the function if this process
        has it loaded (the handler's one lookup, passed down so that nothing looks it up again)."""
        started = time.perf_counter()
        try:
            body = await receive_body(receive, headers, self.max_body_bytes)
        except WasmgateError as exc:
            self.refused(manifest, started, exc)
            raise
        return await self.run(body, headers, manifest, fn, started)

    async def run(
        self, body: bytes, headers: Mapping[str, str], manifest: Manifest, fn: LoadedFunction | None, started: float
    ) -> Response:
        """Place and run one OIP v2 request body (JSON, or binary with its ``Inference-Header-Content-Length``
        in ``headers``, which also carry the routing headers) of ``manifest``'s function: the one path of every
        inference request, whichever protocol it came in by. ``started`` is when it arrived, for the metrics.
        The response is the OIP v2 answer with the routing headers (see the module docstring)."""
        try:
            header_length = headers.get(HEADER_LENGTH)
            parsed = None
            if manifest.kind == "external":
                head = peek_request(body, header_length)
            else:  # the Wasm tier may run it: parse it all now (validation included), once
                parsed = parse_request(body, header_length, self.max_tensor_bytes)
                head = parsed.head
            job = Job(
                manifest.name,
                manifest.version,
                head.batch,
                manifest.endpoint,
                manifest.endpoint_model,
                fn,
                manifest.pool.pod_deadline_ms,
            )
            decision = self._decide(headers, manifest, job, head, parsed)
        except WasmgateError as exc:
            self.refused(manifest, started, exc)
            raise
        self.metrics.decided(manifest.name, decision.tier, decision.reason)
        call = HttpCall(body, headers, parsed, self.max_response_bytes)
        try:
            return await self._attempt(job, call, decision.tier, decision.reason, started)
        except NotTaken as first:
            # The one retry: on the other candidate, else (another replica) on the same tier.
            retry = decision.fallback or decision.tier
            if not self.tiers[retry].can_retry(job, first.replica, retry == decision.tier):
                raise first.cause from None
            self.metrics.retries.labels(decision.tier, retry).inc()
            self.metrics.decided(manifest.name, retry, "retry")
            exclude = (first.replica,) if first.replica else ()
            try:
                return await self._attempt(job, call, retry, "retry", started, exclude)
            except NotTaken as second:
                message = f"{first.cause}; the retry on the {retry} tier failed too: {second.cause}"
                failed = Unavailable(message, 1)
                failed.replica, failed.headers = second.cause.replica, second.cause.headers
                raise failed from None

    def refused(self, manifest: Manifest, started: float, exc: WasmgateError) -> None:
        """Count a request of ``manifest``'s function refused before it could be placed (``started``: when it
        arrived), against the function's home tier with the status ``exc`` is answered with."""
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(manifest.name, self.home_tier(manifest), status_of(exc), elapsed, False)

    def _decide(
        self, headers: Mapping[str, str], manifest: Manifest, job: Job, head: RequestHead, parsed: InferRequest | None
    ) -> Decision:
        figures = manifest.figures
        # Priced from the request's own shapes where the cost depends on them (a sequence, an image's size).
        flops = None
        if parsed is not None and figures.dims:
            flops = request_flops(figures, {t.name: t.shape for t in parsed.inputs})
        has_code = manifest.kind != "external"
        hint, deadline_ms, pod = _hint(headers, head.parameters), _deadline(headers), self.pod.state(job)
        if hint is None and deadline_ms is None:
            quick = settled(manifest.tier, figures, has_code, self.accelerators, self.thresholds, flops, pod)
            if quick is not None:
                return quick
        inputs = RouteInputs(
            tier=manifest.tier,
            figures=manifest.figures,
            has_code=has_code,
            spill=manifest.spill,
            mask_cold_start=manifest.mask_cold_start,
            batch=head.batch,
            hint=hint,
            deadline_ms=deadline_ms,
            accelerators=self.accelerators,
            wasm=self.wasm.state(job),
            pod=pod,
            thresholds=self.thresholds,
            other_size=self.times.other_size(job.name, job.version, job.rows),
            flops_per_row=flops,
        )
        try:
            decision = decide(inputs)
        except OverFit as exc:
            raise TooLarge(f"{manifest.name!r}: {exc}") from None
        except NoRoute as exc:
            raise Unavailable(f"{manifest.name!r}: {exc}") from None
        if decision.scale_pod:
            self.pod.expect(job)
        return decision

    async def _attempt(
        self, job: Job, call: HttpCall, tier: Tier, reason: Placement, started: float, exclude: Sequence[str] = ()
    ) -> Response:
        status = 500
        cold = False
        try:
            outcome = await self.tiers[tier].run(job, call, reason == "retry", exclude)
            status, cold = outcome.status, outcome.cold
        except NotTaken as exc:
            status = status_of(exc.cause)
            exc.cause.headers = routing_headers(tier, exc.cause.replica, reason)
            raise
        except WasmgateError as exc:
            status = status_of(exc)
            exc.headers = routing_headers(tier, exc.replica, reason)
            raise
        finally:
            self.metrics.observe_request(job.name, tier, status, time.perf_counter() - started, cold)
        headers = {**outcome.headers, **routing_headers(tier, outcome.replica, reason)}
        if cold:
            headers["x-wasmgate-cold-start"] = "true"
        return InferResponse(outcome.body, outcome.status, headers)


def routing_headers(tier: Tier, replica: str | None, reason: Placement) -> dict[str, str]:
    """The headers that say where a request ran and why: on every answer of a placed request, errors too.
    ``replica`` is None when no replica took it (held for one that never came)."""
    headers: dict[str, str] = {"x-wasmgate-tier": tier, "x-wasmgate-reason": reason}
    if replica:
        headers["x-wasmgate-replica"] = replica
    return headers


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

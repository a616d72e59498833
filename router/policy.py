"""The router's policy: for each request, which tier runs it, and why. A pure function of what the gateway
observed: filter the candidates, score those left, pick the best.

Candidates are the local Wasm pool (``wasm``) and the pod tier (``pod``: its runner replicas, whose choice
among them is :func:`router.pod_policy.pick_replica`, or the OIP v2 server registered as the function's
endpoint).

**Cost.** A request is priced in FLOPs per row from its model's figures and its own shapes
(:func:`request_flops`: a 512-token request to a transformer costs some 20 times a 32-token one); where no
request is at hand (``wasm ls``, the admin API), and for a dimension a request does not give, the figures'
reference size is taken (``wasm_host.figures.REFERENCE_SIZE``). "Fits the sandbox" and "large" below are of
this price, and of the model's bytes.

**Home tier.** A function pushed with ``--tier wasm`` or ``--tier pod`` lives there; with ``auto`` (the
default) its model figures decide (:func:`home_tier`), per request: with accelerators in the cluster, a
request past any of the ``tier_pod_*`` thresholds goes to the pod tier; with none at all (an edge or CPU-only
cluster) the pod tier is CPU runners too, so a request stays in the Wasm tier as long as it fits the sandbox
(``wasm_fit_*``), and only larger ones go to CPU runners.

**Pinned means pinned.** A pinned function's request goes to another tier only when the caller asks for it
(a hint, or a deadline its tier cannot meet, below), by spill-over (``spill``) or by cold-start masking
(``mask_cold_start``), each of which the function can forbid; never because it does not fit. A request to a
function pinned to ``wasm`` (or hinted there) that is priced past the sandbox's fit is refused
(:class:`OverFit`, answered 413 naming the figure and the setting) rather than served in the sandbox: the fit
is the sandbox's limit whoever placed the function, and a push of a model past it at its smallest shape is
refused the same way, so what reaches this rule is a request larger than the model's smallest (a long
sequence, say). A request to a function pinned to ``pod`` with no pod tier is refused (503 naming setting
``pod_scaler``); a push of either is refused (``gateway.functions.push``).

**Filter.** ``wasm`` is out for a function with no code here (served by an endpoint), or a request too large
for the sandbox; ``pod`` is out when there is no pod tier. A caller's hint (``x-wasmgate-tier`` header, or
``"tier"`` in the request's OIP ``parameters``) keeps only the tier it names. A deadline
(``x-wasmgate-deadline-ms``) drops a tier that cannot answer in time by its recent figures: a pod tier that
must first scale from zero, say. Nothing left is a 503 naming why.

**Score.** The home tier is preferred, except:

- *spill-over*: a Wasm-home function's request goes to the pod tier when it has a ready replica and either
  the batch has at least ``spill_batch_rows`` rows, or the Wasm pool is saturated (all slots busy and
  requests queued). The function can forbid it (``spill: false``).
- *cold-start masking*: a pod-home function with no ready replica that holds its model (the tier is scaling
  from zero, or its replicas are still loading the model) is served by the Wasm tier, if the model fits the
  sandbox, rather than waiting; the pod tier still scales up for the next requests. The function can forbid
  it (``mask_cold_start: false``).
- *faster* (tier ``auto`` only, and setting ``route_by_service_time``; an explicit ``--tier`` fixes the
  placement to the rules above): once the
  gateway has measured the function on both tiers for requests of this size (below ``spill_batch_rows`` rows,
  or at or above it), each tier's expected time is its measured service time scaled by its queue (the pods':
  plus the expected work in flight on the replica the request would get), and the request goes to the
  quicker one. On a cluster whose pods are no faster than the sandbox for this function,
  its requests stay in the Wasm tier and the pod tier scales to zero; where the pods are faster (a GPU, a
  large batch), they win. Until both are measured, the rules above place the request, except that a
  Wasm-home request whose size has been measured on the pods only stays in the sandbox, to be measured there
  too (without this, spill-over by batch size would never learn that the sandbox is quicker for a model whose
  big batches cost little). What is measured is kept per function, per tier, per size class
  (:class:`router.latency.ServiceTimes`); the figures are only refreshed by traffic, so a tier that lost
  stays judged by its last figures until load (a queue on the winner) sends requests back to it.

**Scaling for requests served elsewhere.** A request the Wasm tier serves still counts as demand for the pod
tier (``Decision.scale_pod``) when it was masking a cold start, and when it went to the sandbox as the quicker
tier for its size while the function's requests of the other size are better off on a pod (measured quicker
there, or not yet measured there and pod-home by the model's figures): while such a function has traffic,
the pod tier stays up for it (within ``pod_max_replicas``, until the idle grace passes), so that those
requests find a warm replica. A function the pods serve no quicker at any size leaves the pod tier at zero.

The decision also names the other candidate left after filtering, the one a request is retried on once when
its first backend fails before producing a response.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

from wasm_host.figures import ModelFigures, si

Tier = Literal["wasm", "pod"]
TierSetting = Literal["auto", "wasm", "pod"]
#: Why a request ran where it did (the ``x-wasmgate-reason`` header and the decision metric): the policy's
#: reasons, each explained in the module docstring.
Reason = Literal[
    "home", "home_cold", "hint", "fallback", "spill_batch", "spill_saturated", "cold_start_masked", "faster"
]
#: A request retried once on the other candidate after its first backend failed before answering (gateway.dispatch).
Retry = Literal["retry"]
Placement = Reason | Retry

# The per-request values below are slotted, not frozen: they are built on every request, and a frozen
# dataclass's __init__ costs about five times as much (measured, 12 fields: 4.4 us against 0.8 us). Nothing
# mutates them; treat them as values.


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Where ``auto`` draws its lines (settings ``tier_pod_*``, ``wasm_fit_*``, ``spill_batch_rows``,
    ``route_by_service_time``)."""

    pod_bytes: int = 64 << 20
    pod_params: int = 16_000_000
    pod_flops_per_row: int = 100_000_000
    fit_bytes: int = 256 << 20
    fit_flops_per_row: int = 2_000_000_000
    spill_batch_rows: int = 256
    by_service_time: bool = True


@dataclasses.dataclass(slots=True)
class WasmState:
    loaded: bool = False
    warm: int = 0  # ready instances
    in_flight: int = 0
    queued: int = 0
    concurrency: int = 8
    typical_ms: float | None = None  # recent service time of such a request (not its wait); None when unknown


@dataclasses.dataclass(slots=True)
class PodState:
    available: bool = False  # a scaler is configured, or the function has an endpoint
    ready: int = 0
    warm: int = 0  # ready replicas that hold the function's model (an endpoint counts as one)
    in_flight: int = 0
    held: int = 0
    typical_ms: float | None = None  # recent forward time of such a request, on a warm, otherwise idle replica
    scale_up_s: float | None = None  # how long the tier took to bring a replica up, recently
    backlog_ms: float = 0.0  # expected time of the requests already in flight on the replica it would get


@dataclasses.dataclass(slots=True)
class RouteInputs:
    tier: TierSetting
    figures: ModelFigures
    has_code: bool  # False: served by a registered endpoint only
    spill: bool
    mask_cold_start: bool
    batch: int
    hint: Tier | None
    deadline_ms: float | None
    accelerators: bool
    wasm: WasmState
    pod: PodState
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    #: The function's figures on (wasm, pod) for the other size class of request (None: not measured).
    other_size: tuple[float | None, float | None] = (None, None)
    #: The request's price (:func:`request_flops`); None: the figures at their reference size.
    flops_per_row: int | None = None


@dataclasses.dataclass(slots=True)
class Decision:
    tier: Tier
    reason: Reason  # one word, for the x-wasmgate-reason header and the decision metric
    fallback: Tier | None  # the other candidate, for one retry
    #: Count this request as demand for the pod tier although it runs in the Wasm tier (see the module doc).
    scale_pod: bool = False


class NoRoute(Exception):  # a result of the policy, not an error of it
    """No candidate is left; the message says why (the gateway answers 503 with it)."""


class OverFit(NoRoute):
    """The request may only run in the sandbox, and is priced past its fit; the message names the figure and
    the setting (the gateway answers 413 with it)."""


def request_flops(figures: ModelFigures, shapes: Mapping[str, Sequence[int]]) -> int:
    """A request's FLOPs per row: ``figures`` priced at the sizes its input ``shapes`` (by input name) give
    each dynamic dimension, at the first (input, axis) of the dimension that the request has; the figures'
    reference size for one it does not have (see ``wasm_host.figures``)."""
    if not figures.dims:
        return figures.flops_per_row
    sizes: dict[str, int] = {}
    for dim in figures.dims:
        for name, axis in dim.at:
            shape = shapes.get(name)
            if shape is not None and axis < len(shape):
                sizes[dim.name] = int(shape[axis])
                break
    return figures.flops_at(sizes)


def fits_sandbox(figures: ModelFigures, t: Thresholds, flops_per_row: int | None = None) -> bool:
    """Whether the model, and a request priced ``flops_per_row`` (None: at the reference size), fit the
    sandbox (settings ``wasm_fit_*``)."""
    return _over_fit(figures, t, flops_per_row) is None


def _over_fit(figures: ModelFigures, t: Thresholds, flops_per_row: int | None) -> str | None:
    """Why the model or the request does not fit the sandbox, naming the figure and the setting; None if it does."""
    flops = figures.reference_flops if flops_per_row is None else flops_per_row
    if figures.bytes > t.fit_bytes:
        fit = si(t.fit_bytes, "B")
        return f"the model's {si(figures.bytes, 'B')} is past the sandbox's {fit} (setting wasm_fit_bytes)"
    if flops > t.fit_flops_per_row:
        return (
            f"this request's {si(flops)} FLOPs per row ({figures.formula()}) is past the sandbox's "
            f"{si(t.fit_flops_per_row)} (setting wasm_fit_flops_per_row)"
        )
    return None


def is_large(figures: ModelFigures, t: Thresholds, flops_per_row: int | None = None) -> bool:
    """Whether the model, or a request priced ``flops_per_row`` (None: at the reference size), is past any of
    the ``tier_pod_*`` thresholds."""
    flops = figures.reference_flops if flops_per_row is None else flops_per_row
    return figures.bytes > t.pod_bytes or figures.params > t.pod_params or flops > t.pod_flops_per_row


def home_tier(
    tier: TierSetting,
    figures: ModelFigures,
    has_code: bool,
    accelerators: bool,
    t: Thresholds,
    flops_per_row: int | None = None,
) -> Tier:
    """Where a function, or its request priced ``flops_per_row`` (None: at the reference size), lives when
    nothing argues otherwise."""
    if tier != "auto":
        return tier
    if not has_code:
        return "pod"
    if accelerators:
        return "pod" if is_large(figures, t, flops_per_row) else "wasm"
    return "wasm" if fits_sandbox(figures, t, flops_per_row) else "pod"


def decide(r: RouteInputs) -> Decision:
    """Filter, score, pick (see the module docstring). Raises NoRoute."""
    t = r.thresholds
    home = home_tier(r.tier, r.figures, r.has_code, r.accelerators, t, r.flops_per_row)
    candidates: list[Tier] = []
    dropped: list[str] = []
    over_fit = _over_fit(r.figures, t, r.flops_per_row) if r.has_code else None
    if not r.has_code:
        dropped.append("wasm: the function is served by its endpoint only")
    elif over_fit is not None:
        dropped.append(f"wasm: {over_fit}")
    else:
        candidates.append("wasm")
    if r.pod.available:
        candidates.append("pod")
    else:
        dropped.append("pod: there is no pod tier (setting pod_scaler is 'none') and no endpoint")
    wanted = r.hint or (r.tier if r.tier != "auto" else None)  # pinned, or asked for: no other tier will do
    if wanted == "wasm" and over_fit is not None:
        pinned = "the caller asked for the wasm tier" if r.hint else "the function is pinned to the wasm tier"
        raise OverFit(f"{pinned}, and {over_fit}")
    if wanted == "pod" and not r.pod.available and r.hint is None:
        raise NoRoute(
            "the function is pinned to the pod tier, and there is none (setting pod_scaler is 'none', and the "
            "function has no endpoint)"
        )
    if r.hint is not None:
        for tier in [c for c in candidates if c != r.hint]:
            candidates.remove(tier)
            dropped.append(f"{tier}: the caller asked for {r.hint}")
    if r.deadline_ms is not None:
        for tier in list(candidates):
            expected = _expected_ms(tier, r)
            if expected is not None and expected > r.deadline_ms:
                candidates.remove(tier)
                dropped.append(f"{tier}: expected {expected:.0f} ms, over the deadline of {r.deadline_ms:g} ms")
    if not candidates:
        raise NoRoute("no tier can serve this request: " + "; ".join(dropped))

    reason: Reason
    if r.hint is not None:
        tier, reason = r.hint, "hint"
    else:
        tier, reason = home, "home"
        other: Tier = "pod" if home == "wasm" else "wasm"
        if home in candidates and other in candidates:
            moved = _move_from_wasm(r) if home == "wasm" else _move_from_pod(r)
            if moved is not None:
                tier, reason = other, moved
        elif home not in candidates:
            tier, reason = other, "fallback"
    if tier == "pod" and home == "pod" and r.pod.ready == 0 and reason == "home":
        reason = "home_cold"  # held while the pod tier scales up
    others = [c for c in candidates if c != tier]
    keep_warm = reason == "faster" and _pod_pays_at_other_size(r, home)
    scale_pod = tier == "wasm" and "pod" in others and (reason == "cold_start_masked" or keep_warm)
    return Decision(tier, reason, others[0] if others else None, scale_pod)


def settled(
    tier: TierSetting,
    figures: ModelFigures,
    has_code: bool,
    accelerators: bool,
    t: Thresholds,
    flops_per_row: int | None,
    pod: PodState,
) -> Decision | None:
    """What :func:`decide` decides for a request with no hint and no deadline, when that needs neither the Wasm
    tier's state nor any measured figure: a Wasm-home request that fits the sandbox, while the pod tier has no
    ready replica, stays home (nothing to spill to, nothing measured to compare; the pod tier, if any, is the
    retry's fallback). None in every other case: ask :func:`decide`. On one machine with no runner up, this is
    nearly every request, and it saves building the rest of :class:`RouteInputs` for each
    (tests/test_policy.py holds the two to the same answers)."""
    if not has_code or pod.ready != 0:
        return None
    if home_tier(tier, figures, has_code, accelerators, t, flops_per_row) != "wasm":
        return None
    if _over_fit(figures, t, flops_per_row) is not None:
        return None
    return Decision("wasm", "home", "pod" if pod.available else None)


def _move_from_wasm(r: RouteInputs) -> Reason | None:
    """Why a Wasm-home request goes to the pod tier, or None. Never onto a tier with no ready replica."""
    if not r.spill or r.pod.ready == 0:
        return None
    big = r.batch >= r.thresholds.spill_batch_rows
    saturated = r.wasm.in_flight >= r.wasm.concurrency and r.wasm.queued > 0
    costs = _costs(r)
    if costs is not None:  # measured on both tiers: the quicker one, whatever the size or the queue
        wasm_ms, pod_ms = costs
        if pod_ms >= wasm_ms:
            return None
        return "spill_batch" if big else "spill_saturated" if saturated else "faster"
    if _by_service_time(r) and r.wasm.typical_ms is None and r.pod.typical_ms is not None:
        # The pods have been measured at this size and the sandbox not yet: stay home this once, or the rule
        # below would send every such request to the pods without ever learning the sandbox was quicker.
        return None
    return "spill_batch" if big else "spill_saturated" if saturated else None


def _move_from_pod(r: RouteInputs) -> Reason | None:
    """Why a pod-home request runs in the Wasm tier instead, or None."""
    costs = _costs(r)
    if costs is not None and costs[0] < costs[1]:
        return "faster"  # quicker here even once a replica is warm: no reason to wait for, or pay for, one
    if r.mask_cold_start and r.pod.warm == 0:
        return "cold_start_masked"
    return None


def _pod_pays_at_other_size(r: RouteInputs, home: Tier) -> bool:
    """Whether the function's requests of the other size class are better off on a warm pod: measured quicker
    there, or (requests of that size seen, the pod never measured at it) placed on the pod by its figures."""
    wasm_ms, pod_ms = r.other_size
    if wasm_ms is None:
        return False
    if pod_ms is None:
        return home == "pod"
    return pod_ms < wasm_ms


def _costs(r: RouteInputs) -> tuple[float, float] | None:
    """Expected milliseconds on (wasm, a warm pod) when the function is placed by the router (tier ``auto``)
    and both tiers have figures for this size of request; else None. The Wasm figure is a service time, so
    the queue in front of the pool scales it; the pod figure is a replica's service when it has nothing else in
    flight, so the work already in flight on the replica the request would get is added to it (a replica
    serves one request at a time at worst: a GPU runs one kernel stream; this errs towards the sandbox)."""
    if not _by_service_time(r) or r.wasm.typical_ms is None:
        return None
    queue = r.wasm.queued / max(1, r.wasm.concurrency) if r.wasm.in_flight >= r.wasm.concurrency else 0.0
    wasm_ms = r.wasm.typical_ms * (1.0 + queue)
    if r.pod.typical_ms is None:
        # Not measured on the pods: only the backlog there is known, a lower bound that may already decide.
        return (wasm_ms, r.pod.backlog_ms) if r.pod.backlog_ms > wasm_ms else None
    return wasm_ms, r.pod.typical_ms + r.pod.backlog_ms


def _by_service_time(r: RouteInputs) -> bool:
    return r.thresholds.by_service_time and r.tier == "auto"


def _expected_ms(tier: Tier, r: RouteInputs) -> float | None:
    """What a tier has recently taken, scaled to the batch where a figure is per request; None if unknown."""
    if tier == "wasm":
        return r.wasm.typical_ms
    warm = r.pod.typical_ms
    if r.pod.ready > 0:
        return warm
    if r.pod.scale_up_s is None:
        return None
    return r.pod.scale_up_s * 1000 + (warm or 0.0)

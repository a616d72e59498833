"""The router's policy as a pure function: home tiers, filtering, spill-over, cold-start masking, hints,
deadlines, edge clusters, and placement by measured service times; and the model figures it reads."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli.demo import dense_model, train_digits
from router.policy import (
    NoRoute,
    OverFit,
    PodState,
    RouteInputs,
    Thresholds,
    WasmState,
    decide,
    fits_sandbox,
    home_tier,
    request_flops,
    settled,
)
from wasm_host.figures import Dim, ModelFigures, Term, measure

T = Thresholds(pod_bytes=1000, pod_params=10_000, pod_flops_per_row=100_000, fit_bytes=5000, fit_flops_per_row=10**6)
SMALL = ModelFigures(bytes=100, params=50, flops_per_row=1_000)
LARGE = ModelFigures(bytes=3000, params=50_000, flops_per_row=500_000)  # large, but fits the sandbox
HUGE = ModelFigures(bytes=9000, params=500_000, flops_per_row=5_000_000)  # does not fit the sandbox
WARM_POD = PodState(available=True, ready=1, warm=1)
LOADING_POD = PodState(available=True, ready=1, warm=0)  # a replica is up, but has not loaded the model
COLD_POD = PodState(available=True, ready=0)


def inputs(**changes: object) -> RouteInputs:
    base = RouteInputs(
        tier="auto",
        figures=SMALL,
        has_code=True,
        spill=True,
        mask_cold_start=True,
        batch=1,
        hint=None,
        deadline_ms=None,
        accelerators=True,
        wasm=WasmState(),
        pod=COLD_POD,
        thresholds=T,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_figures_of_real_graphs() -> None:
    dense = measure(dense_model((256, 1024, 10)))
    assert dense.params == 256 * 1024 + 1024 + 1024 * 10 + 10
    # Two Gemm layers (2*K*N each per row) plus one ReLU per hidden unit.
    assert dense.flops_per_row == 2 * (256 * 1024 + 1024 * 10) + 1024
    digits = measure(train_digits()[0])
    assert digits.params >= 64 * 10  # a LinearClassifier keeps its coefficients in attributes
    assert digits.bytes < dense.bytes
    with pytest.raises(ValueError, match="not an ONNX model"):
        measure(b"\x00garbage")


def test_auto_places_by_figures_and_a_pinned_tier_stays() -> None:
    assert home_tier("auto", SMALL, True, True, T) == "wasm"
    assert home_tier("auto", LARGE, True, True, T) == "pod"
    assert home_tier("wasm", LARGE, True, True, T) == "wasm"
    assert home_tier("pod", SMALL, True, True, T) == "pod"
    assert home_tier("auto", SMALL, False, True, T) == "pod"  # served by an endpoint only


def test_edge_clusters_keep_everything_that_fits_the_sandbox_on_wasm() -> None:
    assert home_tier("auto", LARGE, True, False, T) == "wasm"
    assert home_tier("auto", HUGE, True, False, T) == "pod"  # a CPU runner: too large for the sandbox
    assert decide(inputs(figures=LARGE, accelerators=False, pod=WARM_POD)).tier == "wasm"
    too_big = decide(inputs(figures=HUGE, accelerators=False, pod=WARM_POD))
    assert (too_big.tier, too_big.fallback) == ("pod", None)  # never the sandbox, not even as a retry
    assert not fits_sandbox(HUGE, T)


def test_small_goes_to_wasm_and_large_to_pod() -> None:
    small = decide(inputs(pod=WARM_POD))
    assert (small.tier, small.reason, small.fallback) == ("wasm", "home", "pod")
    large = decide(inputs(figures=LARGE, pod=WARM_POD))
    assert (large.tier, large.reason, large.fallback) == ("pod", "home", "wasm")


def test_spill_over_needs_a_ready_replica_and_permission() -> None:
    big_batch = decide(inputs(batch=T.spill_batch_rows, pod=WARM_POD))
    assert (big_batch.tier, big_batch.reason) == ("pod", "spill_batch")
    assert decide(inputs(batch=T.spill_batch_rows - 1, pod=WARM_POD)).tier == "wasm"
    assert decide(inputs(batch=T.spill_batch_rows, pod=COLD_POD)).tier == "wasm"  # never onto a cold tier
    assert decide(inputs(batch=T.spill_batch_rows, pod=WARM_POD, spill=False)).tier == "wasm"
    saturated = WasmState(loaded=True, in_flight=8, queued=3, concurrency=8)
    spill = decide(inputs(wasm=saturated, pod=WARM_POD))
    assert (spill.tier, spill.reason) == ("pod", "spill_saturated")
    busy_not_queued = WasmState(loaded=True, in_flight=8, queued=0, concurrency=8)
    assert decide(inputs(wasm=busy_not_queued, pod=WARM_POD)).tier == "wasm"


def test_cold_start_masking_serves_on_wasm_while_pods_start_unless_turned_off() -> None:
    masked = decide(inputs(figures=LARGE, pod=COLD_POD))
    assert (masked.tier, masked.reason, masked.fallback) == ("wasm", "cold_start_masked", "pod")
    held = decide(inputs(figures=LARGE, pod=COLD_POD, mask_cold_start=False))
    assert (held.tier, held.reason) == ("pod", "home_cold")
    assert decide(inputs(figures=LARGE, pod=WARM_POD)).reason == "home"
    # A model too large for the sandbox waits for its pods: there is nothing to mask with.
    assert decide(inputs(figures=HUGE, pod=COLD_POD)).reason == "home_cold"
    # With no pod tier at all there is no cold start to mask: the sandbox is simply the only candidate.
    alone = decide(inputs(figures=LARGE, pod=PodState(available=False)))
    assert (alone.tier, alone.reason, alone.fallback) == ("wasm", "fallback", None)


def test_hints_filter_and_an_empty_filter_names_why() -> None:
    hinted = decide(inputs(hint="pod", pod=COLD_POD))
    assert (hinted.tier, hinted.reason, hinted.fallback) == ("pod", "hint", None)
    assert decide(inputs(figures=LARGE, hint="wasm", pod=WARM_POD)).tier == "wasm"
    with pytest.raises(NoRoute, match="no pod tier"):
        decide(inputs(hint="pod", pod=PodState(available=False)))
    with pytest.raises(OverFit, match=r"asked for the wasm tier.*setting wasm_fit_bytes"):
        decide(inputs(figures=HUGE, hint="wasm", pod=WARM_POD))
    with pytest.raises(NoRoute, match="served by its endpoint only"):
        decide(inputs(has_code=False, hint="wasm", pod=WARM_POD))


def test_deadlines_drop_tiers_that_cannot_answer_in_time() -> None:
    slow_start = PodState(available=True, ready=0, typical_ms=20, scale_up_s=1.5)
    # A pod-home function at zero, told to answer in 100 ms: the pods need 1.5 s, the sandbox can do it.
    quick = decide(
        inputs(figures=LARGE, pod=slow_start, mask_cold_start=False, deadline_ms=100, wasm=WasmState(typical_ms=30))
    )
    assert quick.tier == "wasm"
    with pytest.raises(NoRoute, match="over the deadline of 100 ms"):
        decide(inputs(figures=HUGE, pod=slow_start, deadline_ms=100))
    # Unknown figures never filter: the first requests are not refused for lack of history.
    assert decide(inputs(figures=LARGE, pod=COLD_POD, deadline_ms=1, mask_cold_start=False)).tier == "pod"


def test_masking_lasts_until_a_replica_holds_the_model() -> None:
    loading = decide(inputs(figures=LARGE, pod=LOADING_POD))
    assert (loading.tier, loading.reason) == ("wasm", "cold_start_masked")
    assert decide(inputs(figures=LARGE, pod=WARM_POD)).tier == "pod"


def with_times(wasm_ms: float | None, pod_ms: float | None, **changes: object) -> RouteInputs:
    r = inputs(**changes)
    return dataclasses.replace(
        r, wasm=dataclasses.replace(r.wasm, typical_ms=wasm_ms), pod=dataclasses.replace(r.pod, typical_ms=pod_ms)
    )


def test_auto_functions_go_where_their_measured_service_is_quicker() -> None:
    # A pod-home model that the sandbox serves faster (a CPU pod one hop away): it stays on Wasm, and since no
    # pod is wanted, the masking reason (which scales the pod tier up) is not given.
    stay = decide(with_times(3.0, 8.0, figures=LARGE, pod=WARM_POD))
    assert (stay.tier, stay.reason) == ("wasm", "faster")
    assert decide(with_times(3.0, 8.0, figures=LARGE, pod=COLD_POD)).reason == "faster"
    # Where the pod is quicker (a GPU), it wins when warm, and the cold start is masked meanwhile.
    assert decide(with_times(30.0, 4.0, figures=LARGE, pod=WARM_POD)).reason == "home"
    assert decide(with_times(30.0, 4.0, figures=LARGE, pod=COLD_POD)).reason == "cold_start_masked"
    # One tier unmeasured: the rules without figures (the pod tier gets its first requests and is measured).
    assert decide(with_times(3.0, None, figures=LARGE, pod=WARM_POD)).tier == "pod"
    # A Wasm-home function's big batch spills only if the pods are quicker for big batches.
    big = T.spill_batch_rows
    assert decide(with_times(40.0, 60.0, batch=big, pod=WARM_POD)).tier == "wasm"
    assert decide(with_times(60.0, 40.0, batch=big, pod=WARM_POD)).reason == "spill_batch"
    # Never onto a pod tier with no ready replica, however quick its figures.
    assert decide(with_times(60.0, 1.0, batch=big, pod=COLD_POD)).tier == "wasm"
    # The queue in front of a saturated pool counts against the sandbox: 16 waiting for 8 slots triples it.
    saturated = WasmState(loaded=True, in_flight=8, queued=16, concurrency=8)
    assert decide(with_times(3.0, 8.0, wasm=saturated, pod=WARM_POD)).reason == "spill_saturated"
    assert decide(with_times(3.0, 10.0, wasm=saturated, pod=WARM_POD)).tier == "wasm"


def test_a_size_measured_only_on_the_pods_is_measured_in_the_sandbox_next() -> None:
    # Neither tier measured for big batches: spill-over by size sends the first to a warm pod...
    big = T.spill_batch_rows
    assert decide(with_times(None, None, batch=big, pod=WARM_POD)).reason == "spill_batch"
    # ...then, the pods measured and the sandbox not, the next stays home to be measured there: otherwise a
    # model whose big batches are quicker in the sandbox would be spilled forever.
    measured_there = decide(with_times(None, 9.0, batch=big, pod=WARM_POD))
    assert (measured_there.tier, measured_there.reason) == ("wasm", "home")
    assert decide(with_times(4.0, 9.0, batch=big, pod=WARM_POD)).tier == "wasm"  # then the figures decide
    # A pinned placement keeps the fixed rules; so does a router told not to use figures.
    assert decide(with_times(None, 9.0, batch=big, pod=WARM_POD, tier="wasm")).reason == "spill_batch"
    off = dataclasses.replace(T, by_service_time=False)
    assert decide(with_times(None, 9.0, batch=big, pod=WARM_POD, thresholds=off)).reason == "spill_batch"


def test_the_backlog_on_the_replica_counts_against_the_pod_tier() -> None:
    # A GPU pod is quicker for this model (4 ms against 30), unless the replica it would get is busy with
    # work expected to take longer than the sandbox's whole answer.
    busy = dataclasses.replace(WARM_POD, backlog_ms=50.0)
    assert decide(with_times(30.0, 4.0, figures=LARGE, pod=WARM_POD)).tier == "pod"
    behind = decide(with_times(30.0, 4.0, figures=LARGE, pod=busy))
    assert (behind.tier, behind.reason) == ("wasm", "faster")
    assert decide(with_times(30.0, 4.0, figures=LARGE, pod=dataclasses.replace(busy, backlog_ms=20.0))).tier == "pod"
    # The pods not measured yet: the backlog alone is a lower bound, enough to decide when it is over the
    # sandbox's figure, and no reason to stay away when it is not.
    assert decide(with_times(30.0, None, figures=LARGE, pod=busy)).reason == "faster"
    assert decide(with_times(60.0, None, figures=LARGE, pod=busy)).tier == "pod"
    # A Wasm-home big batch does not spill onto a replica whose backlog makes it the slower choice.
    big = T.spill_batch_rows
    assert decide(with_times(30.0, 10.0, batch=big, pod=busy)).tier == "wasm"
    assert decide(with_times(30.0, 10.0, batch=big, pod=WARM_POD)).reason == "spill_batch"


def test_a_pinned_tier_is_not_moved_by_figures() -> None:
    pinned = decide(with_times(3.0, 8.0, tier="pod", figures=LARGE, pod=WARM_POD))
    assert (pinned.tier, pinned.reason) == ("pod", "home")
    assert decide(with_times(60.0, 40.0, tier="wasm", batch=1, pod=WARM_POD)).tier == "wasm"
    # Spilling stays in the function's hands: figures do not override spill: false.
    assert decide(with_times(60.0, 1.0, batch=T.spill_batch_rows, pod=WARM_POD, spill=False)).tier == "wasm"


def test_routing_by_service_time_is_a_setting() -> None:
    from gateway.settings import Settings
    from gateway.wiring import thresholds

    assert thresholds(Settings.from_env({})).by_service_time
    off = Settings.from_env({"WASMGATE_ROUTE_BY_SERVICE_TIME": "off"})
    assert not thresholds(off).by_service_time
    assert Settings.from_env(off.to_env()) == off  # "False" reads back
    with pytest.raises(ValueError, match="WASMGATE_ROUTE_BY_SERVICE_TIME='maybe': must be true or false"):
        Settings.from_env({"WASMGATE_ROUTE_BY_SERVICE_TIME": "maybe"})


def test_requests_served_in_the_sandbox_keep_the_pod_tier_up_only_where_it_pays() -> None:
    # Masking a cold start asks for the pod tier; so does a request that is quicker in the sandbox at its own
    # size when the pods win at another size (its big batches); otherwise the pods are left at zero.
    assert decide(inputs(figures=LARGE, pod=COLD_POD)).scale_pod
    assert not decide(with_times(3.0, 8.0, figures=LARGE, pod=COLD_POD)).scale_pod
    small_rows = with_times(3.0, 8.0, figures=LARGE, pod=COLD_POD)
    wins_elsewhere = decide(dataclasses.replace(small_rows, other_size=(70.0, 9.0)))
    assert (wins_elsewhere.tier, wins_elsewhere.scale_pod) == ("wasm", True)
    assert not decide(dataclasses.replace(small_rows, other_size=(70.0, 90.0))).scale_pod  # loses there too
    # Big batches seen but never tried on a pod: a pod-home model keeps the pods up so they get tried.
    assert decide(dataclasses.replace(small_rows, other_size=(70.0, None))).scale_pod
    wasm_home = with_times(3.0, 8.0, figures=SMALL, pod=COLD_POD)
    assert not decide(dataclasses.replace(wasm_home, other_size=(70.0, None))).scale_pod
    assert not decide(inputs(pod=COLD_POD)).scale_pod  # a small model at home
    assert not decide(inputs(figures=LARGE, pod=COLD_POD, hint="wasm")).scale_pod  # the caller chose


#: A sequence model: 1000 FLOPs a row plus 1000 a token (input ``ids``, axis 1).
SEQUENCE = ModelFigures(100, 50, 2000, (Dim("seq", (("ids", 1),)),), (Term(1000.0), Term(1000.0, ("seq",))))


def priced(tokens: int, **changes: object) -> RouteInputs:
    return inputs(figures=SEQUENCE, flops_per_row=request_flops(SEQUENCE, {"ids": (1, tokens)}), **changes)


def test_a_short_and_a_long_request_to_one_model_are_priced_to_different_tiers() -> None:
    # With accelerators: 10 tokens (11k FLOPs a row) are small, 500 (501k) past tier_pod_flops_per_row.
    assert decide(priced(10, pod=WARM_POD)).tier == "wasm"
    assert (decide(priced(500, pod=WARM_POD)).tier, decide(priced(500, pod=WARM_POD)).reason) == ("pod", "home")
    # Without: 500 tokens fit the sandbox (under 1M), 5000 (5M) do not, and never run there, not even on retry.
    assert decide(priced(500, accelerators=False, pod=WARM_POD)).tier == "wasm"
    edge = decide(priced(5000, accelerators=False, pod=WARM_POD))
    assert (edge.tier, edge.reason, edge.fallback) == ("pod", "home", None)
    # Where no request is at hand (wasm ls, the admin API), the reference size of 64 tokens (65k): small.
    assert home_tier("auto", SEQUENCE, True, True, T) == "wasm"
    assert home_tier("auto", SEQUENCE, True, True, T, flops_per_row=501_000) == "pod"


def test_a_request_past_the_fit_of_a_function_pinned_to_wasm_is_refused_naming_the_setting() -> None:
    # Never served on the pods instead, warm as they are; a 413 names the price and the setting.
    with pytest.raises(OverFit, match=r"pinned to the wasm tier.*5M FLOPs per row.*wasm_fit_flops_per_row"):
        decide(priced(5000, tier="wasm", pod=WARM_POD))
    with pytest.raises(OverFit, match="wasm_fit_flops_per_row"):
        decide(priced(5000, tier="wasm", pod=PodState(available=False)))
    # A request that fits is served in the sandbox, and the caller may still ask for the pods.
    assert decide(priced(500, tier="wasm", pod=WARM_POD)).reason == "home"
    hinted = decide(priced(5000, tier="wasm", pod=WARM_POD, hint="pod"))
    assert (hinted.tier, hinted.reason) == ("pod", "hint")


def test_a_function_pinned_to_pod_with_no_pod_tier_is_refused_not_served_in_the_sandbox() -> None:
    with pytest.raises(NoRoute, match=r"pinned to the pod tier.*setting pod_scaler"):
        decide(inputs(tier="pod", pod=PodState(available=False)))
    # Auto placement still falls back to the sandbox: nothing was pinned.
    assert decide(inputs(figures=LARGE, pod=PodState(available=False))).reason == "fallback"


pod_states = st.builds(
    PodState,
    available=st.booleans(),
    ready=st.integers(0, 2),
    warm=st.integers(0, 2),
    in_flight=st.integers(0, 20),
    held=st.integers(0, 5),
    typical_ms=st.none() | st.floats(0.1, 500),
    scale_up_s=st.none() | st.floats(0.1, 60),
    backlog_ms=st.floats(0, 500),
)
wasm_states = st.builds(
    WasmState,
    loaded=st.booleans(),
    warm=st.integers(0, 4),
    in_flight=st.integers(0, 10),
    queued=st.integers(0, 10),
    concurrency=st.integers(1, 8),
    typical_ms=st.none() | st.floats(0.1, 500),
)
settled_inputs = st.builds(
    RouteInputs,
    tier=st.sampled_from(["auto", "wasm", "pod"]),
    figures=st.sampled_from([SMALL, LARGE, HUGE]),
    has_code=st.booleans(),
    spill=st.booleans(),
    mask_cold_start=st.booleans(),
    batch=st.integers(1, 2 * T.spill_batch_rows),
    hint=st.none(),
    deadline_ms=st.none(),
    accelerators=st.booleans(),
    wasm=wasm_states,
    pod=pod_states,
    thresholds=st.just(T),
    other_size=st.tuples(st.none() | st.floats(0.1, 500), st.none() | st.floats(0.1, 500)),
    flops_per_row=st.none() | st.sampled_from([10, 200_000, 5_000_000]),
)


@settings(max_examples=500, deadline=None)
@given(settled_inputs)
def test_a_settled_decision_is_the_one_decide_makes(r: RouteInputs) -> None:
    """settled() may decline any request, but what it decides is what decide() decides on the same inputs."""
    quick = settled(r.tier, r.figures, r.has_code, r.accelerators, r.thresholds, r.flops_per_row, r.pod)
    if quick is None:
        return
    assert quick == decide(r)


def test_settled_takes_a_wasm_home_request_while_no_replica_is_up() -> None:
    """The case it is for (one machine, no runner up), and the cases it must leave to decide()."""
    for pod in (COLD_POD, PodState()):
        r = inputs(accelerators=False, pod=pod)
        assert settled(r.tier, r.figures, True, False, T, None, pod) == decide(r)
    assert settled("auto", SMALL, True, True, T, None, WARM_POD) is None  # a replica to spill to
    assert settled("auto", LARGE, True, True, T, None, COLD_POD) is None  # pod-home: cold-start masking
    assert settled("auto", HUGE, True, False, T, None, COLD_POD) is None  # past the sandbox's fit
    assert settled("wasm", SMALL, False, True, T, None, COLD_POD) is None  # an endpoint's function

"""The inline-or-thread policy (router.inline): quick functions run on the event loop thread, and one slow call
(a preemption) does not send the next ones through a thread hop."""

from __future__ import annotations

from router.inline import (
    OUTSIZE,
    OUTSIZE_FLOOR_BYTES,
    SLOW_STREAK,
    THREADED,
    Placement,
    first_placement,
    next_placement,
    outsize,
)

LIMIT = 2.0  # inline_below_ms


def test_a_new_function_runs_on_threads_until_its_figure_is_quick() -> None:
    assert first_placement(None, LIMIT) == THREADED
    assert first_placement(0.4, LIMIT) == Placement(inline=True)
    assert first_placement(2.0, LIMIT) == THREADED
    assert next_placement(THREADED, 5.0, 3.0, False, LIMIT) == THREADED
    assert next_placement(THREADED, 0.3, 1.9, False, LIMIT) == Placement(inline=True)


def test_one_slow_call_keeps_an_inline_function_inline() -> None:
    inline = Placement(inline=True)
    # A preempted call: 40 ms for a function that takes 0.3, its running figure pushed past the limit.
    after = next_placement(inline, 40.0, 8.2, False, LIMIT)
    assert after.inline
    # The next quick call clears the streak.
    assert next_placement(after, 0.3, 6.6, False, LIMIT) == inline


def test_slow_calls_in_a_row_send_it_to_threads() -> None:
    placement = Placement(inline=True)
    for _ in range(SLOW_STREAK - 1):
        placement = next_placement(placement, 5.0, 5.0, False, LIMIT)
        assert placement.inline
    assert next_placement(placement, 5.0, 5.0, False, LIMIT) == THREADED


def test_a_call_that_runs_into_its_deadline_sends_it_to_threads_at_once() -> None:
    assert next_placement(Placement(inline=True), 100.0, 20.0, True, LIMIT) == THREADED


def test_a_zero_limit_turns_inline_off() -> None:
    assert first_placement(0.1, 0.0) == THREADED
    assert next_placement(Placement(inline=True), 0.1, 0.1, False, 0.0) == THREADED


def test_a_request_far_larger_than_usual_is_outsize_and_small_ones_never_are() -> None:
    one_row = 256.0  # 64 floats
    assert not outsize(1024, None)  # no history: the call runs on threads anyway
    assert not outsize(8 * 256, one_row)  # 8 rows where 1 is usual: under the floor, no hop
    assert not outsize(OUTSIZE_FLOOR_BYTES, one_row)
    assert outsize(OUTSIZE_FLOOR_BYTES + 1, one_row)  # past the floor and more than OUTSIZE times the usual
    usual = 1024.0 * 1024
    assert not outsize(int(OUTSIZE * usual), usual)
    assert outsize(int(OUTSIZE * usual) + 1, usual)

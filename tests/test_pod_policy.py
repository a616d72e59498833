"""The pod tier's decisions (pure functions) and the activator's holding, releasing and scaling.

The activator tests drive it with :class:`ScriptedScaler`, a scaler whose replicas the test turns ready by
hand: the activator is the thing under test here, and the scalers are tested against real processes
(tests/test_pod_tier.py) and the Kubernetes API emulator (tests/test_kubernetes_scaler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import anyio
import pytest

from router.activator import Activator
from router.pod_policy import IdleGaps, ScalePolicy, desired_replicas, keep_alive_s, needed_replicas, pick_replica
from router.scaler import Replica
from wasm_host.errors import TooManyRequests, Unavailable

R1, R2, R3 = Replica("a", "http://a"), Replica("b", "http://b"), Replica("c", "http://c")


def test_needed_replicas_rounds_demand_up_within_bounds() -> None:
    policy = ScalePolicy(min_replicas=0, max_replicas=3, target_in_flight=4)
    assert [needed_replicas(policy, d) for d in (0, 1, 4, 5, 8, 9, 100)] == [0, 1, 1, 2, 2, 3, 3]
    assert needed_replicas(ScalePolicy(min_replicas=1, max_replicas=2, target_in_flight=4), 0) == 1


def test_scaling_up_is_immediate_and_down_waits_for_the_grace_period() -> None:
    policy = ScalePolicy(max_replicas=4, target_in_flight=2, idle_grace_s=10)
    assert desired_replicas(policy, demand=5, current=0, below_for_s=0) == 3
    assert desired_replicas(policy, demand=1, current=3, below_for_s=9.9) == 3
    assert desired_replicas(policy, demand=1, current=3, below_for_s=10) == 1
    assert desired_replicas(policy, demand=0, current=1, below_for_s=10) == 0
    assert desired_replicas(policy, demand=0, current=1, below_for_s=0) == 1


def test_bad_policies_are_refused() -> None:
    for kwargs in ({"max_replicas": 0}, {"min_replicas": 3, "max_replicas": 2}, {"target_in_flight": 0}):
        with pytest.raises(ValueError, match="pod"):
            ScalePolicy(**kwargs)  # type: ignore[arg-type]


def test_pick_prefers_a_replica_holding_the_model_until_it_is_full() -> None:
    ready = [R1, R2, R3]
    assert pick_replica(ready, {}, set(), 4) == R1  # nothing known: the first, least loaded
    assert pick_replica(ready, {"a": 1}, set(), 4) == R2  # least loaded
    assert pick_replica(ready, {"b": 3}, {"b"}, 4) == R2  # affinity beats load while it has room
    assert pick_replica(ready, {"b": 4}, {"b"}, 4) == R1  # a full holder loses to an empty replica
    assert pick_replica(ready, {}, {"b"}, 4, exclude={"b"}) == R1
    assert pick_replica(ready, {}, set(), 4, exclude={"a", "b", "c"}) is None


class ScriptedScaler:
    """A scaler whose replicas become ready only when the test says so; it records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.preload: list[list[str]] = []  # the functions passed with each scale request
        self._ready: list[Replica] = []
        self._on_change: Callable[[], None] = lambda: None

    async def run(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        await anyio.sleep_forever()

    async def scale(self, replicas: int, functions: Collection[str] = ()) -> None:
        self.asked.append(replicas)
        self.preload.append(list(functions))

    def ready(self) -> Sequence[Replica]:
        return tuple(self._ready)

    def wanted(self) -> int:
        return self.asked[-1] if self.asked else 0

    async def aclose(self) -> None:
        pass

    def set_ready(self, *replicas: Replica) -> None:
        self._ready = list(replicas)
        self._on_change()


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


def test_held_requests_scale_from_zero_and_are_released_in_arrival_order() -> None:
    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(max_replicas=2, target_in_flight=2), 10, 30, tick_s=0.01)
        order: list[int] = []

        async def request(i: int) -> None:
            async with activator.acquire("f") as lease:
                assert lease.held
                assert lease.replica == R1
                order.append(i)

        async with anyio.create_task_group() as tg:
            tg.start_soon(activator.run)
            async with anyio.create_task_group() as requests:
                for i in range(5):
                    requests.start_soon(request, i)
                    await wait_for(lambda i=i: activator.held == i + 1)  # type: ignore[misc]
                # Held, and the scaler asked for replicas for all five at once (5 / 2 -> 3, capped at 2).
                await wait_for(lambda: scaler.wanted() == 2)
                assert order == []
                scaler.set_ready(R1)
            assert order == [0, 1, 2, 3, 4]
            assert activator.held == 0
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_scale_up_names_the_functions_of_the_held_requests_first_held_first() -> None:
    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(max_replicas=3, target_in_flight=1), 10, 30, tick_s=0.01)

        async def request(function: str) -> None:
            async with activator.acquire(function):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(activator.run)
            async with anyio.create_task_group() as requests:
                requests.start_soon(request, "a")
                await wait_for(lambda: scaler.asked == [1])
                requests.start_soon(request, "b")
                requests.start_soon(request, "a")
                await wait_for(lambda: scaler.wanted() == 3)
                # Each runner started is told what waits for it: the new ones may be the first ready.
                assert scaler.preload[0] == ["a"]
                assert scaler.preload[-1] == ["a", "b"]
                scaler.set_ready(R1)
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_hold_past_its_timeout_is_a_503_with_retry_after_and_a_full_queue_a_429() -> None:
    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(), max_held=1, hold_timeout_s=0.2, tick_s=0.01)
        errors: list[Exception] = []

        async def request() -> None:
            try:
                async with activator.acquire("f"):
                    pass
            except Unavailable as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(activator.run)
            async with anyio.create_task_group() as requests:
                requests.start_soon(request)
                await wait_for(lambda: activator.held == 1)
                requests.start_soon(request)
            tg.cancel_scope.cancel()
        assert isinstance(errors[0], TooManyRequests)
        assert "pod_max_held" in str(errors[0])
        timeout = errors[1]
        assert type(timeout) is Unavailable
        assert "pod_hold_timeout_s" in str(timeout)
        assert timeout.retry_after is not None
        assert activator.held == 0

    anyio.run(main)


def test_a_retry_does_not_wait_and_skips_the_replica_that_failed() -> None:
    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(), 10, 30, tick_s=0.01)
        scaler.set_ready(R1, R2)
        async with activator.acquire("f") as lease:
            first = lease.replica
        activator.failed(first)
        async with activator.acquire("f", exclude=[first.id], hold=False) as lease:
            assert lease.replica != first
        # A new request avoids the suspect replica while another is ready.
        async with activator.acquire("f") as lease:
            assert lease.replica != first
        scaler.set_ready(first)
        with pytest.raises(Unavailable, match="no other pod-tier replica"):
            async with activator.acquire("f", exclude=[first.id], hold=False):
                pass

    anyio.run(main)


def test_idle_replicas_scale_to_zero_after_the_grace_period_only() -> None:
    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(idle_grace_s=0.3), 10, 30, tick_s=0.01)
        async with anyio.create_task_group() as tg:
            tg.start_soon(activator.run)
            async with anyio.create_task_group() as requests:

                async def request() -> None:
                    async with activator.acquire("f"):
                        await anyio.sleep(0.1)

                requests.start_soon(request)
                await wait_for(lambda: scaler.asked == [1])
                scaler.set_ready(R1)
            started = anyio.current_time()
            await wait_for(lambda: scaler.asked == [1, 0])
            assert anyio.current_time() - started >= 0.3
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_steady_stream_of_short_requests_keeps_the_tier_up() -> None:
    """Each request is over long before the next scaling tick: demand is what was seen since the last tick,
    not the count at the tick, so the tier stays up while the stream lasts and scales down after it."""

    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(idle_grace_s=0.3), 10, 30, tick_s=0.05)
        scaler.set_ready(R1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(activator.run)
            started = anyio.current_time()
            while anyio.current_time() - started < 1.2:  # four grace periods of traffic
                async with activator.acquire("f"):
                    pass  # a short request: never in flight at a tick
                await anyio.sleep(0.02)
            assert 0 not in scaler.asked, scaler.asked
            await wait_for(lambda: scaler.asked[-1:] == [0])
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_demand_served_elsewhere_scales_up_and_holds_the_tier_one_grace_period() -> None:
    """Requests masked on the Wasm tier (note_demand) scale the tier up at once, keep it up while they come,
    and let it go one grace period after the last, as requests it served would. Scaling decisions are driven
    with an explicit clock."""

    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(idle_grace_s=10), 10, 30)
        activator.note_demand()
        await activator._scale_once(0.0)
        assert scaler.asked == [1]
        scaler.set_ready(R1)
        for t in (5.0, 10.0, 15.0):  # masked requests keep coming: no scale-down
            activator.note_demand()
            await activator._scale_once(t)
        await activator._scale_once(15.5)  # the first decision without demand starts the grace period
        await activator._scale_once(25.0)
        assert scaler.asked == [1]
        await activator._scale_once(25.5)  # one grace period after the last demand was seen
        assert scaler.asked == [1, 0]

    anyio.run(main)


def test_the_keep_alive_stretches_to_cover_the_gaps_seen_within_its_ceiling() -> None:
    assert keep_alive_s([], 3.0, 300.0) == 3.0  # nothing seen: the idle grace
    assert keep_alive_s([8.0], 3.0, 300.0) == 3.0  # one gap is not a rhythm yet
    assert keep_alive_s([5.0, 8.0], 3.0, 300.0) == pytest.approx(8.8)  # the 90th percentile, plus 10%
    gaps = [4.0] * 9 + [100.0]  # one long pause in ten sets the 90th percentile no higher than the rest
    assert keep_alive_s(gaps, 3.0, 300.0) == pytest.approx(4.4)
    assert keep_alive_s([500.0, 600.0], 3.0, 300.0) == 300.0  # never past the ceiling
    assert keep_alive_s([5.0, 8.0], 3.0, 0.0) == 3.0  # a ceiling at or below the grace: off


def test_the_last_replica_waits_out_the_keep_alive_and_the_others_only_the_grace() -> None:
    policy = ScalePolicy(max_replicas=4, target_in_flight=2, idle_grace_s=10)
    assert desired_replicas(policy, demand=0, current=3, below_for_s=10, keep_alive=30) == 1
    assert desired_replicas(policy, demand=0, current=1, below_for_s=29, keep_alive=30) == 1
    assert desired_replicas(policy, demand=0, current=1, below_for_s=30, keep_alive=30) == 0
    assert desired_replicas(policy, demand=0, current=3, below_for_s=10, keep_alive=5) == 0  # shorter: the grace
    assert desired_replicas(policy, demand=3, current=3, below_for_s=10, keep_alive=30) == 2  # not to zero


def test_idle_gaps_are_the_pauses_longer_than_the_grace_after_demand_was_seen() -> None:
    gaps = IdleGaps(ScalePolicy(idle_grace_s=3, keep_alive_max_s=60))
    for now, demand in [(0.0, 0), (50.0, 0), (100.0, 1), (101.0, 0), (102.0, 1), (103.0, 0), (110.0, 2)]:
        gaps.note(demand, now)
    # The 100 s before the first request are not a gap, nor is the 1 s pause (within the grace): only the 7 s.
    assert list(gaps.gaps) == [7.0]
    assert gaps.keep_alive_s == 3.0
    for now, demand in [(111.0, 0), (116.0, 1)]:
        gaps.note(demand, now)
    assert list(gaps.gaps) == [7.0, 5.0]
    assert gaps.keep_alive_s == pytest.approx(7.7)


def test_the_tier_stays_up_through_pauses_it_has_learnt_to_expect() -> None:
    """Bursts 8 s apart, with an idle grace of 3 s: after two such pauses the last replica waits out the
    next one instead of going to zero. Scaling decisions are driven with an explicit clock."""

    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(idle_grace_s=3, keep_alive_max_s=60), 10, 30)
        scaler.set_ready(R1)

        async def burst(at: float) -> None:
            async with activator.acquire("f"):
                await activator._scale_once(at)
            await activator._scale_once(at + 1)  # the burst is over

        await burst(0.0)
        for at in (9.0, 18.0):  # the first two pauses are learnt the hard way: down to zero each time
            await activator._scale_once(at - 4)
            assert scaler.wanted() == 0
            await burst(at)
        assert activator.scaling.idle.keep_alive_s == pytest.approx(8.8)
        asked = len(scaler.asked)
        await activator._scale_once(23.0)  # 5 s idle: past the grace, within the keep-alive
        await burst(27.0)
        assert scaler.asked[asked:] == []  # never asked for zero: the burst found its replica warm
        await activator._scale_once(40.0)
        assert scaler.wanted() == 0  # a pause longer than the keep-alive still ends at zero

    anyio.run(main)


def test_a_lease_says_whether_its_replica_was_idle_and_the_backlog_counts_expected_work() -> None:
    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(target_in_flight=4), 10, 30)
        scaler.set_ready(R1)
        assert activator.backlog_ms("f") == 0.0
        async with activator.acquire("f", expected_ms=50.0) as first:
            assert first.alone
            assert activator.backlog_ms("f") == 50.0
            async with activator.acquire("f", expected_ms=10.0) as second:
                assert not second.alone  # it queues behind the first: its time is not the replica's service
                assert activator.backlog_ms("f") == 60.0
            assert activator.backlog_ms("f") == 50.0
        assert activator.backlog_ms("f") == 0.0

    anyio.run(main)


def test_the_routers_snapshot_is_what_the_separate_readings_say() -> None:
    """Activator.snapshot reads, in one call, what PodTier.state once read with five: the same numbers, with no
    replica up, with replicas up and requests in flight, and with one holding the model."""

    def readings(activator: Activator, function: str) -> tuple[int, int, int, int, float]:
        return (
            activator.ready,
            activator.warm(function),
            activator.in_flight_total,
            activator.held,
            activator.backlog_ms(function),
        )

    async def main() -> None:
        scaler = ScriptedScaler()
        activator = Activator(scaler, ScalePolicy(max_replicas=2, target_in_flight=2), 10, 30, tick_s=0.01)
        assert activator.snapshot("f") == readings(activator, "f") == (0, 0, 0, 0, 0.0)
        scaler.set_ready(R1, R2)
        async with activator.acquire("f", expected_ms=7.5) as lease, activator.acquire("g", expected_ms=2.0):
            activator.served("f", lease.replica)
            for function in ("f", "g", "h"):
                assert activator.snapshot(function) == readings(activator, function)
            assert activator.snapshot("f")[:3] == (2, 1, 2)
            assert activator.snapshot("f")[4] > 0  # the replica it would get has work in flight

    anyio.run(main)

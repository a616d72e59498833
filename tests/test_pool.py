"""Pool semantics with a guest that counts the requests it has seen: warm counts, recycling, trap disposal,
and fresh isolation. No timing: the warmer is driven by calling ``refill`` (or waited on by state)."""

from __future__ import annotations

import struct

import pytest

from tests.support import COUNTER, prepare_wat, wait_for
from wasm_host.errors import GuestTrap
from wasm_host.guest import FunctionImage
from wasm_host.host import Host
from wasm_host.pool import InstancePool, PoolSettings, Warmer
from wasm_host.tensors import Tensor


def count(pool: InstancePool, value: float = 0.0) -> int:
    with pool.instance() as inst:
        (out,) = inst.handle([Tensor("x", "FP32", (1,), struct.pack("<f", value))], [])
    return int(out.to_numpy()[0])


@pytest.fixture
def image(host: Host) -> FunctionImage:
    return prepare_wat(host, COUNTER)


def test_reuse_keeps_state_and_recycles_after_n_requests(image: FunctionImage) -> None:
    pool = InstancePool(image, PoolSettings(recycle_after=3))
    assert [count(pool) for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]
    assert pool.recycled == 2
    assert pool.instantiated == 3


def test_fresh_isolation_never_shows_another_requests_state(image: FunctionImage) -> None:
    pool = InstancePool(image, PoolSettings(isolation="fresh"))
    assert [count(pool) for _ in range(5)] == [1, 1, 1, 1, 1]
    assert pool.ready == 0  # nothing is ever returned to the pool
    assert pool.target_ready() == 1
    pool.refill()
    assert pool.ready == 1
    count(pool)
    assert pool.instantiated_on_request == 5  # the sixth request took the pre-instantiated one


def test_a_trap_discards_the_instance(image: FunctionImage) -> None:
    pool = InstancePool(image, PoolSettings())
    assert count(pool) == 1
    assert count(pool) == 2
    with pytest.raises(GuestTrap):
        count(pool, 1.0)
    assert pool.discarded == 1
    assert count(pool) == 1  # a new instance: the trapped one's state is gone
    assert pool.busy == 0


def test_min_warm_instances_are_made_ready_in_the_background(image: FunctionImage) -> None:
    warmer = Warmer()
    try:
        pool = InstancePool(image, PoolSettings(min_warm=2, max_instances=3), warmer)
        warmer.schedule(pool)
        wait_for(lambda: pool.ready == 2)
        assert pool.instantiated_on_request == 0
        inst = pool.acquire()  # takes one ready instance and asks the warmer to top the pool up
        wait_for(lambda: pool.ready == 2)
        assert pool.live == 3
        second = pool.acquire()
        third = pool.acquire()
        assert pool.live == 3  # max_instances bounds the refill while these are busy
        for i in (inst, second, third):
            pool.release(i)
        assert pool.ready == 3
        assert pool.shrink(2) == 1
        assert pool.ready == 2
        assert pool.instantiated_on_request == 0  # every request found an instance ready
    finally:
        warmer.close()


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="min_warm"):
        PoolSettings(min_warm=5, max_instances=2)
    with pytest.raises(ValueError, match="isolation"):
        PoolSettings(isolation="shared")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown pool setting"):
        PoolSettings.from_json({"min_warmth": 1})
    assert PoolSettings.from_json({"min_warm": 1}, PoolSettings(max_instances=4)).max_instances == 4
    assert PoolSettings(concurrency=10, max_instances=4).effective_concurrency == 4

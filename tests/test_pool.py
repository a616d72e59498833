"""Pool semantics with a guest that counts the requests it has seen: warm counts, recycling, trap disposal,
and fresh isolation. No timing: the warmer is driven by calling ``refill`` (or waited on by state)."""

from __future__ import annotations

import struct
import time

import pytest

from tests.conftest import prepare_wat
from wasm_host.errors import GuestTrap
from wasm_host.guest import FunctionImage
from wasm_host.host import Host
from wasm_host.pool import InstancePool, PoolSettings, Warmer
from wasm_host.tensors import Tensor

# handle() bumps a global counter and answers one INT64 tensor "count" holding it; with input value 1.0 it
# traps instead. The response is a fixed WGT1 buffer at 1024 whose data word is patched.
COUNTER = r"""
(module
  (memory (export "memory") 1)
  (global $n (mut i64) (i64.const 0))
  (data (i32.const 1024)
    "\57\47\54\31" "\01\00\00\00" "\00\00\00\00" "\00\00\00\00"
    "\05\00\00\00" "\05\00\00\00" "\01\00\00\00" "\08\00\00\00"
    "\01\00\00\00\00\00\00\00"
    "count\00\00\00")
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "handle") (param $p i32) (param $len i32) (result i64)
    ;; the request's first input data starts at 16 + 16 + 8 (dims [1]) + 8 (name "x") = 48
    (if (f32.eq (f32.load (i32.add (local.get $p) (i32.const 48))) (f32.const 1)) (then unreachable))
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (i64.store (i32.const 1072) (global.get $n))
    (i64.or (i64.shl (i64.const 56) (i64.const 32)) (i64.const 1024))))
"""


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


def wait_for(condition: object, timeout: float = 30.0) -> None:
    """Wait for background work to reach a state; a generous bound that only fails a broken warmer."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)

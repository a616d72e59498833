"""Waits a guest controls end at its deadline (wasm_host/waits.py): sleeps through ``poll_oneoff`` and
onnxruntime runs through WASI-NN's ``compute``, in-process with inline WAT guests and the passthrough guest.

The one clock reading in these tests bounds a wait the guest asked to last 30 s or more by 10 s: it cannot pass
by luck (the wait it bounds would otherwise last three times as long), and a loaded machine does not make it
fail (the deadline is 200 ms).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from tests.support import prepare_wat, require_compiled_host
from wasm_host import waits
from wasm_host.engine import SandboxLimits
from wasm_host.errors import DeadlineExceeded
from wasm_host.guest import GuestInstance
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef
from wasm_host.passthrough import PASSTHROUGH_ALIAS, passthrough_module
from wasm_host.tensors import Tensor, TensorSpec
from wasm_host.waits import EFAULT, EINVAL, Deadline, Watchdog

#: A wait these tests would never sit through.
LONG_S = 30
#: The bound on how long such a wait may take to be refused (the deadline is 200 ms).
BOUND_S = 10

# A guest whose exports fill one subscription at 0 (userdata 7) and call poll_oneoff with it: events at 100,
# nevents at 200. `sleep` takes the clock's timeout, flags and id; `read_stdin` subscribes to fd 0 instead;
# `poll_raw` passes its own pointers and count.
POLL = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
  (func (export "sleep") (param $ns i64) (param $flags i32) (param $clock i32) (result i32)
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (local.get $clock))
    (i64.store (i32.const 24) (local.get $ns))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (local.get $flags))
    (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))
  (func (export "read_stdin") (result i32)
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 1))
    (i32.store (i32.const 16) (i32.const 0))
    (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))
  (func (export "poll_raw") (param i32 i32 i32) (result i32)
    (call $poll (local.get 0) (i32.const 100) (local.get 1) (local.get 2)))
  (func (export "monotonic_now") (result i64)
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 304))) (i64.load (i32.const 304)))
  (func (export "nevents") (result i32) (i32.load (i32.const 200)))
  (func (export "event_userdata") (result i64) (i64.load (i32.const 100)))
  (func (export "event_error") (result i32) (i32.load16_u (i32.const 108)))
  (func (export "event_type") (result i32) (i32.load8_u (i32.const 110))))"""

REALTIME, MONOTONIC, PROCESS_CPUTIME = 0, 1, 2
ABSTIME = 1


@pytest.fixture
def poller(host: Host) -> GuestInstance:
    return prepare_wat(host, POLL).instantiate()


def test_a_sleep_within_the_deadline_sleeps_and_reports_its_event(poller: GuestInstance) -> None:
    inst = poller
    started = time.monotonic()
    assert inst.call("sleep", 20_000_000, 0, MONOTONIC) == 0
    assert time.monotonic() - started >= 0.02
    assert inst.call("nevents") == 1
    assert inst.call("event_userdata") == 7
    assert inst.call("event_error") == 0


@pytest.mark.parametrize("clock", [REALTIME, MONOTONIC])
def test_a_sleep_past_the_deadline_fails_at_once(poller: GuestInstance, clock: int) -> None:
    inst = poller
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=f"in poll_oneoff, asked to sleep {LONG_S * 1000} ms"):
        inst.call("sleep", LONG_S * 1_000_000_000, 0, clock)
    assert time.monotonic() - started < BOUND_S
    assert not inst.healthy


def test_absolute_wake_ups_are_read_against_the_guests_own_clocks(poller: GuestInstance) -> None:
    inst = poller
    now = inst.call("monotonic_now")
    assert inst.call("sleep", now + 10_000_000, ABSTIME, MONOTONIC) == 0
    assert inst.call("sleep", 0, ABSTIME, MONOTONIC) == 0  # a wake-up already passed
    assert inst.call("sleep", time.time_ns() - 10**9, ABSTIME, REALTIME) == 0
    with pytest.raises(DeadlineExceeded, match="poll_oneoff"):
        inst.call("sleep", now + LONG_S * 1_000_000_000, ABSTIME, MONOTONIC)


def test_descriptors_never_block_and_bad_arguments_are_errnos(host: Host) -> None:
    inst = prepare_wat(host, POLL).instantiate()
    assert inst.call("read_stdin") == 0
    assert (inst.call("nevents"), inst.call("event_userdata"), inst.call("event_type")) == (1, 7, 1)
    assert inst.call("sleep", 1_000_000, 0, PROCESS_CPUTIME) == 0  # a clock not offered: its event says so
    assert inst.call("event_error") == EINVAL
    assert inst.call("poll_raw", 0, 0, 200) == EINVAL  # no subscriptions
    assert inst.call("poll_raw", 65_500, 1, 200) == EFAULT  # the subscription runs past the memory's end
    assert inst.call("poll_raw", 0, 1, 70_000) == EFAULT  # nowhere to write the count
    assert inst.healthy


def test_an_initialize_that_sleeps_past_the_deadline_is_stopped(host: Host) -> None:
    wat = POLL.replace(
        '(func (export "nevents")',
        '(func (export "_initialize") (drop (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200))))'
        '\n  (data (i32.const 24) "\\00\\00\\00\\00\\00\\00\\00\\40")'  # a relative timeout of 2^62 ns
        '\n  (func (export "nevents")',
    )
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="in _initialize, in poll_oneoff"):
        prepare_wat(host, wat).instantiate()
    assert time.monotonic() - started < BOUND_S


# -- onnxruntime runs --------------------------------------------------------------------------------------


def slow_model(layers: int = 600, size: int = 512) -> bytes:
    """``layers`` chained [size x size] matrix products of one weight: about 0.27 GFLOP each at 512, seconds
    in all on one thread; one megabyte of weights."""
    w = (np.random.default_rng(0).standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["x" if i == 0 else f"h{i}", "w"], [f"h{i + 1}"]) for i in range(layers)]
    nodes.append(oh.make_node("Identity", [f"h{layers}"], ["y"]))
    graph = oh.make_graph(
        nodes,
        "slow",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [size, size])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [size, size])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


def test_a_run_past_the_deadline_is_stopped_in_compute(host: Host, tmp_path: Path) -> None:
    model = slow_model()
    path = tmp_path / "slow.onnx"
    path.write_bytes(model)
    ref = ModelRef(hashlib.sha256(model).hexdigest(), path)
    graph = host.backend.load_ref(ref)  # loaded before the request, as a function's registry does
    wasm = passthrough_module()
    image = host.prepare(wasm, hashlib.sha256(wasm).hexdigest(), {PASSTHROUGH_ALIAS: ref})
    inst = image.instantiate()
    x = Tensor.from_numpy("x", np.eye(512, dtype=np.float32))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"\(200 ms\) in handle, in wasi-nn compute \(onnxruntime stopped\)"):
        inst.handle([x], [TensorSpec("y", "FP32", (512, 512))])
    assert time.monotonic() - started < BOUND_S
    assert not inst.healthy
    del graph


def test_the_watchdog_leaves_runs_within_their_deadline_alone(host: Host) -> None:
    graph = host.backend.load(slow_model(layers=2, size=8))
    watchdog = Watchdog()
    try:
        deadline = Deadline()
        deadline.arm(60_000)
        with watchdog.watch(deadline) as options:
            (y,) = graph.run([np.eye(8, dtype=np.float32)], options)
        assert deadline.expired is None
        assert np.asarray(y).shape == (8, 8)
    finally:
        watchdog.close()


def test_the_watchdog_wakes_from_its_idle_sleep_for_a_new_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its thread sleeps once no run has been in progress for a while (no GIL taken while idle); a run that
    starts then must still be stopped at its deadline."""
    monkeypatch.setattr(waits, "IDLE_AFTER_S", 0.01)
    watchdog = Watchdog(interval_s=0.005)
    try:
        with watchdog.watch(Deadline()):  # starts the thread
            pass
        until = time.monotonic() + 10
        while not watchdog._sleeping and time.monotonic() < until:
            time.sleep(0.005)
        assert watchdog._sleeping, "the watchdog's thread never went to sleep with no run in progress"
        deadline = Deadline()
        deadline.arm(1)
        with watchdog.watch(deadline) as options:
            while not options.terminate and time.monotonic() < until:
                time.sleep(0.005)
        assert options.terminate
        assert deadline.expired == "wasi-nn compute"
    finally:
        watchdog.close()


def test_the_compiled_host_ticks_without_a_python_thread(tmp_path: Path) -> None:
    """On the compiled host the epoch ticks, and its runs are stopped at their deadline, from a native thread:
    no Python thread wakes every tick to take the GIL from the event loop. (Deadlines firing on this host are
    tested by every ``host`` test that runs into one.)"""
    require_compiled_host("compiled")
    host = Host(SandboxLimits(), tmp_path, host_path="compiled").start()
    try:
        assert host.host_path == "compiled"
        names = {t.name for t in threading.enumerate()}
        assert not names & {"wasmgate-epoch", "wasmgate-watchdog"}, names
    finally:
        host.close()

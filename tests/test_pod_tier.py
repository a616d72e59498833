"""The pod tier end to end on one machine: a real ``wasm serve`` whose local scaler starts real ``wasm runner``
processes, driven over HTTP; plus runners on their own (as an existing OIP v2 endpoint, and fetching their
functions from a gateway) and a runner app's memory budget."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from gateway.app import create_app
from gateway.cli.demo import dense_model
from gateway.settings import Settings
from tests.support import AppClient, Digits, Gateway, binary_body, infer_body, metric, push, runner_pids, wait_until

pytestmark = pytest.mark.e2e

#: Big enough that the router would send it to a pod (about 4.3 MB), small enough to load in well under a second.
SIZES = (256, 1024, 768, 10)


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ort.InferenceSession]:
    model = dense_model(SIZES)
    path = tmp_path_factory.mktemp("dense") / "dense.onnx"
    path.write_bytes(model)
    return path, ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def dense_request(seed: int, rows: int = 2) -> tuple[dict[str, object], np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((rows, SIZES[0])).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return body, x


def expected(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = session.run(None, {"input": x})[0]
    return out


def replica_url(replica: str) -> str:
    return f"http://127.0.0.1:{replica.rsplit('@', 1)[1]}"


@pytest.fixture
def pod_gateway(tmp_path: Path) -> Iterator[Gateway]:
    env = {
        "WASMGATE_POD_MAX_REPLICAS": "2",
        "WASMGATE_POD_TARGET_IN_FLIGHT": "8",
        "WASMGATE_POD_IDLE_GRACE_S": "3",
        "WASMGATE_POD_HOLD_TIMEOUT_S": "60",
        "WASMGATE_DRAIN_TIMEOUT_S": "5",
    }
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    yield gw
    gw.stop()


def test_burst_from_zero_is_held_served_exactly_once_and_runners_stop_when_idle(
    pod_gateway: Gateway, dense: tuple[Path, ort.InferenceSession]
) -> None:
    path, session = dense
    r = pod_gateway.cli("push", str(path), "--name", "dense", "--tier", "pod", "--no-mask-cold-start")
    assert r.returncode == 0, r.stderr
    assert "tier pod" in r.stdout
    assert runner_pids(pod_gateway) == []  # a push starts nothing: the tier is at zero

    def call(i: int) -> tuple[httpx.Response, np.ndarray]:
        body, x = dense_request(i)
        return httpx.post(f"{pod_gateway.url}/v2/models/dense/infer", json=body, timeout=120), x

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(call, range(50)))
    replicas = set()
    for response, x in results:
        assert response.status_code == 200, response.text
        assert response.headers["x-wasmgate-tier"] == "pod"
        replicas.add(response.headers["x-wasmgate-replica"])
        got = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
        np.testing.assert_allclose(got, expected(session, x), rtol=1e-4, atol=1e-5)
    assert sum(r.headers.get("x-wasmgate-cold-start") == "true" for r, _ in results) >= 1
    # Exactly once: the runners together served 50 requests of the function, and the gateway forwarded 50.
    served = sum(
        metric(httpx.get(f"{replica_url(rep)}/metrics").text, "wasmgate_requests_total", function="dense")
        for rep in replicas
    )
    assert served == 50
    text = httpx.get(f"{pod_gateway.url}/metrics").text
    assert metric(text, "wasmgate_requests_total", function="dense", backend="pod", status="200") == 50
    assert metric(text, "wasmgate_pod_scale_events_total", direction="up") >= 1
    assert 1 <= len(runner_pids(pod_gateway)) <= 2

    # No traffic for the grace period (3 s): the runners are stopped, and the tier reports zero.
    wait_until(lambda: runner_pids(pod_gateway) == [], 30, "runners to stop after the idle grace period")
    for rep in replicas:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{replica_url(rep)}/v2/health/live", timeout=2)
    text = httpx.get(f"{pod_gateway.url}/metrics").text
    assert metric(text, "wasmgate_pod_replicas", state="ready") == 0
    assert metric(text, "wasmgate_pod_scale_events_total", direction="zero") == 1

    # And back from zero: the next request is held and served.
    body, x = dense_request(99)
    again = httpx.post(f"{pod_gateway.url}/v2/models/dense/infer", json=body, timeout=120)
    assert again.status_code == 200
    assert again.headers["x-wasmgate-cold-start"] == "true"


def test_killing_a_runner_mid_traffic_retries_or_fails_clearly_and_the_gateway_recovers(
    tmp_path: Path, dense: tuple[Path, ort.InferenceSession]
) -> None:
    path, session = dense
    env = {"WASMGATE_POD_MIN_REPLICAS": "2", "WASMGATE_POD_MAX_REPLICAS": "2", "WASMGATE_DRAIN_TIMEOUT_S": "5"}
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    try:
        assert gw.cli("push", str(path), "--name", "dense", "--tier", "pod", "--no-mask-cold-start").returncode == 0
        wait_until(lambda: len(runner_pids(gw)) == 2, 60, "two runners (pod_min_replicas=2)")
        first = runner_pids(gw)

        stop = time.monotonic() + 4.0
        killed: list[int] = []

        def traffic(worker: int) -> list[tuple[int, str, bool]]:
            seen = []
            with httpx.Client(timeout=60) as client:
                i = 0
                while time.monotonic() < stop:
                    body, x = dense_request(worker * 10_000 + i)
                    r = client.post(f"{gw.url}/v2/models/dense/infer", json=body)
                    ok = False
                    if r.status_code == 200:
                        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
                        ok = bool(np.allclose(got, expected(session, x), rtol=1e-4, atol=1e-5))
                    seen.append((r.status_code, r.text, ok))
                    i += 1
                    if worker == 0 and i == 20 and not killed:
                        killed.append(first[0])
                        os.kill(first[0], signal.SIGKILL)
            return seen

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            outcomes = [o for seen in pool.map(traffic, range(4)) for o in seen]
        assert killed
        for status, text, ok in outcomes:
            if status == 200:
                assert ok, "a 200 carried a wrong result"
            else:
                # The only failure allowed is a clear 503 that says what happened.
                assert status == 503, text
                assert "replica" in text
        assert sum(1 for status, _, _ in outcomes if status == 200) > len(outcomes) // 2

        # The scaler replaces the killed runner; the gateway serves as before.
        wait_until(lambda: len(runner_pids(gw)) == 2 and first[0] not in runner_pids(gw), 60, "a replacement runner")
        for i in range(10):
            body, x = dense_request(50_000 + i)
            r = httpx.post(f"{gw.url}/v2/models/dense/infer", json=body, timeout=60)
            assert r.status_code == 200, r.text
            got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
            np.testing.assert_allclose(got, expected(session, x), rtol=1e-4, atol=1e-5)
        retries = metric(httpx.get(f"{gw.url}/metrics").text, "wasmgate_pod_retries_total")
        failures = sum(1 for status, _, _ in outcomes if status != 200)
        print(f"{len(outcomes)} requests, {failures} failed with 503, {retries:.0f} retried on the other replica")
        last = runner_pids(gw)
    finally:
        gw.stop()
    # Stopping the gateway stops its runners.
    assert [pid for pid in last if Path(f"/proc/{pid}").exists()] == []


@contextlib.contextmanager
def one_runner(tmp_path: Path, **env: str) -> Iterator[tuple[Gateway, int]]:
    """A gateway that keeps one runner up (``pod_min_replicas`` 1), and that runner's pid."""
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env={"WASMGATE_POD_MIN_REPLICAS": "1", **env})
    gw.start()
    try:
        wait_until(lambda: len(runner_pids(gw)) == 1, 60, "a runner (pod_min_replicas=1)")
        (pid,) = runner_pids(gw)
        yield gw, pid
    finally:
        gw.stop()


def test_runners_exit_when_their_gateway_is_killed(tmp_path: Path, dense: tuple[Path, ort.InferenceSession]) -> None:
    with one_runner(tmp_path) as (gw, pid):
        assert gw.proc is not None
        gw.proc.kill()  # SIGKILL: the gateway cannot stop its runners itself
        gw.proc.wait()
        wait_until(lambda: not _alive(pid), 30, f"orphaned runner {pid} to exit")


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux, and two CPUs to tell a pinned runner from one that inherited the gateway's CPUs",
)
def test_runners_run_on_the_cpus_they_are_given(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))  # one this test may use, whatever the machine's cgroup allows
    with one_runner(tmp_path, WASMGATE_RUNNER_CPUS=str(cpu)) as (gw, pid):
        assert os.sched_getaffinity(pid) == {cpu}
        wait_until(lambda: httpx.get(f"{gw.url}/v2/health/ready").status_code == 200, 30, "the gateway")
        # Every thread the runner has by now runs there too: they inherit the mask it was given at spawn.
        for task in Path(f"/proc/{pid}/task").iterdir():
            assert os.sched_getaffinity(int(task.name)) == {cpu}


@pytest.mark.parametrize(
    ("value", "message"),
    [("1-0", "use CPU numbers and ranges"), ("x", "use CPU numbers and ranges"), ("0,100000", "this machine has CPUs")],
)
def test_a_bad_runner_cpu_list_is_refused_at_start(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"WASMGATE_RUNNER_CPUS='{value}': {message}"):
        create_app(Settings.from_env({}, data_dir=tmp_path, runner_cpus=value))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_existing_oip_server_registered_as_the_pod_tier(
    tmp_path: Path, dense: tuple[Path, ort.InferenceSession]
) -> None:
    """A runner started on its own is an OIP v2 server like any other; registered with ``--endpoint`` it
    serves a function the gateway holds no code for, under the name the server knows it by."""
    path, session = dense
    server = Gateway(tmp_path / "server-data", tmp_path / "server.log", command="runner")
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env={"WASMGATE_POD_SCALER": "none"})
    gw.start()
    try:
        # The server's own store gets the model through another gateway on the same data dir.
        loader = Gateway(tmp_path / "server-data", tmp_path / "loader.log", env={"WASMGATE_POD_SCALER": "none"})
        loader.start()
        assert loader.cli("push", str(path), "--name", "mlp-v7").returncode == 0
        loader.stop()
        server.start()
        r = gw.cli("push", "--name", "remote", "--endpoint", server.url, "--endpoint-model", "mlp-v7")
        assert r.returncode == 0, r.stderr
        assert "(external, tier auto:pod at" in r.stdout
        body, x = dense_request(7)
        resp = httpx.post(f"{gw.url}/v2/models/remote/infer", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-wasmgate-replica"] == server.url
        assert resp.json()["model_name"] == "mlp-v7"
        got = np.array(resp.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
        np.testing.assert_allclose(got, expected(session, x), rtol=1e-4, atol=1e-5)
        meta = httpx.get(f"{gw.url}/v2/models/remote").json()
        assert meta["platform"] == "wasmgate_endpoint"

        server.stop()  # the endpoint goes away: a clear 503, not a hang or a 500
        down = httpx.post(f"{gw.url}/v2/models/remote/infer", json=body, timeout=60)
        assert down.status_code == 503
        assert "unreachable" in down.json()["error"]
        assert "retry-after" in down.headers
        # Pinned to the pod tier on a gateway without one, a function is refused at push, naming the setting,
        # rather than served elsewhere. Placed by the router, it runs in the sandbox, where it fits; asked for
        # the pod tier alone, the 503 says how to fix it.
        pinned = gw.cli("push", str(path), "--name", "local-pod", "--tier", "pod")
        assert pinned.returncode != 0
        assert "setting pod_scaler" in pinned.stderr
        assert gw.cli("push", str(path), "--name", "local-pod").returncode == 0
        fallback = httpx.post(f"{gw.url}/v2/models/local-pod/infer", json=body, timeout=60)
        assert fallback.status_code == 200
        assert (fallback.headers["x-wasmgate-tier"], fallback.headers["x-wasmgate-reason"]) == ("wasm", "home")
        nope = httpx.post(f"{gw.url}/v2/models/local-pod/infer", json=body, headers={"x-wasmgate-tier": "pod"})
        assert nope.status_code == 503
        assert "pod_scaler" in nope.json()["error"]
    finally:
        gw.stop()
        server.stop()


def test_a_runner_fetches_functions_from_its_gateway_and_follows_new_versions(
    tmp_path: Path, digits: Digits, dense: tuple[Path, ort.InferenceSession]
) -> None:
    """As in a cluster, where a runner pod shares no disk with the gateway: ``--source-url``."""
    path, session = dense
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env={"WASMGATE_POD_SCALER": "none"})
    gw.start()
    runner = Gateway(tmp_path / "runner-data", tmp_path / "runner.log", "--source-url", gw.url, command="runner")
    try:
        assert gw.cli("push", str(digits.path), "--name", "fn").returncode == 0
        runner.start()
        x = digits.x_test[:3]
        body = {"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
        r = httpx.post(f"{runner.url}/v2/models/fn/versions/1/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["datatype"] == "INT64"

        # A new version at the gateway: the runner, sent version 2, fetches it; here ahead of any request,
        # as the gateway has a runner preload a function (OIP v2's model repository extension).
        assert gw.cli("push", str(path), "--name", "fn").returncode == 0
        load = f"{runner.url}/v2/repository/models/fn/load"
        loaded = httpx.post(load, json={"parameters": {"version": "2"}}, timeout=60)
        assert loaded.json() == {"name": "fn", "version": "2"}
        assert httpx.post(load, json={"parameters": {"version": "two"}}).status_code == 400
        assert httpx.post(load, content=b"[1]").status_code == 400
        assert httpx.post(f"{runner.url}/v2/repository/models/missing/load", timeout=60).status_code == 404
        body2, x2 = dense_request(3)
        r = httpx.post(f"{runner.url}/v2/models/fn/versions/2/infer", json=body2, timeout=60)
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
        np.testing.assert_allclose(got, expected(session, x2), rtol=1e-4, atol=1e-5)
        assert httpx.post(f"{runner.url}/v2/models/missing/infer", json=body2, timeout=60).status_code == 404
        # The runner's metadata says what it runs on; this machine has no accelerator, so the CPU.
        meta = httpx.get(f"{runner.url}/v2").json()
        assert meta["role"] == "runner"
        assert meta["execution_providers"][-1] == "CPUExecutionProvider"
        assert "CPUExecutionProvider" in meta["execution_providers_in_use"]
        text = httpx.get(f"{runner.url}/metrics").text
        assert metric(text, "wasmgate_execution_provider", provider="CPUExecutionProvider") == 1
        # A runner has no admin API.
        assert httpx.get(f"{runner.url}/admin/v1/functions").status_code == 404
    finally:
        runner.stop()
        gw.stop()


def test_a_runner_unloads_least_recently_used_models_past_its_memory_budget(tmp_path: Path, digits: Digits) -> None:
    dense_small = dense_model((64, 512, 512, 10))  # about 1.3 MB
    data = tmp_path / "data"
    with AppClient(create_app(Settings.from_env({}, data_dir=data, pod_scaler="none"))) as gateway:
        push(gateway, "a", None, {"model": dense_small})
        push(gateway, "b", None, {"model": dense_model((64, 512, 512, 10), seed=1)})
    settings = Settings.from_env({}, data_dir=data, model_memory_budget_mb=2, reap_interval_s=3600.0)
    body = infer_body(np.zeros((1, 64), np.float32))
    with AppClient(create_app(settings, role="runner")) as runner:
        assert runner.post("/v2/models/a/infer", json=body).status_code == 200
        assert runner.post("/v2/models/b/infer", json=body).status_code == 200  # a is unloaded for b
        text = runner.get("/metrics").text
        assert metric(text, "wasmgate_evictions_total", function="a") == 1
        assert metric(text, "wasmgate_evictions_total", function="b") == 0
        again = runner.post("/v2/models/a/infer", json=body)
        assert again.status_code == 200
        assert again.headers["x-wasmgate-cold-start"] == "true"
        assert metric(runner.get("/metrics").text, "wasmgate_evictions_total", function="b") == 1


def binary_output(response: httpx.Response, rows: int) -> np.ndarray:
    n = int(response.headers["inference-header-content-length"])
    return np.frombuffer(response.content[n:], np.float32).reshape(rows, 10)


def test_binary_tensors_pass_through_a_slow_replica_times_out_and_a_stopping_runner_drains(
    tmp_path: Path, dense: tuple[Path, ort.InferenceSession]
) -> None:
    path, session = dense
    data = tmp_path / "data"
    # A batch of 4096 rows through this model is about 26 G multiply-adds: seconds on one core, so it is
    # still running when the gateway's timeout fires and when the runner is told to stop.
    heavy_sizes = (1024, 2048, 2048, 10)
    heavy_model = dense_model(heavy_sizes)
    heavy = tmp_path / "heavy.onnx"
    heavy.write_bytes(heavy_model)
    heavy_session = ort.InferenceSession(heavy_model, providers=["CPUExecutionProvider"])
    slow_ms = "20000"
    runner = Gateway(data, tmp_path / "runner.log", command="runner", env={"WASMGATE_DEADLINE_MS": slow_ms})
    gw = Gateway(
        data,
        tmp_path / "gateway.log",
        env={
            "WASMGATE_POD_SCALER": "none",
            "WASMGATE_POD_REQUEST_TIMEOUT_S": "0.3",
            "WASMGATE_RUNNER_DEADLINE_MS": "200",  # the timeout must exceed it (the runner here has its own)
            "WASMGATE_MAX_TENSOR_BYTES": str(64 << 20),
            "WASMGATE_DEADLINE_MS": slow_ms,
        },
    )
    gw.start()
    runner.start()
    try:
        assert gw.cli("push", str(path), "--name", "dense").returncode == 0
        assert gw.cli("push", str(heavy), "--name", "heavy").returncode == 0
        r = gw.cli("push", "--name", "via-pod", "--endpoint", runner.url, "--endpoint-model", "dense")
        assert r.returncode == 0, r.stderr
        r = gw.cli("push", "--name", "heavy-pod", "--endpoint", runner.url, "--endpoint-model", "heavy")
        assert r.returncode == 0, r.stderr

        # Binary in, binary out, through the gateway and back: the bytes are the replica's own.
        x = np.random.default_rng(5).standard_normal((3, SIZES[0])).astype(np.float32)
        body, headers = binary_body(x)
        direct = httpx.post(f"{runner.url}/v2/models/dense/infer", content=body, headers=headers, timeout=60)
        via = httpx.post(f"{gw.url}/v2/models/via-pod/infer", content=body, headers=headers, timeout=60)
        assert via.status_code == direct.status_code == 200, via.text
        assert via.content == direct.content
        assert via.headers["inference-header-content-length"] == direct.headers["inference-header-content-length"]
        np.testing.assert_allclose(binary_output(via, 3), expected(session, x), rtol=1e-4, atol=1e-5)

        # A big batch takes the replica well past the gateway's pod_request_timeout_s (0.3 s): 504, named.
        big = np.random.default_rng(6).standard_normal((4096, heavy_sizes[0])).astype(np.float32)
        big_body, big_headers = binary_body(big)
        timed_out = httpx.post(f"{gw.url}/v2/models/heavy-pod/infer", content=big_body, headers=big_headers, timeout=60)
        assert timed_out.status_code == 504, timed_out.text[:300]
        assert "pod_request_timeout_s" in timed_out.json()["error"]

        # SIGTERM while that batch runs on the runner: it finishes and answers, then the runner exits.
        def busy() -> float:
            text = httpx.get(f"{runner.url}/metrics").text
            return metric(text, "wasmgate_instances", function="heavy", state="busy")

        def heavy_served() -> float:
            return metric(httpx.get(f"{runner.url}/metrics").text, "wasmgate_requests_total", function="heavy")

        # The runner still computes the batch the gateway gave up on; let it finish first.
        wait_until(lambda: heavy_served() == 1, 60, "the timed-out batch to finish on the runner")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post, f"{runner.url}/v2/models/heavy/infer", content=big_body, headers=big_headers, timeout=60
            )
            wait_until(lambda: busy() == 1 or pending.done(), 30, "the batch to be running")
            assert not pending.done(), "the batch finished before the runner was told to stop"
            assert runner.proc is not None
            runner.proc.send_signal(signal.SIGTERM)
            answered = pending.result()
        assert answered.status_code == 200, answered.text[:300]
        got = binary_output(answered, 4096)
        np.testing.assert_allclose(got, heavy_session.run(None, {"input": big})[0], rtol=1e-3, atol=1e-4)
        # Exits once drained: uvicorn ends by re-raising the signal it caught, as a process killed by it would.
        assert runner.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{runner.url}/v2/health/live", timeout=2)
    finally:
        runner.stop()
        gw.stop()


@pytest.mark.parametrize("gateway_id", ["", "wasmgate-7d9c5b-x2kqz"], ids=["one-gateway", "shares"])
def test_the_pod_tier_on_the_kubernetes_scaler_with_runner_pods_as_processes(
    tmp_path: Path, dense: tuple[Path, ort.InferenceSession], gateway_id: str
) -> None:
    """The cluster path on one machine. No Kubernetes API server can run here, so the gateway's real
    ``kubernetes`` client talks to ``tests.kube_emulator`` (an emulator of exactly the API subset the scaler
    calls, over HTTP, loaded from a kubeconfig); its pods are real ``wasm runner`` processes that share no
    disk with the gateway and fetch the function from it (``--source-url``), and a prober marks a pod ready
    when its ``/v2/health/ready`` answers, as the kubelet's readiness probe would. Once as the only gateway
    (the scale subresource), once as one of several (its share on the Deployment, as the manifests run it)."""
    from router.scalers.shares import ANNOTATION, parse_shares
    from tests.kube_emulator import KubeEmulator

    path, session = dense
    gw = Gateway(
        tmp_path / "data",
        tmp_path / "gateway.log",
        env={
            "WASMGATE_POD_SCALER": "kubernetes",
            "WASMGATE_K8S_NAMESPACE": "default",
            "WASMGATE_K8S_GATEWAY_ID": gateway_id,
            "WASMGATE_POD_IDLE_GRACE_S": "2",
            "WASMGATE_POD_MAX_REPLICAS": "2",
            "WASMGATE_POD_TARGET_IN_FLIGHT": "4",
        },
    )
    pods: dict[str, Gateway] = {}
    stopped: list[str] = []

    def start_pod(name: str) -> tuple[str, int]:
        pod = Gateway(tmp_path / name, tmp_path / f"{name}.log", "--source-url", gw.url, command="runner")
        pod.spawn()  # on a socket bound here; the prober marks it ready
        pods[name] = pod
        return "127.0.0.1", pod.port

    def stop_pod(name: str) -> None:
        stopped.append(name)
        proc = pods[name].proc
        assert proc is not None
        proc.terminate()  # the kubelet's SIGTERM; the runner drains and exits

    with KubeEmulator(ready_delay_s=None, on_pod_start=start_pod, on_pod_stop=stop_pod) as emulator:
        gw.settings_env["WASMGATE_KUBECONFIG"] = str(emulator.write_kubeconfig(tmp_path / "kubeconfig"))
        probing = True

        def probe() -> None:
            marked: set[str] = set()
            while probing:
                for name, pod in list(pods.items()):
                    if name in marked or name in stopped:
                        continue
                    with contextlib.suppress(httpx.TransportError):
                        if httpx.get(f"{pod.url}/v2/health/ready", timeout=1).status_code == 200:
                            emulator.set_ready(name, True)
                            marked.add(name)
                time.sleep(0.05)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        gw.start()
        try:
            assert gw.cli("push", str(path), "--name", "dense", "--tier", "pod", "--no-mask-cold-start").returncode == 0
            assert emulator.spec_replicas == 0

            def call(i: int) -> tuple[httpx.Response, np.ndarray]:
                body, x = dense_request(i)
                return httpx.post(f"{gw.url}/v2/models/dense/infer", json=body, timeout=120), x

            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                results = list(pool.map(call, range(20)))
            for response, x in results:
                assert response.status_code == 200, response.text
                assert response.headers["x-wasmgate-replica"] in pods  # the pod's name, from its EndpointSlice
                got = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
                np.testing.assert_allclose(got, expected(session, x), rtol=1e-4, atol=1e-5)
            assert emulator.spec_replicas == 2  # 20 held requests / 4 per replica, capped at 2

            def answers(pod: Gateway) -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return httpx.get(f"{pod.url}/v2/health/ready", timeout=1).status_code == 200
                return False

            # The second pod may still be starting (a loaded machine): every pod's count is read once it answers.
            wait_until(lambda: all(answers(pod) for pod in pods.values()), 60, "every pod to answer")
            served = sum(
                metric(httpx.get(f"{pod.url}/metrics").text, "wasmgate_requests_total", function="dense")
                for pod in pods.values()
            )
            assert served == 20

            # Idle past the grace period: the Deployment goes back to 0 and the pods are stopped.
            wait_until(lambda: emulator.spec_replicas == 0, 30, "the Deployment to be scaled to zero")
            wait_until(lambda: all(p.proc is not None and p.proc.poll() is not None for p in pods.values()), 30, "pods")
            shares = parse_shares(emulator.annotations().get(ANNOTATION))
            assert {g: s.replicas for g, s in shares.items()} == ({gateway_id: 0} if gateway_id else {})
            if gateway_id:
                assert emulator.count("patch", "/apis/apps/v1/namespaces/default/deployments/wasmgate-runner") >= 2
        finally:
            probing = False
            gw.stop()
            for pod in pods.values():
                pod.stop()

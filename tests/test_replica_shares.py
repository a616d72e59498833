"""Several gateways in front of one runner Deployment (``router.scalers.shares``), against ``tests.kube_emulator``.

Each gateway is a :class:`KubernetesScaler` with a gateway id of its own and its own client, all on one
emulated Deployment, so that their writes meet the API server's optimistic concurrency as real gateways'
would. Waits poll with deadlines; nothing asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import kubernetes.client
import pytest

from gateway.settings import Settings
from gateway.wiring import make_pod_tier
from router.activator import Activator
from router.pod_policy import ScalePolicy
from router.scalers.kubernetes import CONFLICT_ATTEMPTS, KubernetesScaler
from router.scalers.shares import ANNOTATION, Share, dump_shares, parse_shares
from tests.kube_emulator import KubeEmulator
from tests.support import SCALE_PATH, client_for, normalized, round_trips, running, until
from wasm_host.errors import Unavailable

DEPLOYMENT_PATH = "/apis/apps/v1/namespaces/default/deployments/wasmgate-runner"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def emulator() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def gateway(emulator: KubeEmulator) -> Iterator[Callable[..., KubernetesScaler]]:
    """A gateway's scaler: ``gateway("gw-a", share_ttl_s=...)``, each with a client of its own."""
    clients: list[kubernetes.client.ApiClient] = []

    def make(gateway_id: str, **kwargs: Any) -> KubernetesScaler:
        clients.append(client_for(emulator))
        kwargs.setdefault("backoff_s", (0.01, 0.05))
        kwargs.setdefault("max_replicas", 4)
        return KubernetesScaler(
            namespace="default",
            deployment="wasmgate-runner",
            service="wasmgate-runner",
            api_client=clients[-1],
            gateway_id=gateway_id,
            **kwargs,
        )

    yield make
    for client in clients:
        client.close()


def shares_on(emulator: KubeEmulator) -> dict[str, int]:
    return {g: s.replicas for g, s in parse_shares(emulator.annotations().get(ANNOTATION)).items()}


# -- the total ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_runners_are_the_sum_of_the_gateways_shares(emulator: KubeEmulator, gateway: Any) -> None:
    a, b = gateway("gw-a"), gateway("gw-b")
    await a.scale(2)
    assert (emulator.spec_replicas, shares_on(emulator)) == (2, {"gw-a": 2})
    await b.scale(0)  # an idle gateway takes nothing away
    assert (emulator.spec_replicas, shares_on(emulator)) == (2, {"gw-a": 2, "gw-b": 0})
    await b.scale(1)
    assert emulator.spec_replicas == 3
    await a.scale(4)
    assert emulator.spec_replicas == 4  # 5 asked for, capped at max_replicas
    await a.scale(0)
    assert (emulator.spec_replicas, shares_on(emulator)) == (1, {"gw-a": 0, "gw-b": 1})
    assert (a.wanted(), b.wanted()) == (0, 1)  # each gateway's own share, not the total
    # One read and one conditional write each, on the Deployment; the scale subresource is not used.
    assert emulator.count("get", DEPLOYMENT_PATH) == emulator.count("patch", DEPLOYMENT_PATH) == 5
    assert emulator.count("patch", SCALE_PATH) == emulator.count("get", SCALE_PATH) == 0


@pytest.mark.anyio
async def test_min_replicas_bounds_the_total_not_each_share(emulator: KubeEmulator, gateway: Any) -> None:
    a, b = gateway("gw-a", min_replicas=1), gateway("gw-b", min_replicas=1)
    await a.scale(0)
    await b.scale(0)
    assert emulator.spec_replicas == 1  # two idle gateways keep the minimum once, not twice
    await a.scale(2)
    await b.scale(1)
    assert emulator.spec_replicas == 3


def test_make_pod_tier_scales_each_share_from_zero_and_from_settings_names_the_worker(
    emulator: KubeEmulator, tmp_path: Path
) -> None:
    kubeconfig = str(emulator.write_kubeconfig(tmp_path / "kubeconfig"))
    base = {"pod_scaler": "kubernetes", "kubeconfig": kubeconfig, "pod_min_replicas": 1, "pod_max_replicas": 3}
    _, alone = make_pod_tier(Settings(**base), None)
    _, sharing = make_pod_tier(Settings(**base, k8s_gateway_id="wasmgate-abc"), None)
    assert alone is not None
    assert sharing is not None
    assert alone.policy.min_replicas == 1
    assert sharing.policy.min_replicas == 0  # the floor applies to the total, in the scaler
    scaler = sharing.scaler
    assert isinstance(scaler, KubernetesScaler)
    assert (scaler.gateway_id, scaler.min_replicas, scaler.max_replicas) == ("wasmgate-abc", 1, 3)
    # Each worker process runs an activator of its own, so each is a gateway of its own.
    _, worker = make_pod_tier(Settings(**base, k8s_gateway_id="wasmgate-abc", workers=2), None)
    assert worker is not None
    assert isinstance(worker.scaler, KubernetesScaler)
    assert worker.scaler.gateway_id == f"wasmgate-abc.{os.getpid()}"
    for activator in (alone, sharing, worker):
        anyio.run(activator.scaler.aclose)


# -- gateways that come and go --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def activator_for(
    scaler: KubernetesScaler, emulator: KubeEmulator, policy: ScalePolicy
) -> AsyncIterator[Activator]:
    activator = Activator(scaler, policy, max_held=10, hold_timeout_s=30, tick_s=0.01)
    watches = emulator.count("watch")
    async with anyio.create_task_group() as tg:
        tg.start_soon(activator.run)
        await until(lambda: emulator.count("watch") > watches, "the gateway to start watching")
        try:
            yield activator
        finally:
            tg.cancel_scope.cancel()
    with anyio.fail_after(5):
        await scaler.aclose()


@pytest.mark.anyio
async def test_an_idle_gateway_never_scales_down_runners_a_busy_one_needs(emulator: KubeEmulator, gateway: Any) -> None:
    policy = ScalePolicy(min_replicas=0, max_replicas=4, target_in_flight=1, idle_grace_s=0.3)
    busy_scaler, idle_scaler = gateway("gw-busy", share_ttl_s=3), gateway("gw-idle", share_ttl_s=3)
    done = anyio.Event()
    serving = 0

    async def request(activator: Activator) -> None:
        nonlocal serving
        async with activator.acquire("f"):
            serving += 1
            await done.wait()

    async with activator_for(busy_scaler, emulator, policy) as busy, anyio.create_task_group() as requests:
        for _ in range(2):
            requests.start_soon(request, busy)
        await until(lambda: serving == 2, "two requests on the busy gateway's replicas")
        assert emulator.spec_replicas == 2
        # The idle gateway starts with the runners at 2, and stays idle well past its idle grace. A gateway
        # that owned the count would take the 2 as its own and scale them to zero once the grace had passed.
        async with activator_for(idle_scaler, emulator, policy) as idle:
            await until(lambda: "gw-idle" in shares_on(emulator), "the idle gateway's share")
            await until(lambda: len(idle.scaler.ready()) == 2, "the idle gateway to see the replicas")
            await anyio.sleep(policy.idle_grace_s * 4)
            assert idle.scaler.wanted() == 0
            assert (emulator.spec_replicas, shares_on(emulator)) == (2, {"gw-busy": 2, "gw-idle": 0})
            assert len(emulator.pods()) == 2
            # The busy gateway's requests end: after its own grace its share, and so the runners, go to zero.
            done.set()
            await until(lambda: emulator.spec_replicas == 0, "the runners to scale to zero")
            assert shares_on(emulator) == {"gw-busy": 0, "gw-idle": 0}
            await until(lambda: emulator.pods() == {}, "the pods to be gone")


@pytest.mark.anyio
async def test_a_dead_gateways_share_expires(emulator: KubeEmulator, gateway: Any) -> None:
    dead = gateway("gw-dead", share_ttl_s=0.6)
    await dead.scale(3)  # and then it is gone: no more heartbeats
    assert emulator.spec_replicas == 3
    alive = gateway("gw-alive", share_ttl_s=0.6)  # heartbeats every 0.2 s
    async with running(alive, emulator):
        await until(lambda: "gw-dead" not in shares_on(emulator), "the dead gateway's share to expire")
        assert emulator.spec_replicas == 0
        assert shares_on(emulator) == {"gw-alive": 0}
        await until(lambda: emulator.pods() == {}, "the dead gateway's pods to be gone")


@pytest.mark.anyio
async def test_a_gateway_that_has_not_written_within_the_ttl_drops_nobody(emulator: KubeEmulator, gateway: Any) -> None:
    """Its own first write after a gap (a start, or a partition from the API server) keeps the others'
    shares, stale or not: they may have been cut off too. The next one drops the stale ones."""
    emulator.annotate(ANNOTATION, dump_shares({"gw-old": Share(2, time.time() - 3600)}))
    a = gateway("gw-a", share_ttl_s=30)
    await a.scale(1)
    assert (emulator.spec_replicas, shares_on(emulator)) == (3, {"gw-a": 1, "gw-old": 2})
    await a.scale(1)
    assert (emulator.spec_replicas, shares_on(emulator)) == (1, {"gw-a": 1})


@pytest.mark.anyio
async def test_a_share_from_the_future_is_stale_too(emulator: KubeEmulator, gateway: Any) -> None:
    a = gateway("gw-a", share_ttl_s=30)
    await a.scale(1)
    emulator.annotate(ANNOTATION, dump_shares({"gw-a": Share(1, time.time()), "gw-wild": Share(2, time.time() + 3600)}))
    await a.scale(1)
    assert shares_on(emulator) == {"gw-a": 1}


@pytest.mark.anyio
async def test_a_restarted_gateway_adopts_its_live_share(emulator: KubeEmulator, gateway: Any) -> None:
    before = gateway("gw-a")
    await before.scale(2)
    after = gateway("gw-a")  # the same pod name: its container restarted
    async with running(after, emulator):
        await until(lambda: after.wanted() == 2, "the share to be adopted")
        assert emulator.spec_replicas == 2
        await after.scale(0)  # from here on its own figure, as before the restart
        assert emulator.spec_replicas == 0


@pytest.mark.anyio
async def test_the_heartbeat_reapplies_the_total_after_a_reset(emulator: KubeEmulator, gateway: Any) -> None:
    a = gateway("gw-a", share_ttl_s=0.6)
    async with running(a, emulator):
        await a.scale(2)
        # `kubectl apply` of the manifests sets the runner Deployment back to replicas: 0.
        with client_for(emulator) as client:
            apply = KubernetesScaler(
                namespace="default", deployment="wasmgate-runner", service="wasmgate-runner", api_client=client
            )
            await apply.scale(0)
        assert emulator.spec_replicas == 0
        await until(lambda: emulator.spec_replicas == 2, "the total to be written again")


# -- conflicts and failures -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_conflicting_write_is_read_again_and_retried(emulator: KubeEmulator, gateway: Any) -> None:
    a = gateway("gw-a")
    # Another gateway writes its share between this one's read and its write: the write is refused (409) and
    # made again on a fresh read, so neither share is lost.
    other = dump_shares({"gw-b": Share(1, time.time())})
    emulator.before_next("patch", lambda: emulator.annotate(ANNOTATION, other))
    await a.scale(2)
    assert (emulator.spec_replicas, shares_on(emulator)) == (3, {"gw-a": 2, "gw-b": 1})
    assert emulator.count("patch", DEPLOYMENT_PATH) == emulator.count("get", DEPLOYMENT_PATH) == 2


@pytest.mark.anyio
async def test_concurrent_gateways_lose_no_share(emulator: KubeEmulator, gateway: Any) -> None:
    scalers = [gateway(f"gw-{i}", max_replicas=None) for i in range(4)]
    async with anyio.create_task_group() as tg:
        for i, scaler in enumerate(scalers):
            tg.start_soon(scaler.scale, i + 1)
    assert shares_on(emulator) == {"gw-0": 1, "gw-1": 2, "gw-2": 3, "gw-3": 4}
    assert emulator.spec_replicas == 10


@pytest.mark.anyio
async def test_conflicts_without_end_raise_unavailable(emulator: KubeEmulator, gateway: Any) -> None:
    a = gateway("gw-a")
    emulator.fail_next(CONFLICT_ATTEMPTS, 409, verb="patch")
    with pytest.raises(Unavailable, match="409 Conflict"):
        await a.scale(2)
    assert a.wanted() == 0  # nothing was recorded
    await a.scale(2)
    assert (a.wanted(), emulator.spec_replicas) == (2, 2)


@pytest.mark.anyio
async def test_forbidden_read_names_the_deployments_rule(emulator: KubeEmulator, gateway: Any) -> None:
    a = gateway("gw-a")
    emulator.fail_next(1, 403, verb="get")
    with pytest.raises(Unavailable, match=r"403 .*RBAC must allow get on deployments in API group apps"):
        await a.scale(1)
    assert emulator.spec_replicas == 0


@pytest.mark.anyio
async def test_an_unreadable_annotation_is_rewritten(emulator: KubeEmulator, gateway: Any) -> None:
    emulator.annotate(ANNOTATION, "not json")
    a = gateway("gw-a")
    await a.scale(1)
    assert shares_on(emulator) == {"gw-a": 1}
    emulator.annotate(ANNOTATION, json.dumps({"gw-a": {"replicas": 1, "at": time.time()}, "gw-b": {"replicas": -2}}))
    await a.scale(1)
    assert shares_on(emulator) == {"gw-a": 1}


# -- the emulator's Deployment ------------------------------------------------------------------------------


def test_emulator_deployment_reads_and_patches_as_a_server_does(emulator: KubeEmulator) -> None:
    headers = {"Authorization": f"Bearer {emulator.token}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as http, client_for(emulator) as client:

        def patch(body: Any) -> httpx.Response:
            return http.patch(DEPLOYMENT_PATH, content=json.dumps(body), headers=MERGE)

        read = http.get(DEPLOYMENT_PATH).json()
        round_trips(client, read, "V1Deployment")
        assert read["spec"]["replicas"] == 0  # a pointer, written out at 0 (the Scale's is omitted)
        assert "annotations" not in read["metadata"]
        version = read["metadata"]["resourceVersion"]

        written = patch({"metadata": {"resourceVersion": version, "annotations": {"a.io/b": "1"}}})
        assert written.status_code == 200
        assert written.json()["metadata"]["annotations"] == {"a.io/b": "1"}
        assert written.json()["metadata"]["generation"] == read["metadata"]["generation"]  # not a spec change
        version = written.json()["metadata"]["resourceVersion"]
        assert version != read["metadata"]["resourceVersion"]
        assert patch({"metadata": {"annotations": {"a.io/b": "1"}}}).json()["metadata"]["resourceVersion"] == version

        stale = patch({"metadata": {"resourceVersion": read["metadata"]["resourceVersion"]}, "spec": {"replicas": 1}})
        assert (stale.status_code, stale.json()["reason"]) == (409, "Conflict")
        scaled = patch({"metadata": {"resourceVersion": version}, "spec": {"replicas": 2}})
        assert scaled.json()["metadata"]["generation"] == read["metadata"]["generation"] + 1
        round_trips(client, scaled.json(), "V1Deployment")
        # One object: the Scale has the Deployment's replicas and resourceVersion (which the controller's
        # status updates move on too), and a write through one conflicts with a read through the other.
        deadline = time.monotonic() + 5
        while len(emulator.pods()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        scale = http.get(SCALE_PATH).json()
        assert scale["spec"] == {"replicas": 2}
        assert scale["metadata"]["resourceVersion"] == http.get(DEPLOYMENT_PATH).json()["metadata"]["resourceVersion"]
        assert scale["metadata"]["resourceVersion"] != scaled.json()["metadata"]["resourceVersion"]  # pods started
        rescaled = http.patch(SCALE_PATH, content=json.dumps({"spec": {"replicas": 1}}), headers=MERGE)
        assert rescaled.status_code == 200
        stale_scale = {"metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]}, "spec": {"replicas": 2}}
        assert patch(stale_scale).status_code == 409
        assert emulator.spec_replicas == 1
        assert patch({"spec": {"replicas": 2}}).status_code == 200
        assert emulator.spec_replicas == 2

        assert patch({"metadata": {"annotations": {"a.io/b": 1}}}).status_code == 422  # not a string
        assert patch({"spec": {"replicas": "two"}}).status_code == 422
        invalid = patch({"spec": {"replicas": -1}})
        assert (invalid.status_code, invalid.json()["reason"]) == (422, "Invalid")
        assert invalid.json()["details"]["causes"][0]["field"] == "spec.replicas"
        assert patch({"metadata": {"annotations": {"no good/key/": "x"}}}).json()["reason"] == "Invalid"
        too_long = patch({"metadata": {"annotations": {"a.io/big": "x" * 256 * 1024}}})
        assert "Too long" in too_long.json()["message"]
        unmodelled = patch({"spec": {"paused": True}})
        assert unmodelled.status_code == 422
        assert "spec.paused" in unmodelled.json()["message"]
        assert http.patch(DEPLOYMENT_PATH, json={"spec": {"replicas": 1}}).status_code == 415
        assert emulator.spec_replicas == 2
        assert emulator.annotations() == {"a.io/b": "1"}
        assert normalized(http.get(DEPLOYMENT_PATH).json())["status"]["observedGeneration"] == 4

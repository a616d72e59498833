"""KubernetesScaler against ``tests.kube_emulator``: the real ``kubernetes`` client, over real HTTP.

No Kubernetes API server can run where these tests run, and a mock of the client's methods would test only
what its author believed the client does. So the scaler runs unchanged, with the official client's request
building, serialization, watch streaming and error handling, against an emulator of exactly the API subset it
calls; the last tests check the emulator's JSON against the client's own models.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import kubernetes.client
import pytest

from gateway import wiring
from gateway.settings import Settings
from router.scaler import Replica
from router.scalers.kubernetes import KubernetesScaler
from tests.kube_emulator import KubeEmulator
from tests.support import SCALE_PATH, Changes, client_for, round_trips, running, until
from wasm_host.errors import Unavailable

SLICES_PATH = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., KubeEmulator]]:
    started: list[KubeEmulator] = []

    def make(**kwargs: Any) -> KubeEmulator:
        emulator = KubeEmulator(**kwargs).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.close()


@pytest.fixture
def emulator(make_emulator: Callable[..., KubeEmulator]) -> KubeEmulator:
    return make_emulator()


def scaler_for(client: kubernetes.client.ApiClient, **kwargs: Any) -> KubernetesScaler:
    """The scaler as the manifests configure it (namespace default, the runner Deployment and Service)."""
    return KubernetesScaler(
        namespace="default", deployment="wasmgate-runner", service="wasmgate-runner", api_client=client, **kwargs
    )


@pytest.fixture
def make_scaler(emulator: KubeEmulator) -> Iterator[Callable[..., KubernetesScaler]]:
    clients: list[kubernetes.client.ApiClient] = []

    def make(**kwargs: Any) -> KubernetesScaler:
        clients.append(client_for(emulator))
        kwargs.setdefault("backoff_s", (0.01, 0.05))
        return scaler_for(clients[-1], **kwargs)

    yield make
    for client in clients:
        client.close()


def urls(scaler: KubernetesScaler) -> list[str]:
    return [r.url for r in scaler.ready()]


# -- scaling and readiness ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_scale_from_zero_serves_pods_once_ready(emulator: KubeEmulator, make_scaler: Any) -> None:
    emulator.ready_delay_s = None  # the test decides when each pod is ready
    scaler = make_scaler()
    async with running(scaler, emulator) as changes:
        assert scaler.wanted() == 0
        assert scaler.ready() == ()
        await scaler.scale(2)
        assert emulator.spec_replicas == 2
        assert scaler.wanted() == 2
        await until(lambda: len(emulator.pods()) == 2, "two pods")
        first, second = sorted(emulator.pods().values(), key=lambda p: p.name)

        emulator.set_ready(first.name, True)
        await until(lambda: len(scaler.ready()) == 1, "one ready replica")
        # The other pod has an endpoint, not ready: it is not served.
        assert scaler.ready() == (Replica(id=first.name, url=f"http://{first.ip}:8080"),)
        assert any(len(s["endpoints"] or ()) == 2 for s in emulator.slices())

        emulator.set_ready(second.name, True)
        await until(lambda: len(scaler.ready()) == 2, "two ready replicas")
        assert sorted(urls(scaler)) == sorted(f"http://{p.ip}:8080" for p in (first, second))
        assert changes.calls == 2  # once per change of the ready set, not once per event

        emulator.set_ready(first.name, False)  # a failing readiness probe takes it out of service
        await until(lambda: [r.id for r in scaler.ready()] == [second.name], "the unready pod to leave")
    assert emulator.count("patch", SCALE_PATH) == 1
    assert emulator.count("get", SCALE_PATH) == 1


@pytest.mark.anyio
async def test_wanted_follows_the_deployment_when_run_starts(make_emulator: Any) -> None:
    emulator = make_emulator(replicas=3)
    with client_for(emulator) as client:
        scaler = scaler_for(client)
        async with running(scaler, emulator):
            assert scaler.wanted() == 3
            await until(lambda: len(scaler.ready()) == 3, "three ready replicas")


@pytest.mark.anyio
async def test_terminating_endpoints_are_not_served(make_emulator: Any) -> None:
    # With publishNotReadyAddresses the controller marks every endpoint ready, terminating ones included: only
    # the terminating condition tells the scaler to stop sending to a pod that is shutting down.
    emulator = make_emulator(publish_not_ready_addresses=True, terminate_delay_s=60)
    with client_for(emulator) as client:
        scaler = scaler_for(client)
        async with running(scaler, emulator):
            await scaler.scale(2)
            await until(lambda: len(scaler.ready()) == 2, "two replicas")
            await scaler.scale(1)
            await until(lambda: len(scaler.ready()) == 1, "one replica")
            endpoints = [e for s in emulator.slices() for e in s["endpoints"] or ()]
            leaving = [e for e in endpoints if e["conditions"]["terminating"]]
            assert len(leaving) == 1
            assert leaving[0]["conditions"]["ready"] is True
            assert leaving[0]["targetRef"]["name"] not in [r.id for r in scaler.ready()]


@pytest.mark.anyio
async def test_scale_to_zero_removes_every_replica(emulator: KubeEmulator, make_scaler: Any) -> None:
    scaler = make_scaler()
    async with running(scaler, emulator) as changes:
        await scaler.scale(2)
        await until(lambda: len(scaler.ready()) == 2, "two replicas")
        await scaler.scale(0)
        assert scaler.wanted() == 0
        await until(lambda: scaler.ready() == (), "no replicas")
        await until(lambda: emulator.pods() == {}, "the pods to be gone")
        # The controller keeps one empty placeholder slice; the scaler reads it as nothing to serve.
        await until(lambda: [s["endpoints"] for s in emulator.slices()] == [None], "only the placeholder")
        assert scaler.ready() == ()
        assert changes.calls >= 2


@pytest.mark.anyio
async def test_replicas_reach_real_servers_across_slices(make_emulator: Any) -> None:
    """Each pod is a real HTTP server on its own port, so each lands in a slice of its own (slices group
    endpoints by port); the scaler's URLs must reach them."""
    servers: dict[str, http.server.ThreadingHTTPServer] = {}

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = self.server.pod_name.encode()  # type: ignore[attr-defined]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    def start(pod: str) -> tuple[str, int]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        server.pod_name = pod  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers[pod] = server
        return "127.0.0.1", server.server_address[1]

    def stop(pod: str) -> None:
        server = servers.pop(pod)
        server.shutdown()
        server.server_close()

    emulator = make_emulator(on_pod_start=start, on_pod_stop=stop)
    try:
        with client_for(emulator) as client:
            scaler = scaler_for(client)
            async with running(scaler, emulator):
                await scaler.scale(2)
                await until(lambda: len(scaler.ready()) == 2, "two replicas")
                assert len([s for s in emulator.slices() if s["endpoints"]]) == 2
                async with httpx.AsyncClient() as http_client:
                    for replica in scaler.ready():
                        answer = await http_client.get(replica.url)
                        assert answer.text == replica.id
                await scaler.scale(0)
                await until(lambda: not servers, "the pod servers to stop")
    finally:
        for pod in list(servers):
            stop(pod)


@pytest.mark.anyio
async def test_ipv6_addresses_are_bracketed_and_duplicates_count_once(make_emulator: Any) -> None:
    counter = iter(range(1, 100))
    emulator = make_emulator(on_pod_start=lambda pod: (f"fd00::{next(counter)}", 9000))
    with client_for(emulator) as client:
        scaler = scaler_for(client)
        async with running(scaler, emulator):
            await scaler.scale(1)
            await until(lambda: len(scaler.ready()) == 1, "one replica")
            assert urls(scaler) == ["http://[fd00::1]:9000"]
            assert emulator.slices()[0]["addressType"] == "IPv6"
        # A pod listed in two slices (the controller moving it between them) is one replica. The emulator
        # never shows that transient state, so the scaler's slices are set directly.
        sliced = emulator.slices()[0]
        copy = json.loads(json.dumps(sliced))
        copy["metadata"]["name"] = "wasmgate-runner-other"
        scaler._slices = {
            name: client.deserialize(json.dumps(s), "V1EndpointSlice", "application/json")
            for name, s in (("a", sliced), ("b", copy))
        }
        assert len(scaler._ready_replicas()) == 1


@pytest.mark.anyio
async def test_a_slice_without_the_named_port_is_skipped_and_logged_once(
    emulator: KubeEmulator, make_scaler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    scaler = make_scaler(port_name="grpc")
    with caplog.at_level(logging.WARNING, logger="wasmgate.kubernetes"):
        async with running(scaler, emulator):
            await scaler.scale(2)
            await until(lambda: sum(p.ready for p in emulator.pods().values()) == 2, "two ready pods")
            await until(lambda: "no port named 'grpc'" in caplog.text, "the warning")
            assert scaler.ready() == ()
    assert caplog.text.count("no port named 'grpc'") == 1


@pytest.mark.anyio
async def test_aclose_ends_a_running_scaler_promptly(emulator: KubeEmulator, make_scaler: Any) -> None:
    scaler = make_scaler()
    returned = anyio.Event()

    async def run() -> None:
        await scaler.run(Changes())
        returned.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await until(lambda: emulator.count("watch") >= 1, "the scaler to start watching")
        with anyio.fail_after(5):
            await scaler.aclose()  # the watch is blocked reading: it must be cut short, not waited out
            await returned.wait()  # and run returns by itself, without being cancelled
    assert emulator.count("watch") == 1
    assert emulator.spec_replicas == 0  # the Deployment is left as it was


# -- watch resumption ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_relists_after_410_and_converges(emulator: KubeEmulator, make_scaler: Any) -> None:
    scaler = make_scaler()
    async with running(scaler, emulator):
        await scaler.scale(1)
        await until(lambda: len(scaler.ready()) == 1, "one replica")
        assert emulator.count("list") == 1
        emulator.expire_history()  # ends the open watch; the next one, from the old version, gets 410
        await until(lambda: emulator.count("list") == 2, "a relist")
        await scaler.scale(2)
        await until(lambda: len(scaler.ready()) == 2, "two replicas")
    expired = emulator.watch_queries[1]["resourceVersion"]
    assert int(expired) < int(emulator.watch_queries[2]["resourceVersion"])


@pytest.mark.anyio
async def test_resumes_an_ended_watch_from_the_last_version_without_relisting(make_emulator: Any) -> None:
    emulator = make_emulator(bookmark_interval_s=0.2)
    with client_for(emulator) as client:
        scaler = scaler_for(client, watch_timeout_s=1, backoff_s=(0.01, 0.05))
        async with running(scaler, emulator):
            await scaler.scale(1)
            await until(lambda: len(scaler.ready()) == 1, "one replica")
            # The server ends the watch at its timeoutSeconds; the scaler watches again from where it was.
            await until(lambda: emulator.count("watch") >= 2, "a second watch", timeout_s=5)
            emulator.end_watches()  # and when the server drops it early
            await until(lambda: emulator.count("watch") >= 3, "a third watch")
            await scaler.scale(2)
            await until(lambda: len(scaler.ready()) == 2, "two replicas")
        assert emulator.count("list") == 1
        queries = emulator.watch_queries
        assert all(q["timeoutSeconds"] == "1" and q["allowWatchBookmarks"] == "true" for q in queries)
        versions = [int(q["resourceVersion"]) for q in queries]
        assert versions == sorted(versions)
        assert versions[-1] > versions[0]  # resumed from an event or a bookmark, not from the list again


# -- API failures --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_forbidden_patch_raises_unavailable_naming_rbac(emulator: KubeEmulator, make_scaler: Any) -> None:
    scaler = make_scaler()
    emulator.fail_next(1, 403, verb="patch")
    with pytest.raises(Unavailable) as caught:
        await scaler.scale(1)
    message = str(caught.value)
    assert "RBAC must allow patch on deployments/scale" in message
    assert "default/wasmgate-runner" in message
    assert "403" in message
    assert emulator.spec_replicas == 0
    assert scaler.wanted() == 0
    await scaler.scale(1)  # the failure was the server's answer, not the scaler's state
    assert scaler.wanted() == 1


@pytest.mark.anyio
async def test_missing_deployment_and_unreachable_server_raise_unavailable(emulator: KubeEmulator) -> None:
    with client_for(emulator) as client:
        scaler = KubernetesScaler(namespace="default", deployment="nope", service="wasmgate-runner", api_client=client)
        with pytest.raises(Unavailable, match=r"404 .*no such Deployment"):
            await scaler.scale(1)
    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard: nothing listens
    with kubernetes.client.ApiClient(configuration) as client:
        scaler = KubernetesScaler(
            namespace="default", deployment="x", service="x", api_client=client, request_timeout_s=2
        )
        with pytest.raises(Unavailable, match="unreachable"):
            await scaler.scale(1)


@pytest.mark.anyio
async def test_list_failures_are_retried_until_the_server_recovers(emulator: KubeEmulator, make_scaler: Any) -> None:
    emulator.fail_next(3, 500, verb="list")
    scaler = make_scaler()
    async with running(scaler, emulator):  # returns once a watch is open: after the fourth list
        assert emulator.count("list") == 4
        await scaler.scale(1)
        await until(lambda: len(scaler.ready()) == 1, "one replica")


@pytest.mark.anyio
async def test_watch_failures_are_retried_with_a_relist(emulator: KubeEmulator, make_scaler: Any) -> None:
    scaler = make_scaler()
    async with running(scaler, emulator):
        emulator.fail_next(2, 503, verb="watch")
        emulator.end_watches()
        await until(lambda: emulator.count("watch") >= 4, "watching again")
        assert emulator.count("list") == 3
        await scaler.scale(1)
        await until(lambda: len(scaler.ready()) == 1, "one replica")


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_scaler_built_from_settings_loads_the_kubeconfig(emulator: KubeEmulator, tmp_path: Path) -> None:
    path = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    default_host = kubernetes.client.Configuration.get_default_copy().host
    scaler = wiring.make_scaler(Settings(pod_scaler="kubernetes", kubeconfig=str(path)))
    try:
        assert (scaler.namespace, scaler.deployment, scaler.service) == (
            "default",
            "wasmgate-runner",
            "wasmgate-runner",
        )
        await scaler.scale(1)
        assert emulator.spec_replicas == 1
    finally:
        await scaler.aclose()
    # The scaler's configuration is its own: the client's global default is untouched.
    assert kubernetes.client.Configuration.get_default_copy().host == default_host


@pytest.mark.anyio
async def test_a_wrong_token_is_refused_with_401(emulator: KubeEmulator, tmp_path: Path) -> None:
    path = emulator.write_kubeconfig(tmp_path / "kubeconfig", token="not-the-token")
    scaler = wiring.make_scaler(Settings(pod_scaler="kubernetes", kubeconfig=str(path), k8s_namespace="default"))
    try:
        with pytest.raises(Unavailable, match=r"401 .*credentials"):
            await scaler.scale(1)
    finally:
        await scaler.aclose()
    assert emulator.count("patch", SCALE_PATH) == 1
    assert emulator.spec_replicas == 0


def test_a_scaler_built_without_any_configuration_raises_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot load the Kubernetes client configuration"):
        wiring.make_scaler(Settings(pod_scaler="kubernetes", kubeconfig=str(tmp_path / "absent")))


# -- the emulator's faithfulness -----------------------------------------------------------------------------


def test_emulator_json_deserializes_through_the_client_models(emulator: KubeEmulator) -> None:
    emulator.ready_delay_s = None
    headers = {"Authorization": f"Bearer {emulator.token}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as http_client, client_for(emulator) as client:
        round_trips(client, http_client.get(SCALE_PATH).json(), "V1Scale")  # at 0: "spec": {}
        version = http_client.get(SLICES_PATH).json()["metadata"]["resourceVersion"]
        patched = http_client.patch(
            SCALE_PATH,
            content=json.dumps({"spec": {"replicas": 2}}),
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        )
        assert patched.status_code == 200
        assert patched.json()["spec"] == {"replicas": 2}
        round_trips(client, patched.json(), "V1Scale")

        listed = http_client.get(SLICES_PATH, params={"labelSelector": "kubernetes.io/service-name=wasmgate-runner"})
        body = listed.json()
        assert body["kind"] == "EndpointSliceList"
        assert all("kind" not in item and "apiVersion" not in item for item in body["items"])
        assert any(item["endpoints"] for item in body["items"])
        round_trips(client, body, "V1EndpointSliceList")
        assert http_client.get(SLICES_PATH, params={"labelSelector": "app=other"}).json()["items"] == []

        # The two pods' endpoints arrive as changes after the version read before the patch.
        query = {"watch": "true", "resourceVersion": version}
        events: list[dict[str, Any]] = []
        with http_client.stream("GET", SLICES_PATH, params=query) as stream:
            for line in stream.iter_lines():
                events.append(json.loads(line))
                if len(events[-1]["object"]["endpoints"] or ()) == 2:
                    break
        assert {e["type"] for e in events} <= {"ADDED", "MODIFIED"}
        for event in events:
            assert event["object"]["kind"] == "EndpointSlice"
            round_trips(client, event["object"], "V1EndpointSlice")


def test_emulator_refuses_what_a_server_refuses(emulator: KubeEmulator) -> None:
    headers = {"Authorization": f"Bearer {emulator.token}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as http_client:

        def patch(body: Any, media_type: str) -> httpx.Response:
            return http_client.patch(SCALE_PATH, content=json.dumps(body), headers={"Content-Type": media_type})

        unsupported = patch({"spec": {"replicas": 1}}, "application/json")
        assert unsupported.status_code == 415
        assert unsupported.json()["reason"] == "UnsupportedMediaType"
        assert patch({"spec": {"replicas": -1}}, "application/merge-patch+json").json()["reason"] == "Invalid"
        assert patch({"spec": {"replicas": "two"}}, "application/merge-patch+json").status_code == 422
        stale = {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}}
        assert patch(stale, "application/merge-patch+json").status_code == 409
        assert emulator.spec_replicas == 0

        missing = http_client.get(SCALE_PATH.replace("wasmgate-runner", "absent"))
        assert missing.status_code == 404
        assert missing.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'deployments.apps "absent" not found',
            "reason": "NotFound",
            "details": {"name": "absent", "group": "apps", "kind": "deployments"},
            "code": 404,
        }
        anonymous = httpx.get(emulator.url + SCALE_PATH)
        assert anonymous.status_code == 401
        assert anonymous.json()["reason"] == "Unauthorized"

        emulator.expire_history()
        query = {"watch": "1", "resourceVersion": "1001"}
        with http_client.stream("GET", SLICES_PATH, params=query) as stream:
            assert stream.status_code == 200
            events = [json.loads(line) for line in stream.iter_lines() if line]
        assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]

"""The pod tier on Kubernetes: a runner Deployment scaled through its ``scale`` subresource, and the ready pods
read from its Service's EndpointSlices.

What it asks of the API server, and so what the gateway's RBAC Role must grant, in the scaler's namespace:

- one gateway (``gateway_id`` empty): ``get`` and ``patch`` on ``deployments/scale`` in API group ``apps``;
- several gateways sharing the runners (``gateway_id`` set; ``router.scalers.shares``): ``get`` and ``patch``
  on ``deployments`` in API group ``apps``, since the shares live in an annotation, which the scale
  subresource does not carry;
- ``list`` and ``watch`` on ``endpointslices`` in API group ``discovery.k8s.io``.

Readiness comes from EndpointSlices rather than from pods: the EndpointSlice controller already folds a pod's
readiness probe, its IP and its termination into one condition per endpoint, and the gateway then needs no
access to pods at all.

The official client is blocking, so every call runs in a worker thread. The watch is one long request in a
thread of its own; its events are applied on the event loop's thread, so the scaler's state is only ever
touched there.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from router.scaler import Replica
from router.scalers import kube_client, shares
from router.scalers.endpoint_slices import ready_replicas
from wasm_host.errors import Unavailable

log = logging.getLogger("wasmgate.kubernetes")

T = TypeVar("T")

#: Label the EndpointSlice controller puts on every slice of a Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

#: Writes of this gateway's share that may meet a 409 Conflict in a row before ``scale`` gives up.
CONFLICT_ATTEMPTS = 8

#: A watch that the server ends sooner than this without an event is retried after a backoff (client-go's
#: reflector treats such "very short watches" the same way).
SHORT_WATCH_S = 1.0


class KubernetesScaler:
    """Scales one Deployment and reports the ready endpoints of one Service (see the module docstring).

    ``run`` reads the Deployment's scale, then lists the Service's EndpointSlices and watches them from the
    list's resourceVersion (and does both again whenever it has to list again). A watch that the server ends
    (its ``timeout_seconds``) is resumed from the last resourceVersion seen, bookmarks included, without
    listing again. A watch that fails with 410 (the resourceVersion fell out of the server's history) is
    followed at once by a fresh list. Any other failure (refused, reset, 5xx, 403) is logged and retried with
    a list after a bounded exponential backoff (``backoff_s``: first and longest delay).

    The replicas are the endpoints that are ready and not terminating, in the Service's slices that have a
    port named ``port_name``, each counted once however many slices list it (the rule in full:
    :func:`router.scalers.endpoint_slices.ready_replicas`).

    With a ``gateway_id``, the scaler speaks for one of several gateways in front of the Deployment
    (``router.scalers.shares``): :meth:`scale` records ``replicas`` as this gateway's share and sets the
    Deployment's replicas to the sum of the live shares, within ``min_replicas`` and ``max_replicas`` (None: no
    cap); ``run`` also rewrites the share every ``share_ttl_s / 3`` seconds, dropping expired ones.

    The scaler closes the ``api_client`` on ``aclose`` only when it built it (``api_client=None`` or
    :meth:`from_kubeconfig`); a client passed in stays the caller's.
    """

    def __init__(
        self,
        *,
        namespace: str,
        deployment: str,
        service: str,
        port_name: str = "http",
        api_client: kube_client.ApiClient | None = None,
        watch_timeout_s: int = 30,
        request_timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        gateway_id: str = "",
        min_replicas: int = 0,
        max_replicas: int | None = None,
        share_ttl_s: float = 30.0,
    ) -> None:
        if share_ttl_s <= 0:
            raise ValueError(f"share_ttl_s must be positive, got {share_ttl_s}")
        self.namespace = namespace
        self.deployment = deployment
        self.service = service
        self.port_name = port_name
        self.gateway_id = gateway_id
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.share_ttl_s = share_ttl_s
        self._owns_client = api_client is None
        self._api = api_client if api_client is not None else kube_client.load_api_client("")[0]
        self._apps = kube_client.AppsV1Api(self._api)
        self._discovery = kube_client.DiscoveryV1Api(self._api)
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._backoff_min, self._backoff_max = backoff_s
        self._selector = f"{SERVICE_NAME_LABEL}={service}"
        self._wanted = 0
        # Bumped by every scale(): a scale read that started before a scale() must not overwrite its value.
        self._scale_calls = 0
        self._slices: dict[str, Any] = {}  # name -> V1EndpointSlice
        self._ready: tuple[Replica, ...] = ()
        self._resource_version: str | None = None
        self._portless_logged: set[str] = set()
        self._active: kube_client.ActiveWatch | None = None
        self._closed = threading.Event()
        # With a gateway_id: this gateway's share as last written, when it was written (monotonic), and a lock
        # that keeps scale() and the heartbeat from writing at once.
        self._share = 0
        self._shared_at: float | None = None
        self._share_lock = anyio.Lock()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str, namespace: str = "", **options: Any) -> KubernetesScaler:
        """A scaler with its own client configuration (the client's global default is left alone):
        ``kubeconfig`` names a kubeconfig file; when empty, the in-cluster service account is used, else
        ``~/.kube/config`` (or ``$KUBECONFIG``). The namespace is ``namespace``, else the pod's own (the
        service account's namespace file), else ``default``. ``options`` are the constructor's. Raises
        :class:`Unavailable` when no configuration can be loaded."""
        api_client, in_cluster = kube_client.load_api_client(kubeconfig)
        namespace = namespace or (kube_client.pod_namespace() if in_cluster else "") or "default"
        scaler = cls(namespace=namespace, api_client=api_client, **options)
        scaler._owns_client = True
        return scaler

    # -- the Scaler protocol ---------------------------------------------------------------------------------

    def ready(self) -> Sequence[Replica]:
        return self._ready

    def wanted(self) -> int:
        """The replicas last asked for with :meth:`scale`, else the Deployment's ``spec.replicas`` as read
        when ``run`` started (and again at each relist); 0 before either.

        With a ``gateway_id``: this gateway's share, as last written (adopted from the Deployment at the first
        write, when a share under this id is still live there); 0 before that."""
        return self._share if self.gateway_id else self._wanted

    async def scale(self, replicas: int, functions: Collection[str] = ()) -> None:
        """Patch the Deployment's scale subresource to ``replicas``. ``functions`` is not used: a Deployment's
        pods all start from one template, so they preload the functions pinned to the pod tier (every runner
        does) and load any other at its first request.

        The patch is sent even when ``replicas`` equals :meth:`wanted`: the cached value may be stale
        (someone else scaled the Deployment), and a patch that changes nothing is a no-op on the server (no
        write, no new resourceVersion), so skipping it would save one request at the risk of a wrong answer.
        Raises :class:`Unavailable` naming the Deployment and the API's answer when the patch fails.

        With a ``gateway_id``: record ``replicas`` as this gateway's share and set the Deployment's replicas to
        the total (``router.scalers.shares``), retrying on conflicts; :meth:`wanted` changes only once the
        write succeeded.
        """
        if replicas < 0:
            raise ValueError(f"replicas must not be negative, got {replicas}")
        self._scale_calls += 1
        if self.gateway_id:
            async with self._share_lock:
                await self._write_share(replicas)
            return
        try:
            result = await self._call(
                self._apps.patch_namespaced_deployment_scale,
                self.deployment,
                self.namespace,
                {"spec": {"replicas": replicas}},
                # Merge patch (RFC 7386) is the plainest patch type the scale subresource accepts; naming it
                # keeps the request the same whichever default this client version would pick for a dict.
                _content_type="application/merge-patch+json",
            )
        except kube_client.TRANSIENT as exc:
            raise kube_client.unavailable("patch", exc, self.namespace, self.deployment) from exc
        self._wanted = kube_client.spec_replicas(result, default=replicas)

    async def run(self, on_change: Callable[[], None]) -> None:
        async with anyio.create_task_group() as tg:
            if self.gateway_id:
                tg.start_soon(self._heartbeat)
            await self._discover(on_change)
            tg.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Stop watching (within a few seconds, even when the API server has stopped answering) and release
        the client if the scaler built it. The Deployment is left as it is (a share, too, is left to expire)."""
        self._closed.set()
        active = self._active
        if active is not None:
            await active.halt()
        if self._owns_client:
            self._api.close()  # type: ignore[no-untyped-call]

    # -- the shares of several gateways ----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Write this gateway's share now and then every third of the TTL, unchanged but freshly stamped,
        dropping shares that expired and re-applying the total. A failure is logged; the share is still live
        for two more attempts."""
        while not self._closed.is_set():
            async with self._share_lock:
                try:
                    await self._write_share(None)
                except Unavailable as exc:
                    log.warning("renewing this gateway's share of the runners failed: %s", exc)
            await anyio.sleep(self.share_ttl_s / 3)

    async def _write_share(self, replicas: int | None) -> None:
        """Read the Deployment, and write ``replicas`` (None: the current share, or the one adopted) as this
        gateway's share with the new total, conditional on the resourceVersion read; again on 409 Conflict."""
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                current = await self._call(self._apps.read_namespaced_deployment, self.deployment, self.namespace)
            except kube_client.TRANSIENT as exc:
                raise kube_client.unavailable("get", exc, self.namespace, self.deployment, "deployments") from exc
            meta = current.metadata
            if meta is None or not meta.resource_version:
                unreadable = ValueError("the Deployment came without metadata.resourceVersion")
                raise kube_client.unavailable("get", unreadable, self.namespace, self.deployment, "deployments")
            text = (meta.annotations or {}).get(shares.ANNOTATION)
            now = time.time()
            share = replicas
            if share is None:
                restarted = shares.adopted(text, self.gateway_id, now, self.share_ttl_s)
                share = self._share if self._shared_at is not None or restarted is None else restarted
            recent = self._shared_at is not None and time.monotonic() - self._shared_at <= self.share_ttl_s
            plan = shares.plan(
                text,
                self.gateway_id,
                share,
                now=now,
                ttl_s=self.share_ttl_s,
                floor=self.min_replicas,
                cap=self.max_replicas,
                expire=recent,
            )
            try:
                await self._call(
                    self._apps.patch_namespaced_deployment,
                    self.deployment,
                    self.namespace,
                    plan.patch(meta.resource_version),
                    _content_type="application/merge-patch+json",
                )
            except kube_client.TRANSIENT as exc:
                if isinstance(exc, kube_client.ApiException) and exc.status == 409:
                    # Someone wrote in between: read again. A short random pause (jitter, not a secret) keeps
                    # two gateways that collided from colliding again in step.
                    await anyio.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # noqa: S311
                    continue
                raise kube_client.unavailable("patch", exc, self.namespace, self.deployment, "deployments") from exc
            if plan.dropped:
                log.info("dropped the expired runner shares of gateways %s", ", ".join(plan.dropped))
            if (current.spec.replicas if current.spec else None) != plan.replicas:
                log.info(
                    "runners at %d replicas: %d for this gateway (%s), %d gateways",
                    plan.replicas,
                    share,
                    self.gateway_id,
                    len(plan.shares),
                )
            self._share = share
            self._shared_at = time.monotonic()
            return
        raise Unavailable(
            f"cannot record this gateway's share of deployment {self.namespace}/{self.deployment}: it changed "
            f"under {CONFLICT_ATTEMPTS} writes in a row (409 Conflict)",
            retry_after=1.0,
        )

    # -- discovery -------------------------------------------------------------------------------------------

    async def _discover(self, on_change: Callable[[], None]) -> None:
        backoff = self._backoff_min
        while not self._closed.is_set():
            try:
                if not self.gateway_id:
                    await self._read_scale()
                await self._relist(on_change)
                while not self._closed.is_set():
                    started = anyio.current_time()
                    events = await self._watch(on_change)
                    # The server ended the watch (its timeout): resume where it stopped, without a list. One
                    # that ended at once with nothing in it (a proxy, a server shutting down) is not repeated
                    # at once, or a server that keeps doing so would be asked in a hot loop.
                    if events or anyio.current_time() - started >= SHORT_WATCH_S:
                        backoff = self._backoff_min
                    else:
                        await anyio.sleep(backoff)
                        backoff = min(backoff * 2, self._backoff_max)
            except kube_client.TRANSIENT as exc:
                if isinstance(exc, kube_client.ApiException) and exc.status == 410:
                    log.info("the watch of EndpointSlices of service %s expired (410); listing again", self._where())
                    continue
                if self._closed.is_set():
                    break
                log.warning(
                    "watching EndpointSlices of service %s failed, retrying in %.1fs: %s",
                    self._where(),
                    backoff,
                    kube_client.summary(exc),
                )
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    async def _read_scale(self) -> None:
        """Adopt the Deployment's spec.replicas, unless a scale() was made meanwhile. A failure is logged, not
        raised: discovery does not need it, and scale() reports its own failures."""
        calls = self._scale_calls
        try:
            result = await self._call(self._apps.read_namespaced_deployment_scale, self.deployment, self.namespace)
        except kube_client.TRANSIENT as exc:
            log.warning("%s", kube_client.unavailable("get", exc, self.namespace, self.deployment))
            return
        if calls == self._scale_calls:
            self._wanted = kube_client.spec_replicas(result, default=self._wanted)

    async def _relist(self, on_change: Callable[[], None]) -> None:
        listed = await self._call(
            self._discovery.list_namespaced_endpoint_slice, self.namespace, label_selector=self._selector
        )
        self._slices = {item.metadata.name: item for item in listed.items if item.metadata and item.metadata.name}
        # None only from a server that breaks the API; the watch then starts from "now", with the current state.
        self._resource_version = listed.metadata.resource_version if listed.metadata else None
        self._refresh(on_change)

    async def _watch(self, on_change: Callable[[], None]) -> int:
        """One watch request, from the last resourceVersion, until the server ends it or it fails. Returns how
        many events it delivered."""
        active = kube_client.ActiveWatch()
        self._active = active
        kwargs: dict[str, Any] = {
            "label_selector": self._selector,
            "resource_version": self._resource_version,
            "allow_watch_bookmarks": True,
            # Also turns off the client's own retry after a 410, which would watch from a stale version.
            "timeout_seconds": self._watch_timeout_s,
            # A connection that dies silently ends the read within this, rather than never.
            "_request_timeout": (self._request_timeout_s, self._watch_timeout_s + self._request_timeout_s),
        }
        try:
            return await active.run(
                lambda event: self._apply(event, on_change),
                self._discovery.list_namespaced_endpoint_slice,
                self.namespace,
                **kwargs,
            )
        finally:
            self._active = None

    def _apply(self, event: dict[str, Any], on_change: Callable[[], None]) -> None:
        kind = event["type"]
        raw = event["raw_object"]
        if kind in ("ADDED", "MODIFIED"):
            self._slices[raw["metadata"]["name"]] = event["object"]
        elif kind == "DELETED":
            self._slices.pop(raw["metadata"]["name"], None)
        # BOOKMARK events carry only a resourceVersion: a cheaper place to resume from.
        version = raw.get("metadata", {}).get("resourceVersion")
        if version:
            self._resource_version = version
        if kind != "BOOKMARK":
            self._refresh(on_change)

    def _refresh(self, on_change: Callable[[], None]) -> None:
        ready = self._ready_replicas()
        if ready != self._ready:
            self._ready = ready
            on_change()

    def _ready_replicas(self) -> tuple[Replica, ...]:
        return ready_replicas(self._slices, self.port_name, self.namespace, self._portless_logged)

    # -- plumbing --------------------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One blocking API call in a worker thread, with a request timeout. Abandoned when cancelled: the
        call holds nothing the scaler must wait for, and its timeout ends it."""
        kwargs.setdefault("_request_timeout", self._request_timeout_s)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True)

    def _where(self) -> str:
        return f"{self.namespace}/{self.service}"

"""An emulator of exactly the part of the Kubernetes API that ``router.scalers.kubernetes`` calls, served over
real HTTP, so that the scaler's tests run the official client end to end.

It exists because no Kubernetes API server can run on the machines these tests run on. It is not a general
fake: it answers what the scaler asks, in the JSON shapes and with the status codes a real API server (1.30 or
so) sends, and refuses the rest with a 404 Status.

Implemented:

- ``GET`` and ``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale``: one Deployment's ``Scale``
  (``autoscaling/v1``; ``spec.replicas`` is omitted at 0, as the real ``omitempty`` field is). PATCH takes
  ``application/merge-patch+json`` and ``application/strategic-merge-patch+json`` (the two are the same for
  a Scale's fields); a wrong type or a negative ``spec.replicas`` is 422 ``Invalid``, a body that is not JSON
  is 400, a ``metadata.resourceVersion`` in the patch that is not the current one is 409 ``Conflict``, and a
  patch that changes nothing writes nothing (no new resourceVersion). A missing Deployment is 404.
- ``GET`` and ``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}``: the same Deployment (``apps/v1``),
  with its annotations, and the defaults a real server fills in for a minimal pod template; its ``status``
  carries ``observedGeneration`` and ``replicas`` only. PATCH takes the same two media types (the same for
  annotations and replicas, the only fields it changes) and follows a real server's order: a value that does
  not decode (an annotation that is not a string, ``spec.replicas`` not an integer) is 422 with an empty kind,
  as the patch's decoding reports it; then a ``metadata.resourceVersion`` in the patch that is not the current
  one is 409 ``Conflict`` (optimistic concurrency: the client reads again and retries); then validation, 422
  ``Invalid``: a negative ``spec.replicas``, an annotation key that is not a qualified name, annotations
  past 256 KiB in all. A change to ``spec.replicas`` bumps ``metadata.generation`` and drives the controller
  below; a change to annotations only bumps the resourceVersion; a patch that changes nothing writes nothing.
  The Scale and the Deployment are one object with one resourceVersion: a write through either conflicts
  with a read through the other, and the controller's status updates bump it too, as on a real server.
- ``GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices``, with equality ``labelSelector``s
  (``k=v,k2=v2``): a list (whose items lack ``kind`` and ``apiVersion``, as a real list's do), or with
  ``watch=true`` a stream of newline-delimited events after ``resourceVersion`` (without one, or with "0",
  ``ADDED`` events for the current state first). ``timeoutSeconds`` ends the stream cleanly;
  ``allowWatchBookmarks`` adds ``BOOKMARK`` events every ``bookmark_interval_s``; a resourceVersion older
  than the bounded event history gets one ``ERROR`` event (410, reason ``Expired``, as the watch cache sends)
  and the end of the stream.
- Authentication: every request needs ``Authorization: Bearer <token>``; otherwise 401 ``Unauthorized``.
- resourceVersions are one global counter, as etcd's revision is: every write to any emulated object bumps
  it, so versions seen on one resource skip numbers.
- A controller: when ``spec.replicas`` changes (after ``controller_delay_s``) pods are created or deleted, and
  the EndpointSlice controller's part is played too: a pod's endpoint appears not ready, turns ready after
  ``ready_delay_s`` (never, when None: tests call :meth:`KubeEmulator.set_ready`), and on deletion turns
  terminating for ``terminate_delay_s`` before it is removed. Endpoints are packed into slices by address
  type and port, at most ``max_endpoints_per_slice`` each (100, as the controller's default); a slice that
  empties is deleted, except the last, which stays as the controller's placeholder (``endpoints`` and
  ``ports`` null). Conditions follow the controller's rules, ``publish_not_ready_addresses`` included.
- A pluggable pod backend: ``on_pod_start(pod) -> (ip, port)`` and ``on_pod_stop(pod)``, so endpoints can
  point at real local servers; by default pods get 10.0.0.N:8080.
- Test hooks: :meth:`set_ready`, :meth:`expire_history` (the 410 path), :meth:`end_watches` (what a server
  restart or timeout does to open watches), :meth:`fail_next` (the next calls answer an error Status),
  :meth:`annotate` (another client's write), :meth:`before_next` (a write slipped in between a client's read
  and its write, for a real 409), and request counts by (verb, path), with verbs as the API server's audit log
  names them (get, patch, list, watch).
- :meth:`write_kubeconfig`: a kubeconfig for a plain-HTTP cluster with a bearer-token user.

Not implemented: other resources and verbs, a Deployment patch that changes anything but annotations and
``spec.replicas`` (422 naming the field here; a real server would apply it), the ``/watch/`` paths, set-based
label selectors, field selectors, pagination (``limit``/``continue``), list ``resourceVersion`` semantics
(every list is a consistent read), JSON patch and server-side apply (415 here, accepted by a real server),
``dryRun``, protobuf and CBOR, ``managedFields``, a watch that falls too far behind, a watch from a
resourceVersion in the future, anonymous authentication (a real server with it enabled answers 403 rather than
401 to a request without a token), authorization (see :meth:`fail_next` for 403), and TLS. Bookmarks carry
only kind, apiVersion and ``metadata.resourceVersion`` where a real one also carries the type's zero values;
clients ignore both.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import json
import random
import re
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

T = TypeVar("T")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
#: The apiserver's limit on all of an object's annotations together (keys and values).
ANNOTATIONS_MAX_BYTES = 256 * 1024
#: An annotation key: an optional DNS subdomain prefix and "/", then a name of at most 63 characters.
QUALIFIED_NAME = re.compile(
    r"(?:(?=.{1,253}/)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"(?=.{1,63}$)[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
# What a real server lists as accepted when it refuses a patch's media type.
ACCEPTED_PATCH_TYPES = (
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, "
    "application/strategic-merge-patch+json, application/apply-patch+cbor"
)
# Go's strconv.ParseBool, which the API server uses for boolean query parameters.
TRUE = ("1", "t", "T", "TRUE", "true", "True")
# Kubernetes' generateName alphabet (no vowels, no easily confused characters).
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status(code: int, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``metav1.Status`` failure, as the API server writes it."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": REASONS.get(code, ""),
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Pod:
    name: str
    uid: str
    ip: str
    port: int
    ready: bool = False
    terminating: bool = False
    slice: str = ""


@dataclasses.dataclass
class _Event:
    rv: int
    type: str
    object: dict[str, Any]


@dataclasses.dataclass
class _Failure:
    remaining: int
    code: int
    verb: str | None


@dataclasses.dataclass
class _Interleaved:
    verb: str
    fn: Callable[[], None]


class KubeEmulator:
    """The emulated API server (see the module docstring). Use as a context manager, or ``start()``/``close()``.

    All state lives on the server's event loop in a thread of its own; the public methods may be called from
    any thread (they run on that loop and wait for it), including from ``on_pod_start``/``on_pod_stop``.
    """

    def __init__(
        self,
        *,
        namespace: str = "default",
        deployment: str = "wasmgate-runner",
        service: str = "wasmgate-runner",
        port_name: str = "http",
        token: str = "emulator-token",
        replicas: int = 0,
        controller_delay_s: float = 0.0,
        ready_delay_s: float | None = 0.05,
        terminate_delay_s: float = 0.05,
        bookmark_interval_s: float = 1.0,
        history_size: int = 1000,
        max_endpoints_per_slice: int = 100,
        publish_not_ready_addresses: bool = False,
        on_pod_start: Callable[[str], tuple[str, int]] | None = None,
        on_pod_stop: Callable[[str], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.service = service
        self.port_name = port_name
        self.token = token
        self.controller_delay_s = controller_delay_s
        self.ready_delay_s = ready_delay_s
        self.terminate_delay_s = terminate_delay_s
        self.bookmark_interval_s = bookmark_interval_s
        self.max_endpoints_per_slice = max_endpoints_per_slice
        self.publish_not_ready_addresses = publish_not_ready_addresses
        self._on_pod_start = on_pod_start or self._fake_address
        self._on_pod_stop = on_pod_stop
        self._rng = random.Random(seed)
        self._rv = 1000
        self._deployment_rv = self._bump()
        self._deployment_uid = self._uid()
        self._created = now()
        self._template_hash = self._random_name(10)
        self._spec_replicas = replicas
        self._generation = 1
        self._annotations: dict[str, str] = {}
        self._pods: dict[str, Pod] = {}
        self._addresses = 0
        self._slices: dict[str, dict[str, Any]] = {}
        self._history: collections.deque[_Event] = collections.deque(maxlen=history_size)
        self._floor = self._rv  # a new watch from an older resourceVersion gets 410
        self._dropped = 0  # the newest event dropped from the history: an open watch behind it gets 410
        self._failures: list[_Failure] = []
        self._interleaved: list[_Interleaved] = []
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._watch_queries: list[dict[str, str]] = []
        self._watch_epoch = 0
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._port = 0
        self._new_slice(placeholder=True)  # the controller keeps one slice even when a Service has no endpoints

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> KubeEmulator:
        app = Starlette(
            routes=[
                Route(
                    "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
                    self._scale_endpoint,
                    methods=["GET", "PATCH", "PUT", "POST", "DELETE"],
                ),
                Route(
                    "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                    self._deployment_endpoint,
                    methods=["GET", "PATCH", "PUT", "POST", "DELETE"],
                ),
                Route(
                    "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                    self._slices_endpoint,
                    methods=["GET", "PATCH", "PUT", "POST", "DELETE"],
                ),
                Route("/{path:path}", self._not_found, methods=["GET", "PATCH", "PUT", "POST", "DELETE"]),
            ]
        )
        # The server is handed a socket bound here, so its port is known before it starts and nothing can take
        # it meanwhile.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        started = threading.Event()
        errors: list[BaseException] = []

        async def serve() -> None:
            assert self._server is not None
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            task = asyncio.create_task(self._server.serve(sockets=[sock]))
            while not self._server.started and not task.done():
                await asyncio.sleep(0.005)
            if self._server.started and self._spec_replicas:
                self._loop.call_soon(self._reconcile)
            started.set()
            await task

        def main() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:
                errors.append(exc)
            finally:
                sock.close()
                started.set()

        self._thread = threading.Thread(target=main, name="kube-emulator", daemon=True)
        self._thread.start()
        started.wait(10)
        if not self._server.started:
            self.close()
            raise RuntimeError(f"the Kubernetes API emulator did not start: {errors}")
        return self

    def close(self) -> None:
        """End every watch stream, stop the server and join its thread."""
        if self._thread is None:
            return
        if self._loop is not None and self._thread.is_alive():

            def shut() -> None:
                self._closing = True
                self._notify()
                assert self._server is not None
                self._server.should_exit = True
                self._server.force_exit = True  # the streams are ending: no need to wait for them

            self._loop.call_soon_threadsafe(shut)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- inspection and test hooks ---------------------------------------------------------------------------

    @property
    def spec_replicas(self) -> int:
        return self._call(lambda: self._spec_replicas)

    def annotations(self) -> dict[str, str]:
        """A copy of the Deployment's annotations."""
        return self._call(lambda: dict(self._annotations))

    def annotate(self, key: str, value: str | None) -> None:
        """Set (or with None, remove) an annotation on the Deployment, as another client's write would: a new
        resourceVersion, so that a write based on an earlier read conflicts."""

        def go() -> None:
            if value is None:
                self._annotations.pop(key, None)
            else:
                self._annotations[key] = value
            self._deployment_rv = self._bump()

        self._call(go)

    def before_next(self, verb: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the server's loop just before the next request with ``verb`` is handled (after
        authentication): another client's write slipped in between a read and a write makes a real 409."""
        self._call(lambda: self._interleaved.append(_Interleaved(verb, fn)))

    def pods(self) -> dict[str, Pod]:
        """A copy of the pods, by name."""
        return self._call(lambda: {name: dataclasses.replace(pod) for name, pod in self._pods.items()})

    def slices(self) -> list[dict[str, Any]]:
        """The EndpointSlices as a list would serve them."""
        return self._call(lambda: json.loads(json.dumps(list(self._slices.values()))))

    def count(self, verb: str, path: str | None = None) -> int:
        """Requests seen with ``verb`` (get, patch, list, watch), on ``path`` or on any path."""
        return self._call(lambda: sum(n for (v, p), n in self._requests.items() if v == verb and path in (None, p)))

    @property
    def watch_queries(self) -> list[dict[str, str]]:
        """The query parameters of every watch request, in order."""
        return self._call(lambda: [dict(q) for q in self._watch_queries])

    def set_ready(self, pod: str, ready: bool) -> None:
        """Set a pod's readiness (as its readiness probe would) and update its endpoint."""

        def go() -> None:
            self._pods[pod].ready = ready
            self._update_endpoint(self._pods[pod])

        self._call(go)

    def expire_history(self, *, end_watches: bool = True) -> None:
        """Forget every event so far, as compaction and a watch cache restart would: a watch from any
        resourceVersion seen until now gets 410. Open watches end too (``end_watches``), as they do when the
        API server restarts, so a client has to start a new one."""

        def go() -> None:
            self._bump()  # other writes happened meanwhile: the client's last version is now behind
            if self._history:
                self._dropped = self._history[-1].rv
            self._history.clear()
            self._floor = self._rv
            if end_watches:
                self._watch_epoch += 1
            self._notify()

        self._call(go)

    def end_watches(self) -> None:
        """End every open watch stream cleanly, as the server's ``timeoutSeconds`` does."""

        def go() -> None:
            self._watch_epoch += 1
            self._notify()

        self._call(go)

    def fail_next(self, n: int, code: int, *, verb: str | None = None) -> None:
        """Answer the next ``n`` requests (with ``verb`` only, if given) with a ``code`` Status, after
        authentication, as the API server's authorization, admission or storage would fail them."""
        self._call(lambda: self._failures.append(_Failure(n, code, verb)))

    def write_kubeconfig(self, path: Path, *, token: str | None = None, namespace: str | None = None) -> Path:
        """A kubeconfig (JSON, which is YAML) for this server: one plain-HTTP cluster, one token user."""
        context: dict[str, str] = {"cluster": "emulator", "user": "emulator"}
        if namespace is not None:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": self.token if token is None else token}}],
            "contexts": [{"name": "emulator", "context": context}],
            "current-context": "emulator",
            "preferences": {},
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None or threading.current_thread() is self._thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _admit(self, request: Request, verb: str) -> Response | None:
        """Authentication, accounting and injected failures, in the order a real server applies them."""
        self._requests[(verb, request.url.path)] += 1
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or credential.strip() != self.token:
            return self._json(status(401, "Unauthorized"), 401)
        for failure in self._failures:
            if failure.remaining > 0 and failure.verb in (None, verb):
                failure.remaining -= 1
                return self._injected(failure.code, verb, request)
        for hook in self._interleaved:
            if hook.verb == verb:
                self._interleaved.remove(hook)
                hook.fn()
                break
        return None

    def _injected(self, code: int, verb: str, request: Request) -> Response:
        namespace = request.path_params.get("namespace", "")
        if "name" in request.path_params:
            resource = "deployments/scale" if request.url.path.endswith("/scale") else "deployments"
            group, name = "apps", request.path_params["name"]
            details: dict[str, Any] = {"name": name, "group": group, "kind": "deployments"}
            subject = f'deployments.apps "{name}"'
        else:
            resource, group, name = "endpointslices", "discovery.k8s.io", ""
            details = {"group": group, "kind": "endpointslices"}
            subject = "endpointslices.discovery.k8s.io"
        headers = {}
        if code == 403:
            message = (
                f'{subject} is forbidden: User "system:serviceaccount:{namespace}:wasmgate" cannot {verb} '
                f'resource "{resource}" in API group "{group}" in the namespace "{namespace}"'
            )
        elif code == 429:
            message = "too many requests, please try again later"
            details["retryAfterSeconds"] = 1
            headers["Retry-After"] = "1"
        elif code >= 500:
            message = "Internal error occurred: injected failure" if code == 500 else "the server is unavailable"
            details["causes"] = [{"message": "injected failure"}]
        else:
            message = f"injected failure {code}"
        return self._json(status(code, message, details), code, headers)

    @staticmethod
    def _json(body: Any, code: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(body, separators=(",", ":")), code, headers, media_type="application/json")

    async def _not_found(self, request: Request) -> Response:
        verb = {"GET": "get", "PATCH": "patch"}.get(request.method, request.method.lower())
        refused = self._admit(request, verb)
        return refused or self._json(status(404, "the server could not find the requested resource"), 404)

    def _method_not_allowed(self, request: Request) -> Response:
        return self._json(status(405, "the server does not allow this method on the requested resource"), 405)

    async def _scale_endpoint(self, request: Request) -> Response:
        patch = await self._patch_or_answer(request, self._scale_object)
        if isinstance(patch, Response):
            return patch
        patched = merge_patch(self._scale_object(), patch)
        invalid = self._invalid_scale(patched, patch)
        if invalid is not None:
            return invalid
        conflict = self._conflict(patched)
        if conflict is not None:
            return conflict
        self._set_replicas((patched.get("spec") or {}).get("replicas") or 0)
        return self._json(self._scale_object())

    async def _deployment_endpoint(self, request: Request) -> Response:
        patch = await self._patch_or_answer(request, self._deployment_object)
        if isinstance(patch, Response):
            return patch
        current = self._deployment_object()
        patched = merge_patch(current, patch)
        # A real server's order: the patched object must decode into the Go type, then the resourceVersion
        # precondition is checked (in the storage layer's update), then the object is validated.
        undecodable = self._undecodable_deployment(patched, patch)
        if undecodable is not None:
            return undecodable
        unmodelled = _first_difference(_beyond_shares(current), _beyond_shares(patched))
        if unmodelled is not None:
            message = f"the emulator does not implement changing {unmodelled} of a Deployment"
            return self._json(status(422, message), 422)
        conflict = self._conflict(patched)
        if conflict is not None:
            return conflict
        invalid = self._invalid_deployment(patched)
        if invalid is not None:
            return invalid
        annotations = patched["metadata"].get("annotations") or {}
        if annotations != self._annotations:
            self._annotations = dict(annotations)
            self._deployment_rv = self._bump()
        self._set_replicas(patched["spec"]["replicas"])
        return self._json(self._deployment_object())

    async def _patch_or_answer(self, request: Request, view: Callable[[], dict[str, Any]]) -> dict[str, Any] | Response:
        """For both of the Deployment's paths: admission, the method, the Deployment's existence, and a GET's
        answer (``view``); else the PATCH request's patch, or the answer refusing it."""
        verb = {"GET": "get", "PATCH": "patch", "PUT": "update"}.get(request.method, request.method.lower())
        refused = self._admit(request, verb)
        if refused is not None:
            return refused
        if request.method not in ("GET", "PATCH"):
            return self._method_not_allowed(request)
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        if (namespace, name) != (self.namespace, self.deployment):
            details = {"name": name, "group": "apps", "kind": "deployments"}
            return self._json(status(404, f'deployments.apps "{name}" not found', details), 404)
        if request.method == "GET":
            return self._json(view())
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in PATCH_TYPES:
            message = "the body of the request was in an unknown format - accepted media types include: "
            return self._json(status(415, message + ACCEPTED_PATCH_TYPES), 415)
        try:
            patch = json.loads(await request.body())
        except ValueError as exc:
            return self._json(status(400, f"error decoding patch: {exc}"), 400)
        if not isinstance(patch, dict):
            return self._json(status(400, "error decoding patch: not a JSON object"), 400)
        return patch

    def _conflict(self, patched: dict[str, Any]) -> Response | None:
        """409 when the patch names a resourceVersion (a precondition) that is not the current one."""
        version = (patched.get("metadata") or {}).get("resourceVersion")
        if version == str(self._deployment_rv):
            return None
        message = (
            f'Operation cannot be fulfilled on deployments.apps "{self.deployment}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        return self._json(status(409, message, {"name": self.deployment, "group": "apps", "kind": "deployments"}), 409)

    def _set_replicas(self, replicas: int) -> None:
        """Write spec.replicas, if it changes: a new resourceVersion and generation, and the controller runs."""
        if replicas == self._spec_replicas:
            return
        self._spec_replicas = replicas
        self._generation += 1
        self._deployment_rv = self._bump()
        assert self._loop is not None
        self._loop.call_later(self.controller_delay_s, self._reconcile)

    def _undecodable_deployment(self, patched: dict[str, Any], patch: dict[str, Any]) -> Response | None:
        metadata, spec = patched.get("metadata"), patched.get("spec")
        annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
        replicas = spec.get("replicas") if isinstance(spec, dict) else None
        wrong: str | None = None
        if not isinstance(metadata, dict) or not isinstance(spec, dict):
            wrong = "ObjectMeta" if not isinstance(metadata, dict) else "DeploymentSpec"
        elif annotations is not None and not isinstance(annotations, dict):
            wrong = "map[string]string"
        elif annotations is not None and not all(isinstance(v, str) for v in annotations.values()):
            wrong = "string"
        elif not isinstance(replicas, int) or isinstance(replicas, bool):
            wrong = "int32"
        if wrong is None:
            return None
        cause = {"reason": "FieldValueInvalid", "message": f"Invalid value: {patch!r}", "field": "patch"}
        message = f'"" is invalid: patch: Invalid value: "{patch!r}": unrecognized type: {wrong}'
        return self._json(status(422, message, {"causes": [cause]}), 422)

    def _invalid_deployment(self, patched: dict[str, Any]) -> Response | None:
        causes = []
        replicas = patched["spec"]["replicas"]
        if replicas < 0:
            causes.append(("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0"))
        annotations: dict[str, str] = patched["metadata"].get("annotations") or {}
        for key in annotations:
            if not QUALIFIED_NAME.fullmatch(key):
                causes.append(("metadata.annotations", f'Invalid value: "{key}": not a qualified name'))
        if sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items()) > ANNOTATIONS_MAX_BYTES:
            causes.append(("metadata.annotations", f"Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"))
        if not causes:
            return None
        details = {
            "name": self.deployment,
            "group": "apps",
            "kind": "Deployment",
            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
        }
        listed = ", ".join(f"{f}: {m}" for f, m in causes)
        message = f'Deployment.apps "{self.deployment}" is invalid: ' + (f"[{listed}]" if len(causes) > 1 else listed)
        return self._json(status(422, message, details), 422)

    def _invalid_scale(self, patched: dict[str, Any], patch: dict[str, Any]) -> Response | None:
        spec = patched.get("spec")
        replicas = spec.get("replicas") if isinstance(spec, dict) else None
        wrong_spec = spec is not None and not isinstance(spec, dict)
        if wrong_spec or (replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool))):
            # The patched object does not decode into the Go type: the server reports the patch as invalid,
            # with an empty kind and name (strategicPatchObject's NewInvalid).
            cause = {"reason": "FieldValueInvalid", "message": f"Invalid value: {patch!r}", "field": "patch"}
            message = f'"" is invalid: patch: Invalid value: "{patch!r}": unrecognized type: int32'
            return self._json(status(422, message, {"causes": [cause]}), 422)
        if replicas is not None and replicas < 0:
            field = f"Invalid value: {replicas}: must be greater than or equal to 0"
            cause = {"reason": "FieldValueInvalid", "message": field, "field": "spec.replicas"}
            details = {"name": self.deployment, "group": "autoscaling", "kind": "Scale", "causes": [cause]}
            message = f'Scale.autoscaling "{self.deployment}" is invalid: spec.replicas: {field}'
            return self._json(status(422, message, details), 422)
        return None

    def _scale_object(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"replicas": self._spec_replicas} if self._spec_replicas else {}  # omitempty
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": self.deployment,
                "namespace": self.namespace,
                "uid": self._deployment_uid,
                "resourceVersion": str(self._deployment_rv),
                "creationTimestamp": self._created,
            },
            "spec": spec,
            "status": {"replicas": self._status_replicas(), "selector": f"app={self.deployment}"},
        }

    def _deployment_object(self) -> dict[str, Any]:
        labels = {"app": self.deployment}
        metadata: dict[str, Any] = {
            "name": self.deployment,
            "namespace": self.namespace,
            "uid": self._deployment_uid,
            "resourceVersion": str(self._deployment_rv),
            "generation": self._generation,
            "creationTimestamp": self._created,
            "labels": labels,
        }
        if self._annotations:  # omitempty
            metadata["annotations"] = dict(self._annotations)
        status: dict[str, Any] = {"observedGeneration": self._generation}
        if self._status_replicas():  # omitempty
            status["replicas"] = self._status_replicas()
        container = {
            "name": "runner",
            "image": "registry.example.com/wasmgate/runner:0.1.0-cpu",
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        }
        pod = {
            "containers": [container],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler",
        }
        return {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": metadata,
            "spec": {
                "replicas": self._spec_replicas,  # a pointer, not omitempty: 0 is written out
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            },
            "status": status,
        }

    def _status_replicas(self) -> int:
        # A ReplicaSet counts its active pods; terminating ones are no longer active.
        return sum(1 for pod in self._pods.values() if not pod.terminating)

    async def _slices_endpoint(self, request: Request) -> Response:
        watching = request.query_params.get("watch", "") in TRUE
        verb = "watch" if watching else "list"
        if request.method != "GET":
            verb = {"PATCH": "patch", "POST": "create", "PUT": "update"}.get(request.method, "deletecollection")
        refused = self._admit(request, verb)
        if refused is not None:
            return refused
        if request.method != "GET":
            return self._method_not_allowed(request)
        try:
            selector = parse_selector(request.query_params.get("labelSelector", ""))
            timeout = int(request.query_params.get("timeoutSeconds", "1800"))
            version = request.query_params.get("resourceVersion", "")
            start = int(version) if version not in ("", "0") else None
        except ValueError as exc:
            return self._json(status(400, str(exc)), 400)
        namespace = request.path_params["namespace"]

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj["metadata"]
            return meta["namespace"] == namespace and all(meta["labels"].get(k) == v for k, v in selector.items())

        if not watching:
            items = [json.loads(json.dumps(s)) for s in self._slices.values() if matches(s)]
            for item in items:  # a real list's items carry no kind or apiVersion
                item.pop("kind")
                item.pop("apiVersion")
            return self._json(
                {
                    "kind": "EndpointSliceList",
                    "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"resourceVersion": str(self._rv)},
                    "items": items,
                }
            )
        self._watch_queries.append(dict(request.query_params))
        bookmarks = request.query_params.get("allowWatchBookmarks", "") in TRUE
        stream = self._watch_stream(matches, start, timeout, bookmarks)
        return StreamingResponse(stream, media_type="application/json")

    async def _watch_stream(
        self, matches: Callable[[dict[str, Any]], bool], start: int | None, timeout_s: int, bookmarks: bool
    ) -> AsyncIterator[bytes]:
        assert self._loop is not None
        loop = self._loop
        deadline = loop.time() + timeout_s if timeout_s > 0 else float("inf")
        epoch = self._watch_epoch

        def line(kind: str, obj: dict[str, Any]) -> bytes:
            return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"

        if start is None:
            # No resourceVersion: the current state as ADDED events, then what follows. Serialized before the
            # first yield: the slices change in place while the stream waits for the client.
            initial = [line("ADDED", obj) for obj in self._slices.values() if matches(obj)]
            last = self._rv
            for chunk in initial:
                yield chunk
        elif start < self._floor:
            yield line("ERROR", status(410, f"too old resource version: {start} ({self._floor})"))
            return
        else:
            last = start
        next_bookmark = loop.time() + self.bookmark_interval_s
        while not self._closing and epoch == self._watch_epoch and loop.time() < deadline:
            if last < self._dropped:  # events this watch had not sent yet fell out of the history
                yield line("ERROR", status(410, f"too old resource version: {last} ({self._floor})"))
                return
            pending = [e for e in self._history if e.rv > last]
            if pending:
                for event in pending:
                    last = event.rv
                    if matches(event.object):
                        yield line(event.type, event.object)
                continue  # more may have come while those were sent
            # From here to the wait there is no await: nothing can change unseen.
            if bookmarks and loop.time() >= next_bookmark:
                # Every event up to the current version has been sent: the client may resume from it.
                last = self._rv
                bookmark = {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1"}
                yield line("BOOKMARK", {**bookmark, "metadata": {"resourceVersion": str(last)}})
                next_bookmark = loop.time() + self.bookmark_interval_s
                continue
            wake = self._wake
            assert wake is not None
            until = min(deadline, next_bookmark) if bookmarks else deadline
            try:
                async with asyncio.timeout_at(until if until != float("inf") else None):
                    await wake.wait()
            except TimeoutError:
                pass

    # -- the controllers -------------------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """The Deployment and ReplicaSet controllers: make the active pods match spec.replicas."""
        active = [pod for pod in self._pods.values() if not pod.terminating]
        if len(active) == self._spec_replicas:
            return
        for _ in range(self._spec_replicas - len(active)):
            self._start_pod()
        if len(active) > self._spec_replicas:
            # The ReplicaSet controller deletes not-ready pods first, then the newest.
            order = sorted(enumerate(active), key=lambda p: (p[1].ready, -p[0]))
            for _, pod in order[: len(active) - self._spec_replicas]:
                self._stop_pod(pod)
        self._deployment_rv = self._bump()  # status.replicas changed

    def _start_pod(self) -> None:
        name = f"{self.deployment}-{self._template_hash}-{self._random_name(5)}"
        ip, port = self._on_pod_start(name)
        pod = Pod(name=name, uid=self._uid(), ip=ip, port=port)
        self._pods[name] = pod
        self._add_endpoint(pod)
        if self.ready_delay_s is not None:
            assert self._loop is not None
            self._loop.call_later(self.ready_delay_s, self._probe_passed, name)

    def _probe_passed(self, name: str) -> None:
        pod = self._pods.get(name)
        if pod is not None and not pod.terminating and not pod.ready:
            pod.ready = True
            self._update_endpoint(pod)

    def _stop_pod(self, pod: Pod) -> None:
        pod.terminating = True
        self._update_endpoint(pod)
        assert self._loop is not None
        self._loop.call_later(self.terminate_delay_s, self._pod_gone, pod.name)

    def _pod_gone(self, name: str) -> None:
        pod = self._pods.pop(name, None)
        if pod is None:
            return
        self._remove_endpoint(pod)
        self._deployment_rv = self._bump()
        if self._on_pod_stop is not None:
            self._on_pod_stop(name)

    def _fake_address(self, name: str) -> tuple[str, int]:
        self._addresses += 1
        return f"10.0.{self._addresses // 250}.{self._addresses % 250 + 1}", 8080

    # -- the EndpointSlice controller ------------------------------------------------------------------------

    def _endpoint(self, pod: Pod) -> dict[str, Any]:
        # The rules of the EndpointSlice controller's podToEndpoint.
        ready = self.publish_not_ready_addresses or (pod.ready and not pod.terminating)
        return {
            "addresses": [pod.ip],
            "conditions": {"ready": ready, "serving": pod.ready, "terminating": pod.terminating},
            "targetRef": {"kind": "Pod", "namespace": self.namespace, "name": pod.name, "uid": pod.uid},
            "nodeName": "emulated-node",
        }

    def _add_endpoint(self, pod: Pod) -> None:
        address_type = "IPv6" if ":" in pod.ip else "IPv4"
        port = [{"name": self.port_name, "protocol": "TCP", "port": pod.port}]
        target = None
        for piece in self._slices.values():
            fits = len(piece["endpoints"] or ()) < self.max_endpoints_per_slice
            if piece["ports"] == port and piece["addressType"] == address_type and fits:
                target = piece
                break
        if target is None:
            placeholders = [s for s in self._slices.values() if s["endpoints"] is None and s["ports"] is None]
            target = placeholders[0] if placeholders else self._new_slice()
            target["addressType"] = address_type
            target["ports"] = port
        target["endpoints"] = [*(target["endpoints"] or ()), self._endpoint(pod)]
        pod.slice = target["metadata"]["name"]
        self._write(target)

    def _update_endpoint(self, pod: Pod) -> None:
        piece = self._slices[pod.slice]
        piece["endpoints"] = [
            self._endpoint(pod) if e["targetRef"]["name"] == pod.name else e for e in piece["endpoints"] or ()
        ]
        self._write(piece)

    def _remove_endpoint(self, pod: Pod) -> None:
        piece = self._slices[pod.slice]
        piece["endpoints"] = [e for e in piece["endpoints"] or () if e["targetRef"]["name"] != pod.name] or None
        if piece["endpoints"] is not None:
            self._write(piece)
        elif len(self._slices) > 1:
            del self._slices[pod.slice]
            piece["metadata"]["resourceVersion"] = str(self._bump())
            self._record("DELETED", piece)
        else:
            piece["ports"] = None  # the last slice stays, as the placeholder
            self._write(piece)

    def _new_slice(self, *, placeholder: bool = False) -> dict[str, Any]:
        name = f"{self.service}-{self._random_name(5)}"
        piece: dict[str, Any] = {
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {
                "name": name,
                "generateName": f"{self.service}-",
                "namespace": self.namespace,
                "uid": self._uid(),
                "resourceVersion": "",
                "generation": 0,
                "creationTimestamp": now(),
                "labels": {
                    MANAGED_BY_LABEL: "endpointslice-controller.k8s.io",
                    SERVICE_NAME_LABEL: self.service,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": self.service,
                        "uid": self._uid(),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "addressType": "IPv4",
            "endpoints": None,
            "ports": None,
        }
        self._slices[name] = piece
        if placeholder:
            self._write(piece)
        return piece

    def _write(self, piece: dict[str, Any]) -> None:
        meta = piece["metadata"]
        created = meta["generation"] == 0
        meta["generation"] += 1
        meta["resourceVersion"] = str(self._bump())
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": now()}
        self._record("ADDED" if created else "MODIFIED", piece)

    def _record(self, kind: str, piece: dict[str, Any]) -> None:
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._floor = self._dropped = self._history[0].rv  # the oldest event falls out of the window
        self._history.append(_Event(self._rv, kind, json.loads(json.dumps(piece))))
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = asyncio.Event()

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _random_name(self, n: int) -> str:
        return "".join(self._rng.choice(NAME_ALPHABET) for _ in range(n))


def parse_selector(text: str) -> dict[str, str]:
    """Equality label selectors (``k=v``, ``k==v``, comma-separated); anything else is refused."""
    selector: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or "!" in key or not key.strip():
            raise ValueError(f"unable to parse requirement: {term!r} (the emulator supports k=v selectors only)")
        selector[key.strip()] = value.strip()
    return selector


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _beyond_shares(deployment: dict[str, Any]) -> dict[str, Any]:
    """A Deployment without the fields the emulator lets a patch change (annotations, spec.replicas) or check
    (the resourceVersion precondition)."""
    rest = json.loads(json.dumps(deployment))
    if isinstance(rest.get("metadata"), dict):
        rest["metadata"].pop("annotations", None)
        rest["metadata"].pop("resourceVersion", None)
    if isinstance(rest.get("spec"), dict):
        rest["spec"].pop("replicas", None)
    return rest


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first path (``spec.template``) at which two JSON values differ, else None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    return None if a == b else (path or "the object")

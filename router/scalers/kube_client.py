"""The Kubernetes client plumbing of the pod tier's scaler (``router.scalers.kubernetes``): the one module that
imports the optional ``kubernetes`` package, the loading of its configuration, the failures worth retrying, the
reading of the API server's answers and errors, the :class:`Unavailable` errors built from them, and the handle
that runs one watch request in a worker thread and stops it from the event loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from wasm_host.errors import Unavailable

try:
    import kubernetes.client
    import kubernetes.config
    import kubernetes.watch
    import urllib3.exceptions
    from kubernetes.client import ApiClient, AppsV1Api, DiscoveryV1Api
    from kubernetes.client.exceptions import ApiException
except ImportError as exc:  # the client is an optional extra
    raise ImportError(
        "the Kubernetes scaler needs the official Kubernetes client: pip install 'wasmgate[kubernetes]'"
    ) from exc

__all__ = [
    "NAMESPACE_FILE",
    "TRANSIENT",
    "ActiveWatch",
    "ApiClient",
    "ApiException",
    "AppsV1Api",
    "DiscoveryV1Api",
    "load_api_client",
    "pod_namespace",
    "retry_after",
    "spec_replicas",
    "status_message",
    "summary",
    "unavailable",
]

#: Where a pod's service account namespace is mounted (the in-cluster default namespace).
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

#: Failures worth logging and retrying in the watch loop: the API server answered with an error, or could not
#: be reached (urllib3 raises its own errors, not OSError, for refused and reset connections), or answered
#: something the client's models could not read (pydantic's ValidationError is a ValueError).
TRANSIENT = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


class ActiveWatch:
    """One watch request in flight, and the means to stop it from the event loop."""

    def __init__(self) -> None:
        self.watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.events = 0
        self.failure: BaseException | None = None

    async def run(
        self, on_event: Callable[[dict[str, Any]], None], list_fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> int:
        """Watch ``list_fn(*args, **kwargs)`` in a worker thread until the server ends the request or it fails,
        handing each event to ``on_event`` on the event loop's thread (none once the watch is stopping).
        Returns how many events it delivered; raises what the request raised, unless it was stopped."""

        def deliver(event: dict[str, Any]) -> None:  # on the event loop's thread
            if not self.stopping.is_set():
                self.events += 1
                on_event(event)

        def stream() -> None:  # in a worker thread
            try:
                for event in self.watch.stream(list_fn, *args, **kwargs):  # type: ignore[no-untyped-call]
                    if self.stopping.is_set():
                        break
                    anyio.from_thread.run_sync(deliver, event)
            except BaseException as exc:
                # Raised again below, outside the task group (which would wrap it in an ExceptionGroup). A
                # stopped watch fails by design, its socket shut under it: that is not a failure.
                if not self.stopping.is_set():
                    self.failure = exc
            finally:
                self.done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(self.halt_when_cancelled)
            # Not abandoned on cancellation: halt_when_cancelled stops the request, and this waits for the
            # thread to let go of it, so nothing is left reading from the client after aclose().
            await anyio.to_thread.run_sync(stream)
            tg.cancel_scope.cancel()
        if self.failure is not None:
            raise self.failure
        return self.events

    async def halt_when_cancelled(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.halt()

    async def halt(self, timeout_s: float = 5.0) -> None:
        """Stop the watch and wait (at most ``timeout_s``) for its thread to let go. ``Watch.stop()`` shuts the
        request's socket, but only once the request is sent, and ``Watch.stream()`` clears the stop flag as
        it starts; so it is repeated until the thread is seen to finish."""
        self.stopping.set()
        with anyio.move_on_after(timeout_s):
            while not self.done.is_set():
                self.watch.stop()  # type: ignore[no-untyped-call]
                await anyio.sleep(0.02)


def load_api_client(kubeconfig: str) -> tuple[ApiClient, bool]:
    """A client with a configuration of its own; and whether it is the in-cluster one."""
    configuration = kubernetes.client.Configuration()
    try:
        if not kubeconfig:
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                return ApiClient(configuration), True
            except kubernetes.config.ConfigException:
                pass  # not in a pod: fall back to the user's kubeconfig, as kubectl does
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or None, client_configuration=configuration
        )
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        where = kubeconfig or "the in-cluster service account or ~/.kube/config"
        raise Unavailable(f"cannot load the Kubernetes client configuration from {where}: {exc}") from exc
    return ApiClient(configuration), False


def pod_namespace() -> str:
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        return ""


def spec_replicas(scale: Any, default: int) -> int:
    # autoscaling/v1 ScaleSpec.replicas is omitempty: a Deployment scaled to zero reads back as "spec": {}.
    spec = getattr(scale, "spec", None)
    if spec is None:
        return default
    replicas = spec.replicas
    return int(replicas) if replicas is not None else 0


def unavailable(
    verb: str, exc: BaseException, namespace: str, deployment: str, resource: str = "deployments/scale"
) -> Unavailable:
    """The error for a failed ``verb`` on ``resource`` (``deployments/scale`` or ``deployments``) of the
    Deployment ``namespace/deployment``: what was asked, what the API server answered, and what to check."""
    what = f"deployment {namespace}/{deployment}"
    if resource == "deployments/scale":
        what = f"the scale of {what}"
    if isinstance(exc, ValueError):
        return Unavailable(f"cannot {verb} {what}: the API server's answer is unreadable: {exc}")
    if not isinstance(exc, ApiException) or not exc.status:
        return Unavailable(
            f"cannot {verb} {what}: the Kubernetes API server is unreachable ({summary(exc)})",
            retry_after=1.0,
        )
    detail = status_message(exc)
    if exc.status == 401:
        hint = "the API server did not accept the credentials (check the kubeconfig or service account token)"
    elif exc.status == 403:
        hint = f"RBAC must allow {verb} on {resource} in API group apps in namespace {namespace}"
    elif exc.status == 404:
        hint = "no such Deployment (check WASMGATE_K8S_DEPLOYMENT and WASMGATE_K8S_NAMESPACE)"
    else:
        hint = "the API server refused the request"
    return Unavailable(
        f"cannot {verb} {what}: {exc.status} {exc.reason}: {hint}: {detail}",
        retry_after=retry_after(exc),
    )


def status_message(exc: ApiException) -> str:
    """The message of the Status object the API server sent, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        return str(exc.reason)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(exc.reason)


def retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def summary(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}: {status_message(exc)}"
    return f"{type(exc).__name__}: {exc}"

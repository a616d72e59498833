"""The OIP v2 gRPC service, ``inference.GRPCInferenceService``: its calls, and the server that ``wasm serve`` runs
beside HTTP (setting ``grpc_port``; 0: none) with grpcio's asyncio server, on the event loop of the HTTP server,
from the app's lifespan (``gateway.app``).

Every call is what its HTTP twin is, on the same objects:

- ServerLive: always live. ServerReady: the app's readiness (``GET /v2/health/ready``).
- ModelReady, ModelMetadata: the function's current manifest, its version checked and the caller's token too
  (``gateway.oip.admit``); an unknown function is NOT_FOUND.
- ModelInfer: one lookup and admission as ``POST /v2/models/{name}/infer``, then the request as an OIP v2 body
  (``gateway.oip_grpc.tensors``) through ``Dispatcher.run``: routing to either tier (a pod-tier request is
  forwarded to a runner as that body), admission, the one retry, the limits and ``wasmgate_requests_total``
  are HTTP's. A request refused before it is placed (bad tensors) is counted as HTTP counts a bad body.

Metadata: ``authorization: Bearer <token>`` is the HTTP header's twin; ``x-wasmgate-tier`` and
``x-wasmgate-deadline-ms`` steer the routing as the headers do. Every answer of a placed request, errors
included, carries the ``x-wasmgate-*`` routing headers as trailing metadata, and an UNAVAILABLE answer with a
retry hint carries ``retry-after`` (seconds). Errors are statuses from one table (``gateway.oip_grpc.status``),
each logged once, here.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import version
from typing import Any

import grpc
import grpc.aio

from gateway.dispatch import DEADLINE_HEADER, HINT_HEADER
from gateway.http_errors import answered_error, status_of
from gateway.oip import PLATFORMS, admit
from gateway.oip_grpc.messages import (
    METHODS,
    SERVICE,
    ModelMetadataResponse,
    ModelReadyResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
)
from gateway.oip_grpc.status import code_of
from gateway.oip_grpc.tensors import infer_response, request_body
from gateway.state import AppState
from gateway.store.manifest import Manifest
from wasm_host.errors import Unavailable, WasmgateError

log = logging.getLogger("wasmgate.grpc")

#: The caller's metadata a ModelInfer request takes to the dispatch: the routing headers.
ROUTING_METADATA = (HINT_HEADER, DEADLINE_HEADER)

Metadata = Mapping[str, str]
#: One call: the request message and the caller's metadata -> the response and its trailing metadata.
Call = Callable[[Any, Metadata], Awaitable[tuple[Any, Metadata]]]


class InferenceService:
    """The calls of ``inference.GRPCInferenceService`` on one app's state (see the module docstring)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def server_live(self, request: Any, metadata: Metadata) -> tuple[Any, Metadata]:
        return ServerLiveResponse(live=True), {}

    async def server_ready(self, request: Any, metadata: Metadata) -> tuple[Any, Metadata]:
        return ServerReadyResponse(ready=self.state.ready), {}

    async def server_metadata(self, request: Any, metadata: Metadata) -> tuple[Any, Metadata]:
        # No extensions: those HTTP lists (binary tensors and the like) are HTTP's; gRPC serves the core calls.
        return ServerMetadataResponse(name="wasmgate", version=version("wasmgate"), extensions=[]), {}

    async def model_ready(self, request: Any, metadata: Metadata) -> tuple[Any, Metadata]:
        """Ready when the function exists, as ``GET /v2/models/{name}/ready`` says."""
        self._lookup(request.name, request.version, metadata)
        return ModelReadyResponse(ready=True), {}

    async def model_metadata(self, request: Any, metadata: Metadata) -> tuple[Any, Metadata]:
        m = self._lookup(request.name, request.version, metadata)
        response = ModelMetadataResponse(name=m.name, versions=[str(m.version)], platform=PLATFORMS[m.kind])
        for specs, tensors in ((m.inputs, response.inputs), (m.outputs, response.outputs)):
            for spec in specs or []:
                tensors.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return response, {}

    async def model_infer(self, request: Any, metadata: Metadata) -> tuple[Any, Metadata]:
        started = time.perf_counter()
        state = self.state
        dispatcher = state.gateway
        manifest, fn = state.registry.current(request.model_name)  # the one lookup
        admit(state, manifest, request.model_version or None, metadata)
        try:
            routing = {k: v for k in ROUTING_METADATA if (v := metadata.get(k)) is not None}
            body, headers = request_body(request, routing)
        except WasmgateError as exc:
            dispatcher.refused(manifest, started, exc)
            raise
        answer = await dispatcher.run(body, headers, manifest, fn, started)
        failed = answered_error(answer)
        if failed is not None:  # a replica's error answer: raised again, as gRPC's status
            raise failed
        where = {k: v for k, v in answer.headers.items() if k.startswith("x-wasmgate-")}
        response = infer_response(
            manifest.name, manifest.version, request.id, bytes(answer.body), answer.headers, dispatcher.max_tensor_bytes
        )
        return response, where

    def _lookup(self, name: str, wanted: str, metadata: Metadata) -> Manifest:
        manifest = self.state.registry.manifest(name)
        admit(self.state, manifest, wanted or None, metadata)
        return manifest

    def handlers(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, for :meth:`grpc.aio.Server.add_generic_rpc_handlers`."""
        calls: dict[str, Call] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: _unary(f"/{SERVICE}/{name}", call, *METHODS[name]) for name, call in calls.items()}
        )


def _unary(path: str, call: Call, request_class: Any, response_class: Any) -> grpc.RpcMethodHandler:
    """A unary method handler: ``call`` with the caller's metadata; an error answered as its status."""

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        try:
            response, trailing = await call(request, metadata)
        except WasmgateError as exc:
            code = code_of(exc)
            log.log(logging.WARNING if status_of(exc) >= 500 else logging.INFO, "%s -> %s: %s", path, code.name, exc)
            trailing = dict(exc.headers or {})  # where it ran, for an error that ended a placed request
            if isinstance(exc, Unavailable) and exc.retry_after is not None:
                trailing["retry-after"] = str(max(1, round(exc.retry_after)))
            context.set_trailing_metadata(tuple(trailing.items()))
            await context.abort(code, str(exc))
        except Exception:
            log.exception("%s -> INTERNAL: unexpected error", path)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the gateway logged the details")
        context.set_trailing_metadata(tuple(trailing.items()))
        return response

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=request_class.FromString, response_serializer=response_class.SerializeToString
    )


async def start_grpc(state: AppState) -> grpc.aio.Server:
    """Start serving ``inference.GRPCInferenceService`` on ``host:grpc_port`` on the running event loop. With
    several worker processes (``workers``), each binds the port with SO_REUSEPORT and the kernel spreads the
    connections over them; one process binds it alone, so a port already taken fails the start. Raises OSError
    naming the setting when the port cannot be bound."""
    settings = state.settings
    server = grpc.aio.server(
        options=[
            # Past this a request is refused by gRPC (RESOURCE_EXHAUSTED) before it is read, as HTTP's 413.
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ]
    )
    server.add_generic_rpc_handlers((InferenceService(state).handlers(),))
    host = settings.host.strip("[]")
    address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError:
        raise OSError(
            f"cannot serve gRPC on {address} (setting grpc_port; 0 turns it off): {_why(host, settings.grpc_port)}"
        ) from None
    await server.start()
    log.info("OIP v2 gRPC on %s", address)
    return server


def _why(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound, as the OS says it (gRPC's own error does not say)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    except OverflowError:  # a port past 65535
        return f"{port} is not a TCP port"
    return "gRPC could not bind it"

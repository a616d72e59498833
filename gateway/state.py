"""What the app holds while it runs, built in the lifespan from the settings."""

from __future__ import annotations

import dataclasses
from typing import Literal

from starlette.requests import Request
from starlette.types import Scope

from gateway.dispatch import Dispatcher
from gateway.functions.push import Publisher
from gateway.functions.serving import FunctionRegistry
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store.local import LocalStore
from router.wasm_tier import WasmTier
from wasm_host.host import Host

#: ``gateway``: the front door (admin API, routing to both tiers). ``runner``: a pod-tier replica, which
#: serves every function it is sent on its own engine, with the node's execution providers.
Role = Literal["gateway", "runner"]


@dataclasses.dataclass
class AppState:
    settings: Settings
    store: LocalStore
    host: Host
    registry: FunctionRegistry
    publisher: Publisher
    wasm: WasmTier
    metrics: Metrics
    role: Role = "gateway"
    #: The gateway's request placement over both tiers; None in a runner, which serves on its Wasm tier alone.
    dispatcher: Dispatcher | None = None
    ready: bool = False

    @property
    def gateway(self) -> Dispatcher:
        """The dispatcher, for what only a gateway serves (the admin API)."""
        assert self.dispatcher is not None, "a runner has no dispatcher"
        return self.dispatcher


def state_of(request: Request) -> AppState:
    """The app state behind a request."""
    return state_in(request.scope)


def state_in(scope: Scope) -> AppState:
    """The app state behind a request's ASGI scope (which Starlette, or ``gateway.lean``, gave its app)."""
    state: AppState = scope["app"].state.wasmgate
    return state

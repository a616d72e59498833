"""What the app holds while it runs, built in the lifespan from the settings."""

from __future__ import annotations

import dataclasses
from typing import Literal

from gateway.functions import FunctionRegistry
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import LocalStore
from router.pod_tier import PodTier
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
    wasm: WasmTier
    metrics: Metrics
    role: Role = "gateway"
    pods: PodTier | None = None  # the gateway's pod tier; None in a runner
    ready: bool = False

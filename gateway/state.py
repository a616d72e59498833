"""What the app holds while it runs, built in the lifespan from the settings."""

from __future__ import annotations

import dataclasses

from gateway.functions import FunctionRegistry
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import LocalStore
from router.wasm_tier import WasmTier
from wasm_host.host import Host


@dataclasses.dataclass
class AppState:
    settings: Settings
    store: LocalStore
    host: Host
    registry: FunctionRegistry
    wasm: WasmTier
    metrics: Metrics
    ready: bool = False

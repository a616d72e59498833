"""What the app holds while it runs, built in the lifespan from the settings."""

from __future__ import annotations

import dataclasses
from typing import Literal

from gateway.functions.push import Publisher
from gateway.functions.serving import FunctionRegistry
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store.local import LocalStore
from gateway.store.manifest import Manifest
from router.latency import ServiceTimes
from router.pod_tier import PodTier
from router.policy import Thresholds, Tier, home_tier
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
    pods: PodTier | None = None  # the gateway's pod tier; None in a runner
    accelerators: bool = False  # whether the pod tier has accelerators (setting accelerators, resolved)
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    #: What each tier recently took per function (the router's comparison); see router.latency.
    service_times: ServiceTimes = dataclasses.field(default_factory=lambda: ServiceTimes(Thresholds.spill_batch_rows))
    ready: bool = False

    def home_tier(self, manifest: Manifest) -> Tier:
        """Where the router places ``manifest`` when nothing argues otherwise, on this gateway's settings."""
        has_code = manifest.kind != "external"
        return home_tier(manifest.tier, manifest.figures, has_code, self.accelerators, self.thresholds)

"""Building the router's parts from the settings: the scaler (the one place either kind is built), the pod tier
with its activator and forwarder, the placement thresholds, and whether the pod tier has accelerators."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from gateway.settings import Settings
from router.activator import Activator, PodObserver
from router.forward import Forwarder
from router.latency import ServiceTimes
from router.pod_policy import ScalePolicy
from router.pod_tier import PodTier
from router.policy import Thresholds
from router.scaler import Scaler
from wasm_host.providers import CPU, choose_providers


def runner_command() -> list[str]:
    """How the local scaler starts a runner: this interpreter, this installation."""
    return [sys.executable, "-m", "gateway.cli", "runner"]


def has_accelerators(settings: Settings, available: Sequence[str]) -> bool:
    """Whether the pod tier runs on accelerators (setting ``accelerators``). ``auto``: local runners use
    this machine's onnxruntime, whose ``available`` providers tell; a cluster's runners and registered
    endpoints are assumed to have them (set ``none`` for an edge or CPU-only cluster)."""
    if settings.accelerators != "auto":
        return settings.accelerators == "yes"
    if settings.pod_scaler != "local":
        return True
    try:
        return choose_providers(settings.execution_providers, available)[0] != CPU
    except ValueError:  # a runner could not start with these providers; the runner says so when it starts
        return False


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds(
        pod_bytes=settings.tier_pod_bytes,
        pod_params=settings.tier_pod_params,
        pod_flops_per_row=settings.tier_pod_flops_per_row,
        fit_bytes=settings.wasm_fit_bytes,
        fit_flops_per_row=settings.wasm_fit_flops_per_row,
        spill_batch_rows=settings.spill_batch_rows,
        by_service_time=settings.route_by_service_time,
    )


def make_scaler(settings: Settings) -> Scaler | None:
    """The configured scaler, or None for ``pod_scaler=none``: the one place either scaler is built."""
    if settings.pod_scaler == "local":
        from router.scalers.local import LocalProcessScaler

        return LocalProcessScaler(
            runner_command(), settings.runner_env(), stop_grace_s=settings.drain_timeout_s, cpus=settings.runner_cpu_set
        )
    if settings.pod_scaler == "kubernetes":
        from router.scalers.kubernetes import KubernetesScaler

        # With several worker processes each worker is a gateway of its own: named by the id and its pid.
        gateway_id = settings.k8s_gateway_id
        if gateway_id and settings.workers > 1:
            gateway_id = f"{gateway_id}.{os.getpid()}"
        return KubernetesScaler.from_kubeconfig(
            settings.kubeconfig,
            settings.k8s_namespace,
            deployment=settings.k8s_deployment,
            service=settings.k8s_service,
            port_name=settings.k8s_port_name,
            gateway_id=gateway_id,
            min_replicas=settings.pod_min_replicas,
            max_replicas=settings.pod_max_replicas,
        )
    return None


def shares_runners(settings: Settings) -> bool:
    """Whether this gateway is one of several in front of one runner Deployment (``k8s_gateway_id``), each
    scaling its own share of the runners (router/scalers/shares.py)."""
    return settings.pod_scaler == "kubernetes" and bool(settings.k8s_gateway_id)


def make_pod_tier(
    settings: Settings, observer: PodObserver | None, times: ServiceTimes | None = None
) -> tuple[PodTier, Activator | None]:
    """The pod tier (and its activator, None without a scaler); ``times`` is where it learns its service
    times, shared with the Wasm tier and the dispatcher."""
    scaler = make_scaler(settings)
    # With shares, pod_min_replicas bounds their total, which the scaler applies: each gateway's own share
    # scales from zero, or N idle gateways would keep N times the minimum.
    floor = 0 if shares_runners(settings) else settings.pod_min_replicas
    policy = ScalePolicy(
        floor,
        settings.pod_max_replicas,
        settings.pod_target_in_flight,
        settings.pod_idle_grace_s,
        settings.pod_keep_alive_max_s,
    )
    activator = (
        None
        if scaler is None
        else Activator(scaler, policy, settings.pod_max_held, settings.pod_hold_timeout_s, observer)
    )
    forwarder = Forwarder(settings.pod_connect_timeout_s, settings.pod_timeout_s, settings.runner_deadline_ms)
    return PodTier(forwarder, activator, times), activator

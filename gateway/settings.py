"""The one settings object: frozen, built once from ``WASMGATE_*`` environment variables and CLI flags, and
passed down. Nothing reads the environment anywhere else, and nothing reads it at import time.

Every field of :class:`Settings` and of the sandbox's :class:`~wasm_host.engine.SandboxLimits` can be set with
``WASMGATE_<FIELD NAME IN UPPER CASE>``, e.g. ``WASMGATE_PORT=9000`` or ``WASMGATE_DEADLINE_MS=500``. CLI flags
win over the environment; the environment wins over the defaults below.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from wasm_host.engine import MiB, SandboxLimits

ENV_PREFIX = "WASMGATE_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LogLevel = Literal["debug", "info", "warning", "error"]
#: Who runs the pod tier's runners (setting ``pod_scaler``).
PodScaler = Literal["local", "kubernetes", "none"]
#: Whether the pod tier has accelerators (setting ``accelerators``).
Accelerators = Literal["auto", "yes", "none"]
#: Which host runs a request's guest entries and WASI-NN imports (setting ``host_path``; wasm_host.compiled).
HostPath = Literal["auto", "compiled", "python"]
#: The choice fields, by the name of their type as the dataclass records it (``from __future__ import
#: annotations`` keeps annotations as strings).
CHOICES: dict[str, tuple[str, ...]] = {
    "LogLevel": get_args(LogLevel),
    "PodScaler": get_args(PodScaler),
    "Accelerators": get_args(Accelerators),
    "HostPath": get_args(HostPath),
}
BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


#: Seconds a derived ``pod_request_timeout_s`` adds to ``runner_deadline_ms``: a runner may load (or fetch)
#: the function before its deadline starts, and the answer has to travel back.
POD_TIMEOUT_MARGIN_S = 30.0

#: Where the ``wasm`` CLI finds the gateway unless told (``--gateway``, ``WASMGATE_URL``).
DEFAULT_URL = "http://127.0.0.1:8080"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", ".")) / ".local" / "share")
    return Path(base) / "wasmgate"


@dataclasses.dataclass(frozen=True)
class Settings:
    #: Interface to bind. Loopback by default: expose the gateway deliberately, behind a proxy or with care.
    host: str = "127.0.0.1"
    port: int = 8080
    #: The OIP v2 gRPC service (``inference.GRPCInferenceService``) of ``wasm serve``, on ``host`` at this port,
    #: beside HTTP in the same process. 0: no gRPC.
    grpc_port: int = 8081
    #: Bearer token the admin API requires (push, delete, settings). Without one, ``wasm serve`` binds loopback
    #: only. Never logged.
    admin_token: str = dataclasses.field(default="", repr=False)
    #: Bearer token inference requires, for functions pushed without a token of their own. Empty: none.
    inference_token: str = dataclasses.field(default="", repr=False)
    #: The embedded store: content-addressed blobs, one manifest per function, and the compile cache. With a
    #: registry ``store``, the registry's local cache (and the compile cache).
    data_dir: Path = Path("wasmgate-data")
    # -- the store (gateway.store.registry) -------------------------------------------------------------------
    #: Where functions live: empty for the embedded store in ``data_dir``, or ``oci://HOST[:PORT]/REPO`` for
    #: an OCI registry shared by every replica (one tag per function), cached in ``data_dir``.
    store: str = ""
    #: Credentials for the registry (HTTP Basic, or exchanged for a bearer token when the registry asks).
    registry_username: str = ""
    registry_password: str = dataclasses.field(default="", repr=False)
    #: A PEM file of certificates to trust for the registry's TLS, beside the system's. Empty: the system's.
    registry_ca_file: str = ""
    #: Talk plain HTTP to the registry. Off: HTTPS only, loopback included.
    registry_plain_http: bool = False
    #: How often a gateway asks the registry for pushes and deletes made through other replicas, in seconds.
    registry_sync_interval_s: float = 5.0
    log_level: LogLevel = "info"
    #: Largest request body accepted at the inference endpoint (and for one uploaded blob at push).
    max_body_bytes: int = 64 * MiB
    #: Largest response body a function may answer with, checked before it is encoded: its binary outputs'
    #: bytes, and for each output asked for as JSON the most its text could take (refused with 500 naming this
    #: setting; a large output fits better in binary, which is not inflated).
    max_response_bytes: int = 64 * MiB
    #: Largest Wasm module accepted at push.
    max_module_bytes: int = 32 * MiB
    #: Largest ONNX model accepted at push.
    max_push_model_bytes: int = 512 * MiB
    #: How many functions the store may hold.
    max_functions: int = 1000
    #: A function's data files (``wasm push --file``), at push: the largest one, all of one function's
    #: together, and how many one function may have (0: none).
    max_file_bytes: int = 64 * MiB
    max_function_files_bytes: int = 256 * MiB
    max_function_files: int = 64
    #: onnxruntime intra-op threads per session run. 1 suits many concurrent small requests.
    ort_intra_op_threads: int = 1
    #: The host path (wasm_host.compiled): ``compiled`` runs a request's guest entries and WASI-NN imports in C
    #: with the GIL released, ``python`` in the pure-Python host, ``auto`` compiled when it loads (else Python,
    #: with a warning logged once).
    host_path: HostPath = "auto"
    #: Threads that run guests; bounds how many requests execute at once in this process.
    worker_threads: int = 8
    #: A function whose recent calls averaged less than this runs on the event loop thread rather than a
    #: worker thread (the hop costs more than such a call). 0 sends every call to a thread.
    inline_below_ms: float = 2.0
    #: CPython's GIL switch interval while serving, in milliseconds (CPython's default is 5).
    gil_switch_interval_ms: float = 1.0
    #: Worker processes serving (``wasm serve --workers``). Each has its own pools and admission limits.
    workers: int = 1
    #: How often idle functions are scaled down, in seconds.
    reap_interval_s: float = 1.0
    #: Shared directory for multi-process metrics; ``serve`` sets it up for its workers
    #: (prometheus-client's own PROMETHEUS_MULTIPROC_DIR).
    metrics_multiproc_dir: str | None = None
    #: A runner's onnxruntime execution providers, in order of preference: ``auto`` takes the best the node
    #: has (TensorRT, CUDA, ROCm, OpenVINO, then CPU), or name them, e.g. ``cuda,cpu``. The gateway's own
    #: Wasm tier always runs on the CPU.
    execution_providers: str = "auto"
    #: A runner keeps models loaded until their ONNX bytes together pass this many MiB; then it unloads the
    #: least recently used functions that are idle. 0: no budget.
    model_memory_budget_mb: int = 0
    #: The same budget for the gateway's own Wasm tier, per worker process: before a load would take the
    #: ONNX bytes of the functions it holds past this many MiB, the least recently used idle functions are
    #: unloaded (``wasmgate_evictions_total``; ``wasmgate_model_bytes_loaded`` shows what is counted). A
    #: session holds about its model's bytes plus its runs' activations: leave room for those under the
    #: process's memory limit. A function with requests in flight is never unloaded, so the budget may be
    #: passed while only busy ones remain. 0: no budget.
    wasm_model_memory_budget_mb: int = 1024
    #: A pod-home function loaded in the gateway only to run some of its requests here (masking the pod tier's
    #: cold start, a fallback, a hint) is unloaded after this many seconds without one (its own idle timeout
    #: if shorter), whatever its ``min_warm``: its requests go to the pods, and it should not hold the
    #: gateway's memory meanwhile.
    wasm_lent_idle_timeout_s: float = 30.0
    # -- routing (router.policy) ----------------------------------------------------------------------------
    #: ``auto`` tiering with accelerators in the cluster: a request past any of these (its FLOPs priced from its
    #: shapes, router.policy) runs on the pod tier.
    tier_pod_bytes: int = 64 * MiB
    tier_pod_params: int = 16_000_000
    tier_pod_flops_per_row: int = 100_000_000
    #: The largest model the Wasm tier takes (by bytes and by FLOPs per row, a request priced from its shapes):
    #: with no accelerators, ``auto`` keeps a request in the Wasm tier up to here; past it, a request never runs
    #: in the sandbox (refused with 413 for a function pinned there), and ``--tier wasm`` is refused at push
    #: for a model past it at its smallest shape.
    wasm_fit_bytes: int = 256 * MiB
    wasm_fit_flops_per_row: int = 2_000_000_000
    #: A Wasm-tier function's request with at least this many rows spills to a ready pod replica.
    spill_batch_rows: int = 256
    #: Whether the router compares the service times it has measured on both tiers for a function placed
    #: ``auto``, and sends each request where it is quicker (router.policy, "faster"). Off: placement by the
    #: model's figures and the spill-over and masking rules only.
    route_by_service_time: bool = True
    #: Whether the cluster has accelerators: ``auto`` (the local scaler: what onnxruntime offers here; the
    #: Kubernetes scaler and registered endpoints: assumed), ``yes``, or ``none`` (an edge or CPU-only
    #: cluster: everything runs on CPU).
    accelerators: Accelerators = "auto"
    # -- the pod tier ----------------------------------------------------------------------------------------
    #: Who runs the pod tier's runners: ``local`` (runner processes on this machine, started on demand),
    #: ``kubernetes`` (a runner Deployment, scaled through its scale subresource) or ``none`` (no pod tier,
    #: except functions registered with their own endpoint).
    pod_scaler: PodScaler = "local"
    #: The CPUs the local scaler pins its runner processes to, as Linux lists them (``1``, ``2-3,6``); empty:
    #: the gateway's own. On one machine this keeps runner start-ups and model loads off the CPUs that serve
    #: the Wasm tier (pin the gateway itself to the others, with ``taskset`` or the service manager).
    runner_cpus: str = ""
    #: Replicas kept up without traffic (0: scale to zero), and the most the pod tier scales to.
    pod_min_replicas: int = 0
    pod_max_replicas: int = 2
    #: In-flight requests per replica the pod tier scales for: demand / target, rounded up, replicas.
    pod_target_in_flight: int = 16
    #: Seconds of lower demand before the pod tier scales down; the last replica (to ``pod_min_replicas``) goes
    #: after the keep-alive, which is at least this.
    pod_idle_grace_s: float = 60.0
    #: The most the keep-alive stretches the wait before the last replica goes, when the tier's idle gaps show
    #: traffic coming back after pauses longer than the grace (router.pod_policy.keep_alive_s; 0: off).
    pod_keep_alive_max_s: float = 300.0
    #: Requests held while no replica is ready (scaling from zero), and how long each may wait (then 503).
    pod_max_held: int = 256
    pod_hold_timeout_s: float = 120.0
    #: A runner's deadline per request, in milliseconds: what its sandbox allows one call into a guest, in
    #: place of ``deadline_ms`` (the Wasm tier's). Large batches are what the pod tier is for, so it is sized
    #: for them; a function's own ``pod_deadline_ms`` overrides it. The local scaler's runners read it from
    #: here; a Kubernetes runner Deployment sets ``WASMGATE_RUNNER_DEADLINE_MS`` itself (deploy/).
    runner_deadline_ms: int = 60_000
    #: Forwarding: seconds to connect to a replica, and for the whole of one forwarded request. 0 (the
    #: default): ``runner_deadline_ms`` plus :data:`POD_TIMEOUT_MARGIN_S` (for a runner that loads or fetches
    #: the function first, which its deadline does not count). A value set must exceed ``runner_deadline_ms``,
    #: so that the gateway never gives up on a request its runner would still finish. A function whose
    #: ``pod_deadline_ms`` is past ``runner_deadline_ms`` is waited for that much longer.
    pod_connect_timeout_s: float = 2.0
    pod_request_timeout_s: float = 0.0
    #: Kubernetes scaler: the runner Deployment and the Service whose EndpointSlices list its ready pods,
    #: their namespace (empty: the pod's own, else ``default``), the Service port's name, and a kubeconfig
    #: path (empty: in-cluster config, else ``~/.kube/config``).
    k8s_namespace: str = ""
    k8s_deployment: str = "wasmgate-runner"
    k8s_service: str = "wasmgate-runner"
    k8s_port_name: str = "http"
    kubeconfig: str = ""
    #: Kubernetes scaler, several gateways in front of one runner Deployment: this gateway's name among them
    #: (in a pod, its pod name, from the downward API). Each gateway then records its own share of the
    #: runners on the Deployment and sets the replicas to the sum of the live shares, within
    #: ``pod_min_replicas`` and ``pod_max_replicas`` (router/scalers/shares.py). Empty: this gateway is the only
    #: one, and sets the replicas to its own figure through the scale subresource.
    k8s_gateway_id: str = ""
    #: A runner whose store lacks a function fetches it from this gateway's admin API (in Kubernetes, the
    #: gateway Service). Empty: the runner serves from its data directory only (the local scaler shares the
    #: gateway's).
    runner_source_url: str = ""
    #: Seconds a stopping process (gateway or runner, on SIGTERM) waits for in-flight requests to finish.
    drain_timeout_s: float = 30.0
    #: The sandbox's limits (deadline, memory, tensor and model sizes); defaults live in wasm_host.engine.
    sandbox: SandboxLimits = dataclasses.field(default_factory=SandboxLimits)

    def __post_init__(self) -> None:
        """Refuse choice fields outside their choices, a ``runner_cpus`` list that does not parse, and a
        ``pod_request_timeout_s`` that would give up before the runners' deadline, naming the variable, whether
        the settings came from the environment, flags or code."""
        for f in dataclasses.fields(self):
            choices = CHOICES.get(f.type) if isinstance(f.type, str) else None
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={value!r}: use one of {', '.join(choices)}")
        parse_cpus(self.runner_cpus)  # a bad list fails here, at start
        if self.pod_request_timeout_s and self.pod_request_timeout_s * 1000 <= self.runner_deadline_ms:
            raise ValueError(
                f"{ENV_PREFIX}POD_REQUEST_TIMEOUT_S={self.pod_request_timeout_s:g} gives up on forwarded requests "
                f"before the runners' deadline ({ENV_PREFIX}RUNNER_DEADLINE_MS={self.runner_deadline_ms}): raise "
                "it past that, or leave it 0 to derive it"
            )

    @property
    def pod_timeout_s(self) -> float:
        """Seconds the gateway waits for a forwarded request (``pod_request_timeout_s``, or derived from
        ``runner_deadline_ms`` when it is 0)."""
        return self.pod_request_timeout_s or self.runner_deadline_ms / 1000 + POD_TIMEOUT_MARGIN_S

    @property
    def runner_sandbox(self) -> SandboxLimits:
        """A runner's sandbox limits: the gateway's, with the runners' deadline (``runner_deadline_ms``)."""
        return dataclasses.replace(self.sandbox, deadline_ms=self.runner_deadline_ms)

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def max_blob_bytes(self) -> int:
        """The largest blob of any kind a push may upload: a module, a model or a data file."""
        return max(self.max_module_bytes, self.max_push_model_bytes, self.max_file_bytes)

    @property
    def runner_cpu_set(self) -> frozenset[int] | None:
        """The CPUs of ``runner_cpus``, or None (unset: runners run where the gateway does). Raises
        ValueError naming the variable for a list that does not parse or names a CPU this machine lacks."""
        return parse_cpus(self.runner_cpus)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``environ`` (default ``os.environ``), then ``overrides`` (CLI flags; None is skipped).

        Raises ValueError naming the variable when a value does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"data_dir": default_data_dir(env)}
        if env.get(MULTIPROC_ENV):
            values["metrics_multiproc_dir"] = env[MULTIPROC_ENV]
        sandbox: dict[str, Any] = {}
        for target, fields in ((values, cls._own_fields()), (sandbox, dataclasses.fields(SandboxLimits))):
            for f in fields:
                raw = env.get(ENV_PREFIX + f.name.upper())
                if raw is not None:
                    target[f.name] = _parse(f, raw)
        for key, value in overrides.items():
            if value is None:
                continue
            if key in SandboxLimits.__dataclass_fields__:
                sandbox[key] = value
            else:
                values[key] = value
        values["sandbox"] = SandboxLimits(**sandbox)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """Every setting as the ``WASMGATE_*`` variable that :meth:`from_env` reads back to an equal object."""
        env = {}
        for obj, fields in ((self, self._own_fields()), (self.sandbox, dataclasses.fields(SandboxLimits))):
            for f in fields:
                env[ENV_PREFIX + f.name.upper()] = str(getattr(obj, f.name))
        return env

    def runner_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a runner the local scaler starts: this process's (``environ``, default
        ``os.environ``) with every setting exported, so the runner reads the same store, sandbox limits and
        providers; without the gateway workers' shared metrics directory, since a runner keeps its own."""
        env = os.environ if environ is None else environ
        return {k: v for k, v in env.items() if k != MULTIPROC_ENV} | self.to_env()

    @classmethod
    def _own_fields(cls) -> list[dataclasses.Field[Any]]:
        return [f for f in dataclasses.fields(cls) if f.name not in ("sandbox", "metrics_multiproc_dir")]


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    """What the ``wasm`` CLI needs to reach a gateway's admin API: its URL (``WASMGATE_URL``) and its admin
    token (``WASMGATE_ADMIN_TOKEN``, the same variable the gateway reads). Flags win over both."""

    url: str = DEFAULT_URL
    admin_token: str = dataclasses.field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        env = os.environ if environ is None else environ
        return cls(env.get(ENV_PREFIX + "URL") or DEFAULT_URL, env.get(ENV_PREFIX + "ADMIN_TOKEN", ""))


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    name = ENV_PREFIX + f.name.upper()
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            value = int(raw)
            if value < 0:
                raise ValueError("must not be negative")
            return value
        if kind == "float":
            number = float(raw)
            if not number >= 0:
                raise ValueError("must be a non-negative number")
            return number
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            word = raw.strip().lower()
            if word not in BOOLEANS:
                raise ValueError("must be true or false (also 1/0, yes/no, on/off)")
            return BOOLEANS[word]
        if kind in CHOICES:
            if raw not in CHOICES[kind]:
                raise ValueError(f"use one of {', '.join(CHOICES[kind])}")
            return raw
        return raw
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r}: {exc}") from exc


def parse_cpus(raw: str) -> frozenset[int] | None:
    """A Linux CPU list (``1``, ``2-3,6``) as a set of CPU numbers; None for an empty list. Raises ValueError
    naming ``WASMGATE_RUNNER_CPUS`` for a list that does not parse or names a CPU this machine lacks."""
    if not raw.strip():
        return None
    name = f"{ENV_PREFIX}RUNNER_CPUS={raw!r}"
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"{name}: pinning processes to CPUs needs Linux")
    cpus: set[int] = set()
    try:
        for part in raw.strip().split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if low < 0 or high < low:
                raise ValueError
            cpus.update(range(low, high + 1))
    except ValueError:
        raise ValueError(f"{name}: use CPU numbers and ranges, such as 1 or 2-3,6") from None
    count = os.cpu_count() or 1
    if max(cpus) >= count:
        raise ValueError(f"{name}: this machine has CPUs 0-{count - 1}")
    return frozenset(cpus)

"""Functions as the gateway runs them: validating a push, and keeping loaded functions ready.

A push is validated completely before anything is committed: sizes, the ONNX models (onnxruntime must load
them), the module (compiled, checked against the ABI, linked, and instantiated once, which runs its
``_initialize`` and reads its ``signature``). Only then does the store commit it, so a refused push leaves the
store as it was. Compilation happens here, at push, and lands in the compile cache: no request compiles.

The registry maps a name to a :class:`LoadedFunction` (an instance pool plus the onnxruntime sessions of its
models). Each lookup compares the manifest file's stamp, so a push or delete made by another process is seen
on the next request.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Mapping
from importlib.resources import files
from typing import Any, Protocol

import httpx
import wasmtime

from gateway.auth import digest
from gateway.settings import Settings
from gateway.store import TIERS, LocalStore, Manifest, check_digest, check_name
from router.admission import Admission, AdmissionObserver
from wasm_host.engine import MiB
from wasm_host.errors import InvalidFunction, InvalidRequest, NotFound, TooLarge, Unavailable
from wasm_host.figures import ModelFigures, measure
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef, OnnxGraph
from wasm_host.pool import InstancePool, PoolSettings, Warmer
from wasm_host.tensors import Tensor, TensorSpec
from wasm_host.wasi_nn import TENSOR_TYPES

log = logging.getLogger("wasmgate.functions")

PASSTHROUGH_ALIAS = "model"
ROUTING_KEYS = ("tier", "spill", "mask_cold_start", "endpoint", "endpoint_model")
WASI_NN_DATATYPES = {t[0] for t in TENSOR_TYPES.values()}


def passthrough_module() -> bytes:
    """The built-in passthrough guest, compiled from its WebAssembly text source."""
    return bytes(wasmtime.wat2wasm(files("wasm_host").joinpath("passthrough.wat").read_text()))


class LoadedFunction:
    """A function as one worker process serves it: its pool, its admission, and the sessions it holds."""

    def __init__(
        self,
        manifest: Manifest,
        pool: InstancePool,
        graphs: list[OnnxGraph],
        stamp: tuple[int, int] | None,
        observer: AdmissionObserver | None = None,
    ) -> None:
        self.manifest = manifest
        self.pool = pool
        self.graphs = graphs  # held so the shared sessions stay loaded while the function is
        self.stamp = stamp
        self.admission = _admission(manifest, observer)
        self.observer = observer
        self.model_bytes = 0  # size of its ONNX models on disk: what the runner's memory budget counts
        self.last_used = time.monotonic()
        self.cold = True  # until the first request has been served: that request reports the cold start

    @property
    def name(self) -> str:
        return self.manifest.name

    def retune(self, manifest: Manifest, stamp: tuple[int, int] | None) -> None:
        """Apply new pool settings to the same code without reloading it."""
        if manifest.pool != self.manifest.pool:
            self.pool.settings = manifest.pool
            self.admission = _admission(manifest, self.observer)
        self.manifest = manifest
        self.stamp = stamp


class FunctionSource(Protocol):
    """Where a runner fetches a function its store lacks (``gateway.source.GatewaySource``)."""

    def fetch(self, name: str) -> Manifest: ...


class FunctionObserver(AdmissionObserver, Protocol):
    """What the registry reports as functions unload and as requests queue (the metrics implement it)."""

    def forget_pool(self, function: str) -> None: ...

    def evicted(self, function: str) -> None: ...


def _admission(manifest: Manifest, observer: AdmissionObserver | None) -> Admission:
    p = manifest.pool
    return Admission(manifest.name, p.effective_concurrency, p.max_queue, p.queue_timeout_s, observer)


class FunctionRegistry:
    """Loaded functions of this worker process, by name.

    A function is loaded on its first request after start, push or scale to zero (a cold start: compile-cache
    read, onnxruntime sessions, first instance), and unloaded by :meth:`reap` after ``idle_timeout_s`` without
    requests unless ``min_warm`` keeps instances ready. Each lookup compares the manifest's file stamp, so a
    push, delete or settings change made by another worker is seen on the next request.
    """

    def __init__(
        self,
        store: LocalStore,
        host: Host,
        settings: Settings,
        warmer: Warmer | None = None,
        observer: FunctionObserver | None = None,
        source: FunctionSource | None = None,
    ) -> None:
        self.observer = observer
        self.source = source
        self.store = store
        self.host = host
        self.settings = settings
        self.warmer = warmer
        self._loaded: dict[str, LoadedFunction] = {}
        self._manifests: dict[str, tuple[tuple[int, int], Manifest]] = {}  # name -> (file stamp, manifest)
        self._history: dict[str, float] = {}  # name -> typical call time, kept across scale to zero
        self._lock = threading.Lock()
        self._passthrough: bytes | None = None

    # -- serving -------------------------------------------------------------------------------------------
    def get(self, name: str) -> LoadedFunction:
        """The loaded function, loading it when absent and reloading it when its code changed. Blocking (a
        load reads files and creates sessions): call from a thread. Raises NotFound."""
        fn = self.get_loaded(name)
        if fn is not None:
            return fn
        with self._lock:
            fn = self.get_loaded(name)  # another thread may have loaded it while this one waited
            if fn is not None:
                return fn
            fn = self._loaded.get(name)
            stamp = self.store.stamp(name)
            try:
                manifest = self.store.get(name)
            except NotFound:
                self._unload_locked(name)
                raise
            if fn is not None and fn.manifest.code == manifest.code:
                fn.retune(manifest, stamp)
                fn.pool.refill_soon()  # e.g. min_warm was raised
                return fn
            self._unload_locked(name)
            fn = self._load(manifest, stamp)
            self._loaded[name] = fn
            self._keep_to_budget(fn)
            return fn

    def _keep_to_budget(self, keep: LoadedFunction) -> None:
        """Unload least recently used idle functions until the loaded models fit ``model_memory_budget_mb``.
        A function with requests in flight is never unloaded; when only those remain the budget is exceeded
        for a while, rather than failing requests."""
        budget = self.settings.model_memory_budget_mb * MiB
        if budget <= 0:
            return
        total = sum(fn.model_bytes for fn in self._loaded.values())
        for fn in sorted(self._loaded.values(), key=lambda f: f.last_used):
            if total <= budget:
                break
            if fn is keep or fn.admission.in_flight or fn.admission.waiting or fn.pool.busy:
                continue
            log.info("unloading %s (least recently used) to keep models within %d MiB", fn.name, budget // MiB)
            total -= fn.model_bytes
            self._unload_locked(fn.name)
            if self.observer is not None:
                self.observer.evicted(fn.name)

    def get_version(self, name: str, version: int | None) -> LoadedFunction:
        """:meth:`get`, for a runner that was sent ``version`` (None: the current one): a store that lacks
        the function or has an older version fetches it from the source first, if there is one."""
        fn = self.get_loaded(name)
        if fn is not None and (version is None or fn.manifest.version == version):
            return fn
        if self.source is not None:
            try:
                current: int | None = self.manifest(name).version
            except NotFound:
                current = None
            if current is None or (version is not None and current < version):
                self.source.fetch(name)
        return self.get(name)

    def get_loaded(self, name: str) -> LoadedFunction | None:
        """The function if it is loaded and its manifest unchanged; None when :meth:`get` has work to do.
        Cheap enough for the event loop: one stat() of the manifest."""
        fn = self._loaded.get(name)
        if fn is None:
            return None
        stamp = self.store.stamp(name)
        return fn if stamp is not None and fn.stamp == stamp else None

    def manifest(self, name: str) -> Manifest:
        """The function's current manifest without loading the function (a pod-tier function is never
        loaded in the gateway). Re-read only when the manifest file changed; costs one stat() otherwise.
        Raises NotFound, or InvalidRequest for a name that cannot exist."""
        stamp = self.store.stamp(name)
        if stamp is None:
            self._manifests.pop(name, None)
            raise NotFound(f"function {name!r} not found")
        cached = self._manifests.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        manifest = self.store.get(name)
        self._manifests[name] = (stamp, manifest)
        return manifest

    def loaded(self) -> list[LoadedFunction]:
        return list(self._loaded.values())

    def pools(self) -> list[tuple[str, InstancePool]]:
        """Each loaded function's name and pool, for the metrics."""
        return [(fn.name, fn.pool) for fn in self._loaded.values()]

    def _load(self, manifest: Manifest, stamp: tuple[int, int] | None) -> LoadedFunction:
        if manifest.kind == "external":
            raise Unavailable(f"{manifest.name!r} is served by its registered endpoint only; it has no code to run")
        self.store.check_blobs(manifest)
        refs = {alias: ModelRef(d, self.store.blob_path(d)) for alias, d in manifest.models.items()}
        graphs = [self.host.backend.load_ref(ref) for ref in refs.values()]
        image = self.host.prepare(self.store.read_blob(manifest.module), manifest.module, refs)
        pool = InstancePool(image, manifest.pool, self.warmer)
        # A function coming back from zero keeps its call-time history (one number), so a quick function's
        # first request runs where its earlier requests ran instead of paying a thread hop.
        pool.typical_ms = self._history.get(manifest.name)
        fn = LoadedFunction(manifest, pool, graphs, stamp, self.observer)
        fn.model_bytes = sum(ref.path.stat().st_size for ref in refs.values())
        pool.refill_soon()
        return fn

    def forget(self, name: str) -> None:
        with self._lock:
            self._unload_locked(name)

    def _unload_locked(self, name: str) -> None:
        fn = self._loaded.pop(name, None)
        if fn is not None:
            if fn.pool.typical_ms is not None:
                self._history[name] = fn.pool.typical_ms
            fn.pool.close()
            if self.observer is not None:
                self.observer.forget_pool(name)

    def reap(self, now: float | None = None) -> list[str]:
        """Scale idle functions down: to ``min_warm`` ready instances, or, with ``min_warm`` 0, unload them
        entirely (instances and onnxruntime sessions; the compile cache and the store stay). Returns the names
        unloaded."""
        now = time.monotonic() if now is None else now
        unloaded = []
        with self._lock:
            for name, fn in list(self._loaded.items()):
                idle = now - fn.last_used
                if fn.admission.in_flight or fn.admission.waiting or fn.pool.busy:
                    continue
                if idle < fn.manifest.pool.idle_timeout_s:
                    continue
                if fn.manifest.pool.min_warm == 0:
                    self._unload_locked(name)
                    unloaded.append(name)
                else:
                    fn.pool.shrink(fn.manifest.pool.min_warm)
        if unloaded:
            gc.collect()  # instances and sessions can sit in reference cycles; release their memory now
        return unloaded

    def prewarm(self) -> None:
        """Load every function with ``min_warm`` > 0, so its instances are ready before its first request."""
        for manifest in self.store.manifests():
            if manifest.pool.min_warm > 0:
                try:
                    self.get(manifest.name)
                except Exception as exc:  # a function that fails to load reports it on its own requests
                    log.warning("prewarming %s failed: %s", manifest.name, exc)

    # -- pushing -------------------------------------------------------------------------------------------
    def push(
        self,
        name: str,
        module: str | None,
        models: Mapping[str, str],
        pool: Mapping[str, Any] | None = None,
        routing: Mapping[str, Any] | None = None,
        token: str | None = None,
    ) -> Manifest:
        """Validate and commit a function. ``module`` and ``models`` are digests of uploaded blobs;
        ``module=None`` pushes a bare ONNX model behind the built-in passthrough guest. ``pool`` settings
        apply over the function's current ones (or the defaults), so a re-push keeps its scaling.

        ``routing`` may hold ``tier`` (``auto``, ``wasm`` or ``pod``), ``spill`` and ``mask_cold_start``
        (booleans), which a re-push keeps unless it names them, and ``endpoint`` (an existing OIP v2 server
        that serves the function's pod tier) with ``endpoint_model``. With an endpoint and neither module nor
        models the function is served by that server alone (kind ``external``).

        ``token``, when given, becomes the function's own inference token (kept as its sha256; ``""`` removes
        it); otherwise a re-push keeps the function's token."""
        routing = dict(routing or {})
        unknown = set(routing) - set(ROUTING_KEYS)
        if unknown:
            raise InvalidRequest(f"unknown routing settings {sorted(unknown)}; known: {', '.join(ROUTING_KEYS)}")
        self.store.refresh(check_name(name), self.validate)
        try:
            previous: Manifest | None = self.store.get(check_name(name))
        except NotFound:
            previous = None
        settings = self._pool_settings(pool or {}, previous.pool if previous else PoolSettings())
        endpoint = check_endpoint(routing.get("endpoint"))
        endpoint_model = routing.get("endpoint_model")
        if endpoint_model is not None:
            check_name(endpoint_model)
        tier = routing.get("tier", previous.tier if previous else "auto")
        if tier not in TIERS:
            raise InvalidRequest(f"tier {tier!r} is not one of {', '.join(TIERS)}")
        spill, mask_cold_start = (self._flag(routing, key, previous) for key in ("spill", "mask_cold_start"))
        if module is None and not models:
            if endpoint is None:
                raise InvalidFunction("a push needs a module, a model, or an endpoint that serves the function")
            if tier == "wasm":
                raise InvalidFunction("a function served by an endpoint alone runs on the pod tier, not 'wasm'")
            manifest = Manifest(check_name(name), 0, "external", "", {}, None, None)
        else:
            manifest = self.validate(name, module, models)
        manifest = dataclasses.replace(
            manifest,
            pool=settings,
            tier=tier,
            endpoint=endpoint,
            endpoint_model=endpoint_model,
            spill=spill,
            mask_cold_start=mask_cold_start,
            token_sha256=(previous.token_sha256 if previous else "") if token is None else token and digest(token),
        )
        return self._commit(manifest)

    def _commit(self, manifest: Manifest) -> Manifest:
        """Commit a new version, and drop what this process holds of the old one."""
        committed = self.store.commit(manifest, self.settings.max_functions)
        self.forget(manifest.name)
        self._history.pop(manifest.name, None)  # new code: its speed is unknown again
        return committed

    def rollback(self, name: str, to: int | None = None) -> Manifest:
        """Make an earlier version current again, as a new version (versions only ever grow, so a runner that
        caches by version never serves a stale one). ``to`` defaults to the version before the current one.
        The code is the version's own; pool and routing settings are too. Raises NotFound, InvalidRequest."""
        self.store.refresh(check_name(name), self.validate)
        current = self.store.get(name)
        target = current.version - 1 if to is None else to
        if target < 1 or target >= current.version:
            raise InvalidRequest(
                f"{name!r} is at version {current.version}: roll back to an earlier version (1 to "
                f"{current.version - 1})"
                if current.version > 1
                else f"{name!r} has no earlier version"
            )
        return self._commit(self.store.get_version(name, target))

    @staticmethod
    def _flag(routing: Mapping[str, Any], key: str, previous: Manifest | None) -> bool:
        value = routing.get(key, getattr(previous, key) if previous is not None else True)
        if not isinstance(value, bool):
            raise InvalidRequest(f"{key!r} must be true or false")
        return value

    def set_pool(self, name: str, pool: Mapping[str, Any]) -> Manifest:
        """Change a function's pool settings; every worker applies them on its next request."""
        self.store.refresh(check_name(name), self.validate)
        current = self.store.get(name)
        return self.store.set_pool(name, self._pool_settings(pool, current.pool))

    @staticmethod
    def _pool_settings(doc: Mapping[str, Any], base: PoolSettings) -> PoolSettings:
        try:
            return PoolSettings.from_json(doc, base)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"invalid pool settings: {exc}") from None

    def validate(self, name: str, module: str | None, models: Mapping[str, str]) -> Manifest:
        check_name(name)
        if not isinstance(models, Mapping) or not all(
            isinstance(a, str) and isinstance(d, str) for a, d in models.items()
        ):
            raise InvalidFunction("'models' must map aliases to digests")
        digests = {check_name(alias): check_digest(d) for alias, d in models.items()}
        checked = {alias: self._check_model(alias, d) for alias, d in digests.items()}
        graphs = {alias: graph for alias, (graph, _) in checked.items()}
        figures = sum((f for _, f in checked.values()), ModelFigures())
        if module is None:
            if len(graphs) != 1:
                raise InvalidFunction("a push without a module takes exactly one ONNX model")
            (graph,) = graphs.values()
            inputs, outputs = passthrough_signature(graph)
            wasm = self._passthrough_bytes()
            module_digest = self.store.stage(wasm)
            digests = {PASSTHROUGH_ALIAS: graph.digest}
            self.host.prepare(wasm, module_digest, {})
            return Manifest(name, 0, "passthrough", module_digest, digests, inputs, outputs, figures=figures)
        module_digest = check_digest(module)
        wasm = self.store.read_staged(module_digest)
        if len(wasm) > self.settings.max_module_bytes:
            raise TooLarge(
                f"module of {len(wasm)} bytes exceeds {self.settings.max_module_bytes} (setting max_module_bytes)"
            )
        refs = {alias: ModelRef(d, self.store.upload_path(d)) for alias, d in digests.items()}
        image = self.host.prepare(wasm, module_digest, refs)
        try:
            instance = image.instantiate()
        except Exception as exc:
            raise InvalidFunction(f"the function failed to start: {exc}") from exc
        signature = instance.signature()
        if signature is None:
            return Manifest(name, 0, "custom", module_digest, digests, None, None, figures=figures)
        return Manifest(name, 0, "custom", module_digest, digests, *signature, figures=figures)

    def _check_model(self, alias: str, digest: str) -> tuple[OnnxGraph, ModelFigures]:
        """The model loaded in onnxruntime (so it runs), and its figures (so the router can place it)."""
        data = self.store.read_staged(digest)
        limit = self.settings.max_push_model_bytes
        if len(data) > limit:
            raise TooLarge(f"model {alias!r} of {len(data)} bytes exceeds {limit} (setting max_push_model_bytes)")
        try:
            graph = self.host.backend.load(data, digest)
        except InvalidFunction as exc:
            raise InvalidFunction(f"model {alias!r}: {exc}") from exc
        try:
            return graph, measure(data)
        except ValueError as exc:
            raise InvalidFunction(f"model {alias!r}: {exc}") from exc

    def _passthrough_bytes(self) -> bytes:
        if self._passthrough is None:
            self._passthrough = passthrough_module()
        return self._passthrough


def check_endpoint(url: str | None) -> str | None:
    """An endpoint URL as stored: ``http(s)://host[:port][/prefix]`` without a trailing slash."""
    if url is None:
        return None
    usable = isinstance(url, str) and url.isprintable() and " " not in url
    try:  # parsed as the forwarder will: a URL stored here must never fail at request time
        parsed = httpx.URL(url) if usable else None
        usable = parsed is not None and parsed.scheme in ("http", "https") and bool(parsed.host)
        usable = usable and parsed is not None and not parsed.query and (parsed.port is None or parsed.port > 0)
    except (httpx.InvalidURL, ValueError, TypeError):
        usable = False
    if not usable:
        shown = str(url)[:100]
        raise InvalidRequest(f"endpoint {shown!r} must be an http:// or https:// base URL, e.g. http://triton:8000")
    return url.rstrip("/")


def passthrough_signature(graph: OnnxGraph) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The signature of a bare model served through WASI-NN; refuses what WASI-NN cannot carry."""
    problems = []
    for kind, ios in (("input", graph.inputs), ("output", graph.outputs)):
        for io in ios:
            if io.datatype not in WASI_NN_DATATYPES:
                hint = (
                    " (for a scikit-learn classifier, convert with options={'zipmap': False})"
                    if (io.onnx_type.startswith("seq"))
                    else ""
                )
                problems.append(f"{kind} {io.name!r} is {io.onnx_type}{hint}")
    if problems:
        raise InvalidFunction(
            "WASI-NN carries only tensors of float16, float, double, uint8, int32 and int64: " + "; ".join(problems)
        )
    return [io.spec() for io in graph.inputs], [io.spec() for io in graph.outputs]


def bind_inputs(name: str, declared: list[TensorSpec] | None, inputs: list[Tensor]) -> list[Tensor]:
    """Check a request's inputs against the function's declared inputs and put them in declared order.
    A function that declares nothing gets the inputs as sent."""
    if declared is None:
        return inputs
    by_name = {t.name: t for t in inputs}
    wanted = [s.name for s in declared]
    missing = [n for n in wanted if n not in by_name]
    extra = [n for n in by_name if n not in wanted]
    if missing or extra:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        raise InvalidRequest(f"{name!r} takes inputs {wanted}: {', '.join(parts)}")
    ordered = []
    for spec in declared:
        t = by_name[spec.name]
        if t.datatype != spec.datatype:
            raise InvalidRequest(f"input {t.name!r} of {name!r} takes {spec.datatype}, got {t.datatype}")
        if not spec.matches(t.shape):
            raise InvalidRequest(
                f"input {t.name!r} of {name!r} takes shape {list(spec.shape)} (-1: any size), got {list(t.shape)}"
            )
        ordered.append(t)
    return ordered

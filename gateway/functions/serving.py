"""Functions as one process serves them: loaded on demand, kept ready, scaled down when idle.

The registry maps a name to a :class:`LoadedFunction` (an instance pool plus the onnxruntime sessions of its
models). Each lookup compares the manifest file's stamp, so a push or delete made by another process is seen
on the next request.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from gateway.settings import Settings
from gateway.store.local import LocalStore
from gateway.store.manifest import Manifest
from router.admission import Admission, AdmissionObserver
from wasm_host.engine import MiB
from wasm_host.errors import NotFound, Unavailable
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef, OnnxGraph
from wasm_host.pool import InstancePool, Warmer
from wasm_host.tensors import TensorSpec

log = logging.getLogger("wasmgate.functions")


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

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def inputs(self) -> list[TensorSpec] | None:
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec] | None:
        return self.manifest.outputs

    def retune(self, manifest: Manifest, stamp: tuple[int, int] | None) -> None:
        """Apply new pool settings to the same code without reloading it."""
        if manifest.pool != self.manifest.pool:
            self.pool.settings = manifest.pool
            self.admission = _admission(manifest, self.observer)
        self.manifest = manifest
        self.stamp = stamp


class FunctionSource(Protocol):
    """Where a runner fetches a function its store lacks (``gateway.store.source.GatewaySource``)."""

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

    def current(self, name: str) -> tuple[Manifest, LoadedFunction | None]:
        """The function's current manifest, and the function itself if it is loaded (:meth:`get_loaded`): what
        an inference handler looks up, once per request, without loading anything. Raises as :meth:`manifest`."""
        fn = self.get_loaded(name)  # one stat() on the hot path of a loaded function
        return (fn.manifest, fn) if fn is not None else (self.manifest(name), None)

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
        files = self.store.files_dir(manifest)  # the directory its guests read their files from, if any
        image = self.host.prepare(self.store.read_blob(manifest.module), manifest.module, refs, files)
        pool = InstancePool(image, manifest.pool, self.warmer)
        # A function coming back from zero keeps its call-time history (one number), so a quick function's
        # first request runs where its earlier requests ran instead of paying a thread hop.
        pool.typical_ms = self._history.get(manifest.name)
        fn = LoadedFunction(manifest, pool, graphs, stamp, self.observer)
        fn.model_bytes = sum(ref.path.stat().st_size for ref in refs.values())
        pool.refill_soon()
        return fn

    def forget(self, name: str, new_code: bool = False) -> None:
        """Unload the function; with ``new_code`` (a push committed another version) also forget its call-time
        history, since the new code's speed is unknown."""
        with self._lock:
            self._unload_locked(name)
            if new_code:
                self._history.pop(name, None)

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

    def prewarm(self, pod_tier: bool = False, named: Sequence[str] = ()) -> None:
        """Load every function with ``min_warm`` > 0, so its instances are ready before its first request.

        With ``pod_tier`` (a runner starting) also every function pinned to the pod tier (``tier`` pod, with
        code to run): a runner is started because requests for such functions are held at the gateway, so it
        loads them before it reports ready rather than on the first forwarded request. ``named`` functions
        (those whose held requests a runner was started for, whatever their tier) load too, last and in
        reverse order, so that under the memory budget (``model_memory_budget_mb``, least recently used out
        first) the first named is the last to go. A name not in the store is logged and skipped."""
        manifests = {m.name: m for m in self.store.manifests()}
        wanted = list(dict.fromkeys(named))
        for manifest in manifests.values():
            pinned = pod_tier and manifest.tier == "pod" and manifest.kind != "external"
            if manifest.name in wanted or not (manifest.pool.min_warm > 0 or pinned):
                continue
            if self.warm(manifest.name) and pinned:
                log.info("preloaded %s for the pod tier", manifest.name)
        for name in reversed(wanted):
            held = manifests.get(name)
            if held is None or held.kind == "external":
                log.warning("not preloading %s: it is not a function this process can serve", name)
            elif self.warm(name):
                log.info("preloaded %s for its held requests", name)

    def warm(self, name: str) -> bool:
        """Load the function now (blocking), with its first instances made, so that its next request is
        served warm. Returns whether it loaded; a failure is logged, not raised (a function that fails to
        load reports it on its own requests)."""
        try:
            fn = self.get(name)
            fn.pool.refill()  # its min_warm instances, here rather than on the warmer thread
            fn.cold = False  # its first request finds it loaded: that is no cold start
        except Exception as exc:
            log.warning("prewarming %s failed: %s", name, exc)
            return False
        return True

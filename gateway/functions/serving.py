"""Functions as one process serves them: loaded on demand, kept ready, scaled down when idle.

The registry maps a name to a :class:`LoadedFunction` (an instance pool plus the onnxruntime sessions of its
models). Each lookup reads the store's generation (gateway.store.generation, shared memory, no system call) and
looks at the manifest file's stamp only when it moved, so a push or delete made by another process is seen on
the next request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.settings import Settings
from gateway.store.local import LocalStore
from gateway.store.manifest import Manifest
from router.admission import Admission, AdmissionObserver
from router.inline import Placement
from wasm_host import heap
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
        self._take(manifest)
        self.pool = pool
        self.graphs = graphs  # held so the shared sessions stay loaded while the function is
        self.stamp = stamp
        self.checked = -1  # the store's generation when ``stamp`` was last found current (-1: never)
        self.admission = _admission(manifest, observer)
        self.observer = observer
        self.model_bytes = 0  # size of its ONNX models on disk: what the model memory budget counts
        self.last_used = time.monotonic()
        self.cold = True  # until the first request has been served: that request reports the cold start
        self.placement: Placement | None = None  # where its next call runs, kept by the Wasm tier (router.inline)

    def _take(self, manifest: Manifest) -> None:
        """Serve ``manifest``: its name, version and signature copied to plain attributes, which every request
        reads (a property each would cost a call)."""
        self.manifest = manifest
        self.name: str = manifest.name
        self.version: int = manifest.version
        self.inputs: list[TensorSpec] | None = manifest.inputs
        self.outputs: list[TensorSpec] | None = manifest.outputs

    def retune(self, manifest: Manifest, stamp: tuple[int, int] | None) -> None:
        """Apply new pool settings to the same code without reloading it."""
        if manifest.pool != self.manifest.pool:
            self.pool.settings = manifest.pool
            self.admission = _admission(manifest, self.observer)
        self._take(manifest)
        self.stamp = stamp


class FunctionSource(Protocol):
    """Where a runner fetches a function its store lacks (``gateway.store.source.GatewaySource``)."""

    def fetch(self, name: str) -> Manifest: ...


class FunctionObserver(AdmissionObserver, Protocol):
    """What the registry reports as functions unload and as requests queue (the metrics implement it)."""

    def forget_pool(self, function: str) -> None: ...

    def evicted(self, function: str) -> None: ...

    def models_loaded(self, size: int) -> None: ...


def _admission(manifest: Manifest, observer: AdmissionObserver | None) -> Admission:
    p = manifest.pool
    return Admission(manifest.name, p.effective_concurrency, p.max_queue, p.queue_timeout_s, observer)


class FunctionRegistry:
    """Loaded functions of this worker process, by name.

    A function is loaded on its first request after start, push or scale to zero (a cold start: compile-cache
    read, onnxruntime sessions, first instance), and unloaded by :meth:`reap` after ``idle_timeout_s`` without
    requests unless ``min_warm`` keeps instances ready. Each lookup compares the manifest's file stamp, so a
    push, delete or settings change made by another worker is seen on the next request.

    Memory: the models of the loaded functions are kept within ``memory_budget_mb`` (counted as their ONNX
    files' bytes; 0: no budget) by unloading least recently used idle functions before a load would pass it.
    Whatever is unloaded (by the budget, the reaper, or a new version) has its memory given back to the OS
    (:func:`wasm_host.heap.release`).

    ``at_home`` says whether this process is where a function lives (the gateway: its home tier is the Wasm
    tier; None: every function, as in a runner). A function that is not at home was loaded only because a
    request was run here anyway (masking its pod tier's cold start, or a fallback): the reaper unloads it after
    ``lent_idle_s`` without a request here (or its own idle timeout, if shorter), whatever its ``min_warm``,
    so that it does not stay loaded while its requests go to the pods; :meth:`prewarm` does not load it.
    """

    def __init__(
        self,
        store: LocalStore,
        host: Host,
        settings: Settings,
        warmer: Warmer | None = None,
        observer: FunctionObserver | None = None,
        source: FunctionSource | None = None,
        memory_budget_mb: int = 0,
        at_home: Callable[[Manifest], bool] | None = None,
        lent_idle_s: float = 5.0,
    ) -> None:
        self.observer = observer
        self.memory_budget = memory_budget_mb * MiB
        self.at_home = at_home
        self.lent_idle_s = lent_idle_s
        self.source = source
        self.store = store
        self.host = host
        self.settings = settings
        self.warmer = warmer
        self._loaded: dict[str, LoadedFunction] = {}
        # name -> (the store's generation when last checked, file stamp, manifest)
        self._manifests: dict[str, tuple[int, tuple[int, int], Manifest]] = {}
        self._history: dict[str, float] = {}  # name -> typical call time, kept across scale to zero
        self._manifests_seen = store.manifests_stamp()  # what prewarm_changed compares with
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
            unloaded = self._unload_locked(name)
            unloaded += self._make_room(self._models_size(manifest))
            if unloaded:
                heap.release()  # before the load: its memory may then reuse what the unloaded ones held
            fn = self._load(manifest, stamp)
            self._loaded[name] = fn
            self._report_size()
            return fn

    def _models_size(self, manifest: Manifest) -> int:
        """What the budget counts for ``manifest``: its ONNX files' bytes (a proxy: a session holds about its
        weights, plus the activations of the runs in flight, which no file size tells)."""
        size = 0
        for d in manifest.models.values():
            with contextlib.suppress(OSError):  # a missing blob fails the load itself, with its own message
                size += self.store.blob_path(d).stat().st_size
        return size

    def _make_room(self, incoming: int) -> int:
        """Unload least recently used idle functions until the loaded models and ``incoming`` bytes fit the
        budget. A function with requests in flight is never unloaded; when only those remain the budget is
        exceeded for a while, rather than failing requests. Returns how many were unloaded."""
        budget = self.memory_budget
        if budget <= 0:
            return 0
        total = incoming + sum(fn.model_bytes for fn in self._loaded.values())
        unloaded = 0
        for fn in sorted(self._loaded.values(), key=lambda f: f.last_used):
            if total <= budget:
                break
            if fn.admission.in_flight or fn.admission.waiting or fn.pool.busy:
                continue
            log.info("unloading %s (least recently used) to keep models within %d MiB", fn.name, budget // MiB)
            total -= fn.model_bytes
            unloaded += self._unload_locked(fn.name)
            if self.observer is not None:
                self.observer.evicted(fn.name)
        return unloaded

    def _report_size(self) -> None:
        if self.observer is not None:
            self.observer.models_loaded(sum(fn.model_bytes for fn in self._loaded.values()))

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
        Cheap enough for the event loop: one read of the store's generation; one stat() of the manifest when the
        generation moved since this function was last checked."""
        fn = self._loaded.get(name)
        if fn is None:
            return None
        # Read before the stat: a change committed after this read bumps past it, so it is looked at next time.
        generation = self.store.generation.read()
        if fn.checked == generation:
            return fn
        stamp = self.store.stamp(name)
        if stamp is None or fn.stamp != stamp:
            return None
        fn.checked = generation
        return fn

    def current(self, name: str) -> tuple[Manifest, LoadedFunction | None]:
        """The function's current manifest, and the function itself if it is loaded (:meth:`get_loaded`): what
        an inference handler looks up, once per request, without loading anything. Raises as :meth:`manifest`."""
        fn = self.get_loaded(name)  # no system call on the hot path of a loaded function
        return (fn.manifest, fn) if fn is not None else (self.manifest(name), None)

    def manifest(self, name: str) -> Manifest:
        """The function's current manifest without loading the function (a pod-tier function is never
        loaded in the gateway). Re-read only when the manifest file changed; costs one read of the store's
        generation when it did not move, and one stat() when it did. Raises NotFound, or InvalidRequest for a name
        that cannot exist."""
        generation = self.store.generation.read()  # before the stat, as in get_loaded
        cached = self._manifests.get(name)
        if cached is not None and cached[0] == generation:
            return cached[2]
        stamp = self.store.stamp(name)
        if stamp is None:
            self._manifests.pop(name, None)
            raise NotFound(f"function {name!r} not found")
        manifest = cached[2] if cached is not None and cached[1] == stamp else self.store.get(name)
        self._manifests[name] = (generation, stamp, manifest)
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
        self.unload(name)
        if new_code:
            with self._lock:
                self._history.pop(name, None)

    def unload(self, name: str) -> bool:
        """Scale the function to zero in this process now, as the reaper does once it is idle: its instances
        and sessions go and their memory goes back to the OS; the store and the compile cache stay, and its next
        request loads it again. Requests already running keep the instances they hold. Returns whether it was
        loaded."""
        with self._lock:
            unloaded = self._unload_locked(name)
            self._report_size()
        if unloaded:
            heap.release()
        return bool(unloaded)

    def _unload_locked(self, name: str) -> int:
        """Unload ``name`` if loaded: 1 if it was, else 0. The caller gives the memory back."""
        fn = self._loaded.pop(name, None)
        if fn is None:
            return 0
        if fn.pool.typical_ms is not None:
            self._history[name] = fn.pool.typical_ms
        fn.pool.close()
        if self.observer is not None:
            self.observer.forget_pool(name)
        return 1

    def reap(self, now: float | None = None) -> list[str]:
        """Scale idle functions down: to ``min_warm`` ready instances, or, with ``min_warm`` 0, unload them
        entirely (instances and onnxruntime sessions, their memory given back to the OS; the compile cache and
        the store stay). A function not at home here goes after ``lent_idle_s`` (see the class docstring).
        Returns the names unloaded.

        It first follows each loaded function's manifest (one stat() each when nothing changed), so pool
        settings changed through any worker apply here without waiting for a request: a lowered
        ``idle_timeout_s`` unloads an idle function in this same pass, a raised ``min_warm`` fills its pool.
        A function deleted or pushed anew meanwhile is unloaded once idle (its next request loads the new
        code)."""
        now = time.monotonic() if now is None else now
        unloaded = []
        stale = False
        with self._lock:
            for name, fn in list(self._loaded.items()):
                idle = now - fn.last_used
                if fn.admission.in_flight or fn.admission.waiting or fn.pool.busy:
                    continue
                if not self._follow_locked(fn):
                    self._unload_locked(name)  # stale, not scaled to zero: not among the names returned
                    stale = True
                    continue
                timeout, min_warm = fn.manifest.pool.idle_timeout_s, fn.manifest.pool.min_warm
                if not self.lives_here(fn.manifest):
                    timeout, min_warm = min(timeout, self.lent_idle_s), 0
                if idle < timeout:
                    continue
                if min_warm == 0:
                    self._unload_locked(name)
                    unloaded.append(name)
                else:
                    fn.pool.shrink(min_warm)
            if unloaded or stale:
                self._report_size()
        if unloaded or stale:
            heap.release()
        return unloaded

    def _follow_locked(self, fn: LoadedFunction) -> bool:
        """Apply ``fn``'s current manifest if it changed: new pool settings in place (same code). False when
        the function is gone or its code changed: this copy is stale."""
        stamp = self.store.stamp(fn.name)
        if stamp is not None and stamp == fn.stamp:
            return True
        try:
            manifest = self.store.get(fn.name)
        except NotFound:
            return False
        if manifest.code != fn.manifest.code:
            return False
        fn.retune(manifest, stamp)
        fn.pool.refill_soon()  # e.g. min_warm was raised
        return True

    def prewarm_changed(self) -> None:
        """:meth:`prewarm` again when the store's manifests changed since the last look (one stat() of the
        store otherwise): a function not loaded here whose ``min_warm`` was raised, through any worker, is
        loaded and filled now rather than at its first request."""
        stamp = self.store.manifests_stamp()
        if stamp != self._manifests_seen:
            self._manifests_seen = stamp
            self.prewarm(only_absent=True)

    def prewarm(self, pod_tier: bool = False, named: Sequence[str] = (), only_absent: bool = False) -> None:
        """Load every function at home here with ``min_warm`` > 0 (``only_absent``: those not loaded here), so
        its instances are ready before its first request.

        With ``pod_tier`` (a runner starting) also every function pinned to the pod tier (``tier`` pod, with
        code to run): a runner is started because requests for such functions are held at the gateway, so it
        loads them before it reports ready rather than on the first forwarded request. ``named`` functions
        (those whose held requests a runner was started for, whatever their tier) load too, last and in
        reverse order, so that under the memory budget (``model_memory_budget_mb``, least recently used out
        first) the first named is the last to go. A name not in the store is logged and skipped."""
        manifests = {m.name: m for m in self.store.manifests()}
        wanted = list(dict.fromkeys(named))
        for manifest in manifests.values():
            if only_absent and manifest.name in self._loaded:
                continue
            pinned = pod_tier and manifest.tier == "pod" and manifest.kind != "external"
            if manifest.name in wanted or not ((manifest.pool.min_warm > 0 and self.lives_here(manifest)) or pinned):
                continue
            if self.warm(manifest.name) and pinned:
                log.info("preloaded %s for the pod tier", manifest.name)
        for name in reversed(wanted):
            held = manifests.get(name)
            if held is None or held.kind == "external":
                log.warning("not preloading %s: it is not a function this process can serve", name)
            elif self.warm(name):
                log.info("preloaded %s for its held requests", name)

    def lives_here(self, manifest: Manifest) -> bool:
        """Whether ``manifest``'s function lives in this process (``at_home``; a runner: every function), so
        that keeping its instances ready here is worth the memory."""
        return self.at_home is None or self.at_home(manifest)

    def warm(self, name: str) -> bool:
        """Load the function now (blocking), with its first instances made, so that its next request is
        served warm. Returns whether it loaded; a failure is logged, not raised (a function that fails to
        load reports it on its own requests)."""
        try:
            self.load(name)
        except Exception as exc:
            log.warning("prewarming %s failed: %s", name, exc)
            return False
        return True

    def load(self, name: str) -> LoadedFunction:
        """:meth:`warm`, raising what stopped the load (NotFound, Unavailable for a function with no code to run,
        or the load's own failure)."""
        fn = self.get(name)
        fn.pool.refill()  # its min_warm instances, here rather than on the warmer thread
        fn.cold = False  # its first request finds it loaded: that is no cold start
        return fn

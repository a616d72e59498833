"""Pushing functions: validating what is pushed, committing it as a new version, and rolling back.

A push is validated completely before anything is committed: sizes, the ONNX models (types WASI-NN can carry,
read from the graph: every input, and a bare model's outputs; then onnxruntime must load them), the data files
(their aliases and the file limits), the module (compiled, checked against the ABI, linked, and instantiated
once with its files in place, which runs its ``_initialize`` and reads its
``signature``). Only then does the store commit it, so a refused push leaves the store as it was. Compilation
happens here, at push, and lands in the compile cache: no request compiles.

The admin API, the registry sync (which completes what it fetches the way a push would) and ``wasm push
--registry`` all validate through :class:`Publisher`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.auth import digest
from gateway.settings import Settings
from gateway.store.files import FileLimits
from gateway.store.local import LocalStore
from gateway.store.manifest import TIERS, Manifest, check_digest, check_name
from gateway.wiring import thresholds
from router.policy import fits_sandbox
from wasm_host import heap
from wasm_host.errors import GuestFailure, InvalidFunction, InvalidRequest, NotFound, TooLarge
from wasm_host.figures import ModelFigures, measure, si
from wasm_host.host import Host
from wasm_host.model_types import check_carried, graph_edges, parse_model
from wasm_host.onnx_backend import ModelRef, OnnxGraph
from wasm_host.passthrough import PASSTHROUGH_ALIAS, passthrough_module, passthrough_signature
from wasm_host.pool import PoolSettings

#: The routing settings a push may carry (and a re-push keeps unless it names them).
ROUTING_KEYS = ("tier", "spill", "mask_cold_start", "endpoint", "endpoint_model")


class LoadedFunctions(Protocol):
    """What this process holds of functions (``gateway.functions.serving.FunctionRegistry``)."""

    def forget(self, name: str, new_code: bool = False) -> None: ...

    def warm(self, name: str) -> bool: ...

    def lives_here(self, manifest: Manifest) -> bool: ...


class Publisher:
    """Validates and commits pushes, pool changes, rollbacks and deletions to ``store``. ``loaded``, when given, drops
    what this process holds of a function's old version once a new one is committed."""

    def __init__(
        self, store: LocalStore, host: Host, settings: Settings, loaded: LoadedFunctions | None = None
    ) -> None:
        self.store = store
        self.host = host
        self.settings = settings
        self.loaded = loaded
        self._passthrough: bytes | None = None

    def push(
        self,
        name: str,
        module: str | None,
        models: Mapping[str, str],
        pool: Mapping[str, Any] | None = None,
        routing: Mapping[str, Any] | None = None,
        token: str | None = None,
        files: Mapping[str, str] | None = None,
    ) -> Manifest:
        """Validate and commit a function. ``module``, ``models`` and ``files`` are digests of uploaded blobs,
        the last two by alias; ``module=None`` pushes a bare ONNX model behind the built-in passthrough guest.
        The code (module, models, files) is the push's alone: a re-push without models or files has none.
        ``pool`` settings apply over the function's current ones (or the defaults), so a re-push keeps its
        scaling.

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
        files = {} if files is None else files
        if module is None and not models:
            if endpoint is None:
                raise InvalidFunction("a push needs a module, a model, or an endpoint that serves the function")
            if tier == "wasm":
                raise InvalidFunction("a function served by an endpoint alone runs on the pod tier, not 'wasm'")
            if files:
                raise InvalidFunction("a function served by an endpoint alone has no code to read files")
            manifest = Manifest(check_name(name), 0, "external", "", {}, None, None)
        else:
            manifest = self.validate(name, module, models, files)
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
        self._check_pinned(manifest)
        return self._commit(manifest)

    def _check_pinned(self, manifest: Manifest) -> None:
        """Refuse a tier the function could not be served on, rather than serve it elsewhere (router.policy,
        "Pinned means pinned"): ``wasm`` for a model past the sandbox's fit at its smallest shape (every
        dynamic dimension at 1), ``pod`` with no pod tier. A re-push that keeps its pinned tier is held to it."""
        if manifest.tier == "wasm":
            t = thresholds(self.settings)
            figures = manifest.figures
            if not fits_sandbox(figures, t, figures.flops_per_row):
                if figures.bytes > t.fit_bytes:
                    figure = (
                        f"its models' {si(figures.bytes, 'B')} are past {si(t.fit_bytes, 'B')} (setting wasm_fit_bytes)"
                    )
                else:
                    figure = (
                        f"its models cost {si(figures.flops_per_row)} FLOPs per row at their smallest shape, past "
                        f"{si(t.fit_flops_per_row)} (setting wasm_fit_flops_per_row)"
                    )
                raise InvalidRequest(
                    f"{manifest.name!r} cannot be pinned to the wasm tier: {figure}; push it with tier auto or "
                    "pod, or raise the setting"
                )
        if manifest.tier == "pod" and self.settings.pod_scaler == "none" and manifest.endpoint is None:
            raise InvalidRequest(
                f"{manifest.name!r} cannot be pinned to the pod tier: this gateway has none (setting pod_scaler "
                "is 'none') and the push names no endpoint; push it with tier auto or wasm, set pod_scaler, or "
                "give an endpoint"
            )

    def _commit(self, manifest: Manifest) -> Manifest:
        """Commit a new version, and drop what this process holds of the old one."""
        committed = self.store.commit(manifest, self.settings.max_functions)
        if self.loaded is not None:
            self.loaded.forget(manifest.name, new_code=True)
            # A function asked to keep instances ready has them when its push returns, not at its first
            # request (what start-up does for every such function, see FunctionRegistry.prewarm).
            if committed.pool.min_warm > 0 and self.loaded.lives_here(committed):
                self.loaded.warm(committed.name)
        return committed

    def delete(self, name: str) -> Manifest:
        """Remove the function, its history included, and what this process holds of it. The blobs stay
        (other functions may share them), but the saved optimized graphs of its models go when no function's
        current version uses those models any more: they are as large as the models, and a rollback or a push
        that needs one again writes it at its first load. Raises NotFound."""
        manifest = self.store.delete(name)
        if self.loaded is not None:
            self.loaded.forget(manifest.name)
        in_use = {model for other in self.store.manifests() for model in other.models.values()}
        for model in sorted(set(manifest.models.values()) - in_use):
            self.host.backend.drop_optimized(model)
        return manifest

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

    def validate(self, name: str, module: str | None, models: Mapping[str, str], files: Mapping[str, str]) -> Manifest:
        """The manifest a push of this code would commit (without its version and settings), or the reason
        it cannot be pushed: InvalidFunction, InvalidRequest, TooLarge naming the setting.

        Leaves nothing loaded: the sessions and the instance made to check the code are dropped, and their
        memory given back to the OS (:func:`wasm_host.heap.release`), so a push costs no memory until the
        function's first request loads it."""
        try:
            return self._validate(name, module, models, files)
        finally:
            heap.release()

    def _validate(self, name: str, module: str | None, models: Mapping[str, str], files: Mapping[str, str]) -> Manifest:
        check_name(name)
        digests = _aliased(models, "models", "model alias")
        file_digests = _aliased(files, "files", "file alias")
        if module is None and file_digests:
            raise InvalidFunction("files are for .wasm functions: a bare ONNX model (the passthrough guest) reads none")
        FileLimits.of(self.settings).check({a: self.store.staged_size(d) for a, d in file_digests.items()})
        checked = {alias: self._check_model(alias, d, bare=module is None) for alias, d in digests.items()}
        graphs = {alias: graph for alias, (graph, _) in checked.items()}
        for d in digests.values():  # saved now, so that the first request after the push loads it quickly
            blob = self.store.blob_path(d)
            self.host.backend.optimize(ModelRef(d, blob if blob.exists() else self.store.upload_path(d)))
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
        # The files are in place while the function starts: its _initialize and signature may read them.
        with self.store.staged_files(file_digests) as files_dir:
            image = self.host.prepare(wasm, module_digest, refs, files_dir)
            try:
                instance = image.instantiate()
            except Exception as exc:
                raise InvalidFunction(f"the function failed to start: {exc}") from exc
            try:
                signature = instance.signature()
            except GuestFailure as exc:  # a trap or a deadline in it is the pushed code's fault: a refusal
                raise InvalidFunction(f"the function's signature() failed: {exc}") from exc
        base = Manifest(name, 0, "custom", module_digest, digests, None, None, figures=figures, files=file_digests)
        return base if signature is None else dataclasses.replace(base, inputs=signature[0], outputs=signature[1])

    def _check_model(self, alias: str, digest: str, bare: bool) -> tuple[OnnxGraph, ModelFigures]:
        """The model's types checked against what WASI-NN carries (its inputs; a ``bare`` model's outputs too),
        read from the graph before onnxruntime builds it, so that the refusal names the input or output and
        its fix whatever onnxruntime would make of the model; then the model loaded in onnxruntime (so it
        runs), and its figures (so the router can place it)."""
        data = self.store.read_staged(digest)
        limit = self.settings.max_push_model_bytes
        if len(data) > limit:
            raise TooLarge(f"model {alias!r} of {len(data)} bytes exceeds {limit} (setting max_push_model_bytes)")
        try:
            proto = parse_model(data)
        except ValueError as exc:
            raise InvalidFunction(f"model {alias!r}: {exc}") from exc
        # A bare model's one alias is the passthrough's own: the message names its inputs and outputs alone.
        check_carried(graph_edges(proto), outputs=bare, context="" if bare else f"model {alias!r}: ")
        try:
            graph = self.host.backend.load(data, digest)
        except InvalidFunction as exc:
            raise InvalidFunction(f"model {alias!r}: {exc}") from exc
        try:
            return graph, measure(data, proto)
        except ValueError as exc:
            raise InvalidFunction(f"model {alias!r}: {exc}") from exc

    def _passthrough_bytes(self) -> bytes:
        if self._passthrough is None:
            self._passthrough = passthrough_module()
        return self._passthrough


def _aliased(doc: object, key: str, what: str) -> dict[str, str]:
    """``doc`` (the push's ``models`` or ``files``) as alias -> sha256 hex, each alias a name (``what``)."""
    if not isinstance(doc, Mapping) or not all(isinstance(a, str) and isinstance(d, str) for a, d in doc.items()):
        raise InvalidFunction(f"'{key}' must map aliases to digests")
    return {check_name(alias, what): check_digest(d) for alias, d in doc.items()}


def check_endpoint(url: str | None) -> str | None:
    """An endpoint URL as stored: ``http(s)://host[:port][/prefix]`` without a trailing slash."""
    if url is None:
        return None
    import httpx  # here, at a push: a gateway's start does not load it (see router.forward)

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

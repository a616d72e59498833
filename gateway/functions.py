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
import threading
from collections.abc import Mapping
from importlib.resources import files

import wasmtime

from gateway.settings import Settings
from gateway.store import LocalStore, Manifest, check_digest, check_name
from wasm_host.errors import InvalidFunction, InvalidRequest, TooLarge
from wasm_host.host import Host
from wasm_host.onnx_backend import ModelRef, OnnxGraph
from wasm_host.pool import InstancePool
from wasm_host.tensors import Tensor, TensorSpec
from wasm_host.wasi_nn import TENSOR_TYPES

PASSTHROUGH_ALIAS = "model"
WASI_NN_DATATYPES = {t[0] for t in TENSOR_TYPES.values()}


def passthrough_module() -> bytes:
    """The built-in passthrough guest, compiled from its WebAssembly text source."""
    return bytes(wasmtime.wat2wasm(files("wasm_host").joinpath("passthrough.wat").read_text()))


@dataclasses.dataclass
class LoadedFunction:
    manifest: Manifest
    pool: InstancePool
    graphs: list[OnnxGraph]  # held so the shared sessions stay loaded while the function is
    stamp: tuple[int, int] | None

    @property
    def name(self) -> str:
        return self.manifest.name


class FunctionRegistry:
    def __init__(self, store: LocalStore, host: Host, settings: Settings) -> None:
        self.store = store
        self.host = host
        self.settings = settings
        self._loaded: dict[str, LoadedFunction] = {}
        self._lock = threading.Lock()
        self._passthrough: bytes | None = None

    # -- serving -------------------------------------------------------------------------------------------
    def get(self, name: str) -> LoadedFunction:
        """The loaded function, (re)loading it when its manifest changed. Blocking: call from a thread.
        Raises NotFound."""
        stamp = self.store.stamp(name)
        fn = self._loaded.get(name)
        if fn is not None and fn.stamp == stamp:
            return fn
        with self._lock:
            fn = self._loaded.get(name)
            if fn is not None and fn.stamp == stamp:
                return fn
            manifest = self.store.get(name)  # raises NotFound
            fn = self._load(manifest, self.store.stamp(name))
            self._loaded[name] = fn
            return fn

    def _load(self, manifest: Manifest, stamp: tuple[int, int] | None) -> LoadedFunction:
        refs = {alias: ModelRef(d, self.store.blob_path(d)) for alias, d in manifest.models.items()}
        graphs = [self.host.backend.load_ref(ref) for ref in refs.values()]
        image = self.host.prepare(self.store.read_blob(manifest.module), manifest.module, refs)
        return LoadedFunction(manifest, InstancePool(image, self.settings.pool_max_idle), graphs, stamp)

    def forget(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)

    # -- pushing -------------------------------------------------------------------------------------------
    def push(self, name: str, module: str | None, models: Mapping[str, str]) -> Manifest:
        """Validate and commit a function. ``module`` and ``models`` are digests of uploaded blobs;
        ``module=None`` pushes a bare ONNX model behind the built-in passthrough guest."""
        manifest = self.validate(name, module, models)
        committed = self.store.commit(manifest, self.settings.max_functions)
        self.forget(name)
        return committed

    def validate(self, name: str, module: str | None, models: Mapping[str, str]) -> Manifest:
        check_name(name)
        if not isinstance(models, Mapping) or not all(
            isinstance(a, str) and isinstance(d, str) for a, d in models.items()
        ):
            raise InvalidFunction("'models' must map aliases to digests")
        digests = {check_name(alias): check_digest(d) for alias, d in models.items()}
        graphs = {alias: self._check_model(alias, d) for alias, d in digests.items()}
        if module is None:
            if len(graphs) != 1:
                raise InvalidFunction("a push without a module takes exactly one ONNX model")
            (graph,) = graphs.values()
            inputs, outputs = passthrough_signature(graph)
            wasm = self._passthrough_bytes()
            module_digest = self.store.stage(wasm)
            digests = {PASSTHROUGH_ALIAS: graph.digest}
            self.host.prepare(wasm, module_digest, {})
            return Manifest(name, 0, "passthrough", module_digest, digests, inputs, outputs)
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
            return Manifest(name, 0, "custom", module_digest, digests, None, None)
        return Manifest(name, 0, "custom", module_digest, digests, *signature)

    def _check_model(self, alias: str, digest: str) -> OnnxGraph:
        data = self.store.read_staged(digest)
        limit = self.settings.max_push_model_bytes
        if len(data) > limit:
            raise TooLarge(f"model {alias!r} of {len(data)} bytes exceeds {limit} (setting max_push_model_bytes)")
        try:
            return self.host.backend.load(data, digest)
        except InvalidFunction as exc:
            raise InvalidFunction(f"model {alias!r}: {exc}") from exc

    def _passthrough_bytes(self) -> bytes:
        if self._passthrough is None:
            self._passthrough = passthrough_module()
        return self._passthrough


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

"""The onnxruntime backend behind WASI-NN: graphs (sessions) cached by the sha256 of the model bytes.

One loaded model is one :class:`OnnxGraph`, shared by every instance that loads the same bytes, by name or by
``load``. The cache holds graphs weakly: a graph lives as long as some function runtime or guest instance holds
it, so dropping a function's runtime releases its sessions without any bookkeeping here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort

from wasm_host.errors import InvalidFunction
from wasm_host.optimized import OptimizedModels
from wasm_host.providers import CPU
from wasm_host.tensors import DYNAMIC, ONNX_TYPES, TensorSpec

log = logging.getLogger("wasmgate.onnx")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model a function may load by name: its content digest and where its bytes are."""

    digest: str
    path: Path


@dataclasses.dataclass(frozen=True)
class IOInfo:
    """One graph input or output. ``datatype`` is the OIP name, or None when it is not a tensor
    (a ZipMap's sequence of maps, say); -1 marks a dimension not fixed by the graph."""

    name: str
    onnx_type: str
    datatype: str | None
    shape: tuple[int, ...]

    def accepts(self, dims: tuple[int, ...]) -> bool:
        """Whether ``dims`` fits this shape: same rank, and equal wherever the graph fixes a dimension."""
        if len(dims) != len(self.shape):
            return False
        for i, d in self._fixed:  # noqa: SIM110  # a plain loop: this runs on every set_input
            if dims[i] != d:
                return False
        return True

    @functools.cached_property
    def _fixed(self) -> tuple[tuple[int, int], ...]:
        return tuple((i, d) for i, d in enumerate(self.shape) if d != DYNAMIC)

    def spec(self) -> TensorSpec:
        if self.datatype is None:
            raise ValueError(f"{self.name!r} is a {self.onnx_type}, not a tensor")
        return TensorSpec(self.name, self.datatype, self.shape)


@dataclasses.dataclass(frozen=True)
class Descriptions:
    """What a session says of its graph: its inputs and outputs, and the providers it runs on (onnxruntime drops
    one whose library fails to load). Saved as JSON beside a saved optimized graph (:meth:`OnnxBackend.load_ref`)."""

    inputs: tuple[IOInfo, ...]
    outputs: tuple[IOInfo, ...]
    providers: tuple[str, ...]

    @classmethod
    def of(cls, session: ort.InferenceSession) -> Descriptions:
        inputs = tuple(_io(x) for x in session.get_inputs())
        return cls(inputs, tuple(_io(x) for x in session.get_outputs()), tuple(session.get_providers()))

    def to_json(self) -> dict[str, Any]:
        def io(infos: tuple[IOInfo, ...]) -> list[list[Any]]:
            return [[x.name, x.onnx_type, list(x.shape)] for x in infos]

        return {"inputs": io(self.inputs), "outputs": io(self.outputs), "providers": list(self.providers)}

    @classmethod
    def from_json(cls, doc: Any) -> Descriptions:
        """The descriptions :meth:`to_json` wrote; ValueError for anything else."""
        try:
            made = cls(_infos(doc["inputs"]), _infos(doc["outputs"]), tuple(str(p) for p in doc["providers"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not saved descriptions: {exc}") from exc
        if made.to_json() != doc:  # a name that was not a string, say: anything :meth:`to_json` did not write
            raise ValueError("not saved descriptions")
        return made


def _infos(items: Any) -> tuple[IOInfo, ...]:
    return tuple(IOInfo(str(n), str(t), ONNX_TYPES.get(str(t)), tuple(int(d) for d in shape)) for n, t, shape in items)


class OnnxGraph:
    """A loaded model: an ``InferenceSession`` plus its input and output descriptions, and on the compiled host
    (wasm_host.compiled) the same model's session there, ``native``, which its requests' runs use.

    On the compiled host a graph loaded from a file lets its Python session go once ``native`` is made: its
    descriptions are read already, and keeping it would hold the weights twice. The Python session is made again
    from that file only if a Python import runs the graph (a guest computing outside a request, in
    ``_initialize`` say), and kept from then on; a graph made from saved ``described`` descriptions starts
    without one (``session`` None). A graph loaded from bytes keeps both sessions: making the Python one again
    would need the bytes kept, which costs as much."""

    def __init__(
        self,
        digest: str,
        session: ort.InferenceSession | None,
        reopen: Callable[[], ort.InferenceSession] | None = None,
        described: Descriptions | None = None,
    ) -> None:
        if described is None:
            assert session is not None, "a graph without a session is made from saved descriptions"
            described = Descriptions.of(session)
        self.digest = digest
        self.session = session
        self.described = described
        self.inputs = list(described.inputs)
        self.outputs = list(described.outputs)
        self.input_names = [x.name for x in self.inputs]
        #: The providers the session runs on (onnxruntime drops one whose library fails to load).
        self.providers: list[str] = list(described.providers)
        self.native: object | None = None
        self._reopen = reopen
        self._lock = threading.Lock()

    def attach_native(self, chost: ModuleType, source: bytes | str, intra_op_threads: int) -> None:
        """Create the compiled host's session from the same model ``source`` (bytes or a file), with the
        descriptions the compiled imports check against and word their errors with (as wasm_host.wasi_nn's)."""
        codes = {"FP16": 0, "FP32": 1, "FP64": 2, "UINT8": 3, "INT32": 4, "INT64": 5}  # WASI-NN tensor_type
        inputs = [
            (x.name, repr(x.name), x.onnx_type, codes.get(x.datatype or "", -1), x.shape, str(list(x.shape)))
            for x in self.inputs
        ]
        outputs = [(x.name, x.onnx_type) for x in self.outputs]
        self.native = chost.Graph(source, intra_op_threads, inputs, outputs)
        if self._reopen is not None:
            self.session = None  # weights held once (see the class docstring)

    def run(self, feeds: Sequence[np.ndarray], options: ort.RunOptions | None = None) -> list[object]:
        """Run with inputs in graph order; outputs in graph order (numpy arrays for tensor outputs)."""
        return self._python_session().run(None, dict(zip(self.input_names, feeds, strict=True)), options)  # type: ignore[no-any-return]

    def _python_session(self) -> ort.InferenceSession:
        session = self.session
        if session is None:
            with self._lock:
                if self.session is None:
                    assert self._reopen is not None  # only a graph with a way back lets its session go
                    self.session = self._reopen()
                session = self.session
        return session


def _io(node: object) -> IOInfo:
    onnx_type = str(getattr(node, "type", ""))
    raw_shape = getattr(node, "shape", None) or []
    shape = tuple(d if isinstance(d, int) and d >= 0 else DYNAMIC for d in raw_shape)
    return IOInfo(str(getattr(node, "name", "")), onnx_type, ONNX_TYPES.get(onnx_type), shape)


class OnnxBackend:
    """Creates and caches sessions. Safe to use from several threads; one session runs concurrently."""

    def __init__(
        self, intra_op_threads: int = 1, providers: Sequence[str] = (CPU,), optimized_dir: Path | None = None
    ) -> None:
        self._intra_op_threads = intra_op_threads
        #: Execution providers sessions are created with, best first (see wasm_host.providers).
        self.providers = list(providers)
        #: Saved optimized graphs that :meth:`load_ref` creates sessions from (None: always the original).
        self.optimized = None if optimized_dir is None else OptimizedModels(optimized_dir, self.providers)
        self._graphs: weakref.WeakValueDictionary[str, OnnxGraph] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        #: The compiled host (wasm_host.compiled), when graphs must have a session there too.
        self.native: ModuleType | None = None

    def load(self, model: bytes, digest: str | None = None) -> OnnxGraph:
        """The graph for ``model``, from the cache when the same bytes are loaded already.

        Raises :class:`InvalidFunction` when onnxruntime cannot load the bytes.
        """
        digest = digest or hashlib.sha256(model).hexdigest()
        graph = self._graphs.get(digest)
        if graph is not None:
            return graph
        with self._lock:  # one session per model, even when many instances load it at once
            graph = self._graphs.get(digest)
            if graph is None:
                graph = self._graph(digest, self._session(model), model)
                self._graphs[digest] = graph
            return graph

    def load_ref(self, ref: ModelRef) -> OnnxGraph:
        """The graph of a stored model, from the cache when it is loaded already; else created from its saved
        optimized graph (:mod:`wasm_host.optimized`), which is written first when it is missing or damaged.
        The original model serves whenever no optimized graph can be saved or loaded. On the compiled host the
        Python session's descriptions are saved beside the optimized graph, and a later load (another process's)
        makes no Python session (:meth:`_described`)."""
        graph = self._graphs.get(ref.digest)
        if graph is not None:
            return graph
        if self.optimized is None:
            return self.load(ref.path.read_bytes(), ref.digest)
        with self._lock:
            graph = self._graphs.get(ref.digest) or self._described(ref)
            if graph is None:
                session = self.optimized.open(ref.digest, self._session)
                if session is None and self.optimize(ref):
                    session = self.optimized.open(ref.digest, self._session)
                if session is not None:
                    graph = self._graph(ref.digest, session, str(self.optimized.path(ref.digest)), ref)
                    if self.native is not None:  # the next process's load skips the session (_described)
                        self.optimized.save_descriptions(ref.digest, graph.described.to_json())
                else:
                    model = ref.path.read_bytes()
                    graph = self._graph(ref.digest, self._session(model), model, ref)
            self._graphs[ref.digest] = graph
            return graph

    def _described(self, ref: ModelRef) -> OnnxGraph | None:
        """On the compiled host, the graph of a stored model from its saved optimized graph and the descriptions
        saved beside it, with no Python session: one would only be made to read them and let go (see
        :class:`OnnxGraph`), the first load's largest cost after the compiled host's own session. None where
        either is missing, or the saved graph does not load: the caller then reads and writes them again."""
        if self.native is None or self.optimized is None or not self.optimized.saved(ref.digest):
            return None
        doc = self.optimized.descriptions(ref.digest)
        if doc is None:
            return None
        try:
            described = Descriptions.from_json(doc)
        except ValueError:  # not what this module writes: the caller's session reads them, and they are saved again
            return None
        graph = OnnxGraph(ref.digest, None, functools.partial(self._reopen, ref), described)
        try:
            graph.attach_native(self.native, str(self.optimized.path(ref.digest)), self._intra_op_threads)
        except Exception as exc:  # a damaged saved graph: written again by the caller's usual path
            log.warning(
                "the saved optimized graph of model %s did not load (%s); writing it again", ref.digest[:12], exc
            )
            self.optimized.discard(ref.digest)
            return None
        return graph

    def _graph(
        self, digest: str, session: ort.InferenceSession, source: bytes | str, ref: ModelRef | None = None
    ) -> OnnxGraph:
        """A graph for a new session; on the compiled host, with its session there from the same source. A graph
        of a stored model (``ref``) can make its Python session again (see :class:`OnnxGraph`): from the saved
        optimized graph, or from the model itself when that has been removed meanwhile."""
        reopen = None if ref is None else functools.partial(self._reopen, ref)
        graph = OnnxGraph(digest, session, reopen)
        if self.native is not None:
            try:
                graph.attach_native(self.native, source, self._intra_op_threads)
            except Exception as exc:
                raise InvalidFunction(f"the compiled host could not load the model: {exc}") from exc
        return graph

    def _reopen(self, ref: ModelRef) -> ort.InferenceSession:
        session = None if self.optimized is None else self.optimized.open(ref.digest, self._session)
        return session or self._session(ref.path.read_bytes())

    def optimize(self, ref: ModelRef) -> bool:
        """Save the model's optimized graph, if this backend keeps them and it is not saved yet (at push, so
        that the first request after it does not pay for the optimizers). Never raises; returns whether a
        saved graph is there."""
        return self.optimized is not None and self.optimized.save(ref.path, ref.digest, self._session)

    def drop_optimized(self, digest: str) -> None:
        """Remove the saved optimized graphs of this model (when no function uses it any more). A session
        created from one is not affected: its data is mapped or read already."""
        if self.optimized is not None:
            self.optimized.drop(digest)

    def cached(self) -> int:
        """How many graphs are alive in the cache."""
        return len(self._graphs)

    def providers_in_use(self) -> list[str]:
        """The providers the loaded sessions actually run on (onnxruntime drops a provider whose library
        fails to load, e.g. CUDA without a driver), in order of first appearance."""
        seen: dict[str, None] = {}
        for graph in list(self._graphs.values()):
            for provider in graph.providers:
                seen.setdefault(provider, None)
        return list(seen)

    def _session(
        self, model: bytes | str, tune: Callable[[ort.SessionOptions], None] | None = None
    ) -> ort.InferenceSession:
        """A session for a model's bytes or file; ``tune`` adjusts the options last (wasm_host.optimized's
        saving and loading)."""
        options = ort.SessionOptions()
        # Many requests run at once on a gateway: one thread per run keeps them from fighting over cores.
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if tune is not None:
            tune(options)
        try:
            return ort.InferenceSession(model, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises several unrelated exception types for bad models
            text = str(exc).strip().splitlines()
            raise InvalidFunction(f"not a valid ONNX model: {text[0] if text else type(exc).__name__}") from exc

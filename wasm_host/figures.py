"""What a model costs, read from its ONNX graph at push: bytes, parameters, and an estimate of FLOPs per row,
as a function of the sizes of its dynamic dimensions.

The router places functions by these figures (``router.policy``). They are estimates, meant to tell a 4 KB
classifier from a 500 MB network, and a 16-token request from a 512-token one, not to predict latency:

- ``params``: the elements of every initializer, of every ``Constant`` node's tensor, and of the numeric list
  attributes of classic-ML operators (a ``LinearClassifier`` keeps its coefficients in attributes).
- ``flops_per_row``: the sum over nodes, with one row in the batch and every dimension the graph leaves
  symbolic at 1 (the model's smallest shape): ``2 * M * N * K`` for ``MatMul``/``Gemm``, ``2 * output elements
  * kernel elements per output`` for ``Conv``, twice a node's attribute parameters for classic-ML operators,
  and one operation per output element for everything else. Shapes come from ONNX shape inference; a node
  whose shapes cannot be inferred counts what it can (its attribute parameters), so a graph with custom
  operators is under-estimated, never refused.
- ``dims`` and ``terms``: how that sum grows with the dynamic dimensions other than the batch (a sequence
  length, an image's height and width). Each dimension is named by its ``dim_param`` (one name shared by
  several inputs is one dimension) or, unnamed, by ``input[axis]``; the batch is the first axis of every
  input. The count above is repeated with the dimensions bound to :data:`SAMPLES` (every combination; at most
  :data:`MAX_DIMS` dimensions, the others stay at 1) and fitted by a polynomial of total degree 2: a
  transformer's cost is linear in its sequence plus the attention's square, a CNN's is proportional to
  ``H * W``. The samples are multiples of 32, so the strides of a CNN divide them exactly; a size between
  them is an interpolation. Shape inference runs on a copy of the graph without its large initializers'
  data, so a 100 MB model costs milliseconds per sample.

A request is priced by :meth:`ModelFigures.flops_at` with the sizes it carries; a dimension it does not give
(a function whose guest tokenizes text before it runs the model, say) is taken at :data:`REFERENCE_SIZE`, and
so is every dimension where no request is at hand (``wasm ls``, the admin API's ``home_tier``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

#: Operators whose multiply-adds are the product of their output and the inner dimension of their inputs.
MATMUL_OPS = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"})
CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv"})
#: The size of a dynamic dimension when no request gives it: 64 tokens, a 64 x 64 image.
REFERENCE_SIZE = 64
#: The sizes each dynamic dimension is measured at, to fit the cost's terms (three points fix a quadratic).
SAMPLES = (32, 64, 96)
#: Dynamic dimensions fitted per model (3 ** n shape inferences); the others count as 1.
MAX_DIMS = 3
#: Initializers up to this many elements keep their data in the copy shape inference reads: shapes and axes
#: (a ``Reshape``'s target) are small, weights are not.
_KEPT_ELEMENTS = 64


@dataclasses.dataclass(frozen=True)
class Dim:
    """A dynamic dimension other than the batch: its name, and the (input, axis) places a request gives its
    size at (several for a name shared by inputs, e.g. a transformer's ``input_ids`` and ``attention_mask``)."""

    name: str
    at: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "at": [{"input": i, "axis": a} for i, a in self.at]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Dim:
        return cls(str(doc["name"]), tuple((str(p["input"]), int(p["axis"])) for p in doc.get("at") or ()))


@dataclasses.dataclass(frozen=True)
class Term:
    """``flops`` per row for each unit of the product of the dimensions in ``per`` (a name twice is its
    square; ``()`` is the part that does not grow)."""

    flops: float
    per: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"flops": self.flops, "per": list(self.per)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Term:
        return cls(float(doc["flops"]), tuple(str(d) for d in doc.get("per") or ()))


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """A model's figures (see the module docstring). A manifest written before ``dims`` and ``terms`` existed
    loads with none: its cost is ``flops_per_row`` whatever the request."""

    bytes: int = 0
    params: int = 0
    flops_per_row: int = 0
    dims: tuple[Dim, ...] = ()
    terms: tuple[Term, ...] = ()

    def __add__(self, other: ModelFigures) -> ModelFigures:
        """A function with several models costs their sum (a guest may run each of them per request); a
        dimension named alike in both is one dimension."""
        dims: dict[str, tuple[tuple[str, int], ...]] = {}
        for d in (*self.dims, *other.dims):
            dims[d.name] = dims.get(d.name, ()) + tuple(p for p in d.at if p not in dims.get(d.name, ()))
        terms: dict[tuple[str, ...], float] = {}
        if self.terms or other.terms:
            for t in (*self._terms(), *other._terms()):
                terms[t.per] = terms.get(t.per, 0.0) + t.flops
        return ModelFigures(
            self.bytes + other.bytes,
            self.params + other.params,
            self.flops_per_row + other.flops_per_row,
            tuple(Dim(n, at) for n, at in dims.items()),
            tuple(Term(f, per) for per, f in terms.items()),
        )

    def _terms(self) -> tuple[Term, ...]:
        return self.terms or ((Term(float(self.flops_per_row)),) if self.flops_per_row else ())

    def flops_at(self, sizes: Mapping[str, int]) -> int:
        """FLOPs per row with each dynamic dimension at its size in ``sizes`` (by name), or at
        :data:`REFERENCE_SIZE` where it has none. Without terms: ``flops_per_row``."""
        if not self.terms:
            return self.flops_per_row
        total = sum(t.flops * math.prod(sizes.get(d, REFERENCE_SIZE) for d in t.per) for t in self.terms)
        return max(0, round(total))

    @functools.cached_property
    def reference_flops(self) -> int:
        """FLOPs per row with every dynamic dimension at :data:`REFERENCE_SIZE`. Computed once: the router reads
        it on every request."""
        return self.flops_at({})

    def formula(self) -> str:
        """The cost per row as a person reads it: ``1.2M + 19.5M*seq + 9.4k*seq^2``, or one figure."""
        if not self.terms:
            return si(self.flops_per_row)
        parts = []
        # A term worth under 0.1% of the cost at the reference size is rounding left by the fit: not shown.
        floor = self.reference_flops / 1000
        for t in sorted(self.terms, key=lambda t: (len(t.per), t.per)):
            if abs(t.flops) * REFERENCE_SIZE ** len(t.per) < floor:
                continue
            per = "*".join(f"{d}^{n}" if n > 1 else d for d, n in _powers(t.per))
            parts.append(si(round(t.flops)) + (f"*{per}" if per else ""))
        return " + ".join(parts) or "-"

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "params": self.params,
            "flops_per_row": self.flops_per_row,
            "dims": [d.to_json() for d in self.dims],
            "terms": [t.to_json() for t in self.terms],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelFigures:
        return cls(
            int(doc.get("bytes", 0)),
            int(doc.get("params", 0)),
            int(doc.get("flops_per_row", 0)),
            tuple(Dim.from_json(d) for d in doc.get("dims") or ()),
            tuple(Term.from_json(t) for t in doc.get("terms") or ()),
        )


def si(value: float, unit: str = "") -> str:
    """A figure in three significant digits: 9.49M, 660, 4.74G; ``-`` for 0."""
    if not value:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def _powers(per: Sequence[str]) -> list[tuple[str, int]]:
    return [(d, per.count(d)) for d in dict.fromkeys(per)]


def measure(model: bytes, proto: onnx.ModelProto | None = None) -> ModelFigures:
    """The figures of one ONNX model; ``proto``, when given, is those bytes parsed already (a push parses them
    once). Raises ValueError when the bytes are not an ONNX model."""
    import onnx

    if proto is None:
        try:
            proto = onnx.load_model_from_string(model)
        except Exception as exc:  # protobuf raises its own DecodeError, and others for truncated input
            raise ValueError(f"not an ONNX model: {exc}") from exc
    params = sum(math.prod(init.dims) for init in proto.graph.initializer)
    params += sum(_attribute_params(node) for node in proto.graph.node)
    skeleton, weights = _skeleton(proto)
    dims = _dynamic_dims(skeleton, weights)[:MAX_DIMS]
    flops_per_row = _flops(skeleton, weights, {})
    terms: tuple[Term, ...] = ()
    if dims:
        points = [
            dict(zip((d.name for d in dims), p, strict=True)) for p in itertools.product(SAMPLES, repeat=len(dims))
        ]
        terms = _fit([d.name for d in dims], points, [_flops(skeleton, weights, p, dims) for p in points])
    return ModelFigures(len(model), params, flops_per_row, tuple(dims), terms)


def _skeleton(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, frozenset[str]]:
    """A copy of ``proto`` whose large initializers are graph inputs of the same type and shape, without data
    (all shape inference needs of them, at a fraction of the copy), and those inputs' names: fixed shapes,
    never a dynamic dimension."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.ir_version = proto.ir_version
    copy.opset_import.extend(proto.opset_import)
    copy.functions.extend(proto.functions)
    g = proto.graph
    kept = [i for i in g.initializer if math.prod(i.dims) <= _KEPT_ELEMENTS]
    stripped = [i for i in g.initializer if math.prod(i.dims) > _KEPT_ELEMENTS]
    names = {i.name for i in stripped}
    inputs = [i for i in g.input if i.name not in names]
    weights = [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in stripped]
    copy.graph.CopyFrom(helper.make_graph(list(g.node), g.name, [*inputs, *weights], list(g.output), kept))
    return copy, frozenset(names)


def _data_inputs(graph: Any, weights: frozenset[str]) -> list[Any]:
    """The graph's inputs a request gives (not its weights, nor inputs with an initializer as their default)."""
    initialized = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in weights and i.name not in initialized]


def _dynamic_dims(skeleton: onnx.ModelProto, weights: frozenset[str]) -> list[Dim]:
    """The graph's dynamic dimensions other than the batch (the first axis of each input), in input order."""
    places: dict[str, list[tuple[str, int]]] = {}
    unnamed: dict[tuple[int, int, tuple[int, ...]], str] = {}
    batch_names = set()
    inputs = _data_inputs(skeleton.graph, weights)
    for info in inputs:
        dims = info.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            batch_names.add(dims[0].dim_param)
    for info in inputs:
        shape = info.type.tensor_type.shape.dim
        fixed = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in shape)
        for axis, d in enumerate(shape):
            if axis == 0 or fixed[axis] > 0 or d.dim_param in batch_names:
                continue
            # Unnamed, at the same axis of inputs shaped alike (a transformer's ids and mask): taken as one, or
            # shape inference would see them differ where the graph needs them equal.
            name = d.dim_param or unnamed.setdefault((len(shape), axis, fixed), f"{info.name}[{axis}]")
            places.setdefault(name, []).append((info.name, axis))
    return [Dim(name, tuple(at)) for name, at in places.items()]


def _flops(
    skeleton: onnx.ModelProto, weights: frozenset[str], sizes: Mapping[str, int], dims: Iterable[Dim] = ()
) -> int:
    """The FLOPs of one row with ``dims`` bound to ``sizes`` (every other symbolic dimension at 1)."""
    import onnx
    import onnx.shape_inference

    bound = onnx.ModelProto()
    bound.CopyFrom(skeleton)
    by_place = {p: sizes[d.name] for d in dims for p in d.at}
    for info in _data_inputs(bound.graph, weights):
        for axis, d in enumerate(info.type.tensor_type.shape.dim):
            if (info.name, axis) in by_place:
                d.dim_value = by_place[(info.name, axis)]
    # Custom operators, or a graph onnxruntime runs but the checker dislikes: count what needs no shapes.
    with contextlib.suppress(Exception):
        bound = onnx.shape_inference.infer_shapes(bound, data_prop=True)
    graph = bound.graph
    shapes: dict[str, list[int]] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims_ = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims_]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return sum(
        _node_flops(node.op_type, node.input, node.output, shapes, _attribute_params(node)) for node in graph.node
    )


def _fit(names: Sequence[str], points: Sequence[Mapping[str, int]], flops: Sequence[int]) -> tuple[Term, ...]:
    """The polynomial of total degree 2 in ``names`` through (least squares, exact where the cost is such a
    polynomial) the ``flops`` measured at ``points``; terms that round to no FLOP are left out."""
    import numpy as np

    monomials: list[tuple[str, ...]] = [()]
    monomials += [(n,) for n in names]
    monomials += list(itertools.combinations_with_replacement(names, 2))
    # Scaled by the largest sample, so the normal equations stay well conditioned.
    scale = float(max(SAMPLES))
    a = np.array([[math.prod(p[d] / scale for d in m) for m in monomials] for p in points])
    coef, *_ = np.linalg.lstsq(a, np.array(flops, dtype=float), rcond=None)
    terms = [(float(c) / scale ** len(m), m) for c, m in zip(coef, monomials, strict=True)]
    return tuple(Term(round(f, 3), m) for f, m in terms if abs(f) >= 0.5)


def _attribute_params(node: Any) -> int:
    count = 0
    for attr in node.attribute:
        if attr.type == attr.TENSOR:
            count += math.prod(attr.t.dims)
        elif node.domain == "ai.onnx.ml" and attr.type in (attr.FLOATS, attr.INTS):
            count += len(attr.floats) + len(attr.ints)
    return count


def _node_flops(
    op: str, inputs: Sequence[str], outputs: Sequence[str], shapes: Mapping[str, list[int]], attribute_params: int
) -> int:
    out = shapes.get(outputs[0]) if outputs else None
    if op in MATMUL_OPS and out is not None and inputs and inputs[0] in shapes:
        a = shapes[inputs[0]]
        # Gemm may transpose A; the inner dimension is then A's first. MatMul's is always A's last.
        k = a[0] if op == "Gemm" and _is_transposed(a, out) else (a[-1] if a else 1)
        return 2 * math.prod(out) * k
    if op in CONV_OPS and out is not None and len(inputs) > 1 and inputs[1] in shapes:
        kernel = shapes[inputs[1]]
        return 2 * math.prod(out) * math.prod(kernel[1:])
    if attribute_params:
        return 2 * attribute_params
    return math.prod(out) if out is not None else 0


def _is_transposed(a: list[int], out: list[int]) -> bool:
    """Whether Gemm's A enters transposed: its first dimension is not the output's rows."""
    return len(a) == 2 and len(out) == 2 and a[0] != out[0] and a[1] == out[0]

"""Optimized models saved once, so that a session comes back from zero without re-optimizing its graph.

Creating an onnxruntime session from a model's bytes parses the protobuf, copies every initializer and runs the
graph optimizers; for a 91 MB transformer that is most of its cold start. Here a model is optimized once (at
push, or on the first load that finds no saved copy), at ``ORT_ENABLE_EXTENDED``, the highest level whose
result onnxruntime documents as portable (``ORT_ENABLE_ALL`` adds layout changes tied to the CPU it ran on),
and saved as a small graph file plus one external-data file holding the initializers. Sessions are then created
from that file: onnxruntime maps the external data instead of copying it out of a protobuf, and the extended
optimizers find nothing left to do, while the layout optimizations still run for this machine.

Layout under the cache directory (``<cache_dir>/onnx``)::

    <digest>-<key>.onnx           the optimized graph
    <digest>-<key>.onnx.data      its initializers (external data, referenced by file name from the graph)
    <digest>-<key>.onnx.io.json   its inputs', outputs' and providers' descriptions, as a session on it reads them
                                  (written by wasm_host.onnx_backend on the compiled host, see there)

``key`` is a hash of the onnxruntime version and the options that shape the optimized graph (execution
providers, optimization level), so an upgrade or another provider list never reads a graph written for
something else. Both files are written under temporary names and renamed into place, data first, so a reader
sees a complete pair or no graph. A saved copy that fails to load (truncated, corrupt, from a broken disk) is
removed and written again: the saved copy is a cache, never a reason for a load to fail. The saved graphs of a
model go when the last function using it is deleted (:meth:`OptimizedModels.drop`); those of a model only an
older version uses stay, at most one per model blob the store keeps (one per key).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger("wasmgate.onnx")

#: The level a saved graph is optimized to: the highest one that does not depend on the machine.
SAVED_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED

#: Initializers at least this large go to the external-data file (smaller ones stay in the graph file).
EXTERNAL_MIN_BYTES = 1024

Session = Callable[[bytes | str, Callable[[ort.SessionOptions], None] | None], ort.InferenceSession]


class OptimizedModels:
    """Saved optimized graphs under ``root``, for sessions created with ``providers``."""

    def __init__(self, root: Path, providers: Sequence[str]) -> None:
        self.root = root
        facts = f"onnxruntime {ort.__version__}; providers {','.join(providers)}; level {int(SAVED_LEVEL)}"
        self.key = hashlib.sha256(facts.encode()).hexdigest()[:16]

    def path(self, digest: str) -> Path:
        """Where the optimized graph of the model with this sha256 is (or would be) saved."""
        return self.root / f"{digest}-{self.key}.onnx"

    def saved(self, digest: str) -> bool:
        path = self.path(digest)
        return path.exists() and _data(path).exists()

    def save(self, model: bytes | Path, digest: str, session: Session) -> bool:
        """Optimize ``model`` (its bytes or its file) and save the result, unless it is saved already.
        ``session`` creates a session with a hook that adjusts its options. Returns whether a saved graph is
        there afterwards; a failure is logged, never raised (the original model still serves)."""
        if self.saved(digest):
            return True
        path = self.path(digest)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # A private directory per writer: concurrent writers of one model never share a temporary file,
            # and the external data's file name inside the graph is the final one from the start.
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".optimizing-") as tmp:
                staged = Path(tmp) / path.name

                def tune(options: ort.SessionOptions) -> None:
                    options.graph_optimization_level = SAVED_LEVEL
                    options.optimized_model_filepath = str(staged)
                    options.add_session_config_entry(
                        "session.optimized_model_external_initializers_file_name", _data(path).name
                    )
                    options.add_session_config_entry(
                        "session.optimized_model_external_initializers_min_size_in_bytes", str(EXTERNAL_MIN_BYTES)
                    )

                session(model if isinstance(model, bytes) else str(model), tune)
                if not staged.exists():
                    raise OSError("onnxruntime wrote no optimized graph")
                data = _data(staged)
                if data.exists():  # absent when the model has no initializer past EXTERNAL_MIN_BYTES
                    os.replace(data, _data(path))
                else:
                    _data(path).write_bytes(b"")
                os.replace(staged, path)
        except Exception as exc:  # any failure leaves the original model to serve: log it, once, and go on
            log.warning("could not save the optimized graph of model %s: %s", digest[:12], exc)
            self.discard(digest)
            return False
        return True

    def open(self, digest: str, session: Session) -> ort.InferenceSession | None:
        """A session from the saved graph of this model, or None when there is none or it does not load (it
        is removed then, so the next :meth:`save` writes it again)."""
        if not self.saved(digest):
            return None
        try:
            return session(str(self.path(digest)), None)
        except Exception as exc:  # a damaged cache entry: drop it and let the caller use the original
            log.warning("the saved optimized graph of model %s did not load (%s); writing it again", digest[:12], exc)
            self.discard(digest)
            return None

    def descriptions(self, digest: str) -> Any:
        """The descriptions saved beside the optimized graph of this model (parsed JSON), or None when there are
        none or they do not parse (they are removed then)."""
        path = _descriptions(self.path(digest))
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a damaged entry: drop it, the caller reads them from a session again
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def save_descriptions(self, digest: str, doc: object) -> None:
        """Save ``doc`` (JSON) as the descriptions of the saved optimized graph of this model; never raises (a
        cache that cannot be written holds nothing)."""
        path = _descriptions(self.path(digest))
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".descriptions-")
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not save the descriptions of model %s: %s", digest[:12], exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def drop(self, digest: str) -> None:
        """Remove every saved graph of the model, whichever onnxruntime version or providers wrote it (the
        model is no longer used); never raises."""
        for path in self.root.glob(f"{digest}-*.onnx*"):
            with contextlib.suppress(OSError):
                path.unlink()

    def discard(self, digest: str) -> None:
        """Remove the saved graph, if any; never raises (a cache that cannot be written holds nothing)."""
        path = self.path(digest)
        for p in (path, _data(path), _descriptions(path)):
            with contextlib.suppress(OSError):
                p.unlink()


def _data(graph: Path) -> Path:
    return graph.with_name(graph.name + ".data")


def _descriptions(graph: Path) -> Path:
    return graph.with_name(graph.name + ".io.json")

"""The sandbox host: one engine, one onnxruntime backend, one linker with WASI and WASI-NN.

:meth:`Host.prepare` turns module bytes plus a model allowlist into a :class:`FunctionImage`; everything
expensive (compilation, ABI checks, linking) happens there, at push or at start-up, never per request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import wasmtime

from wasm_host import compiled
from wasm_host.engine import SandboxLimits, WasmEngine
from wasm_host.errors import InvalidFunction, Unavailable
from wasm_host.guest import FuncSig, FunctionImage, check_abi
from wasm_host.onnx_backend import ModelRef, OnnxBackend
from wasm_host.providers import CPU
from wasm_host.waits import PollHost
from wasm_host.wasi_nn import WasiNnHost

log = logging.getLogger("wasmgate.host")


class Host:
    """``host_path``: ``python``, ``compiled`` or ``auto`` (wasm_host.compiled). The compiled host runs sessions on
    the CPU only: with any other execution provider, ``auto`` takes the Python host and ``compiled`` is refused."""

    def __init__(
        self,
        limits: SandboxLimits,
        cache_dir: Path,
        intra_op_threads: int = 1,
        providers: Sequence[str] = (CPU,),
        host_path: str = "auto",
    ) -> None:
        # Optimized graphs are saved beside the compile cache: both are derived from blobs, keyed by digest.
        self.backend = OnnxBackend(intra_op_threads, providers, cache_dir / "onnx")
        if list(providers) != [CPU] and host_path != "python":
            if host_path == "compiled":
                raise Unavailable(
                    f"the compiled host runs on the CPU only; providers {list(providers)} need host_path=python"
                )
            host_path = "python"
        native = compiled.load(host_path)
        self.engine = WasmEngine(limits, cache_dir, native)
        #: Which host path serves: "compiled" or "python".
        self.host_path = "python" if native is None else "compiled"
        log.info("requests run on the %s host", self.host_path)
        self.backend.native = native
        self.nn_host = WasiNnHost(native)
        self.linker = wasmtime.Linker(self.engine.engine)
        self.linker.define_wasi()
        # Over WASI's own: sleeps bounded by the deadline. Held: the linker calls into its callbacks.
        self.poll_host = PollHost(self.nn_host.current)
        self.poll_host.define(self.linker)
        self.nn_host.define(self.linker)
        self._checked: dict[str, dict[str, FuncSig]] = {}  # module digest -> its callable exports

    @property
    def limits(self) -> SandboxLimits:
        return self.engine.limits

    def start(self) -> Host:
        self.engine.start()
        return self

    def close(self) -> None:
        self.engine.close()
        self.nn_host.watchdog.close()

    def prepare(
        self, wasm: bytes, digest: str, models: Mapping[str, ModelRef], files: Path | None = None
    ) -> FunctionImage:
        """Compile (or load from the compile cache), check the ABI, and link. ``files``: the directory of the
        function's data files, which its instances see read-only at ``/files`` (None: none). Raises
        InvalidFunction."""
        module = self.engine.compile(wasm, digest)
        # Reading a module's import and export types goes through many FFI calls; the answer for a digest
        # never changes, so a function coming back from zero does not pay for it again.
        exports = self._checked.get(digest)
        if exports is None:
            exports = self._checked[digest] = check_abi(module)
        try:
            pre = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:  # e.g. a WASI import that does not exist in preview 1
            first = str(exc).strip().splitlines()[0]
            raise InvalidFunction(f"module cannot be linked against WASI preview 1 and WASI-NN: {first}") from exc
        return FunctionImage(self.engine, self.nn_host, self.backend, pre, models, exports, files)

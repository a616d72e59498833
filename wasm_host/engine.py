"""The shared wasmtime engine: sandbox defaults, the epoch ticker, and the on-disk compile cache.

Every sandbox default lives here, in :class:`SandboxLimits`. The gateway's settings may override them; nothing
else may. One :class:`WasmEngine` serves the whole process: a wasmtime ``Engine``, ``Module`` and
``InstancePre`` are safe to share across threads, a ``Store`` is not (each instance owns one).

Deadlines use epoch interruption: a daemon thread bumps the engine's epoch every ``epoch_tick_ms``, and each
call into a guest sets its store's deadline in ticks, so a guest looping past its deadline traps with
``TrapCode.INTERRUPT``. Time spent inside host calls (an onnxruntime run) is not interruptible; the host caps
tensor and model sizes instead.

The compile cache keeps ``Module.serialize()`` artifacts keyed by the module's sha256 and by the wasmtime
version plus the engine configuration they were built for. An artifact is executable code, so each is stored
with its own sha256 and checked before ``Module.deserialize``: a corrupted entry is rebuilt, never run.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import wasmtime

from wasm_host.errors import InvalidFunction, TooLarge, Unavailable
from wasm_host.wasm_sections import Malformed, code_shape

log = logging.getLogger("wasmgate.engine")

MiB = 1024 * 1024
#: Modules up to this size compile in the gateway's own process; larger ones in a bounded child process. Below
#: it, with the function limits, a compile costs at most about a second and tens of megabytes, which a child's
#: start-up (a Python interpreter with wasmtime, about a quarter of a second) would cost again.
IN_PROCESS_COMPILE_BYTES = 256 * 1024
#: The child's exit status for a module wasmtime refuses (its reason on stderr).
_INVALID_MODULE = 3
#: Where a function's data files appear to it: one read-only preopened directory (guest_modules/ABI.md, "Files").
FILES_GUEST_PATH = "/files"


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits that every guest instance runs under. These are the defaults; settings may override them."""

    #: Wall-clock budget for one call into the guest (``_initialize`` or ``handle``), in milliseconds.
    deadline_ms: int = 2000
    #: Granularity of deadlines: the ticker bumps the epoch this often. Deadlines round up to a tick.
    epoch_tick_ms: int = 5
    #: Linear memory an instance may grow to; ``memory.grow`` past it fails (malloc returns NULL).
    memory_limit_bytes: int = 128 * MiB
    #: Native stack a guest may use before it traps with a stack overflow.
    max_wasm_stack_bytes: int = 1 * MiB
    #: Largest tensor the host copies across the boundary in ``set_input`` or ``get_output``.
    max_tensor_bytes: int = 64 * MiB
    #: Largest model a guest may hand to ``load`` as bytes.
    max_model_bytes: int = 256 * MiB
    #: Host memory a function's guests may make the host hold through WASI-NN, outside their own memory
    #: limit: the models they load from their own memory (each distinct model once, for all the function's
    #: instances, while the function is loaded), and, per instance, the tensors held in its execution
    #: contexts. Checked before a session is built or a tensor copied (``too_large``).
    max_nn_memory_bytes: int = 512 * MiB
    #: A module's code, read before it compiles (refused with 413 past either): how many functions it may
    #: define, and the largest one function's body may be. Compile time and memory grow with both.
    max_module_functions: int = 100_000
    max_function_body_bytes: int = 1 * MiB
    #: Modules larger than :data:`IN_PROCESS_COMPILE_BYTES` compile in a child process, which may take this
    #: long and this much address space (Python and wasmtime included) before the push is refused with 413.
    compile_timeout_s: float = 60.0
    compile_memory_bytes: int = 2048 * MiB

    def deadline_ticks(self, deadline_ms: int | None = None) -> int:
        """Ticks to allow for ``deadline_ms`` (default: this config's), rounded up, plus one for the tick in
        progress: a deadline is never shorter than asked, and at most one tick longer."""
        ms = self.deadline_ms if deadline_ms is None else deadline_ms
        return -(-ms // self.epoch_tick_ms) + 1


def wasmtime_version() -> str:
    """wasmtime-py's version, read from the name of its ``.dist-info`` beside the package, as
    ``importlib.metadata.version`` reads it; that module (with email, zipfile and csv, which it imports) is
    imported only when the package is installed some other way. Importing it cost about 20 ms of every start."""
    found = list(Path(wasmtime.__file__).parent.parent.glob("wasmtime-*.dist-info"))
    if len(found) == 1:
        return found[0].name.removeprefix("wasmtime-").removesuffix(".dist-info")
    from importlib.metadata import version

    return version("wasmtime")


class WasmEngine:
    """One wasmtime engine with the sandbox configuration, its epoch ticker and its compile cache.

    Use as a context manager, or call :meth:`start` and :meth:`close`: the ticker must run for deadlines to
    fire, and a store with epoch interruption traps at once if no deadline is set.
    """

    def __init__(self, limits: SandboxLimits, cache_dir: Path, native: ModuleType | None = None) -> None:
        """``native``: the compiled host (wasm_host.compiled), whose native thread then does the ticking."""
        self.limits = limits
        self.native = native
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.max_wasm_stack = limits.max_wasm_stack_bytes
        config.cranelift_opt_level = "speed"
        # Linear memory stays at one address for an instance's life (it grows within its reservation), which
        # lets the host check guest pointers without asking wasmtime for the base on every access.
        config.memory_may_move = False
        # Guests are single-threaded WASI modules; shared memory would let one outlive its store's limits.
        config.wasm_threads = False
        config.shared_memory = False
        self.engine = wasmtime.Engine(config)
        # The artifact format depends on the wasmtime version and on codegen settings; both go in the key.
        tag = hashlib.sha256(f"epoch=1;stack={limits.max_wasm_stack_bytes};opt=speed;move=0".encode()).hexdigest()[:12]
        self.cache_root = cache_dir
        self.cache_dir = cache_dir / f"wasmtime-{wasmtime_version()}-{tag}"
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> WasmEngine:
        """Start the ticker: the compiled host's native thread when there is one (it takes no GIL, where a
        Python thread waking every tick would take it from the event loop hundreds of times a second), else a
        Python thread."""
        if self.native is not None:
            self.native.tick_start(self.engine, self._address(), float(self.limits.epoch_tick_ms))
        elif self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="wasmgate-epoch", daemon=True)
            self._ticker.start()
        return self

    def close(self) -> None:
        if self.native is not None:
            self.native.tick_stop(self._address())
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
            self._ticker = None

    def _address(self) -> int:
        """The engine's ``wasm_engine_t*``, as the compiled host's ticker takes it."""
        return int(ctypes.cast(self.engine.ptr(), ctypes.c_void_p).value or 0)

    def __enter__(self) -> WasmEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tick(self) -> None:
        interval = self.limits.epoch_tick_ms / 1000
        while not self._stop.wait(interval):
            self.engine.increment_epoch()

    # -- compilation ---------------------------------------------------------------------------------------
    def compile(self, wasm: bytes, digest: str) -> wasmtime.Module:
        """Compile ``wasm`` (whose sha256 is ``digest``), or load it from the compile cache.

        Raises :class:`InvalidFunction` when the bytes are not a valid module for this engine.
        """
        cached = self.load_cached(digest)
        if cached is not None:
            return cached
        self._check_shape(wasm)
        if len(wasm) > IN_PROCESS_COMPILE_BYTES:
            self._compile_in_child(wasm, digest)
            cached = self.load_cached(digest)
            if cached is None:
                raise Unavailable("the compiled module could not be read back from the compile cache", 1)
            return cached
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidFunction(f"not a valid WebAssembly module: {_first_line(exc)}") from exc
        self._store_cached(digest, bytes(module.serialize()))
        return module

    def _check_shape(self, wasm: bytes) -> None:
        """Refuse, before compiling, a module with more functions or a larger function than the limits allow."""
        try:
            shape = code_shape(wasm)
        except Malformed as exc:
            raise InvalidFunction(f"not a valid WebAssembly module: {exc}") from exc
        if shape.functions > self.limits.max_module_functions:
            raise TooLarge(
                f"the module defines {shape.functions} functions, more than {self.limits.max_module_functions} "
                "(setting max_module_functions)"
            )
        if shape.largest_body > self.limits.max_function_body_bytes:
            raise TooLarge(
                f"the module has a function of {shape.largest_body} bytes, more than "
                f"{self.limits.max_function_body_bytes} (setting max_function_body_bytes)"
            )

    def _compile_in_child(self, wasm: bytes, digest: str) -> None:
        """Compile in a child process under ``compile_timeout_s`` and ``compile_memory_bytes``, which writes the
        artifact into the compile cache: whatever the compiler spends, the gateway's own memory stays as it
        was. Raises TooLarge past either bound, InvalidFunction for a module wasmtime refuses."""
        limits = self.limits
        memory = limits.compile_memory_bytes
        command = [sys.executable, "-m", "wasm_host.engine", str(self.cache_root), digest]
        command += [str(limits.max_wasm_stack_bytes), str(memory)]
        try:
            done = subprocess.run(command, input=wasm, capture_output=True, timeout=limits.compile_timeout_s)
        except subprocess.TimeoutExpired:
            raise TooLarge(
                f"the module took longer than {limits.compile_timeout_s:g} s to compile (setting compile_timeout_s)"
            ) from None
        if done.returncode == _INVALID_MODULE:
            reason = done.stderr.decode(errors="replace").strip() or "refused by wasmtime"
            raise InvalidFunction(f"not a valid WebAssembly module: {reason}")
        if done.returncode != 0:  # out of address space, or killed: past the memory bound
            log.info("compile child exited %d: %s", done.returncode, done.stderr[-500:].decode(errors="replace"))
            raise TooLarge(f"the module needed more than {memory // MiB} MiB to compile (setting compile_memory_bytes)")

    def load_cached(self, digest: str) -> wasmtime.Module | None:
        """The cached compiled module for ``digest``, or None when absent or corrupted (then it is removed)."""
        path = self.cache_dir / f"{digest}.cwasm"
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        checksum, artifact = blob[:32], blob[32:]
        if hashlib.sha256(artifact).digest() != checksum:
            log.warning("compile cache entry %s is corrupted; rebuilding it", path.name)
            path.unlink(missing_ok=True)
            return None
        try:
            return wasmtime.Module.deserialize(self.engine, artifact)
        except wasmtime.WasmtimeError as exc:  # e.g. written by an incompatible build with the same key
            log.warning("compile cache entry %s is unusable (%s); rebuilding it", path.name, _first_line(exc))
            path.unlink(missing_ok=True)
            return None

    def _store_cached(self, digest: str, artifact: bytes) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(hashlib.sha256(artifact).digest())
                fh.write(artifact)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.cache_dir / f"{digest}.cwasm")
        except OSError as exc:  # a full disk: the cache is an optimisation; the module is compiled all the same
            Path(tmp).unlink(missing_ok=True)
            log.warning("could not write the compile cache entry for %s: %s", digest[:12], exc.strerror or exc)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def new_store(self, files: Path | None = None) -> wasmtime.Store:
        """A store with this engine's memory limit and a WASI context with no arguments, no environment,
        stdio discarded, and (WASI preview 1 has none without preopened sockets) no network.

        Its only preopened directory is ``files``, when given: the function's data files, read-only, at
        :data:`FILES_GUEST_PATH`. Without it there is none at all. ``files`` must hold nothing but that
        function's files (a guest can read everything under it, and nothing above it). Raises Unavailable when
        the directory cannot be opened (it was removed with its function meanwhile)."""
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=self.limits.memory_limit_bytes, instances=1, tables=1, memories=1)
        wasi = wasmtime.WasiConfig()
        if files is not None:
            try:
                wasi.preopen_dir(str(files), FILES_GUEST_PATH, fs_mutable=False)
            except wasmtime.WasmtimeError as exc:
                raise Unavailable("the function's data files cannot be opened; it changed meanwhile", 1) from exc
        store.set_wasi(wasi)
        return store


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _compile_child(cache_root: str, digest: str, stack_bytes: str, memory_bytes: str) -> int:
    """The child of :meth:`WasmEngine._compile_in_child`: compile the module on stdin with the engine
    configuration of the parent and write the artifact into its compile cache, within ``memory_bytes`` of
    address space (an allocation past it aborts the child). Returns the exit status."""
    resource.setrlimit(resource.RLIMIT_AS, (int(memory_bytes), int(memory_bytes)))
    engine = WasmEngine(SandboxLimits(max_wasm_stack_bytes=int(stack_bytes)), Path(cache_root))
    try:
        module = wasmtime.Module(engine.engine, sys.stdin.buffer.read())
    except wasmtime.WasmtimeError as exc:
        print(_first_line(exc), file=sys.stderr)
        return _INVALID_MODULE
    engine._store_cached(digest, bytes(module.serialize()))
    return 0


if __name__ == "__main__":
    sys.exit(_compile_child(*sys.argv[1:]))

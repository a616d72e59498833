"""What the test modules share, in one place (fixtures stay in conftest.py, where pytest finds them):

- child processes: ``wasm serve`` and ``wasm runner`` as :class:`Gateway`, and :func:`start_on_a_port` for any
  server that binds its own port, retried on another port when another process took that one first; a port
  where connections are refused for as long as a test needs (:func:`refused_port`); waits with deadlines;
- models and requests: the digits model (:class:`Digits`) and onnxruntime's answers, guests from WAT (a
  counter, and a text embedder whose vectors are known exactly), request bodies, pushes through the admin API,
  an in-process client for the app (:class:`AppClient`), one sample of Prometheus text (:func:`metric`), and the
  store's consistency on disk;
- the model zoo: a ResNet-style CNN, gradient-boosted tree ensembles, an FP16 model (and the BERT-style
  encoder above), which a bare push serves, and scikit-learn's default classifier and a text pipeline, which it
  refuses; each built here, seeded, with no downloads, and onnxruntime's answers for them (:func:`onnx_answers`);
- BERT text for guest_modules/text_embed/: a vocab built from a small corpus (:func:`write_bert_vocab`), the
  reference tokenizer (:func:`bert_tokenizer`), the reference embeddings (:func:`reference_text_embeddings`),
  and the function's own tokenizer compiled natively (:class:`NativeTokenizer`);
- the ``kubernetes`` client against ``tests.kube_emulator``;
- the hostile guests' documented failures (guest_modules/hostile/), which tests/test_hostile.py checks one by
  one and bench/soak.py sends under load.

No test module imports another: they import from here, and from the emulators and fixture servers next to
them (tests/kube_emulator.py, tests/oci_registry.py, tests/kustomize_subset.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import numpy as np

from gateway.cli.demo import ENCODER_INPUTS as ENCODER_INPUTS
from gateway.cli.demo import ENCODER_OUTPUTS as ENCODER_OUTPUTS
from gateway.cli.demo import encoder_model as encoder_model

if TYPE_CHECKING:
    import kubernetes.client

    from router.scalers.kubernetes import KubernetesScaler
    from tests.kube_emulator import KubeEmulator
    from wasm_host.guest import FunctionImage
    from wasm_host.host import Host
    from wasm_host.onnx_backend import ModelRef

LOOPBACK = "127.0.0.1"

# -- child processes and their ports ---------------------------------------------------------------------------


def wasm_command() -> list[str]:
    script = Path(sys.executable).parent / "wasm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def wait_ready(
    proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool], timeout: float = 60, interval: float = 0.1
) -> None:
    """Poll ``ready`` (connection errors count as not yet) until it holds; fail with the process's log when it
    exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise AssertionError(f"{proc.args} did not become ready:\n" + log.read_text())


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def wait_for(condition: object, timeout: float = 30.0) -> None:
    """Wait for background work to reach a state; a generous bound that only fails a broken warmer."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def candidate_port() -> int:
    """A loopback port that was free a moment ago: bound to port 0, then closed. Only a candidate for a child
    that binds the port itself, since any process may take it before the child does; :func:`start_on_a_port`
    starts the child again on another when that happens."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where every connection is refused while the block runs: a socket bound there and never
    listened on. It is held until the block ends, and bound without SO_REUSEADDR, so no other socket can bind
    the port meanwhile (a closed port's number could be taken by any process at once)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        yield int(s.getsockname()[1])


def bound_socket(port: int = 0) -> socket.socket:
    """A loopback TCP socket, bound but not yet listening, for a child that listens on it (``wasm runner
    --fd``), made as the local scaler makes its runners' (``router.sockets.tcp_listener``: IPPROTO_TCP,
    SO_REUSEADDR): on ``port`` where that is still free, else on a port the kernel picks. The child holds the
    port from the start: nothing can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        if port and exc.errno == errno.EADDRINUSE:
            return bound_socket(0)
        raise
    return sock


def listening_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds the socket listening on TCP ``port`` (Linux: the listening sockets
    in /proc/net/tcp*, against the process's file descriptors)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ... uid timeout inode
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: TCP_LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) in sockets:
                return True
    return False


def port_was_taken(log: Path, since: int) -> bool:
    """Whether what the child wrote to ``log`` past offset ``since`` says its bind failed (uvicorn: "[Errno 98]
    error while attempting to bind on address ...: address already in use"; Go: "bind: address already in
    use"; a plain OSError traceback: "Address already in use")."""
    with open(log, "rb") as f:
        f.seek(since)
        return os.strerror(errno.EADDRINUSE).lower().encode() in f.read().lower()


def _set_aside(log: Path, since: int) -> Path:
    """Move what a child that could not bind its port wrote to ``log`` (past ``since``) to ``<log>.port-taken``,
    so that the log holds only the run that served."""
    aside = log.with_name(log.name + ".port-taken")
    with open(log, "r+b") as f:
        f.seek(since)
        failed = f.read()
        f.truncate(since)
    with open(aside, "ab") as f:
        f.write(failed)
    return aside


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_on_a_port(
    launch: Callable[[int], subprocess.Popen[bytes]],
    log: Path,
    ready: Callable[[int], bool],
    port: int = 0,
    attempts: int = 5,
    timeout: float = 60,
    interval: float = 0.1,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server that binds its own TCP port, ``launch(port)`` (its output appended to ``log``), and wait
    until ``ready(port)``; the process and the port it serves on.

    The port is ``port`` where given (a server started again keeps its address where it can), else
    :func:`candidate_port`. Another process may bind that port first: the child then exits saying so ("address
    already in use", in what it wrote to ``log`` since it started), and is started again on another candidate,
    up to ``attempts`` starts in all; what the failed start wrote is moved to ``<log>.port-taken``. Whoever took
    the port may answer there meanwhile, so readiness also needs the child itself to hold the listening socket
    (:func:`listening_on`). Any other failure fails as :func:`wait_ready` does, the child stopped."""

    def ours(proc: subprocess.Popen[bytes], port: int) -> Callable[[], bool]:
        return lambda: ready(port) and listening_on(proc.pid, port)

    tried = []
    aside = None
    for _ in range(attempts):
        port = port or candidate_port()
        tried.append(port)
        since = log.stat().st_size if log.exists() else 0
        proc = launch(port)
        try:
            wait_ready(proc, log, ours(proc, port), timeout, interval)
        except AssertionError:
            _stop(proc)
            if not port_was_taken(log, since):
                raise
            aside = _set_aside(log, since)
            port = 0
            continue
        return proc, port
    raise AssertionError(f"{proc.args}: another process took each port tried ({tried}); see {aside}")


#: The host path (wasm_host.compiled) the end-to-end gateways run on: pytest's ``--host-path`` (tests/conftest.py).
E2E_HOST_PATH = "auto"


def require_compiled_host(path: str) -> None:
    """Skip, saying why, a test of the compiled host ``path`` where its extension is not built."""
    import pytest

    from wasm_host import compiled

    if path == "compiled" and compiled.load("auto") is None:
        pytest.skip("the compiled host is not built here: python setup.py build_ext --inplace")


class Gateway:
    """A real ``wasm serve`` (or, with ``command="runner"``, ``wasm runner``) process on a loopback port, with
    ``env`` as its only WASMGATE_* settings (and ``preexec_fn`` run in the child before it starts).

    The port is chosen by :meth:`start` (``url`` and ``port`` are read after it), and a later start takes the
    same port again where it is still free, else another, which ``url`` then names. ``wasm serve`` binds the
    port itself: :func:`start_on_a_port` starts it again on another port if another process took that one
    first. ``wasm runner`` is handed a socket bound here (its hidden ``--fd``, as the local scaler starts its
    runners), so nothing can take its port.

    ``wasm serve`` serves no gRPC (``--grpc-port 0``) unless ``grpc``: then on a port of its own, chosen at each
    start (``grpc_address``)."""

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        *extra: str,
        command: str = "serve",
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        grpc: bool = False,
    ) -> None:
        self.extra = extra
        self.grpc = grpc
        self.grpc_port = 0  # none until start(), and none without grpc
        self.command = command
        self.settings_env = env or {}
        self.data_dir = data_dir
        self.port = 0  # none until start()
        self.log = log
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        assert self.port, "the port is chosen when the process starts: read the url after start()"
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def grpc_address(self) -> str:
        """Where its OIP v2 gRPC service listens, as gRPC clients take it (``host:port``)."""
        assert self.grpc_port, "a Gateway made with grpc=True serves gRPC once started"
        return f"{LOOPBACK}:{self.grpc_port}"

    def _popen(self, *listen: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WASMGATE_")}
        env |= {"WASMGATE_HOST_PATH": E2E_HOST_PATH} | self.settings_env
        where = [*listen, "--data-dir", str(self.data_dir)]
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                [*wasm_command(), self.command, *where, *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=pass_fds,
                preexec_fn=self.preexec_fn,
            )

    @staticmethod
    def _ready(port: int) -> bool:
        return httpx.get(f"http://{LOOPBACK}:{port}/v2/health/ready", timeout=1).status_code == 200

    def start(self) -> None:
        if self.command == "runner":
            self.spawn()
            assert self.proc is not None
            wait_ready(self.proc, self.log, lambda: self._ready(self.port))
        else:
            self.proc, self.port = start_on_a_port(self._launch, self.log, self._ready, port=self.port)

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        # A port taken by another process fails the start as a taken HTTP port does, and start_on_a_port tries
        # again: here, with another gRPC port too.
        self.grpc_port = candidate_port() if self.grpc else 0
        grpc = ["--grpc-port", str(self.grpc_port)] if self.command == "serve" else []  # only serve has gRPC
        return self._popen("--port", str(port), *grpc)

    def spawn(self) -> None:
        """Start ``wasm runner`` on a socket bound here (:func:`bound_socket`), without waiting for it to be
        ready."""
        assert self.command == "runner", "only wasm runner takes a listening socket (--fd)"
        with bound_socket(self.port) as sock:
            self.port = int(sock.getsockname()[1])
            fd = sock.fileno()
            self.proc = self._popen("--fd", str(fd), pass_fds=(fd,))
        # The child has its own copy of the socket: once it exits, nothing listens on the port.

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*wasm_command(), *args, "--gateway", self.url], capture_output=True, text=True, timeout=120
        )


def runner_pids(gateway: Gateway) -> list[int]:
    """The gateway's child processes that are runners."""
    from bench.pod_cold_start import runner_children  # imported here: that bench imports this module

    assert gateway.proc is not None
    return runner_children(gateway.proc.pid)


def json_infer(url: str, name: str, inputs: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{name}/infer", json={"inputs": inputs}, timeout=60)


# -- data files (guest_modules/read_file reads one by alias) ---------------------------------------------------


def read_file_body(alias: str, binary: bool = False) -> dict[str, object]:
    """A request to guest_modules/read_file for the file ``alias``; its contents in binary (exact bytes) or
    JSON (as text)."""
    body: dict[str, object] = {"inputs": [{"name": "alias", "shape": [1], "datatype": "BYTES", "data": [alias]}]}
    if binary:
        body["outputs"] = [{"name": "contents", "parameters": {"binary_data": True}}]
    return body


def file_contents(response: Any) -> bytes:
    """The file read_file answered with (a JSON or a binary response, from httpx or AppClient)."""
    assert response.status_code == 200, response.text
    length = response.headers.get("inference-header-content-length")
    if length is None:
        text: str = response.json()["outputs"][0]["data"][0]
        return text.encode()
    raw = response.content[int(length) :]
    size = int.from_bytes(raw[:4], "little")  # BYTES: a u32 length, then the bytes
    assert len(raw) == 4 + size
    return bytes(raw[4:])


def materialise_files(root: str, rounds: int) -> set[str]:
    """Run in another process (a pool's): make sure of the directory of the files of function ``fn`` in the
    store at ``root``, ``rounds`` times; the paths it got."""
    from gateway.store.local import LocalStore

    store = LocalStore(Path(root))
    manifest = store.get("fn")
    return {str(store.files_dir(manifest)) for _ in range(rounds)}


def read_file(url: str, name: str, alias: str, binary: bool = False, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{name}/infer", json=read_file_body(alias, binary), headers=headers, timeout=120)


# -- models, guests and requests ---------------------------------------------------------------------------------


class Digits:
    def __init__(self, model: bytes, x_test: np.ndarray, y_test: np.ndarray, path: Path) -> None:
        self.model = model
        self.x_test = x_test
        self.y_test = y_test
        self.path = path
        self.digest = hashlib.sha256(model).hexdigest()


def onnx_predict(model: bytes, x: np.ndarray) -> list[Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return list(session.run(None, {session.get_inputs()[0].name: x}))


def encoder_inputs(batch: int, sequence: int, vocab: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for :func:`encoder_model` by name: random token ids, a mask that pads the tail of every other row
    (as a tokenizer pads a batch), and token types 0 for the first half of each row, 1 after."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, sequence), dtype=np.int64)
    mask = np.ones((batch, sequence), np.int64)
    mask[1::2, max(1, sequence // 2) :] = 0
    types = np.zeros((batch, sequence), np.int64)
    types[:, sequence // 2 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class Encoder:
    """:func:`encoder_model` written to ``path``, and its answers from onnxruntime run directly."""

    def __init__(self, model: bytes, path: Path) -> None:
        self.model = model
        self.path = path
        self.digest = hashlib.sha256(model).hexdigest()

    def expected(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        session = ort.InferenceSession(self.model, providers=["CPUExecutionProvider"])
        return dict(zip(ENCODER_OUTPUTS, session.run(list(ENCODER_OUTPUTS), inputs), strict=True))


def prepare_wat(host: Host, wat: str, models: dict[str, ModelRef] | None = None) -> FunctionImage:
    import wasmtime

    wasm = wasmtime.wat2wasm(wat)
    return host.prepare(bytes(wasm), hashlib.sha256(wasm).hexdigest(), models or {})


# What COUNTER and SPINNER share: a memory, the global $n, a fixed WGT1 response at 1024 of one INT64 tensor
# "count" [1] whose data word (at 1072) handle() patches with $n, and an alloc that answers 4096.
COUNT_ANSWER = r"""
  (memory (export "memory") 1)
  (global $n (mut i64) (i64.const 0))
  (data (i32.const 1024)
    "\57\47\54\31" "\01\00\00\00" "\00\00\00\00" "\00\00\00\00"
    "\05\00\00\00" "\05\00\00\00" "\01\00\00\00" "\08\00\00\00"
    "\01\00\00\00\00\00\00\00"
    "count\00\00\00")
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
"""

# handle() bumps a global counter and answers one INT64 tensor "count" holding it; with input value 1.0 it
# traps instead. The response is a fixed WGT1 buffer at 1024 whose data word is patched.
COUNTER = (
    "(module"
    + COUNT_ANSWER
    + r"""  (func (export "handle") (param $p i32) (param $len i32) (result i64)
    ;; the request's first input data starts at 16 + 16 + 8 (dims [1]) + 8 (name "x") = 48
    (if (f32.eq (f32.load (i32.add (local.get $p) (i32.const 48))) (f32.const 1)) (then unreachable))
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (i64.store (i32.const 1072) (global.get $n))
    (i64.or (i64.shl (i64.const 56) (i64.const 32)) (i64.const 1024))))
"""
)


# handle() spins for as long as the request asks: its first input is INT32 [N] (named in at most 8 bytes, e.g.
# "n"), whose first element k makes it count k * 1000 iterations of a loop, then answer INT64 "count" holding
# the count. One loop iteration is a global's read and write, which no compiler pass removes: the run time grows
# with k on any machine, so a test picks k to run far past one deadline and far short of another.
SPINNER = (
    "(module"
    + COUNT_ANSWER
    + r"""  (func (export "handle") (param $p i32) (param $len i32) (result i64)
    (local $left i64)
    ;; the request's first input data starts at 16 + 16 + 8 (dims [N]) + 8 (its name) = 48
    (local.set $left (i64.mul (i64.extend_i32_u (i32.load (i32.add (local.get $p) (i32.const 48))))
                              (i64.const 1000)))
    (global.set $n (i64.const 0))
    (block $done
      (loop $spin
        (br_if $done (i64.eqz (local.get $left)))
        (global.set $n (i64.add (global.get $n) (i64.const 1)))
        (local.set $left (i64.sub (local.get $left) (i64.const 1)))
        (br $spin)))
    (i64.store (i32.const 1072) (global.get $n))
    (i64.or (i64.shl (i64.const 56) (i64.const 32)) (i64.const 1024))))
"""
)


def spin_body(thousands: int, rows: int = 1) -> dict[str, object]:
    """A request that makes :data:`SPINNER` count ``thousands`` * 1000 iterations, ``rows`` rows long."""
    return {"inputs": [{"name": "n", "shape": [rows], "datatype": "INT32", "data": [thousands] * rows}]}


#: The toy text embedder's signature: ``text`` BYTES [N] in, ``embedding`` FP32 [N, 4] out.
EMBEDDER_SIGNATURE: dict[str, list[dict[str, object]]] = {
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 4]}],
}


def embedder_wat(signature: dict[str, list[dict[str, object]]] | None = EMBEDDER_SIGNATURE) -> str:
    """A text embedder small enough to check by hand: for each element of its one BYTES input (the first
    input of the request, whatever it is named) it answers ``embedding``, FP32 [N, 4], of
    :func:`toy_embedding`. ``signature`` is what its ``signature`` export declares (None: no export).

    Memory: the signature at 1024, the name "embedding" at 512, each request at 64 KiB (``alloc`` grows the
    memory to hold it and the largest response it can have: 16 bytes per 4-byte element, plus the header) and
    the response right after it."""
    export = ""
    if signature is not None:
        text = json.dumps(signature).replace("\\", "\\\\").replace('"', '\\"')
        export = f'(data (i32.const 1024) "{text}\\00")\n  (func (export "signature") (result i32) (i32.const 1024))'
    return rf"""
(module
  (memory (export "memory") 2)
  (data (i32.const 512) "embedding")
  {export}
  (func (export "alloc") (param $size i32) (result i32)
    (local $pages i32)
    ;; 64 KiB + the request + the largest response (56 + 16 per element, an element taking at least 4 bytes)
    (local.set $pages (i32.add (i32.shr_u (i32.add (i32.mul (local.get $size) (i32.const 5))
                                                   (i32.const 131200)) (i32.const 16)) (i32.const 1)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
              (then (return (i32.const 0))))))
    (i32.const 65536))
  (func (export "handle") (param $p i32) (param $len i32) (result i64)
    (local $n i32) (local $at i32) (local $i i32) (local $l i32) (local $j i32) (local $sum i32)
    (local $r i32) (local $out i32) (local $b i32)
    ;; the first input: name_len at +16, dims at +32 (one dim, padded to 8), its name at +40, then its data
    (local.set $n (i32.load (i32.add (local.get $p) (i32.const 32))))
    (local.set $at (i32.add (i32.add (local.get $p) (i32.const 40))
                            (i32.and (i32.add (i32.load (i32.add (local.get $p) (i32.const 16))) (i32.const 7))
                                     (i32.const -8))))
    (local.set $r (i32.and (i32.add (i32.add (local.get $p) (local.get $len)) (i32.const 7)) (i32.const -8)))
    (i32.store (local.get $r) (i32.const 0x31544757))
    (i32.store offset=4 (local.get $r) (i32.const 1))
    (i64.store offset=8 (local.get $r) (i64.const 0))
    (i32.store offset=16 (local.get $r) (i32.const 9))
    (i32.store offset=20 (local.get $r) (i32.const 1))
    (i32.store offset=24 (local.get $r) (i32.const 2))
    (i32.store offset=28 (local.get $r) (i32.mul (local.get $n) (i32.const 16)))
    (i32.store offset=32 (local.get $r) (local.get $n))
    (i32.store offset=36 (local.get $r) (i32.const 4))
    (i64.store offset=48 (local.get $r) (i64.const 0))
    (memory.copy (i32.add (local.get $r) (i32.const 40)) (i32.const 512) (i32.const 9))
    (local.set $out (i32.add (local.get $r) (i32.const 56)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $l (i32.load (local.get $at)))
        (local.set $at (i32.add (local.get $at) (i32.const 4)))
        (local.set $sum (i32.const 0))
        (local.set $j (i32.const 0))
        (block $summed
          (loop $byte
            (br_if $summed (i32.ge_u (local.get $j) (local.get $l)))
            (local.set $sum (i32.add (local.get $sum) (i32.load8_u (i32.add (local.get $at) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $byte)))
        (f32.store (local.get $out) (f32.convert_i32_u (local.get $l)))
        (f32.store offset=4 (local.get $out) (f32.convert_i32_u (local.get $sum)))
        (local.set $b (i32.const 0))
        (if (local.get $l) (then (local.set $b (i32.load8_u (local.get $at)))))
        (f32.store offset=8 (local.get $out) (f32.convert_i32_u (local.get $b)))
        (if (local.get $l)
          (then (local.set $b (i32.load8_u (i32.sub (i32.add (local.get $at) (local.get $l)) (i32.const 1))))))
        (f32.store offset=12 (local.get $out) (f32.convert_i32_u (local.get $b)))
        (local.set $at (i32.add (local.get $at) (local.get $l)))
        (local.set $out (i32.add (local.get $out) (i32.const 16)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i64.or (i64.shl (i64.extend_i32_u (i32.sub (local.get $out) (local.get $r))) (i64.const 32))
            (i64.extend_i32_u (local.get $r)))))
"""


def toy_embedding(text: str) -> list[float]:
    """What :func:`embedder_wat`'s function answers for ``text``: its UTF-8 length, the sum of its bytes, its
    first byte and its last."""
    b = text.encode()
    return [float(len(b)), float(sum(b)), float(b[0] if b else 0), float(b[-1] if b else 0)]


def infer_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A Triton binary-extension request: JSON header, then the raw tensor, output asked for in binary."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}
    return header + x.tobytes(), headers


class AppClient:
    """A synchronous client for an ASGI app in this process, with its lifespan run (httpx.ASGITransport on a
    blocking anyio portal). Starlette's TestClient would do, but now wants a different httpx distribution."""

    def __init__(self, app: Any) -> None:
        import functools

        from anyio.from_thread import start_blocking_portal

        self._partial = functools.partial
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        # The lifespan runs in one task of its own, as a server runs it (it holds a task group open).
        self._started = self.portal.call(anyio.Event)
        self._stop = self.portal.call(anyio.Event)

        async def lifespan() -> None:
            async with app.router.lifespan_context(app):
                self._started.set()
                await self._stop.wait()

        self._lifespan = self.portal.start_task_soon(lifespan)
        self.portal.call(self._started.wait)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://wasmgate.test")

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.portal.call(self._partial(self._client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Any:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        self.portal.call(self._client.aclose)
        self.portal.call(self._stop.set)
        self._lifespan.result()
        self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> AppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def upload(client: AppClient, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = client.put(f"/admin/v1/blobs/{digest}", content=data)
    assert r.status_code in (200, 201), r.text
    return digest


def push(client: AppClient, name: str, module: bytes | None, models: dict[str, bytes]) -> dict[str, object]:
    doc = {
        "module": None if module is None else upload(client, module),
        "models": {alias: upload(client, data) for alias, data in models.items()},
    }
    r = client.put(f"/admin/v1/functions/{name}", json=doc)
    assert r.status_code == 201, r.text
    result: dict[str, object] = r.json()
    return result


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_consistent(data: Path) -> list[str]:
    """Every manifest parses and names blobs (module, models, files) that exist with their digest; returns the
    function names."""
    names = []
    for path in sorted((data / "functions").glob("*.json")):
        doc = json.loads(path.read_text())
        for digest in [doc["module"], *doc["models"].values(), *(doc.get("files") or {}).values()]:
            if digest:
                blob = data / "blobs" / "sha256" / digest.removeprefix("sha256:")
                assert blob.exists(), (path.name, digest)
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest.removeprefix("sha256:")
        history = data / "versions" / path.stem / f"{doc['version']}.json"
        assert json.loads(history.read_text()) == doc  # the current version is in the history
        names.append(path.stem)
    return names


# -- the model zoo: one small model of each kind a bare push serves or refuses, built here with no downloads -----
# Each builder is deterministic (seeded) and takes well under a second; tests/test_zoo.py pushes each one bare
# and serves it on both tiers. The BERT-style encoder of the zoo is encoder_model, above.

#: The zoo's ResNet-style CNN: its input, FP32 ``[batch, 3, 224, 224]``, and output, FP32 ``[batch, classes]``.
CNN_INPUT, CNN_OUTPUT = "images", "logits"


def cnn_model(
    channels: int = 4, classes: int = 10, seed: int = 0, size: tuple[int | str, int | str] = (224, 224)
) -> bytes:
    """A tiny ONNX CNN shaped like a ResNet, made with ``onnx.helper``: ImageNet's input, a few channels.

    - Input ``images``: FP32 ``[batch, 3, 224, 224]``, the batch dynamic; ``size`` names other height and width,
      names (``dim_param``) for dynamic ones. Output ``logits``: FP32 ``[batch, classes]``.
    - The stem: Conv 3x3 stride 2 (3 -> ``channels``), BatchNormalization, Relu, MaxPool 3x3 stride 2, to 56x56.
    - One residual block: Conv 3x3 with a bias (a BatchNormalization folded in, as exporters do), Relu, Conv
      3x3 with a bias, Add the block's input, Relu.
    - The head: GlobalAveragePool, Flatten, Gemm.

    The weights are random, from ``seed``.
    """
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weights(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = math.prod(shape[1:]) or 1
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    def constant(name: str, values: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(values.astype(np.float32), name)

    c = channels
    inits = [
        weights("stem_w", c, 3, 3, 3),
        constant("bn_scale", 1 + 0.1 * rng.standard_normal(c)),
        constant("bn_bias", 0.1 * rng.standard_normal(c)),
        constant("bn_mean", 0.1 * rng.standard_normal(c)),
        constant("bn_var", 1 + 0.1 * rng.random(c)),
        weights("block1_w", c, c, 3, 3),
        constant("block1_b", 0.1 * rng.standard_normal(c)),
        weights("block2_w", c, c, 3, 3),
        constant("block2_b", 0.1 * rng.standard_normal(c)),
        weights("fc_w", classes, c),
        constant("fc_b", 0.1 * rng.standard_normal(classes)),
    ]
    node = helper.make_node
    same = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        node("Conv", [CNN_INPUT, "stem_w"], ["stem"], strides=[2, 2], **same),
        node("BatchNormalization", ["stem", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["stem_bn"]),
        node("Relu", ["stem_bn"], ["stem_relu"]),
        node("MaxPool", ["stem_relu"], ["pooled"], strides=[2, 2], **same),
        node("Conv", ["pooled", "block1_w", "block1_b"], ["block1"], **same),
        node("Relu", ["block1"], ["block1_relu"]),
        node("Conv", ["block1_relu", "block2_w", "block2_b"], ["block2"], **same),
        node("Add", ["block2", "pooled"], ["residual"]),
        node("Relu", ["residual"], ["block_out"]),
        node("GlobalAveragePool", ["block_out"], ["gap"]),
        node("Flatten", ["gap"], ["features"]),
        node("Gemm", ["features", "fc_w", "fc_b"], [CNN_OUTPUT], transB=1),
    ]
    fp32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info(CNN_INPUT, fp32, ["batch", 3, *size])],
        [helper.make_tensor_value_info(CNN_OUTPUT, fp32, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def resnet18_model(classes: int = 1000, seed: int = 0) -> bytes:
    """A ResNet-18-class ONNX model (about 47 MB) made with ``onnx.helper``: ResNet-18's layer structure with
    random weights, for cold-start and memory figures of a real-sized vision model.

    - Input ``images`` (as :func:`cnn_model`): FP32 ``[batch, 3, 224, 224]``, the batch dynamic. Output
      ``logits``: FP32 ``[batch, classes]``.
    - The stem: Conv 7x7 stride 2 (3 -> 64), BatchNormalization, Relu, MaxPool 3x3 stride 2.
    - Four stages of two basic blocks each (64, 128, 256, 512 channels; the first block of stages 2-4 has stride
      2 and a 1x1 Conv + BatchNormalization shortcut): Conv 3x3, BatchNormalization, Relu, Conv 3x3,
      BatchNormalization, Add the shortcut, Relu. BatchNormalization stays unfolded, as in a training-mode
      export, so onnxruntime's graph optimizations have real work to do at session creation.
    - The head: GlobalAveragePool, Flatten, Gemm (512 -> ``classes``).

    11.7 M parameters with the default 1000 classes, as torchvision's resnet18. The weights are random, from
    ``seed``, scaled by fan-in so activations stay finite through the 18 layers.
    """
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv_bn(x: str, name: str, cin: int, cout: int, kernel: int, stride: int, relu: bool) -> str:
        w = (rng.standard_normal((cout, cin, kernel, kernel)) / np.sqrt(cin * kernel * kernel)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        for part, values in (
            ("scale", 1 + 0.05 * rng.standard_normal(cout)),
            ("bias", 0.05 * rng.standard_normal(cout)),
            ("mean", 0.05 * rng.standard_normal(cout)),
            ("var", 1 + 0.05 * rng.random(cout)),
        ):
            inits.append(numpy_helper.from_array(values.astype(np.float32), f"{name}_bn_{part}"))
        pad = kernel // 2
        conv = {"kernel_shape": [kernel, kernel], "pads": [pad] * 4, "strides": [stride, stride]}
        nodes.append(helper.make_node("Conv", [x, f"{name}_w"], [f"{name}_conv"], **conv))
        bn_inputs = [f"{name}_conv", *(f"{name}_bn_{p}" for p in ("scale", "bias", "mean", "var"))]
        nodes.append(helper.make_node("BatchNormalization", bn_inputs, [f"{name}_bn"]))
        if not relu:
            return f"{name}_bn"
        nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_relu"]))
        return f"{name}_relu"

    x = conv_bn(CNN_INPUT, "stem", 3, 64, 7, 2, relu=True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]))
    x, cin = "pool", 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            name = f"s{stage}b{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = conv_bn(x, f"{name}c1", cin, cout, 3, stride, relu=True)
            y = conv_bn(y, f"{name}c2", cout, cout, 3, 1, relu=False)
            shortcut = conv_bn(x, f"{name}down", cin, cout, 1, stride, relu=False) if stride != 1 else x
            nodes.append(helper.make_node("Add", [y, shortcut], [f"{name}_sum"]))
            nodes.append(helper.make_node("Relu", [f"{name}_sum"], [f"{name}_out"]))
            x, cin = f"{name}_out", cout
    fc = (rng.standard_normal((classes, 512)) / np.sqrt(512)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc_w"))
    inits.append(numpy_helper.from_array((0.01 * rng.standard_normal(classes)).astype(np.float32), "fc_b"))
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"]))
    nodes.append(helper.make_node("Gemm", ["features", "fc_w", "fc_b"], [CNN_OUTPUT], transB=1))
    fp32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "resnet18",
        [helper.make_tensor_value_info(CNN_INPUT, fp32, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info(CNN_OUTPUT, fp32, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def cnn_inputs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for :func:`cnn_model`: normalised images, random from ``seed``."""
    rng = np.random.default_rng(seed)
    return {CNN_INPUT: rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}


#: The zoo's FP16 model: its input, FLOAT16 ``[batch, 8]``, and output, FLOAT16 ``[batch, 4]``.
FP16_INPUT, FP16_OUTPUT = "x", "y"


def fp16_model(features: int = 8, units: int = 4, seed: int = 0) -> bytes:
    """A dense layer in half precision, made with ``onnx.helper``: MatMul, Add, Relu, every tensor FLOAT16.
    Input ``x``: ``[batch, features]``; output ``y``: ``[batch, units]``; the batch dynamic. Random weights."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((features, units)) / np.sqrt(features)).astype(np.float16), "w"),
        numpy_helper.from_array((0.1 * rng.standard_normal(units)).astype(np.float16), "b"),
    ]
    node = helper.make_node
    nodes = [
        node("MatMul", [FP16_INPUT, "w"], ["xw"]),
        node("Add", ["xw", "b"], ["z"]),
        node("Relu", ["z"], [FP16_OUTPUT]),
    ]
    fp16 = onnx.TensorProto.FLOAT16
    graph = helper.make_graph(
        nodes,
        "fp16",
        [helper.make_tensor_value_info(FP16_INPUT, fp16, ["batch", features])],
        [helper.make_tensor_value_info(FP16_OUTPUT, fp16, ["batch", units])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def fp16_inputs(batch: int, features: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {FP16_INPUT: rng.standard_normal((batch, features)).astype(np.float16)}


#: The zoo's scikit-learn models: converted to the default ONNX and ``ai.onnx.ml`` opsets the demo uses.
SKLEARN_OPSETS = {"": 17, "ai.onnx.ml": 3}
#: Their tabular input, FP32 ``[batch, TABULAR_FEATURES]``.
TABULAR_INPUT, TABULAR_FEATURES = "input", 4


def _tabular_data(seed: int, classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic data set (scikit-learn's generators: nothing to download) with ``classes`` classes, or a
    regression target when None."""
    from sklearn.datasets import make_classification, make_regression

    if classes is None:
        x, y = make_regression(n_samples=200, n_features=TABULAR_FEATURES, noise=0.1, random_state=seed)
    else:
        x, y = make_classification(
            n_samples=200, n_features=TABULAR_FEATURES, n_informative=3, n_redundant=0, n_classes=classes,
            random_state=seed,
        )  # fmt: skip
    return x.astype(np.float32), y


def _to_onnx(estimator: Any, initial_types: list[tuple[str, Any]], zipmap: bool | None = None) -> bytes:
    from skl2onnx import convert_sklearn

    # The classifier's own options: for a pipeline, its last step's.
    last = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = None if zipmap is None else {id(last): {"zipmap": zipmap}}
    onx = convert_sklearn(estimator, initial_types=initial_types, options=options, target_opset=SKLEARN_OPSETS)
    return bytes(onx.SerializeToString())


def tree_classifier_model(seed: int = 0) -> bytes:
    """A gradient-boosted tree ensemble classifier (scikit-learn's GradientBoostingClassifier, 3 classes, 10
    rounds of depth-2 trees; an ``ai.onnx.ml`` TreeEnsembleClassifier), converted with ``zipmap=False``: input
    ``input`` FP32 ``[batch, 4]``; outputs ``label`` INT64 ``[batch]`` and ``probabilities`` FP32
    ``[batch, 3]``."""
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = _tabular_data(seed, classes=3)
    clf = GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=seed).fit(x, y)
    return _to_onnx(clf, [(TABULAR_INPUT, FloatTensorType([None, TABULAR_FEATURES]))], zipmap=False)


def tree_regressor_model(seed: int = 0) -> bytes:
    """A gradient-boosted tree ensemble regressor (GradientBoostingRegressor, 10 rounds of depth-2 trees; an
    ``ai.onnx.ml`` TreeEnsembleRegressor): input ``input`` FP32 ``[batch, 4]``; output ``variable`` FP32
    ``[batch, 1]``."""
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = _tabular_data(seed, classes=None)
    reg = GradientBoostingRegressor(n_estimators=10, max_depth=2, random_state=seed).fit(x, y)
    return _to_onnx(reg, [(TABULAR_INPUT, FloatTensorType([None, TABULAR_FEATURES]))])


def tabular_inputs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for the tree ensembles: rows like their training data's."""
    rng = np.random.default_rng(seed)
    return {TABULAR_INPUT: rng.standard_normal((batch, TABULAR_FEATURES)).astype(np.float32)}


def zipmap_classifier_model(seed: int = 0) -> bytes:
    """scikit-learn's default conversion of a classifier (a LogisticRegression): ZipMap on, so its
    ``output_probability`` is ``seq(map(int64,tensor(float)))``, a sequence of maps, beside ``output_label``."""
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = _tabular_data(seed, classes=3)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    return _to_onnx(clf, [(TABULAR_INPUT, FloatTensorType([None, TABULAR_FEATURES]))])


#: The text pipeline's input: one string per row, ``tensor(string)`` ``[batch, 1]``.
TEXT_INPUT = "text"


def text_pipeline_model() -> bytes:
    """A text classifier, ``make_pipeline(TfidfVectorizer(), LogisticRegression())`` on a handful of sentences,
    converted with a string input ``text`` (``[batch, 1]``) and ``zipmap=False``: its outputs are tensors, its
    input is not one WASI-NN carries. (onnxruntime builds its StringNormalizer with the ``en_US.UTF-8`` locale,
    which not every machine has: the push is refused before onnxruntime sees it.)"""
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["a good film", "a great plot", "good acting", "a bad film", "an awful plot", "bad acting"]
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 1, 1, 0, 0, 0])
    return _to_onnx(pipeline, [(TEXT_INPUT, StringTensorType([None, 1]))], zipmap=False)


def onnx_answers(model: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` for ``inputs``, by name: onnxruntime run directly on the CPU, with the session
    options the gateway's backend uses (wasm_host/onnx_backend.py: one intra-op thread, all optimisations), so
    that the gateway's answers can be compared for equality."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


# -- BERT text: a vocab and the reference tokenizer for guest_modules/text_embed/ ------------------------------

#: Sentences in many scripts, with accents, punctuation of several kinds, digits and emoji: what the test vocab is
#: built from, so that it has realistic "##" pieces for them.
BERT_CORPUS = (
    "The quick brown fox jumps over the lazy dog, and the dogs keep sleeping.",
    "Embedding models turn sentences into vectors; similar sentences get similar vectors.",
    "Tokenization splits words into pieces: tokenizing, tokenized, tokenizer, tokenizers.",
    "A café in Zürich serves crème brûlée and naïve piñatas to the señor from São Paulo.",
    "Ångström measured über-precise lengths in Malmö, Köln and Reykjavík.",
    "¿Dónde está la biblioteca? ¡Está allí, señorita! «Très bien», répondit-il… — voilà.",
    "Straße, Œuvre, façade, jalapeño, résumé, coöperate, İstanbul and ǅemal.",
    "Prices rose 3.5% in 2024: $1,299.99 → €1.199,50 (about 1200 units) on 2024-06-30.",
    "Привет, мир! Как дела? Всё хорошо, спасибо.",
    "Ελληνικά: η γρήγορη καφέ αλεπού πηδάει πάνω από τον σκύλο.",
    "中文字符和汉字测试。我们喜欢自然语言处理！",  # noqa: RUF001 (fullwidth punctuation is the point)
    "日本語のテキスト、ひらがなとカタカナ（テスト）です。",  # noqa: RUF001
    "한국어 문장입니다. 안녕하세요, 세계!",
    "العربية لغة جميلة، أليس كذلك؟",
    "עברית היא שפה עתיקה.",
    "हिन्दी भाषा बहुत सुंदर है।",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Emoji everywhere 😀 🎉 👍🏽 ❤️ and flags 🇫🇷 in the chat.",
    "Tabs\tand\nnewlines\r\nare whitespace; zero\u200bwidth spaces are not.",
    "Unknown words like zyxwvut or qqqqq still get pieces from their letters.",
    # Marks that strip_accents keeps (category Mc with a combining class), whose order canonical reordering sets.
    "Stems and dots: x\U0001d165\U0001d16d, tone marks a\u302e\u302f, viramas \u1b44 \ua953.",
)

#: The special tokens, first in the vocab as BERT's trainer writes them.
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_bert_vocab(path: Path) -> Path:
    """Write a BERT vocab.txt built from :data:`BERT_CORPUS`, deterministically and with no download: the
    special tokens, every character of the normalized corpus alone and as "##" continuation (but "🎉", so that
    a known word can still hold an unknown character), whole words seen twice or more, and the prefixes and
    "##" suffixes that several words share, so WordPiece has choices to make. A few lines test the vocab
    reader: a duplicate (the later id wins), trailing spaces and a CRLF ending (trimmed)."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = [w for line in BERT_CORPUS for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(line))]
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    chars = sorted({c for w in words for c in w} - {"🎉"})
    pieces: dict[str, int] = {}
    for w in counts:
        for k in range(2, len(w)):
            pieces[w[:k]] = pieces.get(w[:k], 0) + 1
            pieces["##" + w[k:]] = pieces.get("##" + w[k:], 0) + 1
    whole = sorted((w for w, n in counts.items() if n >= 2), key=lambda w: (-counts[w], w))
    shared = sorted((p for p, n in pieces.items() if n >= 3), key=lambda p: (-pieces[p], p))
    lines = [*BERT_SPECIALS, *chars, *("##" + c for c in chars), *whole, *shared]
    lines += ["the", "trailing  ", "crlf\r"]
    path.write_bytes(("\n".join(dict.fromkeys(lines[:-3])) + "\n" + "\n".join(lines[-3:]) + "\n").encode())
    return path


def bert_tokenizer(vocab: Path, max_length: int = 256) -> Any:
    """Hugging Face ``tokenizers``' BertWordPieceTokenizer on ``vocab``, uncased, truncating at ``max_length``
    tokens as sentence-transformers does: the reference the text_embed guest is held to."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(str(vocab), lowercase=True)
    tokenizer.enable_truncation(max_length)
    return tokenizer


#: How far text_embed's embeddings may be from :func:`reference_text_embeddings`, element by element: float32 all
#: the way in the guest's encoder and in onnxruntime here; the pooling sums in float64 in the guest.
TEXT_EMBED_TOLERANCE = 1e-5


def reference_text_embeddings(vocab: Path, model: bytes, sentences: list[str]) -> np.ndarray:
    """What guest_modules/text_embed/ must answer for ``sentences`` with ``model`` as its encoder and ``vocab`` as
    its vocab: sentence-transformers' recipe, step by step. Tokenize with :func:`bert_tokenizer` (truncating at
    256, padding the batch to its longest), run the encoder in onnxruntime (only the inputs it has: a graph
    without ``token_type_ids`` is fed two), mean-pool its ``last_hidden_state`` over the attention mask,
    L2-normalise. float64 ``[len(sentences), hidden]``."""
    import onnxruntime as ort

    tokenizer = bert_tokenizer(vocab)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    encodings = tokenizer.encode_batch(sentences)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    (states,) = session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in wanted})
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    pooled = (states * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    result: np.ndarray = pooled / np.maximum(norms, 1e-12)
    return result


def bert_vocab_size(vocab: Path) -> int:
    """The ids a vocab written by :func:`write_bert_vocab` gives: its line count (an encoder for it needs that
    many rows of word embeddings)."""
    return len(vocab.read_bytes().split(b"\n")) - 1


#: guest_modules/text_embed/: the text function's C sources, its tokenizer among them.
TEXT_EMBED_SOURCE = Path(__file__).resolve().parent.parent / "guest_modules" / "text_embed"


class NativeTokenizer:
    """The text function's tokenizer (guest_modules/text_embed/tokenizer.c) compiled natively as a shared library
    and called through ctypes: what tests/test_text_embed_tokenizer.py holds to ``tokenizers`` id for id, and
    what bench/text_embed.py times outside the sandbox."""

    def __init__(self, path: Path) -> None:
        import ctypes

        lib = ctypes.CDLL(str(path))
        lib.tk_vocab_load.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_uint32),
        ]
        lib.tk_vocab_free.argtypes = [ctypes.c_void_p]
        lib.tk_vocab_id.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.tk_vocab_id.restype = ctypes.c_int32
        lib.tk_encode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_int32),
            ctypes.c_uint32,
        ]
        lib.tk_encode.restype = ctypes.c_int32
        lib.tk_utf8_invalid_at.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.tk_utf8_invalid_at.restype = ctypes.c_int64
        self.lib = lib

    @classmethod
    def build(cls, out_dir: Path) -> NativeTokenizer | None:
        """tokenizer.c compiled with this machine's C compiler (gcc, cc or clang, ``-O2``) into ``out_dir``; None
        when there is no compiler."""
        import shutil

        cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang-14") or shutil.which("clang")
        if cc is None:
            return None
        lib = out_dir / "libtokenizer.so"
        source = TEXT_EMBED_SOURCE / "tokenizer.c"
        subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", str(source), "-o", str(lib)],
                       check=True)  # fmt: skip
        return cls(lib)

    def load(self, data: bytes) -> tuple[int, int, Any]:
        """(error code, line of a UTF-8 error, vocab handle: a ``ctypes.c_void_p``)."""
        import ctypes

        vocab, line = ctypes.c_void_p(), ctypes.c_uint32()
        code = self.lib.tk_vocab_load(data, len(data), ctypes.byref(vocab), ctypes.byref(line))
        return code, line.value, vocab

    def free(self, vocab: Any) -> None:
        self.lib.tk_vocab_free(vocab)

    def token_id(self, vocab: Any, token: str) -> int:
        raw = token.encode()
        return int(self.lib.tk_vocab_id(vocab, raw, len(raw)))

    def encode(self, vocab: Any, text: str, max_ids: int = 256) -> list[int]:
        import ctypes

        raw = text.encode()
        ids = (ctypes.c_int32 * max_ids)()
        n = self.lib.tk_encode(vocab, raw, len(raw), ids, max_ids)
        assert n >= 2, n
        return list(ids[:n])

    def invalid_at(self, data: bytes) -> int:
        return int(self.lib.tk_utf8_invalid_at(data, len(data)))


# -- the kubernetes client against tests.kube_emulator ---------------------------------------------------------

SCALE_PATH = "/apis/apps/v1/namespaces/default/deployments/wasmgate-runner/scale"


def client_for(emulator: KubeEmulator, token: str | None = None) -> kubernetes.client.ApiClient:
    import kubernetes.client

    configuration = kubernetes.client.Configuration()
    configuration.host = emulator.url
    configuration.api_key["authorization"] = f"Bearer {emulator.token if token is None else token}"
    return kubernetes.client.ApiClient(configuration)


class Changes:
    """The on_change callback: counts calls and checks each is made on the event loop's thread."""

    def __init__(self) -> None:
        self.calls = 0
        self.loop_thread = threading.get_ident()
        self.foreign_threads = 0

    def __call__(self) -> None:
        self.calls += 1
        if threading.get_ident() != self.loop_thread:
            self.foreign_threads += 1


@contextlib.asynccontextmanager
async def running(scaler: KubernetesScaler, emulator: KubeEmulator) -> AsyncIterator[Changes]:
    """Run the scaler until the block ends; the block starts once its first watch is open."""
    changes = Changes()
    watches = emulator.count("watch")
    async with anyio.create_task_group() as tg:
        tg.start_soon(scaler.run, changes)
        try:
            await until(lambda: emulator.count("watch") > watches, "the scaler to start watching")
            yield changes
        finally:
            tg.cancel_scope.cancel()
    with anyio.fail_after(5):  # aclose must not hang
        await scaler.aclose()
    assert changes.foreign_threads == 0


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    with anyio.move_on_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def normalized(value: Any) -> Any:
    """JSON with nulls dropped and timestamps parsed: what a model round trip may rightly change."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    if isinstance(value, str) and len(value) in (20, 25) and value[4:5] == "-" and value[10:11] == "T":
        return datetime.datetime.fromisoformat(value)
    return value


def round_trips(client: kubernetes.client.ApiClient, raw: Any, model: str) -> None:
    parsed = client.deserialize(json.dumps(raw), model, "application/json")
    assert normalized(client.sanitize_for_serialization(parsed)) == normalized(raw)


# -- the hostile guests' documented failures (guest_modules/hostile/README.md) ---------------------------------

MiB = 1024 * 1024
DEADLINE_MS = 200
RESPONSE_LIMIT = 4 * MiB
#: Fixtures `wasm push` must refuse, with the fragment its message must carry (the settings below make the
#: module limits small enough for fixtures that compile in seconds).
REFUSED = {
    "init_loop": f"the function failed to start: the function ran past its deadline ({DEADLINE_MS} ms) in _initialize",
    "init_sleep": (
        f"the function failed to start: the function ran past its deadline ({DEADLINE_MS} ms) in _initialize, "
        "in poll_oneoff, asked to sleep 20000 ms"
    ),
    "bad_import": "import env.open_socket is not allowed",
    "bad_signature": "the function's signature() failed: the function trapped in signature: unreachable",
    "many_functions": "functions, more than 2000 (setting max_module_functions)",
    "big_function": "bytes, more than 32768 (setting max_function_body_bytes)",
}
#: Fixtures whose every request fails before it reaches ``handle``, with the fragments of their message.
BAD_ALLOC = {
    "alloc_oob": ("the function's alloc returned an invalid buffer", "is outside its"),
    "alloc_misaligned": ("the function's alloc returned the misaligned buffer", "requires 8-byte alignment"),
}
#: The gateway settings the hostile fixtures are served with: a short deadline, a small memory limit, and a
#: response limit that huge_response's JSON answer passes and its binary answer does not.
SETTINGS = {
    "WASMGATE_DEADLINE_MS": str(DEADLINE_MS),
    "WASMGATE_MEMORY_LIMIT_BYTES": str(16 * MiB),
    "WASMGATE_MAX_RESPONSE_BYTES": str(RESPONSE_LIMIT),
    "WASMGATE_MAX_MODULE_FUNCTIONS": "2000",
    "WASMGATE_MAX_FUNCTION_BODY_BYTES": "32768",
}
#: WASI preview 1 errno values (wasi/api.h).
EBADF, ENOENT, ENOTSOCK, EPERM = 8, 44, 57, 63
#: The host's bounds-check message: "guest range [p, p+n) is outside its N-byte memory".
OUTSIDE = "is outside its"


@dataclasses.dataclass(frozen=True)
class Misbehaviour:
    """Request ``case`` of ``fixture``: the status it must get, fragments its message must contain, and whether
    the instance must be discarded."""

    fixture: str
    case: int
    status: int
    fragments: tuple[str, ...]
    discarded: bool

    @property
    def function(self) -> str:
        return self.fixture.replace("_", "-")


def _trap(fixture: str, case: int, status: int, fragment: str) -> Misbehaviour:
    return Misbehaviour(fixture, case, status, (fragment,), discarded=True)


def _nn(case: int, call: str, errno: str, cause: str) -> Misbehaviour:
    code = ["success", "invalid_argument", "invalid_encoding", "missing_memory", "busy", "runtime_error",
            "unsupported_operation", "too_large", "not_found"].index(errno)  # fmt: skip
    reported = f"the function failed: wasi-nn {call} failed: {errno} ({code})"
    # The host's cause for the errno is appended to the guest's message: "(wasi-nn: <call>: <cause>)". A
    # function that reports a failure is replaced: whatever led there may still be in its memory.
    return Misbehaviour("nn_abuse", case, 500, (reported, f"(wasi-nn: {call}: ", cause), discarded=True)


TRAPS = [
    _trap("infinite_loop", 1, 504, f"the function ran past its deadline ({DEADLINE_MS} ms) in handle"),
    _trap("memory_bomb", 1, 500, "the function trapped in handle: unreachable"),
    _trap("recursion", 1, 500, "the function trapped in handle: stack overflow"),
    _trap("trap", 1, 500, "the function trapped in handle: unreachable"),
    _trap("abi_oob", 1, 500, "the function returned a result outside its memory"),
    _trap("abi_oob", 2, 500, "the function returned a result outside its memory"),
    _trap("abi_oob", 3, 500, "the function returned a result outside its memory"),
    # A well-bounded but malformed response broke the ABI: the instance is discarded too.
    _trap("abi_oob", 4, 500, "the function returned a malformed response: bad magic"),
    # Answers the function's own signature says it cannot give: the metadata must not lie.
    _trap("abi_oob", 5, 500, "the function returned the undefined status 3"),
    _trap("abi_oob", 6, 500, "the function answered output 'out' as FP32; its signature declares INT32"),
    _trap("abi_oob", 7, 500, "the function answered output 'out' with shape [1, 1]; its signature declares [-1]"),
    _trap("abi_oob", 8, 500, "the function answered the undeclared output 'secret'; its signature declares 'out'"),
    _trap(
        "sleeper", 1, 504, f"past its deadline ({DEADLINE_MS} ms) in handle, in poll_oneoff, asked to sleep 30000 ms"
    ),
    _trap("sleeper", 2, 500, "the function exited in handle: proc_exit(3)"),
    _trap("sleeper", 3, 500, "the function trapped in handle: failed to call `get-random-bytes`: requested len"),
    # An answer too large to send is refused before it is encoded; the answer itself was sound: the instance stays.
    Misbehaviour(
        "huge_response",
        1,
        500,
        (f"over the limit of {RESPONSE_LIMIT} (setting max_response_bytes)", "ask for out in binary"),
        discarded=False,
    ),
    # The guest rejecting its input (status 1) is the caller's error, and the instance is kept.
    Misbehaviour("trap", 9, 400, ("the function rejected the request: unknown case 9",), discarded=False),
]

NN_MISUSE = [
    _nn(1, "load", "invalid_argument", OUTSIDE),
    _nn(2, "load", "invalid_argument", OUTSIDE),
    _nn(3, "load", "too_large", "model of 4294967295 bytes exceeds the 268435456-byte limit"),
    _nn(4, "load", "invalid_argument", "an ONNX graph takes exactly one builder"),
    _nn(5, "load", "invalid_encoding", "encoding 0 is not supported"),
    _nn(6, "load", "invalid_argument", "guest range [4294967040, 4294967040+4)"),
    _nn(7, "load_by_name", "invalid_argument", OUTSIDE),
    _nn(8, "load_by_name", "invalid_argument", OUTSIDE),
    _nn(9, "load_by_name", "not_found", "model 'secret-model' was not pushed with this function"),
    _nn(10, "init_execution_context", "invalid_argument", "no graph with handle 1000"),
    _nn(11, "init_execution_context", "invalid_argument", OUTSIDE),
    _nn(12, "set_input", "invalid_argument", "no execution context with handle 1001"),
    _nn(13, "set_input", "invalid_argument", OUTSIDE),
    _nn(14, "set_input", "invalid_argument", OUTSIDE),
    _nn(15, "set_input", "invalid_argument", OUTSIDE),
    _nn(16, "set_input", "invalid_argument", "takes tensor(float), the guest passed INT64"),
    _nn(17, "set_input", "invalid_argument", "takes shape [-1, 64], the guest passed [1, 32]"),
    _nn(18, "set_input", "too_large", "1099511627520 bytes exceeds the tensor limit"),
    _nn(19, "set_input", "invalid_argument", "input index 5: the graph has 1"),
    _nn(20, "compute", "unsupported_operation", "compute before set_input"),
    _nn(21, "compute", "invalid_argument", "no execution context with handle 1001"),
    _nn(22, "get_output", "unsupported_operation", "get_output before compute"),
    _nn(23, "get_output", "invalid_argument", OUTSIDE),
    _nn(24, "get_output", "invalid_argument", OUTSIDE),
    _nn(25, "get_output", "invalid_argument", OUTSIDE),
    _nn(26, "get_output", "too_large", "output 1 has 40 bytes, the buffer 4"),
    _nn(27, "get_output", "invalid_argument", "output index 7: the graph has 2"),
]

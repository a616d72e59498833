"""Cold start of the pod tier: wasmgate's scale from zero to a first response, against KServe's and MLServer's
process cold start, measured in the same run on the same model and request.

    python -m bench.pod_cold_start [--repeat 5] [--sizes 256,1024,1024,1024,10]
        [--kserve-python PATH] [--mlserver-python PATH] [--json OUT] [--quick]

The model is ``gateway.cli.demo.dense_model`` (by default 2.37 M parameters, about 9.5 MB: a model the router sends
to the pod tier), input ``input`` FP32 [1, 256], output ``output`` FP32 [1, 10]. Every system answers the same
JSON request of one row, and every timed answer is checked against onnxruntime in this process before it
counts. What each number includes:

- **wasmgate, scale from zero to first response.** One ``wasm serve`` runs for the whole benchmark with the
  model pushed at ``--tier pod`` and the local scaler, whose runners scale to zero after 1 s without traffic.
  Each trial waits until the pod tier is at zero (``wasmgate_pod_replicas`` ready and wanted both 0 on
  ``/metrics``, and no runner among the gateway's child processes), then times one request, over a new
  connection, from sending it to having the whole response. That covers the activator holding the request,
  the scaler starting a ``wasm runner`` process (interpreter start, imports, binding), its readiness (the
  scaler polls it every 50 ms), the model load in the runner, the forward and the inference. The gateway
  itself is already running: the pod tier is what scales from zero, which is the comparison asked for. The
  runner's process start is the like-for-like part of it; the request held at the gateway and answered is
  what a user sees. A warm request right after, on the same connection and the same runner, is timed too,
  for context.
- **KServe, MLServer: process cold start.** The time from spawning the model server process (serving the same
  ONNX file with onnxruntime, one intra-op thread) to its first successful OIP v2 inference response to the
  same request: process spawn, interpreter start, imports, model load, server start and the first request.
  The bench polls the infer endpoint every 5 ms from the spawn on, so that readiness is noticed sooner than
  the 50 ms of wasmgate's scaler. KServe is ``bench/kserve_server.py`` (``kserve.ModelServer``, REST only,
  one worker); MLServer is ``mlserver start`` with ``bench/mlserver_runtime.py`` as the model's runtime,
  ``parallel_workers`` 0 (inference in the server process, as in the others: MLServer's default of one
  parallel worker would add a second process and a second model load), the metrics server off and gRPC on a
  free port. Each runs only when given a Python that has it installed (``--kserve-python``,
  ``--mlserver-python``); neither is a wasmgate dependency.

Systems are interleaved in every round, so drift on a noisy machine falls on all of them alike, and each
system is quiet (no runner, no server process) before the next one starts. One untimed round goes first
(not with ``--quick``), so every system starts with its files in the page cache. Reported per system: min,
p50 and max in seconds over ``--repeat`` rounds, and the ratio of each p50 to wasmgate's in the same run.
``--quick`` is one round of a small model, (64, 256, 10), for a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np

from bench.http_load import BENCH, SERVE, WASM, free_port, kserve_command
from gateway.cli.demo import dense_model
from tests.support import listening_on, metric, port_was_taken

DEFAULT_SIZES = (256, 1024, 1024, 1024, 10)
QUICK_SIZES = (64, 256, 10)
MODEL = "dense"
HEADERS = {"content-type": "application/json"}
TIMEOUT_S = 120.0  # for any one cold start, and for the pod tier to get back to zero
IDLE_GRACE_S = 1.0
DRAIN_S = 2.0


@dataclasses.dataclass(frozen=True)
class Case:
    """The request every system answers, and onnxruntime's answer to it."""

    body: bytes
    expected: np.ndarray

    def check(self, who: str, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise RuntimeError(f"{who} answered {response.status_code}: {response.text[:300]}")
        out = next(o for o in response.json()["outputs"] if o["name"] == "output")
        got = np.asarray(out["data"], np.float32).reshape(self.expected.shape)
        if not np.allclose(got, self.expected, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"{who} answered {got.ravel()[:3]}..., onnxruntime says {self.expected.ravel()[:3]}...")


def make_case(model: bytes, width: int) -> Case:
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, width)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return Case(json.dumps(body).encode(), session.run(None, {"input": x})[0])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any WASMGATE_* setting, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WASMGATE_")} | extra


@contextlib.contextmanager
def spawned(
    cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A process in a session of its own, stopped with its children however the block ends. Its own session:
    a Ctrl-C at the terminal reaches only this script, whose clean-up then stops the group, SIGTERM first."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_group(proc)


@contextlib.contextmanager
def spawned_server(
    cmd: Callable[[int], list[str]],
    log: Path,
    env: dict[str, str],
    ready: Callable[[str], bool],
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
    attempts: int = 5,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``spawned(cmd(port))`` for a server that binds ``port`` itself, waited on until ``ready(url)`` holds and
    the server itself listens there: (the process, its URL). The port was free a moment ago; if another process
    binds it first, the server exits saying so ("address already in use") and is started again on another, as
    the tests start theirs (tests.support.start_on_a_port). ``started`` is called with the process at once."""

    def serving(proc: subprocess.Popen[bytes], port: int, url: str) -> Callable[[], bool]:
        return lambda: ready(url) and listening_on(proc.pid, port)

    for attempt in range(1, attempts + 1):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        since = log.stat().st_size if log.exists() else 0
        with spawned(cmd(port), log, env) as proc:
            if started is not None:
                started(proc)
            try:
                wait_until(serving(proc, port, url), "the server to start", proc, log)
            except RuntimeError:
                if proc.poll() is None or attempt == attempts or not port_was_taken(log, since):
                    raise
                continue
            yield proc, url
            return


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Whatever is left of the group (a stuck leader, or a child that outlived it) is killed.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}; see {log}")
        time.sleep(0.05)


# -- wasmgate ------------------------------------------------------------------------------------------------
def runner_children(pid: int) -> list[int]:
    """The runner processes among ``pid``'s children (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"runner" in cmdline:
            found.append(int(entry.name))
    return found


class PodGateway:
    """A running ``wasm serve`` with the model pushed at tier pod, and how to see its pod tier at zero."""

    def __init__(self, stack: contextlib.ExitStack, tmp: Path, model_path: Path) -> None:
        self.log = tmp / "gateway.log"
        env = clean_env(
            WASMGATE_POD_IDLE_GRACE_S=str(IDLE_GRACE_S),
            WASMGATE_DRAIN_TIMEOUT_S=str(DRAIN_S),
            WASMGATE_POD_MAX_REPLICAS="1",
            WASMGATE_POD_HOLD_TIMEOUT_S=str(TIMEOUT_S),
        )

        def cmd(port: int) -> list[str]:
            return [*SERVE, "--port", str(port), "--data-dir", str(tmp / "data"), "--log-level", "warning"]

        self.client = stack.enter_context(httpx.Client(timeout=10, trust_env=False))
        self.proc, self.url = stack.enter_context(spawned_server(cmd, self.log, env, self._ready))
        push = [
            *WASM,
            "push",
            str(model_path),
            "--name",
            MODEL,
            "--tier",
            "pod",
            "--no-mask-cold-start",
            "--gateway",
            self.url,
        ]
        done = subprocess.run(push, capture_output=True, text=True, timeout=TIMEOUT_S, env=clean_env())
        if done.returncode != 0:
            raise RuntimeError(f"wasm push failed: {done.stderr.strip()}")

    def _ready(self, url: str) -> bool:
        try:
            return self.client.get(f"{url}/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    def at_zero(self) -> bool:
        text = self.client.get(f"{self.url}/metrics").text
        replicas = metric(text, "wasmgate_pod_replicas", state="ready") + metric(
            text, "wasmgate_pod_replicas", state="wanted"
        )
        return replicas == 0 and not runner_children(self.proc.pid)

    def wait_for_zero(self) -> None:
        wait_until(self.at_zero, "the pod tier to scale to zero", self.proc, self.log)

    def cold_start(self, case: Case) -> tuple[float, float]:
        """(scale from zero to first response, the warm request right after), in seconds."""
        self.wait_for_zero()
        time.sleep(0.2)  # let the gateway finish collecting the stopped runner: time the request, not that
        infer = f"{self.url}/v2/models/{MODEL}/infer"
        with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as client:
            t0 = time.perf_counter()
            cold = client.post(infer, content=case.body, headers=HEADERS)
            t1 = time.perf_counter()
            warm = client.post(infer, content=case.body, headers=HEADERS)
            t2 = time.perf_counter()
        case.check("wasmgate", cold)
        case.check("wasmgate", warm)
        if cold.headers.get("x-wasmgate-cold-start") != "true" or cold.headers.get("x-wasmgate-tier") != "pod":
            raise RuntimeError(f"expected a pod-tier cold start, got headers {dict(cold.headers)}")
        if "x-wasmgate-cold-start" in warm.headers:
            raise RuntimeError("expected the second request to be warm")
        # Quiet again before another system is timed: the runner's shutdown must not land in its numbers.
        self.wait_for_zero()
        return t1 - t0, t2 - t1


# -- KServe and MLServer: a process up to its first answer ------------------------------------------------------
def process_cold_start(
    name: str, cmd: list[str], port: int, env: dict[str, str], cwd: Path, log: Path, case: Case
) -> float:
    """Seconds from spawning ``cmd`` to its first 200 from the infer endpoint on ``port`` (polled every 5 ms)."""
    infer = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as client:
        t0 = time.perf_counter()
        with spawned(cmd, log, env, cwd) as proc:
            while True:
                try:
                    response: httpx.Response | None = client.post(infer, content=case.body, headers=HEADERS)
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 200:
                    elapsed = time.perf_counter() - t0
                    case.check(name, response)
                    return elapsed
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
                if time.perf_counter() - t0 > TIMEOUT_S:
                    raise RuntimeError(f"{name} did not answer within {TIMEOUT_S:.0f} s; see {log}")
                time.sleep(0.005)


def kserve_trial(python: str, model_path: Path, tmp: Path, case: Case) -> float:
    cmd, env = kserve_command(python, model_path)
    port = free_port()
    env = clean_env(**(env | {"KSERVE_MODEL": MODEL}))
    return process_cold_start("KServe", [*cmd, str(port)], port, env, tmp, tmp / "kserve.log", case)


def mlserver_trial(python: str, model_path: Path, tmp: Path, case: Case) -> float:
    root = tmp / "mlserver"
    (root / MODEL).mkdir(parents=True, exist_ok=True)
    http, grpc, metrics = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,  # MLServer always starts its gRPC server: a free port, so nothing collides
        "metrics_endpoint": None,  # no metrics server
        "metrics_port": metrics,
        "metrics_dir": str(tmp / "mlserver-metrics"),
        "environments_dir": str(tmp / "mlserver-envs"),
        "parallel_workers": 0,
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": MODEL,
        "implementation": "bench.mlserver_runtime.OnnxRuntime",
        "parameters": {"uri": str(model_path)},
    }
    (root / MODEL / "model-settings.json").write_text(json.dumps(model_settings))
    path = os.pathsep.join(p for p in (str(BENCH.parent), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [str(Path(python).parent / "mlserver"), "start", str(root)]
    return process_cold_start("MLServer", cmd, http, clean_env(PYTHONPATH=path), tmp, tmp / "mlserver.log", case)


def version_of(python: str, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{python} has no {package}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip()


# -- the run --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class System:
    key: str
    label: str
    timed: str
    trial: Callable[[], float]
    seconds: list[float] = dataclasses.field(default_factory=list)


def table(systems: list[System], warm: list[float]) -> list[str]:
    base = float(np.median(systems[0].seconds))
    lines = [
        "| system | timed | n | min (s) | p50 (s) | max (s) | p50 / wasmgate p50 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = [(s.label, s.timed, s.seconds) for s in systems]
    rows.append(("wasmgate warm request (context)", "request sent, runner up -> response", warm))
    for label, timed, values in rows:
        p50 = float(np.median(values))
        lines.append(
            f"| {label} | {timed} | {len(values)} | {min(values):.3f} | {p50:.3f} | {max(values):.3f} "
            f"| {p50 / base:.2f}x |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--sizes", help="the MLP's layer widths, comma-separated (default 256,1024,1024,1024,10)")
    parser.add_argument("--kserve-python", help="a Python with kserve and onnxruntime (else KServe is skipped)")
    parser.add_argument("--mlserver-python", help="a Python with mlserver and onnxruntime (else MLServer is skipped)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--quick", action="store_true", help=f"one round, sizes {QUICK_SIZES}, no untimed round")
    args = parser.parse_args()
    # A SIGTERM unwinds like a Ctrl-C, so every server this script started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else QUICK_SIZES if args.quick else DEFAULT_SIZES
    repeat, warmup = (1, 0) if args.quick else (args.repeat, 1)
    versions = {"wasmgate": importlib.metadata.version("wasmgate")}
    if args.kserve_python:
        versions["kserve"] = version_of(args.kserve_python, "kserve")
    if args.mlserver_python:
        versions["mlserver"] = version_of(args.mlserver_python, "mlserver")

    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-pod-cold-"))
    model = dense_model(sizes)
    model_path = tmp / f"{MODEL}.onnx"
    model_path.write_bytes(model)
    case = make_case(model, sizes[0])
    params = sum(a * b + b for a, b in itertools.pairwise(sizes))
    print(
        f"model: MLP {sizes}, {params / 1e6:.2f} M parameters, {len(model) / 1e6:.1f} MB; one JSON row per request; "
        f"{repeat} timed round(s) after {warmup} untimed; {os.cpu_count()} CPUs, Python {platform.python_version()}",
        flush=True,
    )
    warm: list[float] = []
    with contextlib.ExitStack() as stack:
        gateway = PodGateway(stack, tmp, model_path)

        def wasmgate_trial() -> float:
            cold, warm_s = gateway.cold_start(case)
            warm.append(warm_s)
            return cold

        systems = [
            System("wasmgate", f"wasmgate {versions['wasmgate']} pod tier", "request sent, no runner -> response",
                   wasmgate_trial),
        ]  # fmt: skip
        if args.kserve_python:
            python = args.kserve_python
            systems.append(System("kserve", f"KServe {versions['kserve']}", "process spawn -> first response",
                                  lambda: kserve_trial(python, model_path, tmp, case)))  # fmt: skip
        if args.mlserver_python:
            mlpython = args.mlserver_python
            systems.append(System("mlserver", f"MLServer {versions['mlserver']}", "process spawn -> first response",
                                  lambda: mlserver_trial(mlpython, model_path, tmp, case)))  # fmt: skip
        for i in range(warmup + repeat):
            timed = i >= warmup
            parts = []
            for system in systems:
                seconds = system.trial()
                parts.append(f"{system.key} {seconds:.3f} s")
                if timed:
                    system.seconds.append(seconds)
            if not timed:
                warm.clear()
            print(f"round {i + 1 - warmup if timed else 'untimed'}: " + ", ".join(parts), flush=True)

    print()
    print("\n".join(table(systems, warm)))
    base = float(np.median(systems[0].seconds))
    for system in systems[1:]:
        print(f"{system.label.split()[0]}/wasmgate p50: {float(np.median(system.seconds)) / base:.2f}x")
    if args.json:
        raw = {
            "sizes": list(sizes),
            "parameters": params,
            "model_bytes": len(model),
            "repeat": repeat,
            "untimed_rounds": warmup,
            "versions": versions,
            "cpus": os.cpu_count(),
            "seconds": {s.key: s.seconds for s in systems},
            "wasmgate_warm_seconds": warm,
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)  # kept when anything failed, for its logs


if __name__ == "__main__":
    main()

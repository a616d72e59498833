"""Throughput over HTTP with a real load generator: wasmgate against a plain starlette + onnxruntime endpoint
(no sandbox, no validation, no metrics) and KServe's Python model server, every case measured in one run.

    python -m bench.http_load [--duration 10] [--concurrency 8] [--kserve-python PATH] [--start-trials 3]
                              [--workers-check] [--quick] [--start-only] [--cases digits-json,mlp-json,...]

Cases, each at concurrency ``--concurrency`` (default 8):

- ``digits-json``: one row of sklearn's digits (a logistic regression, bare, behind the passthrough guest), JSON;
- ``digits-binary``: the same row as binary tensors in and out (Triton's extension), the plain server too;
- ``mlp-json`` and ``mlp-binary``: one row of 256 floats through a ~10 MB dense MLP (``dense_model()``, 2.37 M
  parameters), pushed ``--tier wasm`` so the gateway serves it itself;
- ``topk-json``: the custom function ``digits_topk`` (guest_modules/digits_topk: UINT8 pixels in, its own pre-
  and post-processing around the same digits model), against the plain server's digits JSON;
- KServe's model server on ``digits-json`` (given ``--kserve-python``).

Every server is pinned to CPU 0 with ``taskset`` and ``wrk`` (one thread) runs on CPU 1, so the figures are one
core's worth of serving; each answer is checked against onnxruntime before it is timed. All servers run at once
and ``--rounds`` rounds interleave them, ``--duration`` seconds per case and server, so that load from elsewhere
on a shared machine hits them alike; each ratio is the median (and range) of the rounds' ratios, each of a pair
measured back to back. Besides requests per second, p50 and p99, each case reports the server's CPU per
request (its process's user and system time across the timed run, from /proc, over the requests served):
on a core of its own a server's throughput is about the inverse of it, and it moves less than requests per
second when other processes share the core. ``--baseline DIR`` measures the wasmgate of another checkout (run
with ``PYTHONPATH=DIR``) in the same rounds, for a before and after. Then the time from process start to the
first served inference, wasmgate (its data directory holding the digits function) against the plain server, the
median of ``--start-trials``, the two interleaved; ``--start-only`` measures that alone (only the digits
function pushed, no wrk case). ``--workers-check`` adds ``--workers 2`` against one worker, unpinned. A fourth
server, uvicorn answering a constant (bench/floor_server.py), measures what the HTTP layer alone costs on the
digits JSON case: the floor under every Python server here.

KServe is not a wasmgate dependency: give ``--kserve-python`` a Python with ``kserve`` and ``onnxruntime``
installed (``python3 -m venv /tmp/kserve && /tmp/kserve/bin/pip install kserve onnxruntime``), or it is
skipped. Needs Debian's ``wrk`` and util-linux's ``taskset``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from gateway.cli.demo import dense_model, train_digits
from gateway.codec import HEADER_LENGTH, parse_response

BENCH = Path(__file__).resolve().parent
WASM = [str(Path(sys.executable).parent / "wasm")]
#: ``wasm serve`` as the benches run it: HTTP only (they measure HTTP), so that a bench's gateways never contend
#: for the gRPC port's default.
SERVE = [*WASM, "serve", "--grpc-port", "0"]
#: A ``--baseline`` checkout may predate the gRPC service and its flag.
BASELINE_SERVE = [*WASM, "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    cmd: list[str],
    port: int,
    name: str,
    body: bytes,
    pin: str | None,
    env: dict[str, str] | None = None,
    setup: list[list[str]] | None = None,
) -> Iterator[str]:
    """A server process (pinned to ``pin``) ready on ``port``, with ``setup`` commands run against it; its URL."""
    with started(cmd, port, name, pin, env, setup) as (url, _):
        yield url


@contextmanager
def started(
    cmd: list[str],
    port: int,
    name: str,
    pin: str | None,
    env: dict[str, str] | None = None,
    setup: list[list[str]] | None = None,
) -> Iterator[tuple[str, int]]:
    """:func:`server`, yielding its URL and its process id."""
    url = f"http://127.0.0.1:{port}"
    full = (["taskset", "-c", pin] if pin else []) + cmd
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        full, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {log.name}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log.name}")
            time.sleep(0.1)
        for step in setup or []:
            subprocess.run([*step, "--gateway", url], check=True, capture_output=True)
        yield url, proc.pid
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the server may have exited already (a failed start)
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lua_string(data: bytes) -> str:
    """``data`` as a Lua string literal, byte for byte (a binary body included)."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in data) + '"'


@dataclasses.dataclass(frozen=True)
class Case:
    """One request to time: its path on the server, its body and headers, and how to check its answer."""

    name: str
    model: str
    body: bytes
    headers: dict[str, str]
    check: Callable[[httpx.Response], None]


#: Each server: its name, its command for a port, its environment, its setup commands, and its cases' names.
Servers = list[tuple[str, Callable[[int], list[str]], dict[str, str] | None, list[list[str]], list[str]]]


def wrk(url: str, case: Case, connections: int, duration: int, pin: str | None) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        for k, v in case.headers.items():
            script.write(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n")
        script.write(f"wrk.body = {lua_string(case.body)}\n")
    cmd = (["taskset", "-c", pin] if pin else []) + [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        script.name,
        f"{url}/v2/models/{case.model}/infer",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return {
        "rps": rps,
        "requests": float(done),
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def measure(url: str, pid: int, case: Case, connections: int, duration: int) -> dict[str, float]:
    """One timed wrk run of ``case`` (wrk on CPU 1), with the server's CPU per request over it."""
    before = cpu_seconds(pid)
    r = wrk(url, case, connections, duration, pin="1")
    r["cpu_us"] = (cpu_seconds(pid) - before) / max(r["requests"], 1.0) * 1e6
    return r


def kserve_command(python: str, model_path: Path) -> tuple[list[str], dict[str, str]]:
    """KServe's server for the digits model; the port goes last (``--http_port`` is the final flag)."""
    cmd = [python, str(BENCH / "kserve_server.py"), "--enable_latency_logging", "false",
           "--configure_logging", "false", "--http_port"]  # fmt: skip
    return cmd, {"KSERVE_MODEL": "digits", "KSERVE_MODEL_PATH": str(model_path)}


def json_body(name: str, x: np.ndarray, datatype: str) -> bytes:
    tensor = {"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_case(name: str, model: str, x: np.ndarray, check: Callable[[httpx.Response], None]) -> Case:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32",
              "parameters": {"binary_data_size": x.nbytes}}  # fmt: skip
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}
    return Case(name, model, head + x.tobytes(), headers, check)


def outputs(r: httpx.Response) -> dict[str, np.ndarray]:
    """An answer's outputs by name, JSON or binary."""
    r.raise_for_status()
    tensors = parse_response(r.content, r.headers.get(HEADER_LENGTH), 1 << 30)
    return {t.name: t.to_numpy() for t in tensors}


def cases(digits_model: bytes, mlp_model: bytes, x: np.ndarray, m: np.ndarray) -> dict[str, Case]:
    """Every case of the run, keyed by name, each checked against onnxruntime run here."""
    import onnxruntime as ort

    label = ort.InferenceSession(digits_model).run(["label"], {"input": x})[0]
    mlp_out = ort.InferenceSession(mlp_model).run(None, {"input": m})[0]
    j = {"content-type": "application/json"}

    def digits_ok(r: httpx.Response) -> None:
        if not np.array_equal(outputs(r)["label"], label):
            raise RuntimeError(f"digits answered {r.text[:200]}, onnxruntime says {label}")

    def mlp_ok(r: httpx.Response) -> None:
        if not np.allclose(outputs(r)["output"].reshape(mlp_out.shape), mlp_out, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"the MLP answered {r.text[:200]}, not what onnxruntime says")

    def topk_ok(r: httpx.Response) -> None:
        if outputs(r)["labels"].reshape(-1, 3)[0, 0] != label[0]:
            raise RuntimeError(f"digits_topk answered {r.text[:200]}, onnxruntime's top class is {label}")

    pixels = np.rint(x * 16).astype(np.uint8)
    return {
        "digits-json": Case("digits-json", "digits", json_body("input", x, "FP32"), j, digits_ok),
        "digits-binary": binary_case("digits-binary", "digits", x, digits_ok),
        "mlp-json": Case("mlp-json", "mlp", json_body("input", m, "FP32"), j, mlp_ok),
        "mlp-binary": binary_case("mlp-binary", "mlp", m, mlp_ok),
        "topk-json": Case("topk-json", "digits-top3", json_body("images", pixels, "UINT8"), j, topk_ok),
    }


def first_inference_s(
    cmd: list[str], case: Case, url: str, timeout_s: float = 120.0, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Seconds from starting ``cmd`` (pinned to CPU 0) to its first answered inference of ``case``, and the CPU
    seconds the process had used by then (which moves less than the first when other processes share the core).
    """
    started_at = time.perf_counter()
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        with httpx.Client(timeout=30) as client:
            while time.perf_counter() - started_at < timeout_s:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited with {proc.returncode} before answering")
                try:
                    r = client.post(f"{url}/v2/models/{case.model}/infer", content=case.body, headers=case.headers)
                except httpx.TransportError:
                    time.sleep(0.005)
                    continue
                if r.status_code == 200:
                    elapsed = time.perf_counter() - started_at
                    cpu = cpu_seconds(proc.pid)  # taskset has exec'd the server: the same process
                    case.check(r)
                    return elapsed, cpu
                time.sleep(0.005)
        raise RuntimeError(f"{cmd[0]} answered nothing within {timeout_s} s")
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of each timed wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case on every server, interleaved")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kserve-python", default=None)
    parser.add_argument("--start-trials", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="another checkout's root: its wasmgate measured too")
    parser.add_argument("--workers-check", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one round of 1 s runs and one start trial: a smoke test")
    parser.add_argument("--cases", default=None, help="cases to run, comma-separated; digits-json always runs")
    parser.add_argument("--start-only", action="store_true", help="only the start to first inference, no wrk case")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.start_trials = 1, 1, 1
    for tool in ("taskset",) if args.start_only else ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk util-linux)")
    tmp = Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))
    digits_model, x_test, _ = train_digits()
    mlp_model = dense_model()
    paths = {"digits": tmp / "digits.onnx", "mlp": tmp / "mlp.onnx"}
    paths["digits"].write_bytes(digits_model)
    paths["mlp"].write_bytes(mlp_model)
    x = x_test[:1]
    m = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    every = cases(digits_model, mlp_model, x, m)
    if args.cases:
        unknown = set(args.cases.split(",")) - set(every)
        if unknown:
            sys.exit(f"unknown case(s) {sorted(unknown)}; the cases are {', '.join(every)}")
        # digits-json always: KServe's case, the custom function's reference and the start trials' request.
        every = {k: v for k, v in every.items() if k in {*args.cases.split(","), "digits-json"}}
    topk = BENCH.parent / "guest_modules" / "build" / "digits_topk.wasm"
    pushes = [
        [*WASM, "push", str(paths["digits"]), "--name", "digits"],
        [*WASM, "push", str(paths["mlp"]), "--name", "mlp", "--tier", "wasm"],
        [*WASM, "push", str(topk), "--name", "digits-top3", "--model", f"digits={paths['digits']}"],
    ]

    def wasmgate_cmd(port: int, data: Path, workers: int = 1, serve: Sequence[str] = SERVE) -> list[str]:
        return [*serve, "--port", str(port), "--data-dir", str(data), "--log-level", "warning",
                "--workers", str(workers)]  # fmt: skip

    def plain_cmd(port: int) -> list[str]:
        return [sys.executable, str(BENCH / "plain_server.py"), str(paths["digits"]), str(paths["mlp"]), str(port)]

    # What each server is asked: the plain server answers the custom function's case with plain digits.
    plain_of = {"topk-json": "digits-json"}
    servers: Servers = [
        ("plain", plain_cmd, None, [], [c for c in every if c not in plain_of]),
        ("wasmgate", lambda port: wasmgate_cmd(port, tmp / "data"), None, pushes, list(every)),
    ]
    baseline_env = {}
    if args.baseline:
        # Its gRPC port off by the environment, which a checkout that predates the flag ignores.
        baseline_env = {"PYTHONPATH": str(Path(args.baseline).resolve()), "WASMGATE_GRPC_PORT": "0"}
        servers.append(("baseline", lambda port: wasmgate_cmd(port, tmp / "data-baseline", 1, BASELINE_SERVE),
                        baseline_env, pushes, list(every)))  # fmt: skip
    # The HTTP layer's own cost: uvicorn answering a constant (bench/floor_server.py), on the digits JSON case.
    servers.append(("floor", lambda port: [sys.executable, str(BENCH / "floor_server.py"), str(port)], None, [],
                    ["digits-json"]))  # fmt: skip
    if args.kserve_python:
        ks, ks_env = kserve_command(args.kserve_python, paths["digits"])
        servers.append(("kserve", lambda port: [*ks, str(port)], ks_env, [], ["digits-json"]))
    else:
        print("kserve: skipped (no --kserve-python)")
    if args.start_only:
        # Only what the start is measured with: the digits function in each gateway's data dir.
        for name, command, env, _, _ in servers:
            if name in ("wasmgate", "baseline"):
                port = free_port()
                with server(command(port), port, name, b"", "0", env, setup=pushes[:1]):
                    pass
    else:
        load_rounds(args, every, servers, plain_of)

    # The start is measured as an installed package starts, from bytecode: with PYTHONDONTWRITEBYTECODE set, or a
    # checkout that cannot be written, every start would compile every module of the checkout from source.
    for root in [BENCH.parent] + ([Path(args.baseline).resolve()] if args.baseline else []):
        packages = [str(root / p) for p in ("gateway", "router", "wasm_host")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True, stdout=subprocess.DEVNULL)
    starters: dict[str, tuple[Callable[[int], list[str]], dict[str, str] | None]] = {
        "wasmgate": (lambda port: wasmgate_cmd(port, tmp / "data"), None),
        "plain": (plain_cmd, None),
    }
    if args.baseline:
        starters["baseline"] = (lambda port: wasmgate_cmd(port, tmp / "data-baseline", 1, BASELINE_SERVE), baseline_env)
    starts: dict[str, list[tuple[float, float]]] = {name: [] for name in starters}
    for _ in range(args.start_trials):  # interleaved, so drift on a shared machine hits each alike
        for name, (command, env) in starters.items():
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            starts[name].append(first_inference_s(command(port), every["digits-json"], url, env=env))
    wall = {name: statistics.median(w for w, _ in values) for name, values in starts.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in starts.items()}
    print(f"\nprocess start to first served inference (median of {args.start_trials}, pinned to CPU 0): "
          f"wasmgate {wall['wasmgate']:.2f} s, plain {wall['plain']:.2f} s: {wall['wasmgate'] / wall['plain']:.2f}x; "
          f"CPU by then {cpu['wasmgate']:.2f} s and {cpu['plain']:.2f} s: "
          f"{cpu['wasmgate'] / cpu['plain']:.2f}x")  # fmt: skip
    if args.baseline:
        print(f"  the baseline: {wall['baseline']:.2f} s, {wall['baseline'] / wall['plain']:.2f}x the plain server; "
              f"CPU {cpu['baseline']:.2f} s, {cpu['baseline'] / cpu['plain']:.2f}x")  # fmt: skip
    for name, values in starts.items():
        print(f"  {name}: " + " ".join(f"{w:.3f}" for w, _ in values) + " s; CPU "
              + " ".join(f"{c:.2f}" for _, c in values) + " s")  # fmt: skip

    if args.workers_check:
        workers_check(wasmgate_cmd, tmp, pushes[0], every["digits-json"], args.concurrency, args.duration)
    shutil.rmtree(tmp, ignore_errors=True)


def load_rounds(args: argparse.Namespace, every: dict[str, Case], servers: Servers, plain_of: dict[str, str]) -> None:
    """Every case on every server, ``args.rounds`` interleaved rounds, and the table of their ratios."""
    c = args.concurrency
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        # Every server up at once, each pinned to CPU 0 (an idle one costs nothing), so that the rounds can
        # interleave them: a burst of load from elsewhere on a shared machine then hits them all alike.
        up: dict[str, tuple[str, int]] = {}
        for name, command, env, setup, names in servers:
            port = free_port()
            up[name] = url, _ = stack.enter_context(started(command(port), port, name, "0", env, setup))
            for case_name in names:
                case = every[case_name]
                with httpx.Client() as client:
                    answer = client.post(f"{url}/v2/models/{case.model}/infer", content=case.body, headers=case.headers)
                if name != "floor":  # it answers a constant
                    case.check(answer)
                wrk(url, case, c, min(2, args.duration), pin="1")  # warm-up
        for _ in range(args.rounds):
            for case_name in every:
                for name, _, _, _, names in servers:
                    if case_name not in names:
                        continue
                    url, pid = up[name]
                    runs.setdefault((name, case_name), []).append(r := measure(url, pid, every[case_name], c,
                                                                               args.duration))  # fmt: skip
                    print(
                        f"{name:9s} {case_name:14s} c={c:<3d} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                        f"p99 {r['p99_ms']:6.2f} ms  CPU {r['cpu_us']:5.0f} us/req  non-2xx {int(r['non2xx'])}",
                        flush=True,
                    )

    def ratio(ours: str, case_name: str, theirs: str, other_case: str, key: str, inverse: bool = False) -> str:
        """Median and range over the rounds of one round's ratio (each pair measured back to back)."""
        pairs = zip(runs[(ours, case_name)], runs[(theirs, other_case)], strict=True)
        values = sorted((b[key] / a[key]) if inverse else (a[key] / b[key]) for a, b in pairs)
        return f"{statistics.median(values):.2f}x ({values[0]:.2f}-{values[-1]:.2f})"

    def median(name: str, case_name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[(name, case_name)])

    print(f"\nwasmgate against the plain server, c={c}, median (range) over {args.rounds} interleaved rounds:")
    print("| case | req/s, wasmgate / plain | CPU per request, plain / wasmgate | wasmgate CPU | plain CPU |")
    print("|---|---|---|---|---|")
    for case_name in every:
        other = plain_of.get(case_name, case_name)
        ours_cpu, plain_cpu = median("wasmgate", case_name, "cpu_us"), median("plain", other, "cpu_us")
        print(f"| {case_name} | {ratio('wasmgate', case_name, 'plain', other, 'rps')} | "
              f"{ratio('wasmgate', case_name, 'plain', other, 'cpu_us', inverse=True)} | "
              f"{ours_cpu:.0f} us | {plain_cpu:.0f} us |")  # fmt: skip
    if "kserve" in up:
        print(f"| digits-json against KServe | {ratio('wasmgate', 'digits-json', 'kserve', 'digits-json', 'rps')} | "
              f"{ratio('wasmgate', 'digits-json', 'kserve', 'digits-json', 'cpu_us', inverse=True)} | | "
              f"KServe: {median('kserve', 'digits-json', 'cpu_us'):.0f} us |")  # fmt: skip
        # What no sandbox at all gets against KServe: the bound on what the sandbox's ratio can be.
        print(f"| plain digits-json against KServe | {ratio('plain', 'digits-json', 'kserve', 'digits-json', 'rps')} | "
              f"{ratio('plain', 'digits-json', 'kserve', 'digits-json', 'cpu_us', inverse=True)} | | |")  # fmt: skip
    floor = median("floor", "digits-json", "cpu_us")
    print(f"\nthe HTTP layer alone (uvicorn answering a constant, bench/floor_server.py): {floor:.0f} us of CPU per "
          f"request; above it, digits-json costs wasmgate {median('wasmgate', 'digits-json', 'cpu_us') - floor:.0f} "
          f"us and the plain server {median('plain', 'digits-json', 'cpu_us') - floor:.0f} us")  # fmt: skip
    if "baseline" in up:
        print(f"\nthis checkout against the baseline ({args.baseline}), same rounds:")
        print("| case | req/s, this / baseline | CPU per request, baseline / this | baseline / plain, req/s |")
        print("|---|---|---|---|")
        for case_name in every:
            other = plain_of.get(case_name, case_name)
            print(f"| {case_name} | {ratio('wasmgate', case_name, 'baseline', case_name, 'rps')} | "
                  f"{ratio('wasmgate', case_name, 'baseline', case_name, 'cpu_us', inverse=True)} | "
                  f"{ratio('baseline', case_name, 'plain', other, 'rps')} |")  # fmt: skip


def workers_check(
    wasmgate_cmd: Callable[[int, Path, int], list[str]], tmp: Path, push: list[str], case: Case, c: int, duration: int
) -> None:
    """``--workers 2`` against ``--workers 1``, unpinned, on digits JSON."""
    scale = {}
    for workers in (1, 2):
        port = free_port()
        data = tmp / f"data-w{workers}"
        with server(wasmgate_cmd(port, data, workers), port, f"wasmgate-w{workers}", b"", pin=None,
                    setup=[push]) as url:  # fmt: skip
            wrk(url, case, c, 2, pin=None)
            scale[workers] = r = wrk(url, case, c, duration, pin=None)
            print(f"wasmgate --workers {workers} (unpinned) c={c}: {r['rps']:.0f} req/s  p99 {r['p99_ms']:.2f} ms"
                  f"  non-2xx {int(r['non2xx'])}", flush=True)  # fmt: skip
    print(f"--workers 2 / --workers 1: {scale[2]['rps'] / scale[1]['rps']:.2f}x")


if __name__ == "__main__":
    main()

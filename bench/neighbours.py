"""A healthy function's latency beside functions that sleep: what eight sleepers cost their neighbours.

    python -m bench.neighbours [--requests 400] [--sleepers 8]

One real ``wasm serve`` with its default settings (2 s deadline, 8 worker threads, the local scaler off so that
only the Wasm tier serves), the digits model pushed bare (the healthy function) and the ``sleeper`` hostile
fixture (guest_modules/hostile/sleeper.c). The healthy function is asked ``--requests`` times, one request at a
time, in four phases, each measured in the same run:

1. **alone**: nothing else runs;
2. **beside clients of a quick function** (the control): ``--sleepers`` client threads send the fixture's case 0
   (it answers at once) back to back: the cost of that much traffic on the same CPUs, with nothing hostile;
3. **beside sleepers past the deadline**: ``--sleepers`` client threads send the fixture's case 1 (``sleep(30)``)
   back to back. Each must get 504 at once (the host refuses a wait that would pass the deadline), so none
   holds a worker thread; compare with phase 2, the same number of clients doing nothing hostile;
4. **beside sleepers within the deadline**: the same threads send case 4 (``sleep(1)``), which is legitimate
   work: each holds a worker thread for a second, as any slow function would.

Printed: the healthy function's p50 and p99 per phase and their ratio to phase 1, and, per sleeper phase, the
sleepers' answers by status with their p50 and largest latency (the 504s' show how soon a 30 s sleep is
refused). The healthy function is quick, so it runs on the event loop thread (setting ``inline_below_ms``), not
on a worker thread: phase 4 shows what holding every worker costs such a neighbour. Linux or macOS; the
machine's other load shows in every phase alike.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np

from bench.http_load import SERVE
from bench.pod_cold_start import clean_env, spawned_server
from gateway.cli.client import AdminClient
from gateway.cli.demo import train_digits

GUEST_MODULES = Path(__file__).resolve().parent.parent / "guest_modules"
ENV = {"WASMGATE_POD_SCALER": "none", "WASMGATE_ACCELERATORS": "none"}
#: The phases beside the healthy function's "alone": what the client threads send (the fixture's case).
PHASES = (
    ("clients of a quick function (control)", 0),
    ("sleepers past the deadline (sleep 30 s)", 1),
    ("sleepers within it (sleep 1 s)", 4),
)


def case_body(case: int) -> dict[str, object]:
    return {"inputs": [{"name": "case", "shape": [1], "datatype": "INT32", "data": [case]}]}


def healthy_latencies(url: str, body: Mapping[str, object], expected: list[int], n: int) -> np.ndarray:
    times = []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        for _ in range(n):
            started = time.perf_counter()
            r = http.post("/v2/models/digits/infer", json=body)
            times.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200 or r.json()["outputs"][0]["data"] != expected:
                raise SystemExit(f"the healthy function answered wrongly: {r.status_code} {r.text[:200]}")
    return np.array(times)


class Sleepers:
    """``count`` client threads sending the sleeper's ``case`` back to back while the block runs; ``answers``:
    their latencies (ms) by status."""

    def __init__(self, url: str, case: int, count: int) -> None:
        self.url, self.case = url, case
        self.answers: dict[int, list[float]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]

    def __enter__(self) -> Sleepers:
        for t in self._threads:
            t.start()
        time.sleep(1.5)  # every thread has sent its first request
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                r = http.post("/v2/models/sleeper/infer", json=case_body(self.case))
                with self._lock:
                    self.answers[r.status_code].append((time.perf_counter() - started) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--sleepers", type=int, default=8)
    args = parser.parse_args()

    sys.path.insert(0, str(GUEST_MODULES))
    import build  # guest_modules/build.py

    sleeper = build.build_hostile(["sleeper"])["sleeper"]
    digits, x, _ = train_digits()
    rows = x[:4].astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def cmd(port: int) -> list[str]:
            return [*SERVE, "--port", str(port), "--data-dir", str(tmp / "data"), "--log-level", "warning"]

        def ready(url: str) -> bool:
            try:
                return httpx.get(f"{url}/v2/health/ready", trust_env=False).status_code == 200
            except httpx.TransportError:
                return False

        with spawned_server(cmd, tmp / "gateway.log", clean_env(**ENV), ready) as (_proc, url):
            with AdminClient(url) as admin:
                admin.push("digits", None, {"model": digits})
                admin.push("sleeper", sleeper.read_bytes(), {})
            with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
                expected = http.post("/v2/models/digits/infer", json=body).json()["outputs"][0]["data"]
            healthy_latencies(url, body, expected, 50)  # warm-up: its instance, and its place on the loop

            alone = healthy_latencies(url, body, expected, args.requests)
            beside: list[tuple[str, np.ndarray, dict[int, list[float]]]] = []
            for label, case in PHASES:
                with Sleepers(url, case, args.sleepers) as running:
                    times = healthy_latencies(url, body, expected, args.requests)
                beside.append((label, times, running.answers))

    base50, base99 = np.percentile(alone, 50), np.percentile(alone, 99)
    print(f"healthy function (digits, 4 rows, JSON), {args.requests} requests per phase, {args.sleepers} sleepers")
    print(f"{'phase':44} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>7} {'p99 x':>7}")
    for label, times in [("alone", alone), *((label, times) for label, times, _ in beside)]:
        p50, p99 = np.percentile(times, 50), np.percentile(times, 99)
        print(f"{label:44} {p50:8.2f} {p99:8.2f} {p50 / base50:7.2f} {p99 / base99:7.2f}")
    for label, _, answers in beside:
        print(f"{label}:")
        for status, latencies in sorted(answers.items()):
            print(
                f"  {status}: {len(latencies)} answers, "
                f"p50 {np.median(latencies):.1f} ms, largest {max(latencies):.1f} ms"
            )


if __name__ == "__main__":
    main()

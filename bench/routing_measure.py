"""What the routing bench (``bench.routing_trace``) measures with: its requests in OIP v2's binary tensor
extension, onnxruntime's answers to check them against, one request's result, and the service times it
measures for the simulation (``bench.routing_sim``)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import time
from collections.abc import Mapping, Sequence

import httpx
import numpy as np

from bench.plain_server import NUMPY
from bench.pod_cold_start import TIMEOUT_S
from bench.routing_sim import ServiceTimes
from bench.routing_workload import BIG_ROWS, Kind, Model, Trace, bucket

HEADER_LENGTH = "inference-header-content-length"


# -- the requests ----------------------------------------------------------------------------------------------
def encode(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 request in the binary tensor extension, answered in binary too."""
    head = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "parameters": {"binary_data_output": True},
    }
    raw = json.dumps(head, separators=(",", ":")).encode()
    return raw + x.tobytes(), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(raw))}


def decode(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    if header_length is None:
        raise ValueError(f"expected a binary response, got {body[:200]!r}")
    offset = int(header_length)
    out = {}
    for o in json.loads(body[:offset])["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(body[offset : offset + size], NUMPY[o["datatype"]]).reshape(o["shape"])
        offset += size
    return out


class Oracle:
    """onnxruntime's answer to each request of the trace, computed once."""

    def __init__(self, models: Mapping[str, Model], trace: Trace) -> None:
        import onnxruntime as ort

        self.models = models
        self.trace = trace
        self.sessions = {k: ort.InferenceSession(m.onnx, providers=["CPUExecutionProvider"]) for k, m in models.items()}
        self._expected: dict[int, dict[str, np.ndarray]] = {}

    def expected(self, index: int) -> dict[str, np.ndarray]:
        if index not in self._expected:
            a = self.trace.arrivals[index]
            session = self.sessions[a.model]
            x = self.models[a.model].inputs(index, a.rows)
            names = [o.name for o in session.get_outputs()]
            self._expected[index] = dict(zip(names, session.run(None, {"input": x}), strict=True))
        return self._expected[index]

    def wrong(self, index: int, body: bytes, header_length: str | None) -> str | None:
        """None when the answer matches onnxruntime's, else what differs."""
        try:
            got = decode(body, header_length)
        except (ValueError, KeyError) as exc:
            return f"undecodable answer: {exc}"
        for name, want in self.expected(index).items():
            have = got.get(name)
            if have is None or have.shape != want.shape:
                return f"{name}: shape {None if have is None else have.shape}, expected {want.shape}"
            same = np.array_equal(have, want) if want.dtype.kind == "i" else np.allclose(have, want, 1e-4, 1e-5)
            if not same:
                return f"{name}: {have.ravel()[:3]}..., onnxruntime says {want.ravel()[:3]}..."
        return None


@dataclasses.dataclass
class Result:
    index: int
    status: int  # 0: no HTTP answer (see error)
    latency_s: float  # scheduled send -> whole response
    lag_s: float  # how late the client sent it
    tier: str
    reason: str
    cold: bool
    error: str = ""
    body: bytes = b""  # a 200's, until it is checked against onnxruntime (after the replay, off the clock)
    header_length: str | None = None


# -- service times, measured -------------------------------------------------------------------------------


@dataclasses.dataclass
class Calibration:
    samples: dict[Kind, list[float]]  # ms
    firsts: list[tuple[str, str, float]]  # (model, bucket, ms) of a model's first request on a runner


def calibrate(url: str, models: Mapping[str, Model], n_small: int, n_big: int) -> Calibration:
    """Service times: requests one at a time on the warm, otherwise idle gateway after its replay, with the
    replay's client, each (tier, model, batch) pinned with the ``x-wasmgate-tier`` hint, the kinds in turn (so
    that noise from elsewhere on the machine falls on all of them alike). Not samples: a request held while the
    pod tier scaled up, and a model's first request on a runner (``x-wasmgate-replica``), which loads it."""
    return asyncio.run(_calibrate(url, models, n_small, n_big))


async def _calibrate(url: str, models: Mapping[str, Model], n_small: int, n_big: int) -> Calibration:
    result = Calibration(collections.defaultdict(list), [])
    seen: set[tuple[str, str]] = set()  # (replica, model)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False) as client:
        for k in range(n_small):
            for b, tier, m in itertools.product(("small", "big"), ("wasm", "pod"), models.values()):
                if b == "big" and k >= n_big:
                    continue
                body, headers = encode(m.inputs(k, 1 + k % 4 if b == "small" else BIG_ROWS))
                t0 = time.perf_counter()
                r = await client.post(
                    f"{url}/v2/models/{m.name}/infer", content=body, headers=headers | {"x-wasmgate-tier": tier}
                )
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code != 200 or r.headers.get("x-wasmgate-tier") != tier:
                    raise RuntimeError(f"calibrating {tier}/{m.name}: {r.status_code} {r.text[:300]}")
                where = (r.headers.get("x-wasmgate-replica", ""), m.key)
                if r.headers.get("x-wasmgate-cold-start") == "true":
                    seen.add(where)  # held while a runner started, and loaded the model: neither sample
                elif tier == "pod" and where not in seen:
                    seen.add(where)
                    result.firsts.append((m.key, b, ms))
                else:
                    result.samples[tier, m.key, b].append(ms)
    return result


def service_times(calibration: Calibration, pod_results: Sequence[Result], trace: Trace) -> ServiceTimes:
    """The calibration's samples; a runner's load of each model, from the model's first requests on a runner
    less the median service time of their kind (0 when the calibration saw none: the small model's first
    request brings the runner up, so its load stays in the scale-up time); and the pod tier's scale from zero
    to a first answer, from always pod's first held request of each burst, less its service time and load."""
    times = ServiceTimes(calibration.samples, {})
    for key in models_of(calibration):
        loads = [ms - times.median("pod", m, b) for m, b, ms in calibration.firsts if m == key]
        times.load_s[key] = max(0.0, float(np.median(loads))) / 1000 if loads else 0.0
    firsts: dict[int, Result] = {}
    for r in pod_results:
        burst = trace.arrivals[r.index].burst
        if r.status == 200 and r.cold and (burst not in firsts or r.index < firsts[burst].index):
            firsts[burst] = r
    ups = []
    for r in firsts.values():
        a = trace.arrivals[r.index]
        ups.append(r.latency_s - times.median("pod", a.model, bucket(a.rows)) / 1000 - times.load_s[a.model])
    if not ups:
        raise RuntimeError("always pod never scaled from zero; cannot measure the scale-up time")
    times.scale_up_s, times.scale_up_bursts = float(np.median(ups)), len(ups)
    return times


def models_of(calibration: Calibration) -> list[str]:
    return sorted({model for _, model, _ in calibration.samples})

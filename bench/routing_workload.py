"""What the routing bench's replay (``bench.routing_trace``) and its simulation (``bench.routing_sim``)
share: the two modes, the placement policies, the seeded trace, the two models, and one policy's numbers.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway.cli.demo import dense_model, train_digits
from router.policy import Thresholds, TierSetting
from wasm_host.figures import ModelFigures, measure

MiB = 1 << 20
SMALL, LARGE = "small", "large"
BIG_ROWS = 512
BIG_SHARE = 0.03
TICK_S = 0.25  # router.activator.Activator's default scaling tick
Kind = tuple[str, str, str]  # (tier, model, bucket)


@dataclasses.dataclass(frozen=True)
class Mode:
    """What differs between the full bench and ``--quick``."""

    sizes: tuple[int, ...]
    tier_pod_bytes: int
    idle_grace_s: float
    duration_s: float
    rate: float
    burst_s: tuple[float, float]
    gap_s: tuple[float, float]
    sim_traces: int


FULL = Mode((256, 4096, 4096, 4096, 10), Thresholds().pod_bytes, 3.0, 50.0, 25.0, (2.0, 6.0), (1.0, 8.0), 20)
QUICK = Mode((64, 512, 512, 10), 512 << 10, 1.0, 3.0, 10.0, (0.8, 1.2), (1.2, 1.6), 3)


@dataclasses.dataclass(frozen=True)
class Policy:
    key: str
    label: str
    flags: tuple[str, ...]  # for ``wasm push``
    tier: TierSetting
    spill: bool
    mask_cold_start: bool


POLICIES = (
    Policy("pod", "always pod", ("--tier", "pod", "--no-mask-cold-start", "--no-spill"), "pod", False, False),
    Policy("wasm", "always Wasm", ("--tier", "wasm", "--no-spill"), "wasm", False, True),
    Policy("wasmgate", "wasmgate", (), "auto", True, True),
)


# -- the trace ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Arrival:
    t: float  # seconds from the start of the replay
    model: str  # SMALL or LARGE
    rows: int
    burst: int


@dataclasses.dataclass(frozen=True)
class Trace:
    arrivals: tuple[Arrival, ...]
    bursts: tuple[tuple[float, float], ...]  # (start, end) in seconds

    @property
    def gaps(self) -> list[float]:
        return [b[0] - a[1] for a, b in itertools.pairwise(self.bursts)]

    def summary(self, grace_s: float) -> str:
        n = len(self.arrivals)
        large = sum(a.model == LARGE for a in self.arrivals)
        big = sum(a.rows == BIG_ROWS for a in self.arrivals)
        gaps = self.gaps
        return (
            f"trace: {n} requests in {len(self.bursts)} bursts over {self.bursts[-1][1]:.1f} s; "
            f"{n - large} small ({100 * (n - large) / n:.0f}%), {large} large ({100 * large / n:.0f}%); "
            f"{big} batches of {BIG_ROWS} rows, the rest 1-4 rows; idle gaps {min(gaps, default=0):.1f}-"
            f"{max(gaps, default=0):.1f} s, {sum(g > grace_s for g in gaps)} of {len(gaps)} longer than the "
            f"idle grace of {grace_s:g} s"
        )


def make_trace(mode: Mode, seed: int, duration_s: float, rate: float, large_share: float) -> Trace:
    """Bursts of Poisson arrivals separated by idle gaps, deterministic for ``seed``; the first burst starts at
    0 and no burst starts after ``duration_s``."""
    rng = np.random.default_rng(seed)
    arrivals: list[Arrival] = []
    bursts: list[tuple[float, float]] = []
    start = 0.0
    while start < duration_s:
        end = start + float(rng.uniform(*mode.burst_s))
        t = start + float(rng.exponential(1 / rate))
        while t < end:
            model = LARGE if rng.random() < large_share else SMALL
            rows = BIG_ROWS if rng.random() < BIG_SHARE else int(rng.integers(1, 5))
            arrivals.append(Arrival(t, model, rows, len(bursts)))
            t += float(rng.exponential(1 / rate))
        bursts.append((start, end))
        start = end + float(rng.uniform(*mode.gap_s))
    return Trace(tuple(arrivals), tuple(bursts))


def bucket(rows: int) -> str:
    return "big" if rows >= BIG_ROWS else "small"


# -- the models ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Model:
    key: str  # SMALL or LARGE
    name: str  # the function's name on the gateway
    onnx: bytes
    width: int
    figures: ModelFigures
    rows_pool: np.ndarray | None = None  # the small model's inputs: digits test images

    def inputs(self, index: int, rows: int) -> np.ndarray:
        if self.rows_pool is not None:
            picks = (np.arange(rows) + 7 * index) % len(self.rows_pool)
            return np.ascontiguousarray(self.rows_pool[picks], dtype=np.float32)
        return np.random.default_rng(index).standard_normal((rows, self.width)).astype(np.float32)


def make_models(sizes: tuple[int, ...], tier_pod_bytes: int) -> dict[str, Model]:
    digits, x_test, _ = train_digits()
    dense = dense_model(sizes)
    models = {
        SMALL: Model(SMALL, "digits", digits, 64, measure(digits), np.asarray(x_test, np.float32)),
        LARGE: Model(LARGE, "dense", dense, sizes[0], measure(dense)),
    }
    if not models[SMALL].figures.bytes < tier_pod_bytes < models[LARGE].figures.bytes:
        raise RuntimeError(
            f"tier_pod_bytes {tier_pod_bytes} must lie between the two models' sizes, "
            f"{models[SMALL].figures.bytes} and {models[LARGE].figures.bytes} bytes (--tier-pod-bytes)"
        )
    return models


# -- one policy's numbers --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    """One policy's numbers, from a replay or a simulation."""

    policy: str
    statuses: list[int]
    latencies_ms: list[float]  # answered (200) requests only
    answered_models: list[str]  # the model (SMALL or LARGE) of each of those
    tiers: list[str]
    reasons: list[str]
    replica_seconds: float
    process_seconds: float | None = None
    wrong: int = 0
    max_lag_ms: float = 0.0
    first_errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(s != 200 for s in self.statuses)

    def p(self, q: float, model: str | None = None) -> float:
        """The ``q`` percentile of answered requests' latency, of one model's requests when ``model`` is set."""
        ms = self.latencies_ms
        if model is not None:
            ms = [x for x, m in zip(ms, self.answered_models, strict=True) if m == model]
        return float(np.percentile(ms, q)) if ms else float("nan")

    @classmethod
    def pooled(cls, outcomes: Sequence[Outcome]) -> Outcome:
        """One policy's outcomes on several traces as one: every request, and the replica-seconds summed."""
        return cls(
            outcomes[0].policy,
            [s for o in outcomes for s in o.statuses],
            [x for o in outcomes for x in o.latencies_ms],
            [m for o in outcomes for m in o.answered_models],
            [t for o in outcomes for t in o.tiers],
            [r for o in outcomes for r in o.reasons],
            sum(o.replica_seconds for o in outcomes),
        )

    @property
    def pod_share(self) -> float:
        return sum(t == "pod" for t in self.tiers) / max(1, len(self.tiers))

    def decision_counts(self) -> collections.Counter[str]:
        return collections.Counter(f"{t}/{r}" for t, r in zip(self.tiers, self.reasons, strict=True) if t)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"errors": self.errors, "p50_ms": self.p(50), "p99_ms": self.p(99)}

"""The routing bench's report (``bench.routing_trace``): its tables and the verdicts on the issue's target,
for one trace or for many pooled."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from bench.routing_sim import ServiceTimes
from bench.routing_workload import BIG_ROWS, LARGE, POLICIES, SMALL, Outcome


def table(outcomes: Sequence[Outcome], measured: bool) -> list[str]:
    labels = {p.key: p.label for p in POLICIES}
    extra = " runner process-seconds |" if measured else ""
    lines = [
        f"| policy | requests | errors | p50 ms | p99 ms | p99 ms, small model | p99 ms, large model "
        f"| pod replica-seconds |{extra} share of requests on pod |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if measured else "") + "---:|",
    ]
    for o in outcomes:
        proc = f" {o.process_seconds:.1f} |" if measured and o.process_seconds is not None else ""
        lines.append(
            f"| {labels[o.policy]} | {len(o.statuses)} | {o.errors} | {o.p(50):.1f} | {o.p(99):.1f} "
            f"| {o.p(99, SMALL):.1f} | {o.p(99, LARGE):.1f} | {o.replica_seconds:.1f} |{proc} "
            f"{100 * o.pod_share:.0f}% |"
        )
    return lines


def targets(outcomes: Sequence[Outcome]) -> tuple[bool, bool]:
    """The issue's target: (wasmgate's p99 is below both others', its replica-seconds at most always pod's)."""
    by = {o.policy: o for o in outcomes}
    ours = by["wasmgate"]
    best = all(ours.p(99) < o.p(99) for o in outcomes if o is not ours)
    return best, ours.replica_seconds <= by["pod"].replica_seconds


def verdicts(outcomes: Sequence[Outcome]) -> list[str]:
    by = {o.policy: o for o in outcomes}
    best, cheaper = targets(outcomes)
    return [
        f"wasmgate best p99: {'yes' if best else 'no'} ({', '.join(f'{o.policy} {o.p(99):.1f} ms' for o in outcomes)})",
        f"replica-seconds <= always pod: {'yes' if cheaper else 'no'} "
        f"(wasmgate {by['wasmgate'].replica_seconds:.1f}, always pod {by['pod'].replica_seconds:.1f})",
    ]


def per_trace(runs: Sequence[Sequence[Outcome]]) -> list[str]:
    """How often the target held, trace by trace, and the margins. A tie is the same p99 to the microsecond:
    the slowest 1% falls on requests two policies served alike (same draws: common random numbers)."""
    ratios = []
    for r in runs:
        by = {o.policy: o for o in r}
        ratios.append(round(by["wasmgate"].p(99) / min(by["wasm"].p(99), by["pod"].p(99)), 6))
    best, tied = sum(x < 1 for x in ratios), sum(x == 1 for x in ratios)
    cheaper = sum(targets(r)[1] for r in runs)
    n = len(runs)
    return [
        f"traces where wasmgate's p99 is the best of the three: {best} of {n}, tied for best in {tied}, behind in "
        f"{n - best - tied}; where its replica-seconds are at most always pod's: {cheaper} of {n}",
        f"wasmgate's p99 over the better other policy's, per trace: median {np.median(ratios):.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f}",
    ]


def decisions(outcome: Outcome) -> str:
    counts = outcome.decision_counts()
    return "decisions, wasmgate (tier/reason: requests): " + ", ".join(f"{k} {v}" for k, v in counts.most_common())


def service_table(times: ServiceTimes, speedup: float) -> list[str]:
    lines = [
        "| tier | model | batch | n | p50 ms | p90 ms | GPU pod (simulated): compute ms on the device |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (tier, model, b), ms in sorted(times.samples.items()):
        gpu = ""
        if tier == "pod":
            compute = times.compute_ms(model, b)
            gpu = f"{compute / (speedup if model == LARGE else 1.0):.2f} (of {compute:.2f})"
        label = f"{BIG_ROWS} rows" if b == "big" else "1-4 rows"
        lines.append(
            f"| {tier} | {model} | {label} | {len(ms)} | {np.median(ms):.1f} | {np.percentile(ms, 90):.1f} | {gpu} |"
        )
    lines.append(
        f"\npod tier scale from zero to a first answer: {times.scale_up_s:.2f} s (median of always pod's first held "
        f"request in {times.scale_up_bursts} bursts, less its service time and model load); a runner's load of the "
        f"large model at its first request: {times.load_s[LARGE] * 1000:.0f} ms"
    )
    return lines


def print_section(title: str, lines: Iterable[str]) -> None:
    print(f"\n## {title}\n", flush=True)
    print("\n".join(lines), flush=True)

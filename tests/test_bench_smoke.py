"""The benchmarks still run (a handful of iterations; their figures are not checked here, only that both paths
give identical outputs, which each benchmark asserts before timing)."""

from __future__ import annotations

import numpy as np

from bench.wasm_overhead import dense_model, run
from tests.conftest import Digits


def test_wasm_overhead_bench_runs(digits: Digits) -> None:
    result = run("digits", digits.model, np.ascontiguousarray(digits.x_test[:2]), iterations=20, blocks=2)
    assert result["wasm_p50"] > 0
    assert result["bare_p50"] > 0


def test_dense_model_is_about_ten_megabytes() -> None:
    assert 9_000_000 < len(dense_model()) < 11_000_000

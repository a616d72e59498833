"""Choosing onnxruntime execution providers by what the node offers."""

from __future__ import annotations

import pytest

from wasm_host.providers import choose_providers

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


def test_auto_takes_accelerators_best_first_and_ends_with_the_cpu() -> None:
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("auto", ["AzureExecutionProvider", CPU]) == [CPU]
    assert choose_providers("auto", [CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    assert choose_providers("auto", ["OpenVINOExecutionProvider", CPU]) == ["OpenVINOExecutionProvider", CPU]
    assert choose_providers("auto", ["ROCMExecutionProvider", CPU]) == ["ROCMExecutionProvider", CPU]


def test_named_providers_are_taken_as_given_and_the_cpu_is_always_last() -> None:
    assert choose_providers("cuda", [CPU, CUDA, TRT]) == [CUDA, CPU]
    assert choose_providers("CPU, cuda", [CPU, CUDA]) == [CUDA, CPU]
    assert choose_providers("cpu", [CPU, CUDA]) == [CPU]


def test_a_provider_the_build_lacks_is_refused_not_silently_dropped() -> None:
    with pytest.raises(ValueError, match="CUDAExecutionProvider are not in this onnxruntime build"):
        choose_providers("cuda,cpu", [CPU])
    with pytest.raises(ValueError, match="use 'auto' or a comma-separated list"):
        choose_providers("gpu", [CPU, CUDA])
    with pytest.raises(ValueError, match="use 'auto'"):
        choose_providers(" , ", [CPU])

"""Choosing onnxruntime execution providers for what the node has.

``auto`` takes every accelerator provider this onnxruntime build offers, best first, then CPU. A named list
(``cuda,cpu``) is taken as given, and refused when the build lacks one of them, so a runner configured for a
GPU does not quietly serve from the CPU. The CPU provider always ends the list: it is onnxruntime's fallback
for operators an accelerator does not implement.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Accelerator providers in order of preference, by their short names.
PREFERENCE = (
    ("tensorrt", "TensorrtExecutionProvider"),
    ("cuda", "CUDAExecutionProvider"),
    ("rocm", "ROCMExecutionProvider"),
    ("openvino", "OpenVINOExecutionProvider"),
)
CPU = "CPUExecutionProvider"
SHORT_NAMES = {**dict(PREFERENCE), "cpu": CPU}


def choose_providers(spec: str, available: Sequence[str]) -> list[str]:
    """The providers to create sessions with, from a setting (``auto``, or short names separated by commas)
    and the providers this onnxruntime build offers. Raises ValueError naming what is missing."""
    wanted = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if wanted == ["auto"]:
        chosen = [full for _, full in PREFERENCE if full in available]
    else:
        unknown = [w for w in wanted if w not in SHORT_NAMES]
        if unknown or not wanted:
            raise ValueError(
                f"execution providers {spec!r}: use 'auto' or a comma-separated list of {', '.join(SHORT_NAMES)}"
            )
        chosen = [SHORT_NAMES[w] for w in wanted]
        missing = [c for c in chosen if c not in available]
        if missing:
            raise ValueError(
                f"execution providers {', '.join(missing)} are not in this onnxruntime build "
                f"(it has {', '.join(available)}); install the matching onnxruntime package or use 'auto'"
            )
    return [c for c in chosen if c != CPU] + [CPU]

"""The tables the ``wasm`` command prints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wasm_host.figures import si


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Rows as left-aligned columns two spaces apart, the first row a header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def function_rows(functions: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """``wasm ls``: one row per function as the admin API lists it, under a header; a DIGEST column with a
    registry store, which pins each version to an OCI manifest. FLOPS/ROW is the cost as the admin API
    writes it: a formula in the model's dynamic dimensions (``21.3M*seq + 9.43k*seq^2``), or one figure."""
    rows: list[tuple[str, ...]] = [
        ("NAME", "VERSION", "KIND", "TIER", "SIZE", "PARAMS", "FLOPS/ROW", "INPUTS", "OUTPUTS", "MODELS", "FILES")
    ]
    pinned = any(f.get("digest") for f in functions)  # a registry store: which manifest each version is
    if pinned:
        rows[0] += ("DIGEST",)
    for f in functions:
        figures = f.get("figures") or {}
        row = (
            f["name"],
            str(f["version"]),
            f["kind"],
            tier_label(f),
            si(figures.get("bytes", 0), "B"),
            si(figures.get("params", 0)),
            (f.get("cost") or {}).get("flops_per_row") or si(figures.get("flops_per_row", 0)),
            specs(f["inputs"]),
            specs(f["outputs"]),
            ",".join(f["models"]) or "-",
            ",".join(f.get("files") or {}) or "-",
        )
        rows.append(row + ((str(f.get("digest") or "-"),) if pinned else ()))
    return rows


def tier_label(f: dict[str, Any]) -> str:
    """``wasm`` or ``pod`` when pinned; ``auto:wasm`` when the router chose by the figures."""
    return f"auto:{f['home_tier']}" if f.get("tier") == "auto" else str(f.get("tier"))


def specs(specs: list[dict[str, object]] | None) -> str:
    if specs is None:
        return "?"
    return ",".join(f"{s['name']}:{s['datatype']}{s['shape']}".replace(" ", "") for s in specs) or "-"

"""The layers, as import-linter checks them: the contracts in pyproject.toml (``[tool.importlinter]``) hold for the
tree as it is, and a planted upward import breaks them, which shows the check can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "router", "wasm_host")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter's own command on ``root``'s pyproject.toml, importing the packages from ``root``."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],
        cwd=root,  # first on sys.path, so the packages under root are the ones analysed
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layer_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert "gateway -> router -> wasm_host, never upward KEPT" in result.stdout


#: (module, the import planted in it, the contract it breaks, the chain the report names)
PLANTED = [
    ("wasm_host/pool.py", "import gateway.settings", "gateway -> router -> wasm_host", "wasm_host.pool -> gateway"),
    ("router/policy.py", "import router.pod_tier", "the policies are pure", "router.pod_tier"),
    ("wasm_host/errors.py", "import wasm_host.tensors", "inside the sandbox", "wasm_host.errors -> wasm_host.tensors"),
    ("wasm_host/errors.py", "import numpy", "the exception tree imports nothing else", "wasm_host.errors -> numpy"),
    ("gateway/store/local.py", "import gateway.dispatch", "inside gateway", "gateway.store.local -> gateway.dispatch"),
]


@pytest.mark.parametrize(("module", "planted", "contract", "chain"), PLANTED)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, contract: str, chain: str
) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout
    assert "BROKEN" in result.stdout
    assert chain in result.stdout, result.stdout

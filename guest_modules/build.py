"""Build the C guest modules in ``guest_modules/`` into WASI reactor modules.

Usage::

    python guest_modules/build.py [--cc zig|clang] [--out DIR] [--force] [NAMES...]

Every subdirectory ``guest_modules/<name>/`` that holds ``<name>.c`` is a module (``include/`` is the SDK, not
a module); the ``.c`` files of that directory are compiled and linked into ``DIR/<name>.wasm`` (default
``guest_modules/build/``) with the SDK header on the include path. NAMES restricts the build to those modules.

Compilers:

- ``zig`` (default): ``python -m ziglang cc -target wasm32-wasi`` from the ``ziglang`` wheel. The first build
  fills zig's libc cache and takes about 40 s.
- ``clang``: Debian's ``clang-14`` (or ``clang``) with ``lld-14``, ``wasi-libc`` and
  ``libclang-rt-14-dev-wasm32``: ``clang-14 --target=wasm32-wasi --sysroot=/usr``.

Both get ``-O2 -mexec-model=reactor -Wl,-z,stack-size=65536 -Wall -Wextra``: a reactor exports
``_initialize`` instead of ``_start``, and a 64 KiB stack keeps instances small (zig's default is 16 MiB).
The exports (``memory``, ``alloc``, ``handle``, ``signature``) come from ``export_name`` attributes in the SDK
and survive ``-s``, which drops only debug info and the name section.

:func:`build` is importable (the tests call it from a session fixture) and skips a module whose output is
newer than its sources and the SDK headers and was built with the same command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
INCLUDE = ROOT / "include"
DEFAULT_OUT = ROOT / "build"
COMPILERS = ("zig", "clang")

COMMON_FLAGS = (
    "-O2",
    "-mexec-model=reactor",
    "-Wl,-z,stack-size=65536",
    "-Wall",
    "-Wextra",
    "-s",
)


class BuildError(RuntimeError):
    """A module failed to compile; the message carries the compiler's output."""


def modules() -> dict[str, Path]:
    """Every module: name -> its directory (a subdirectory of guest_modules/ holding <name>.c)."""
    found = {}
    for d in sorted(ROOT.iterdir()):
        if d.is_dir() and d.name not in ("include", "build") and (d / f"{d.name}.c").is_file():
            found[d.name] = d
    return found


def compiler_command(cc: str) -> list[str]:
    """The compiler and target flags for ``cc`` ("zig" or "clang"), before the common flags."""
    if cc == "zig":
        return [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi"]
    if cc == "clang":
        exe = shutil.which("clang-14") or shutil.which("clang")
        if exe is None:
            raise BuildError(
                "no clang-14 or clang on PATH (apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32)"
            )
        return [exe, "--target=wasm32-wasi", "--sysroot=/usr"]
    raise BuildError(f"unknown compiler {cc!r}: use one of {', '.join(COMPILERS)}")


def _sources(directory: Path, name: str) -> list[Path]:
    main = directory / f"{name}.c"
    return [main, *sorted(p for p in directory.glob("*.c") if p != main)]


def _inputs(directory: Path) -> list[Path]:
    """Files whose change makes the output stale: the module's C sources and headers, and the SDK."""
    files = [p for p in directory.iterdir() if p.suffix in (".c", ".h") and p.is_file()]
    files += [p for p in INCLUDE.iterdir() if p.suffix == ".h" and p.is_file()]
    return files


def _up_to_date(target: Path, stamp: Path, command: str, inputs: Iterable[Path]) -> bool:
    try:
        built = target.stat().st_mtime_ns
        if stamp.read_text() != command:
            return False
    except FileNotFoundError:
        return False
    return all(p.stat().st_mtime_ns < built for p in inputs)


def build(
    names: Sequence[str] | None = None,
    cc: str = "zig",
    out: Path | str = DEFAULT_OUT,
    force: bool = False,
    verbose: bool = False,
) -> dict[str, Path]:
    """Build the named modules (default: all) with ``cc`` into ``out``; returns name -> path of the .wasm.

    A module is rebuilt only when its .wasm is missing, older than any of its sources or the SDK headers, or
    was built with a different command (another compiler, say); ``force`` rebuilds regardless. Raises
    :class:`BuildError` for an unknown module or a failed compile.
    """
    available = modules()
    wanted = list(available) if not names else list(names)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise BuildError(f"no such module: {', '.join(unknown)} (have: {', '.join(available) or 'none'})")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = [*compiler_command(cc), *COMMON_FLAGS, "-I", str(INCLUDE)]
    built: dict[str, Path] = {}
    for name in wanted:
        directory = available[name]
        target = out / f"{name}.wasm"
        stamp = out / f".{name}.wasm.cmd"
        sources = [str(p) for p in _sources(directory, name)]
        # The stamp records the command minus the interpreter path, so a venv move does not force a rebuild.
        command = " ".join([cc, *base[1:], "-I", str(directory), *sources])
        if not force and _up_to_date(target, stamp, command, _inputs(directory)):
            built[name] = target
            continue
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}-", suffix=".wasm")
        os.close(fd)
        try:
            argv = [*base, "-I", str(directory), *sources, "-o", tmp]
            if verbose:
                print(" ".join(argv), file=sys.stderr)
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=directory)
            if proc.returncode != 0:
                raise BuildError(f"building {name} with {cc} failed:\n{proc.stdout}{proc.stderr}".rstrip())
            if proc.stderr.strip():  # warnings
                print(proc.stderr.rstrip(), file=sys.stderr)
            os.replace(tmp, target)
            stamp.write_text(command)
        finally:
            Path(tmp).unlink(missing_ok=True)
        built[name] = target
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the C guest modules into WASI reactor modules.")
    parser.add_argument("--cc", choices=COMPILERS, default="zig", help="compiler (default: zig)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the compiler commands")
    parser.add_argument("names", nargs="*", help="modules to build (default: all)")
    args = parser.parse_args(argv)
    try:
        built = build(args.names or None, cc=args.cc, out=args.out, force=args.force, verbose=args.verbose)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in built.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

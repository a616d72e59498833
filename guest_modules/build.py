"""Build the C guest modules in ``guest_modules/`` into WASI reactor modules.

Usage::

    python guest_modules/build.py [--cc zig|clang] [--out DIR] [--force] [--hostile] [NAMES...]

Every subdirectory ``guest_modules/<name>/`` that holds ``<name>.c`` is a module (``include/`` is the SDK, not
a module); the ``.c`` files of that directory are compiled and linked into ``DIR/<name>.wasm`` (default
``guest_modules/build/``) with the SDK header on the include path. NAMES restricts the build to those modules.

``--hostile`` builds the hostile test fixtures instead: every ``guest_modules/hostile/<name>.c`` is one module,
compiled alone (with ``hostile/`` and the SDK on the include path) into ``DIR/<name>.wasm`` (default
``guest_modules/build/hostile/``). They are misbehaving functions for the sandbox's end-to-end tests
(``tests/test_hostile.py``); see ``guest_modules/hostile/README.md``. NAMES then restricts the build to those
fixtures.

Compilers:

- ``zig`` (default): ``python -m ziglang cc -target wasm32-wasi`` from the ``ziglang`` wheel. The first build
  fills zig's libc cache and takes about 40 s.
- ``clang``: Debian's ``clang-14`` (or ``clang``) with ``lld-14``, ``wasi-libc`` and
  ``libclang-rt-14-dev-wasm32``: ``clang-14 --target=wasm32-wasi --sysroot=/usr``.

Both get ``-O2 -mexec-model=reactor -Wl,-z,stack-size=65536 -Wall -Wextra``: a reactor exports
``_initialize`` instead of ``_start``, and a 64 KiB stack keeps instances small (zig's default is 16 MiB).
The exports (``memory``, ``alloc``, ``handle``, ``signature``) come from ``export_name`` attributes in the SDK
and survive ``-s``, which drops only debug info and the name section.

:func:`build` and :func:`build_hostile` are importable (the tests call them from session fixtures) and skip a
module whose output is newer than its sources and the headers it may include and was built with the same
command.
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
HOSTILE = ROOT / "hostile"
HOSTILE_OUT = DEFAULT_OUT / "hostile"
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
        if d.is_dir() and d.name not in ("include", "build", "hostile") and (d / f"{d.name}.c").is_file():
            found[d.name] = d
    return found


def hostile_fixtures() -> dict[str, Path]:
    """Every hostile fixture: name -> its source (each ``guest_modules/hostile/<name>.c`` is one module)."""
    return {p.stem: p for p in sorted(HOSTILE.glob("*.c"))}


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
        sources = _sources(directory, name)
        built[name] = _compile(name, base, cc, directory, sources, _inputs(directory), out, force, verbose)
    return built


def build_hostile(
    names: Sequence[str] | None = None,
    cc: str = "zig",
    out: Path | str = HOSTILE_OUT,
    force: bool = False,
    verbose: bool = False,
) -> dict[str, Path]:
    """Build the named hostile fixtures (default: all) into ``out``; returns name -> path of the .wasm.

    Same flags, caching and errors as :func:`build`. A fixture is stale when its .c, a header in ``hostile/``
    or an SDK header is newer than its .wasm.
    """
    available = hostile_fixtures()
    wanted = list(available) if not names else list(names)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise BuildError(f"no such hostile fixture: {', '.join(unknown)} (have: {', '.join(available) or 'none'})")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = [*compiler_command(cc), *COMMON_FLAGS, "-I", str(INCLUDE)]
    headers = [p for p in (*HOSTILE.glob("*.h"), *INCLUDE.glob("*.h")) if p.is_file()]
    built: dict[str, Path] = {}
    for name in wanted:
        source = available[name]
        built[name] = _compile(name, base, cc, HOSTILE, [source], [source, *headers], out, force, verbose)
    return built


def _compile(
    name: str,
    base: list[str],
    cc: str,
    directory: Path,
    sources: Sequence[Path],
    inputs: Iterable[Path],
    out: Path,
    force: bool,
    verbose: bool,
) -> Path:
    """Compile ``sources`` (with ``directory`` on the include path, and run from it) into ``out/<name>.wasm``,
    unless it is up to date with ``inputs`` and was built with the same command."""
    target = out / f"{name}.wasm"
    stamp = out / f".{name}.wasm.cmd"
    paths = [str(p) for p in sources]
    # The stamp records the command minus the interpreter path, so a venv move does not force a rebuild.
    command = " ".join([cc, *base[1:], "-I", str(directory), *paths])
    if not force and _up_to_date(target, stamp, command, inputs):
        return target
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}-", suffix=".wasm")
    os.close(fd)
    try:
        argv = [*base, "-I", str(directory), *paths, "-o", tmp]
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
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the C guest modules into WASI reactor modules.")
    parser.add_argument("--cc", choices=COMPILERS, default="zig", help="compiler (default: zig)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output directory (default: {DEFAULT_OUT}, or {HOSTILE_OUT})"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the compiler commands")
    parser.add_argument(
        "--hostile", action="store_true", help="build the hostile test fixtures in hostile/ instead of the modules"
    )
    parser.add_argument("names", nargs="*", help="modules (or, with --hostile, fixtures) to build (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.hostile:
            out = HOSTILE_OUT if args.out is None else args.out
            built = build_hostile(args.names or None, cc=args.cc, out=out, force=args.force, verbose=args.verbose)
        else:
            out = DEFAULT_OUT if args.out is None else args.out
            built = build(args.names or None, cc=args.cc, out=out, force=args.force, verbose=args.verbose)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in built.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

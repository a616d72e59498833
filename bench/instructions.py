"""Instructions per request on the request path, counted by callgrind: a figure that does not move with the
machine's load, for comparing two commits where CPU time on a shared VM moves by 10-15% run to run.

    valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file=/tmp/cg.out \\
        python -m bench.instructions [--requests 500]
    # then: callgrind_annotate /tmp/cg.out.1 | head   (the totals line over --requests)

As ``bench.request_path`` it calls the gateway's ASGI app in process with one-row JSON digits requests, warmed
up first; callgrind counts only the timed requests, between two client requests (CALLGRIND_ZERO_STATS and
TOGGLE_COLLECT, then TOGGLE_COLLECT and DUMP_STATS) made from a four-line helper compiled here against
valgrind's ``callgrind.h`` (needs ``cc`` and valgrind's headers, ``apt install valgrind``). Every call runs
inline on the event loop (``inline_below_ms`` set past any call's time): under valgrind a call takes some 50
times as long, and the inline-or-thread placement would otherwise send some through a thread and others not,
run to run. It prints the instructions per request itself when it can read the dump.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import subprocess
import tempfile
from pathlib import Path

import gateway.app
from bench.request_path import call, push_digits
from gateway.app import create_app
from gateway.settings import Settings

HELPER = """#include <valgrind/callgrind.h>
void marks_on(void) { CALLGRIND_ZERO_STATS; CALLGRIND_TOGGLE_COLLECT; }
void marks_off(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS; }
"""


def marks(workdir: Path) -> ctypes.CDLL:
    """The helper whose two functions start and stop callgrind's count (no-ops outside valgrind)."""
    source, library = workdir / "marks.c", workdir / "libmarks.so"
    source.write_text(HELPER)
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return ctypes.CDLL(str(library))


async def measure(requests: int, workdir: Path) -> None:
    helper = marks(workdir)
    # The forwarder's client is made on a timer thread 10 s after ready (gateway.app): under valgrind that lands
    # among the counted requests. Nothing here forwards; the setting is put back for whoever imported this.
    prepare_after, gateway.app.PREPARE_FORWARDER_AFTER_S = gateway.app.PREPARE_FORWARDER_AFTER_S, 1e9
    try:
        settings = Settings.from_env({}, data_dir=workdir / "data", inline_below_ms=1e9)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            body = await push_digits(app)
            for _ in range(300):  # loads the function and fills its pool
                assert await call(app, "POST", "/v2/models/digits/infer", body) == 200
            failed = 0
            helper.marks_on()
            for _ in range(requests):
                failed += await call(app, "POST", "/v2/models/digits/infer", body) != 200
            helper.marks_off()
            assert not failed, f"{failed} of the counted requests failed"
    finally:
        gateway.app.PREPARE_FORWARDER_AFTER_S = prepare_after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--out", default=None, help="callgrind's --callgrind-out-file, to print the figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wasmgate-instructions-") as tmp:
        asyncio.run(measure(args.requests, Path(tmp)))
    if args.out:
        dumps = sorted(Path(args.out).parent.glob(Path(args.out).name + ".*"), key=lambda p: p.stat().st_size)
        for line in dumps[-1].read_text().splitlines() if dumps else []:
            if line.startswith(("summary:", "totals:")):
                print(f"instructions per request: {int(line.split()[1]) // args.requests}")
                break


if __name__ == "__main__":
    main()

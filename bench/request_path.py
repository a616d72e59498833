"""CPU time of the request path in process: the gateway's ASGI app called directly, with no sockets, no HTTP
parser and no load generator, so that what is measured is wasmgate's own code around one sandboxed inference.

    python -m bench.request_path [--requests 2000] [--rounds 9]

It pushes the digits model (bare, behind the passthrough guest), warms it up, then times ``--rounds`` rounds of
``--requests`` sequential JSON requests of one row each, in CPU time of this process, and prints the fastest
and the median round in microseconds per request. Pin it to one CPU (``taskset -c 1``) to steady it.

To compare two commits, run it from a worktree of each with ``PYTHONPATH`` set to that worktree, interleaved,
several times: on a shared VM a single pair of runs differs by 15% or more with no change at all.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.app import create_app
from gateway.cli.demo import train_digits
from gateway.settings import Settings


async def call(app: Any, method: str, path: str, body: bytes = b"") -> int:
    """One request through the app, as a server would make it; returns the response status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the request is never abandoned
        raise AssertionError("unreachable")

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def push_digits(app: Any) -> bytes:
    """Push the digits model (bare, behind the passthrough guest) through the app's admin API; returns a one-row
    JSON request body for it."""
    model, x_test, _ = train_digits()
    digest = hashlib.sha256(model).hexdigest()
    assert await call(app, "PUT", f"/admin/v1/blobs/sha256:{digest}", model) in (200, 201)
    push = json.dumps({"module": None, "models": {"model": f"sha256:{digest}"}}).encode()
    assert await call(app, "PUT", "/admin/v1/functions/digits", push) == 201
    row = [float(v) for v in x_test[0]]
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]}).encode()


async def measure(requests: int, rounds: int) -> list[float]:
    app = create_app(Settings.from_env({}, data_dir=Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))))
    async with app.router.lifespan_context(app):
        body = await push_digits(app)
        for _ in range(500):  # loads the function, fills its pool, and teaches the tier that it is quick
            assert await call(app, "POST", "/v2/models/digits/infer", body) == 200
        per_request = []
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(requests):
                await call(app, "POST", "/v2/models/digits/infer", body)
            per_request.append((time.process_time() - started) / requests * 1e6)
        return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rounds = asyncio.run(measure(args.requests, args.rounds))
    print(f"CPU per request: fastest round {min(rounds):.1f} us, median {statistics.median(rounds):.1f} us")


if __name__ == "__main__":
    main()

"""The lean inference route (gateway/lean.py) answers exactly as Starlette's own route does: the same status,
body and headers, for answers and for every kind of error, and the same metrics."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import AppClient, Digits, infer_body, metric, push

TOKEN = {"authorization": "Bearer s3cret"}


def requests(digits: Digits) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(what, path, body, headers): answers and errors of every kind the infer route gives."""
    x = digits.x_test[:2]
    good = json.dumps(infer_body(x)).encode()
    head = json.dumps({**infer_body(x), "parameters": {"binary_data_output": True}}).encode()
    binary_headers = {"inference-header-content-length": str(len(head))}
    binary = head
    base = "/v2/models/digits"
    nan = b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [NaN]}]}'
    return [
        ("json", f"{base}/infer", good, TOKEN),
        ("binary", f"{base}/infer", binary, {**TOKEN, **binary_headers}),
        ("this version", f"{base}/versions/1/infer", good, TOKEN),
        ("another version", f"{base}/versions/9/infer", good, TOKEN),
        ("no such function", "/v2/models/nope/infer", good, TOKEN),
        ("invalid name", "/v2/models/.hidden/infer", good, TOKEN),
        ("no token", f"{base}/infer", good, {}),
        ("not JSON", f"{base}/infer", b"{not json", TOKEN),
        ("NaN", f"{base}/infer", nan, TOKEN),
        ("wrong datatype", f"{base}/infer", good.replace(b'"FP32"', b'"INT32"'), TOKEN),
        ("bad tier hint", f"{base}/infer", good, {**TOKEN, "x-wasmgate-tier": "gpu"}),
        ("too large", f"{base}/infer", b" " * 70_000 + good, TOKEN),
        ("compressed", f"{base}/infer", good, {**TOKEN, "content-encoding": "gzip"}),
    ]


def test_the_lean_route_answers_as_starlettes_route(tmp_path: Path, digits: Digits) -> None:
    settings = Settings.from_env(
        {}, data_dir=tmp_path / "data", reap_interval_s=3600.0, inference_token="s3cret", max_body_bytes=65_536
    )
    app = create_app(settings)

    async def starlette_path(scope: Scope, receive: Receive, send: Send) -> None:
        await Starlette.__call__(app, scope, receive, send)  # the router and middleware, not the short-cut

    with AppClient(app) as lean:
        push(lean, "digits", None, {"model": digits.model})
        assert lean.post("/v2/models/digits/infer", json=infer_body(digits.x_test[:1]), headers=TOKEN).is_success
        transport = httpx.ASGITransport(app=starlette_path, raise_app_exceptions=False)
        plain = lean.portal.call(lambda: httpx.AsyncClient(transport=transport, base_url="http://wasmgate.test"))
        try:
            for what, path, body, headers in requests(digits):
                send = functools.partial(plain.post, path, content=body, headers=headers)
                via_starlette: Any = lean.portal.call(send)
                via_lean = lean.post(path, content=body, headers=headers)
                assert via_lean.status_code == via_starlette.status_code, what
                assert via_lean.content == via_starlette.content, what
                assert via_lean.headers.multi_items() == via_starlette.headers.multi_items(), what
            outcomes = {what: lean.post(path, content=body, headers=headers).status_code
                        for what, path, body, headers in requests(digits)}  # fmt: skip
        finally:
            lean.portal.call(plain.aclose)
        assert outcomes["json"] == outcomes["binary"] == outcomes["this version"] == 200
        assert {outcomes[w] for w in ("not JSON", "NaN", "wrong datatype", "bad tier hint", "invalid name")} == {400}
        assert outcomes["no token"] == 401
        assert outcomes["too large"] == 413
        # Each request was counted once, whichever route served it: the first, then 3 answered twice (once by
        # each route) and once more.
        text = lean.get("/metrics").text
        assert metric(text, "wasmgate_requests_total", function="digits", backend="wasm", status="200") == 10


def test_other_methods_and_paths_still_go_through_starlette(tmp_path: Path, digits: Digits) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path / "data", reap_interval_s=3600.0)
    with AppClient(create_app(settings)) as client:
        push(client, "digits", None, {"model": digits.model})
        assert client.get("/v2/models/digits/infer").status_code == 405
        r = client.post("/v2/models/digits/infer/", json=infer_body(np.zeros((1, 64), np.float32)))
        assert r.status_code in (307, 404)  # Starlette's own answer to a trailing slash
        assert client.get("/v2/models/digits").json()["name"] == "digits"

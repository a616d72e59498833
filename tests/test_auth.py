"""Bearer tokens: the admin API behind the admin token, inference behind a function's own token or the global
one, tokens compared in constant time and never logged, and no unauthenticated bind beyond loopback."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.auth import check_bind, digest, matches, presented
from gateway.settings import Settings
from tests.support import AppClient, Digits, Gateway, infer_body, wasm_command

ADMIN = "admin-s3cret-token"
GLOBAL = "global-inference-token"
OWN = "per-function-token"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[AppClient]:
    settings = Settings.from_env(
        {}, data_dir=tmp_path / "data", admin_token=ADMIN, inference_token=GLOBAL, pod_scaler="none"
    )
    with AppClient(create_app(settings)) as c:
        yield c


def test_tokens_are_read_and_compared_as_bearer_tokens() -> None:
    assert presented({"authorization": "Bearer abc"}) == "abc"
    assert presented({"authorization": "bearer  abc "}) == "abc"
    for value in ("Basic abc", "Bearer", "Bearer ", "abc"):
        assert presented({"authorization": value}) is None
    assert presented({}) is None
    assert matches("abc", digest("abc"))
    assert not matches("abd", digest("abc"))
    assert not matches(None, digest("abc"))
    assert not matches("", digest(""))  # an empty token is no token
    assert "s3cret" not in repr(Settings(admin_token="s3cret", inference_token="s3cret"))


def test_admin_api_needs_the_admin_token(client: AppClient, digits: Digits) -> None:
    for method, path in [
        ("GET", "/admin/v1/functions"),
        ("PUT", "/admin/v1/functions/x"),
        ("DELETE", "/admin/v1/functions/x"),
        ("PATCH", "/admin/v1/functions/x/pool"),
        ("HEAD", "/admin/v1/blobs/sha256:" + "0" * 64),
        ("GET", "/admin/v1/blobs/sha256:" + "0" * 64),
        ("PUT", "/admin/v1/blobs/sha256:" + "0" * 64),
    ]:
        for headers in ({}, bearer("wrong"), {"authorization": f"Basic {ADMIN}"}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
            if method != "HEAD":
                assert ADMIN not in r.text
    assert client.get("/admin/v1/functions", headers=bearer(ADMIN)).status_code == 200


def test_inference_needs_the_functions_token_or_the_global_one(client: AppClient, digits: Digits) -> None:
    # Uploads and pushes with the admin token; one function with a token of its own.
    digest = client.put("/admin/v1/blobs/sha256:" + digits.digest, content=digits.model, headers=bearer(ADMIN)).json()[
        "digest"
    ]
    doc = {"module": None, "models": {"model": digest}}
    assert client.put("/admin/v1/functions/open", json=doc, headers=bearer(ADMIN)).status_code == 201
    own = client.put("/admin/v1/functions/own", json={**doc, "inference_token": OWN}, headers=bearer(ADMIN))
    assert own.status_code == 201
    assert own.json()["requires_token"] is True
    assert OWN not in own.text
    assert "token_sha256" not in own.text
    body = infer_body(digits.x_test[:1])

    assert client.post("/v2/models/open/infer", json=body).status_code == 401
    assert client.post("/v2/models/open/infer", json=body, headers=bearer(GLOBAL)).status_code == 200
    assert client.post("/v2/models/own/infer", json=body, headers=bearer(GLOBAL)).status_code == 401
    assert client.post("/v2/models/own/infer", json=body, headers=bearer(OWN)).status_code == 200
    # Metadata tells as much as the signature: it is guarded the same way.
    assert client.get("/v2/models/own").status_code == 401
    assert client.get("/v2/models/own", headers=bearer(OWN)).status_code == 200
    assert client.get("/v2/models/own/ready", headers=bearer(GLOBAL)).status_code == 401
    # Health and server metadata stay open, for probes.
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").status_code == 200
    # A re-push keeps the token; an empty one removes it.
    again = client.put("/admin/v1/functions/own", json=doc, headers=bearer(ADMIN)).json()
    assert again["requires_token"] is True
    cleared = client.put("/admin/v1/functions/own", json={**doc, "inference_token": ""}, headers=bearer(ADMIN))
    assert cleared.json()["requires_token"] is False
    assert client.post("/v2/models/own/infer", json=body, headers=bearer(GLOBAL)).status_code == 200


def test_no_bind_beyond_loopback_without_an_admin_token() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(Settings(host=host))
    for host in ("0.0.0.0", "::", "10.1.2.3", "gateway.example"):
        with pytest.raises(ValueError, match="WASMGATE_ADMIN_TOKEN"):
            check_bind(Settings(host=host))
        check_bind(Settings(host=host, admin_token="t"))


@pytest.mark.e2e
def test_serve_refuses_an_open_bind_and_never_logs_tokens(tmp_path: Path, digits: Digits) -> None:
    refused = subprocess.run(
        [*wasm_command(), "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert refused.returncode == 2
    assert "WASMGATE_ADMIN_TOKEN" in refused.stderr

    env = {"WASMGATE_ADMIN_TOKEN": ADMIN, "WASMGATE_INFERENCE_TOKEN": GLOBAL, "WASMGATE_LOG_LEVEL": "debug"}
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env=env)
    gw.start()
    try:
        no_token = subprocess.run(
            [*wasm_command(), "push", str(digits.path), "--name", "digits", "--gateway", gw.url, "--token", ""],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert no_token.returncode == 1
        assert "401" in no_token.stderr
        assert "admin token" in no_token.stderr
        pushed = subprocess.run(
            [*wasm_command(), "push", str(digits.path), "--name", "digits", "--gateway", gw.url],
            capture_output=True,
            text=True,
            timeout=120,
            env={**_plain_env(), "WASMGATE_ADMIN_TOKEN": ADMIN},
        )
        assert pushed.returncode == 0, pushed.stderr
        body = infer_body(digits.x_test[:1])
        url = f"{gw.url}/v2/models/digits/infer"
        assert httpx.post(url, json=body, headers=bearer("wrong-" + GLOBAL), timeout=30).status_code == 401
        assert httpx.post(url, json=body, headers=bearer(GLOBAL), timeout=30).status_code == 200
    finally:
        gw.stop()
    log = gw.log.read_text()
    assert "401" in log  # the refusals were logged...
    for secret in (ADMIN, GLOBAL):
        assert secret not in log  # ...and no token with them


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WASMGATE_")}

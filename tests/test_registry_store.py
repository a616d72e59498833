"""The registry store against a real registry (Debian's docker-registry): the artifact format as a standard OCI
client (oras) reads and writes it, the gateway app serving from it, the cache's digest checks, versions, TLS,
credentials and the registry's own refusals."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from gateway.store.oci import Credentials, Reference, RegistryClient
from tests.oci_registry import Registry, htpasswd, self_signed
from tests.support import AppClient, Digits, file_contents, onnx_predict, read_file_body, wasm_command
from wasm_host.errors import Unavailable, UpstreamError

WASM = "application/vnd.wasm.content.layer.v1+wasm"
MODEL = "application/vnd.wasmgate.model.onnx.v1"
FILE = "application/vnd.wasmgate.file.v1"
CONFIG = "application/vnd.wasmgate.function.config.v1+json"
VOCAB = b"[PAD]\n[UNK]\nhello\nworld\n"
VOCAB_2 = b"[PAD]\n[UNK]\nbonjour\nmonde\n"
LABELS = b"zero\none\ntwo\n"


def store_settings(registry: Registry, data_dir: Path, **more: Any) -> Settings:
    return Settings.from_env(
        {},
        data_dir=data_dir,
        store=registry.store,
        registry_plain_http=registry.tls is None,
        registry_sync_interval_s=0.2,
        **more,
    )


@pytest.fixture
def app(registry: Registry, tmp_path: Path) -> Iterator[AppClient]:
    with AppClient(create_app(store_settings(registry, tmp_path / "gw"))) as client:
        yield client


def upload(client: AppClient, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.put(f"/admin/v1/blobs/{digest}", content=data).status_code in (200, 201)
    return digest


def push(client: AppClient, name: str, module: bytes | None, models: dict[str, bytes], **more: Any) -> Any:
    doc = {"module": module and upload(client, module), "models": {a: upload(client, m) for a, m in models.items()}}
    return client.put(f"/admin/v1/functions/{name}", json=doc | more)


def infer_digits(client: AppClient, name: str, digits: Digits) -> Any:
    x = digits.x_test
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return client.post(f"/v2/models/{name}/infer", json=body)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def oras_client(registry: Registry) -> Any:
    import oras.client

    return oras.client.OrasClient(hostname=registry.host, insecure=True)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*wasm_command(), *args], capture_output=True, text=True, timeout=120, env=env)


def test_a_pushed_function_is_an_oci_artifact_a_standard_client_reads(
    registry: Registry, app: AppClient, digits: Digits, guests: dict[str, Path], tmp_path: Path
) -> None:
    # Straight to the registry from the CLI (validated in process), and through a gateway's admin API.
    wasm = guests["digits_topk"].read_bytes()
    r = cli(
        "push",
        str(guests["digits_topk"]),
        "--model",
        f"digits={digits.path}",
        "--registry-plain-http",
        "--registry",
        f"{registry.store}:top3",
    )
    assert r.returncode == 0, r.stderr
    assert "pushed top3 version 1 (custom, tier auto)" in r.stdout
    pinned = r.stdout.split()[-1]
    assert pinned.startswith(f"{registry.store}@sha256:")
    assert push(app, "digits", None, {"model": digits.model}).status_code == 201

    oras = oras_client(registry)
    manifest = oras.get_manifest(f"{registry.host}/fns:top3")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == CONFIG
    assert manifest["config"]["mediaType"] == CONFIG
    client = RegistryClient(Reference.parse(registry.store), Credentials(plain_http=True))
    assert pinned == f"{registry.store}@{client.resolve('top3')}"  # pinned: the digest of the manifest pushed
    layers = {layer["mediaType"]: layer for layer in manifest["layers"]}
    assert set(layers) == {WASM, MODEL}
    assert layers[MODEL]["annotations"] == {
        "io.wasmgate.model.alias": "digits",
        "org.opencontainers.image.title": "digits.onnx",
    }
    assert layers[WASM]["digest"] == "sha256:" + hashlib.sha256(wasm).hexdigest()
    files = oras.pull(target=f"{registry.host}/fns:top3", outdir=str(tmp_path / "pulled"))
    assert sorted(Path(f).name for f in files) == ["digits.onnx", "top3.wasm"]
    assert (tmp_path / "pulled" / "top3.wasm").read_bytes() == wasm
    assert (tmp_path / "pulled" / "digits.onnx").read_bytes() == digits.model
    oras.download_blob(f"{registry.host}/fns:top3", manifest["config"]["digest"], str(tmp_path / "config.json"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kind"] == "custom"
    assert config["version"] == 1
    assert config["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 64]}]

    # The bare model: the passthrough guest travels with it, so the artifact is self-contained.
    manifest = oras.get_manifest(f"{registry.host}/fns:digits")
    titles = sorted(layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"])
    assert titles == ["model.onnx", "passthrough.wasm"]
    assert app.get("/admin/v1/functions/digits").json()["digest"] == client.resolve("digits")
    client.close()

    # The gateway serves what the CLI pushed once it has synced, and `wasm ls --registry` lists both.
    wait_for(lambda: app.get("/v2/models/top3").status_code == 200, "the gateway to sync top3")
    r = cli("ls", "--registry", registry.store, "--registry-plain-http")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[:3] for row in rows] == [["digits", "1", "passthrough"], ["top3", "1", "custom"]]


def test_an_artifact_pushed_with_oras_is_served(
    registry: Registry, digits: Digits, guests: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "oras"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "digits.onnx").write_bytes(digits.model)
    (work / "fn.wasm").write_bytes(guests["digits_topk"].read_bytes())
    (work / "model.onnx").write_bytes(digits.model)
    oras = oras_client(registry)
    # A function and its model, the alias taken from the file name; oras's own empty config.
    oras.push(target=f"{registry.host}/fns:top3", files=[f"fn.wasm:{WASM}", f"digits.onnx:{MODEL}"])
    # A bare model with its alias annotated, and a config that sets only a pool setting.
    (work / "annotations.json").write_text(json.dumps({"model.onnx": {"io.wasmgate.model.alias": "model"}}))
    (work / "config.json").write_text(json.dumps({"pool": {"min_warm": 1}}))
    oras.push(
        target=f"{registry.host}/fns:bare",
        files=[f"model.onnx:{MODEL}"],
        annotation_file="annotations.json",
        manifest_config=f"config.json:{CONFIG}",
    )
    # Not a function: the gateway leaves it alone.
    oras.push(target=f"{registry.host}/fns:notes", files=["config.json:text/plain"])

    with AppClient(create_app(store_settings(registry, tmp_path / "gw"))) as app:
        listed = {f["name"]: f for f in app.get("/admin/v1/functions").json()["functions"]}
        assert sorted(listed) == ["bare", "top3"]
        assert listed["bare"]["kind"] == "passthrough"
        assert listed["bare"]["pool"]["min_warm"] == 1
        assert listed["top3"]["kind"] == "custom"
        assert listed["top3"]["version"] == 1

        r = infer_digits(app, "bare", digits)
        assert r.status_code == 200, r.text
        labels, probs = onnx_predict(digits.model, digits.x_test)
        assert r.json()["outputs"][0]["data"] == labels.tolist()

        raw = np.rint(digits.x_test * 16).astype(np.uint8)
        body = {
            "inputs": [{"name": "images", "shape": list(raw.shape), "datatype": "UINT8", "data": raw.ravel().tolist()}]
        }
        r = app.post("/v2/models/top3/infer", json=body)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        _, probs = onnx_predict(digits.model, raw.astype(np.float32) / 16)
        expected = np.argsort(-probs, axis=1, kind="stable")[:, :3]
        np.testing.assert_array_equal(np.array(out["labels"]["data"]).reshape(-1, 3), expected)

        # A push replaces what a tag held that was no function.
        r = push(app, "notes", None, {"model": digits.model})
        assert r.status_code == 201, r.text
        assert infer_digits(app, "notes", digits).status_code == 200


def read(client: AppClient, name: str, alias: str) -> bytes:
    return file_contents(client.post(f"/v2/models/{name}/infer", json=read_file_body(alias)))


def test_files_are_layers_of_the_artifact_and_reach_every_gateway(
    registry: Registry, app: AppClient, guests: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "vocab").write_bytes(VOCAB)
    (tmp_path / "labels.txt").write_bytes(LABELS)
    wasm = guests["read_file"].read_bytes()
    files = ("--file", f"vocab={tmp_path / 'vocab'}", "--file", f"labels.txt={tmp_path / 'labels.txt'}")
    r = cli("push", str(guests["read_file"]), *files, "--registry-plain-http", "--registry", f"{registry.store}:reader")
    assert r.returncode == 0, r.stderr

    # Each file is a layer of its own media type, its alias annotated and its title the file name it has.
    oras = oras_client(registry)
    manifest = oras.get_manifest(f"{registry.host}/fns:reader")
    layers = {layer["annotations"]["org.opencontainers.image.title"]: layer for layer in manifest["layers"]}
    assert layers["vocab"]["mediaType"] == FILE
    assert layers["vocab"]["annotations"]["io.wasmgate.file.alias"] == "vocab"
    assert layers["vocab"]["digest"] == "sha256:" + hashlib.sha256(VOCAB).hexdigest()
    assert layers["labels.txt"]["mediaType"] == FILE
    oras.pull(target=f"{registry.host}/fns:reader", outdir=str(tmp_path / "pulled"))
    assert (tmp_path / "pulled" / "labels.txt").read_bytes() == LABELS

    # The gateway syncs it and serves the files; a new version with another vocabulary, pushed through it,
    # reaches a second gateway, and a rollback there brings the first vocabulary back everywhere.
    wait_for(lambda: app.get("/v2/models/reader").status_code == 200, "the gateway to sync reader")
    assert read(app, "reader", "vocab") == VOCAB
    assert read(app, "reader", "labels.txt") == LABELS
    assert push(app, "reader", wasm, {}, files={"vocab": upload(app, VOCAB_2)}).json()["version"] == 2
    assert read(app, "reader", "vocab") == VOCAB_2
    with AppClient(create_app(store_settings(registry, tmp_path / "other"))) as other:
        assert read(other, "reader", "vocab") == VOCAB_2
        assert other.post("/admin/v1/functions/reader/rollback", json={"to": 1}).json()["version"] == 3
        assert read(other, "reader", "labels.txt") == LABELS
    wait_for(lambda: app.get("/admin/v1/functions/reader").json()["version"] == 3, "the first gateway to sync")
    assert read(app, "reader", "vocab") == VOCAB
    r = cli("ls", "--registry", registry.store, "--registry-plain-http")
    assert r.stdout.splitlines()[0].split()[5] == "FILES"
    assert r.stdout.splitlines()[1].split()[5] == "labels.txt,vocab"

    # Gone from the registry: gone from the cache, its files' directories with it.
    assert cli("rm", "reader", "--registry", registry.store, "--registry-plain-http").returncode == 0
    wait_for(lambda: app.get("/v2/models/reader").status_code == 404, "the gateway to drop reader")
    assert not (tmp_path / "gw" / "files" / "reader").exists()


def test_an_artifact_pushed_with_oras_with_file_layers_is_served(
    registry: Registry, guests: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "oras"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "fn.wasm").write_bytes(guests["read_file"].read_bytes())
    (work / "vocab.txt").write_bytes(VOCAB)
    (work / "labels.list").write_bytes(LABELS)
    for name in "abcd":
        (work / name).write_bytes(name.encode())
    # One alias from the file name (whole: the guest opens /files/vocab.txt), one annotated.
    (work / "annotations.json").write_text(json.dumps({"labels.list": {"io.wasmgate.file.alias": "labels"}}))
    oras = oras_client(registry)
    oras.push(
        target=f"{registry.host}/fns:reader",
        files=[f"fn.wasm:{WASM}", f"vocab.txt:{FILE}", f"labels.list:{FILE}"],
        annotation_file="annotations.json",
    )
    # More files than this gateway lets a function have: not served, whoever pushed it.
    oras.push(target=f"{registry.host}/fns:crowded", files=[f"fn.wasm:{WASM}", *(f"{n}:{FILE}" for n in "abcd")])

    with AppClient(create_app(store_settings(registry, tmp_path / "gw", max_function_files=3))) as app:
        listed = {f["name"]: f for f in app.get("/admin/v1/functions").json()["functions"]}
        assert sorted(listed) == ["reader"]
        assert sorted(listed["reader"]["files"]) == ["labels", "vocab.txt"]
        assert read(app, "reader", "vocab.txt") == VOCAB
        assert read(app, "reader", "labels") == LABELS


def test_a_corrupt_cached_blob_is_fetched_again_or_refused(registry: Registry, digits: Digits, tmp_path: Path) -> None:
    gateway = create_app(store_settings(registry, tmp_path / "gw"))
    with AppClient(gateway) as app:
        corrupt_blobs(registry, app, gateway.state.wasmgate, digits, tmp_path)


def corrupt_blobs(registry: Registry, app: AppClient, state: Any, digits: Digits, tmp_path: Path) -> None:
    assert push(app, "digits", None, {"model": digits.model}).status_code == 201
    assert infer_digits(app, "digits", digits).status_code == 200
    blob = tmp_path / "gw" / "blobs" / "sha256" / digits.digest
    module = tmp_path / "gw" / "blobs" / "sha256" / state.store.get("digits").module

    # Tampered bytes in the cache: found at the next load, fetched again by digest, and served correctly.
    blob.write_bytes(b"not the model")
    module.write_bytes(b"\0asm not the module")
    state.registry.forget("digits")
    state.host.backend._graphs.clear()  # the next load reads the model from the cache, not from memory
    r = infer_digits(app, "digits", digits)
    assert r.status_code == 200, r.text
    assert blob.read_bytes() == digits.model
    assert hashlib.sha256(module.read_bytes()).hexdigest() == state.store.get("digits").module

    # With the registry gone, a corrupt blob is never used: the load fails with a 503 that says why.
    registry.stop()
    blob.write_bytes(b"tampered again")
    state.registry.forget("digits")
    state.host.backend._graphs.clear()
    r = infer_digits(app, "digits", digits)
    assert r.status_code == 503
    assert "corrupt" in r.json()["error"]
    assert registry.host in r.json()["error"]


def test_versions_rollback_and_pool_changes_go_through_the_registry(
    registry: Registry, app: AppClient, digits: Digits, tmp_path: Path
) -> None:
    assert push(app, "digits", None, {"model": digits.model}).status_code == 201
    v2 = push(app, "digits", None, {"model": digits.model}, pool={"min_warm": 1}).json()
    assert v2["version"] == 2
    assert v2["pool"]["min_warm"] == 1
    r = app.request("PATCH", "/admin/v1/functions/digits/pool", json={"max_queue": 7})
    assert r.status_code == 200
    assert r.json()["version"] == 2
    assert r.json()["digest"] != v2["digest"]
    r = app.post("/admin/v1/functions/digits/rollback", json={})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 3
    assert r.json()["pool"]["min_warm"] == 0
    assert app.get("/admin/v1/functions/digits/versions").json() == {
        "name": "digits",
        "current": 3,
        "versions": [1, 2, 3],
    }

    # A second gateway on the same registry sees the same current version and chain.
    with AppClient(create_app(store_settings(registry, tmp_path / "other"))) as other:
        described = other.get("/admin/v1/functions/digits").json()
        assert described["version"] == 3
        assert described["digest"] == r.json()["digest"]
        assert other.get("/admin/v1/functions/digits/versions").json()["versions"] == [1, 2, 3]
        assert other.post("/admin/v1/functions/digits/rollback", json={"to": 2}).json()["version"] == 4
        assert other.get("/admin/v1/functions/digits").json()["pool"]["max_queue"] == 7
    wait_for(lambda: app.get("/admin/v1/functions/digits").json()["version"] == 4, "the first gateway to sync")


def test_tls_with_a_private_ca_and_plain_http_only_when_allowed(
    registry: Registry, tmp_path: Path, digits: Digits
) -> None:
    cert, key = self_signed(tmp_path)
    secure = Registry(tmp_path / "tls", tls=(cert, key))
    secure.start()
    try:
        ref = Reference.parse(secure.store)
        with RegistryClient(ref, Credentials(ca_file=str(cert))) as client:
            client.ping()
        r = cli(
            "push", str(digits.path), "--name", "digits", "--registry", secure.store, "--registry-ca-file", str(cert)
        )
        assert r.returncode == 0, r.stderr
        with RegistryClient(ref, Credentials()) as client, pytest.raises(Unavailable, match="registry_ca_file"):
            client.ping()  # a certificate nobody said to trust
        with (
            RegistryClient(ref, Credentials(plain_http=True)) as client,
            pytest.raises(UpstreamError, match="unset registry_plain_http"),
        ):
            client.ping()  # plain HTTP to a TLS port
    finally:
        secure.stop()
    # The plain-HTTP registry, without registry_plain_http: HTTPS is tried, loopback or not, and refused.
    plain = Reference.parse(registry.store)
    with RegistryClient(plain, Credentials()) as client, pytest.raises(Unavailable, match="registry_plain_http"):
        client.ping()
    with pytest.raises(ValueError, match="WASMGATE_REGISTRY_CA_FILE"):
        RegistryClient(Reference.parse(registry.store), Credentials(ca_file=str(tmp_path / "missing.pem")))


def test_registry_credentials_and_a_clear_error_for_wrong_ones(tmp_path: Path, digits: Digits) -> None:
    secured = Registry(tmp_path / "auth", htpasswd=htpasswd(tmp_path, "pusher", "s3cret"))
    secured.start()
    try:
        base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        push_cmd = ("push", str(digits.path), "--name", "digits", "--registry", secured.store, "--registry-plain-http")
        good = base | {"WASMGATE_REGISTRY_USERNAME": "pusher", "WASMGATE_REGISTRY_PASSWORD": "s3cret"}
        r = cli(*push_cmd, env=good)
        assert r.returncode == 0, r.stderr
        r = cli(*push_cmd, env=good | {"WASMGATE_REGISTRY_PASSWORD": "wrong"})
        assert r.returncode == 1
        assert "refused the credentials of 'pusher'" in r.stderr
        assert "registry_password" in r.stderr
        assert "wrong" not in r.stderr
        r = cli(*push_cmd, env=base)
        assert r.returncode == 1
        assert "requires credentials" in r.stderr

        # A gateway with a wrong password starts (serving its cache) and says what to fix on a push.
        settings = store_settings(secured, tmp_path / "gw", registry_username="pusher", registry_password="wrong")
        with AppClient(create_app(settings)) as app:
            assert app.get("/v2/health/ready").status_code == 200
            r = push(app, "other", None, {"model": digits.model})
            assert r.status_code == 502
            assert "registry_password" in r.json()["error"]
        settings = store_settings(secured, tmp_path / "gw2", registry_username="pusher", registry_password="s3cret")
        with AppClient(create_app(settings)) as app:
            assert infer_digits(app, "digits", digits).status_code == 200
    finally:
        secured.stop()


def test_registry_refusals_and_bad_settings_are_clear_errors(tmp_path: Path, digits: Digits) -> None:
    no_deletes = Registry(tmp_path / "nodelete", deletes=False)
    no_deletes.start()
    try:
        with AppClient(create_app(store_settings(no_deletes, tmp_path / "gw"))) as app:
            assert push(app, "digits", None, {"model": digits.model}).status_code == 201
            r = app.delete("/admin/v1/functions/digits")
            assert r.status_code == 502
            assert "storage.delete.enabled" in r.json()["error"]
            assert infer_digits(app, "digits", digits).status_code == 200  # nothing changed
    finally:
        no_deletes.stop()

    for store in ("http://127.0.0.1:5000/fns", "oci://127.0.0.1:5000/Fns", "oci://127.0.0.1:5000/fns:latest"):
        with pytest.raises(ValueError, match="WASMGATE_STORE"):
            create_app(Settings.from_env({}, data_dir=tmp_path / "bad", store=store))
    with pytest.raises(ValueError, match="WASMGATE_REGISTRY_SYNC_INTERVAL_S"):
        create_app(Settings.from_env({}, data_dir=tmp_path / "bad", store="oci://h/fns", registry_sync_interval_s=0.0))
    r = cli("serve", "--data-dir", str(tmp_path / "bad"), "--store", "oci://nowhere")
    assert r.returncode == 2
    assert "WASMGATE_STORE" in r.stderr
    assert Reference.parse("oci://reg.example:5000/team/fns:v1") == Reference("reg.example:5000", "team/fns", "v1")


def test_pushes_fail_clearly_while_the_registry_is_down(registry: Registry, app: AppClient, digits: Digits) -> None:
    registry.stop()
    r = push(app, "digits", None, {"model": digits.model})
    assert r.status_code == 503, r.text
    assert registry.host in r.json()["error"]
    assert "cannot be reached" in r.json()["error"]
    assert r.headers["retry-after"]
    assert app.get("/admin/v1/functions").json()["functions"] == []  # nothing committed, nothing cached


def test_the_bearer_token_flow_and_tag_pagination() -> None:
    """No token service runs here, so an httpx transport stands in for a registry that wants bearer tokens (the
    distribution spec's token authentication) and pages its tag list; the client is the real one."""
    granted: dict[str, str] = {}  # token -> the scope it was issued for

    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            if request.headers.get("authorization") != "Basic " + base64.b64encode(b"ci:pw").decode():
                return httpx.Response(401)
            assert request.url.params["service"] == "registry.test"
            token = f"token-{len(granted)}"
            granted[token] = request.url.params["scope"]
            return httpx.Response(200, json={"token": token})
        scope = "repository:fns:pull,push" if request.method == "PUT" else "repository:fns:pull"
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        if granted.get(sent) not in (scope, "repository:fns:pull,push"):
            challenge = f'Bearer realm="https://auth.test/token",service="registry.test",scope="{scope}"'
            return httpx.Response(401, headers={"www-authenticate": challenge})
        if request.url.path == "/v2/fns/tags/list" and "last" not in request.url.params:
            return httpx.Response(
                200, json={"tags": ["a"]}, headers={"link": '</v2/fns/tags/list?last=a&n=1>; rel="next"'}
            )
        if request.url.path == "/v2/fns/tags/list":
            return httpx.Response(200, json={"tags": ["b"]})
        if request.method == "PUT":
            return httpx.Response(
                201, headers={"docker-content-digest": "sha256:" + hashlib.sha256(request.content).hexdigest()}
            )
        return httpx.Response(404)

    ref = Reference.parse("oci://registry.test/fns")
    with RegistryClient(ref, Credentials("ci", "pw"), transport=httpx.MockTransport(registry)) as client:
        assert client.tags() == ["a", "b"]
        assert client.put_manifest("a", b"{}") == "sha256:" + hashlib.sha256(b"{}").hexdigest()
        assert sorted(granted.values()) == ["repository:fns:pull", "repository:fns:pull,push"]
    with (
        RegistryClient(ref, Credentials("ci", "wrong"), transport=httpx.MockTransport(registry)) as client,
        pytest.raises(UpstreamError, match="registry_password"),
    ):
        client.tags()

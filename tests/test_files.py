"""Function data files (guest_modules/ABI.md, "Files"): pushed with ``wasm push --file ALIAS=PATH`` or the
admin API's ``files``, read by real guests built from guest_modules/ (the read_file example, and the
files_escape hostile fixture that tries to write and to get out) through a real ``wasm serve``, on both tiers,
across versions, rollbacks and deletes, within the file limits, and from a runner that fetches them from its
gateway. The registry store's side is in tests/test_registry_store.py."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from gateway.store.files import set_id
from gateway.store.local import LocalStore
from gateway.store.manifest import Manifest
from tests.support import (
    EBADF,
    ENOENT,
    EPERM,
    AppClient,
    Digits,
    Gateway,
    assert_consistent,
    file_contents,
    materialise_files,
    read_file,
    read_file_body,
    upload,
)
from wasm_host.errors import NotFound

pytestmark = pytest.mark.e2e

#: The module's gateway holds functions to small file limits, so that a push can pass each of them cheaply.
LIMITS = {
    "WASMGATE_MAX_FILE_BYTES": "4096",
    "WASMGATE_MAX_FUNCTION_FILES_BYTES": "6144",
    "WASMGATE_MAX_FUNCTION_FILES": "3",
}
VOCAB = b"[PAD]\n[UNK]\nhello\nworld\n"
VOCAB_2 = b"[PAD]\n[UNK]\nbonjour\nmonde\n"
LABELS = b"zero\none\ntwo\n"
#: Not text: only a binary response carries it exactly.
BLOB = bytes(np.random.default_rng(17).integers(0, 256, 3000, dtype=np.uint8))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("files-gateway")
    env = LIMITS | {"WASMGATE_POD_IDLE_GRACE_S": "3", "WASMGATE_DRAIN_TIMEOUT_S": "5"}
    gw = Gateway(root / "data", root / "gateway.log", env=env)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The data files, on disk for `wasm push --file`."""
    root = tmp_path_factory.mktemp("files")
    paths = {}
    for name, content in {"vocab": VOCAB, "vocab2": VOCAB_2, "labels": LABELS, "blob": BLOB}.items():
        paths[name] = root / name
        paths[name].write_bytes(content)
    return paths


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(gw: Gateway, name: str) -> dict[str, object]:
    r = httpx.get(f"{gw.url}/admin/v1/functions/{name}", timeout=30)
    assert r.status_code == 200, r.text
    doc: dict[str, object] = r.json()
    return doc


def views(gw: Gateway, name: str) -> list[Path]:
    """The directories the function's guests see their files in (gateway.store.files)."""
    folder = gw.data_dir / "files" / name
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_function_reads_the_files_pushed_with_it_by_alias(
    gateway: Gateway, guests: dict[str, Path], digits: Digits, data: dict[str, Path]
) -> None:
    # A file alias may equal a model alias: the guest opens files by path and models by load_by_name.
    r = gateway.cli(
        "push", str(guests["read_file"]), "--name", "reader",
        "--file", f"vocab={data['vocab']}", "--file", f"labels.txt={data['labels']}", "--file", f"blob={data['blob']}",
        "--model", f"vocab={digits.path}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "pushed reader version 1 (custom" in r.stdout

    assert file_contents(read_file(gateway.url, "reader", "vocab")) == VOCAB
    assert file_contents(read_file(gateway.url, "reader", "labels.txt")) == LABELS
    assert file_contents(read_file(gateway.url, "reader", "blob", binary=True)) == BLOB
    missing = read_file(gateway.url, "reader", "secret")
    assert missing.status_code == 400
    assert 'no file "secret" was pushed with this function' in missing.json()["error"]

    described = describe(gateway, "reader")
    assert described["files"] == {
        "vocab": f"sha256:{sha256(VOCAB)}",
        "labels.txt": f"sha256:{sha256(LABELS)}",
        "blob": f"sha256:{sha256(BLOB)}",
    }
    assert described["models"] == {"vocab": f"sha256:{digits.digest}"}
    ls = gateway.cli("ls").stdout.splitlines()
    assert ls[0].split()[-1] == "FILES"
    assert next(line for line in ls if line.startswith("reader")).split()[-1] == "vocab,labels.txt,blob"

    # On the host: one directory holding exactly the function's files, each its blob's own inode (a link).
    (view,) = views(gateway, "reader")
    assert view.name == set_id({"vocab": sha256(VOCAB), "labels.txt": sha256(LABELS), "blob": sha256(BLOB)})
    assert sorted(p.name for p in view.iterdir()) == ["blob", "labels.txt", "vocab"]
    blob = gateway.data_dir / "blobs" / "sha256" / sha256(VOCAB)
    assert (view / "vocab").stat().st_ino == blob.stat().st_ino
    assert assert_consistent(gateway.data_dir)


def test_writes_and_escapes_from_the_files_directory_are_refused(
    gateway: Gateway, guests: dict[str, Path], hostile_guests: dict[str, Path], data: dict[str, Path]
) -> None:
    r = gateway.cli("push", str(hostile_guests["files_escape"]), "--name", "prober", "--file", f"data={data['vocab']}")
    assert r.returncode == 0, r.stderr
    secret = gateway.cli("push", str(guests["read_file"]), "--name", "holder", "--file", f"secret={data['labels']}")
    assert secret.returncode == 0, secret.stderr

    body = {"inputs": [{"name": "case", "shape": [1], "datatype": "INT32", "data": [1]}]}
    r = httpx.post(f"{gateway.url}/v2/models/prober/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]["data"]
    assert out[:3] == [0, len(VOCAB), 0]  # its own file opens and reads, in handle and in _initialize
    assert out[3:13] == [EPERM, EPERM, EPERM, EBADF, EPERM, EPERM, EPERM, EPERM, EPERM, EPERM]  # no writes at all
    assert out[13:16] == [EPERM, EPERM, EPERM]  # ".." never leaves /files: no other function's files, no blobs
    assert out[16:18] == [ENOENT, ENOENT]  # another function's alias; an absolute path outside
    assert out[18:21] == [1, EBADF, 1]  # one preopen, "/files", holding the one file

    # Nothing changed on the host: the directory holds the one file, and it is its blob, intact.
    (view,) = views(gateway, "prober")
    assert [p.name for p in view.iterdir()] == ["data"]
    assert (view / "data").read_bytes() == VOCAB
    assert sha256((gateway.data_dir / "blobs" / "sha256" / sha256(VOCAB)).read_bytes()) == sha256(VOCAB)
    assert file_contents(read_file(gateway.url, "holder", "secret")) == LABELS


def test_versions_and_rollbacks_carry_the_files_and_a_delete_removes_them(
    gateway: Gateway, guests: dict[str, Path], data: dict[str, Path]
) -> None:
    fn = str(guests["read_file"])
    assert gateway.cli("push", fn, "--name", "versioned", "--file", f"vocab={data['vocab']}").returncode == 0
    assert file_contents(read_file(gateway.url, "versioned", "vocab")) == VOCAB
    assert gateway.cli("push", fn, "--name", "versioned", "--file", f"vocab={data['vocab2']}").returncode == 0
    assert file_contents(read_file(gateway.url, "versioned", "vocab")) == VOCAB_2
    # A re-push replaces the code, files included: without --file, version 3 has none.
    assert gateway.cli("push", fn, "--name", "versioned").returncode == 0
    assert describe(gateway, "versioned")["files"] == {}
    assert read_file(gateway.url, "versioned", "vocab").status_code == 400

    r = gateway.cli("rollback", "versioned", "--to", "1")
    assert r.returncode == 0, r.stderr
    assert describe(gateway, "versioned")["version"] == 4
    assert file_contents(read_file(gateway.url, "versioned", "vocab")) == VOCAB
    assert gateway.cli("rollback", "versioned", "--to", "2").returncode == 0
    assert file_contents(read_file(gateway.url, "versioned", "vocab")) == VOCAB_2
    # One directory per set of files: versions with the same files share one.
    assert [p.name for p in views(gateway, "versioned")] == sorted(
        set_id({"vocab": sha256(content)}) for content in (VOCAB, VOCAB_2)
    )

    assert gateway.cli("rm", "versioned").returncode == 0
    assert not (gateway.data_dir / "files" / "versioned").exists()
    assert (gateway.data_dir / "blobs" / "sha256" / sha256(VOCAB_2)).exists()  # blobs stay: others may share them
    assert read_file(gateway.url, "versioned", "vocab").status_code == 404


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"big": 4097}, "file 'big' of 4097 bytes exceeds 4096 (setting max_file_bytes)"),
        ({"a": 3100, "b": 3100}, "files total 6200 bytes, more than 6144 (setting max_function_files_bytes)"),
        (
            {"a": 1, "b": 2, "c": 3, "d": 4},
            "4 files are more than the 3 a function may have (setting max_function_files)",
        ),
    ],
    ids=["one-file", "all-files", "how-many"],
)
def test_file_limits_are_refused_at_push_with_the_setting_named(
    gateway: Gateway, guests: dict[str, Path], tmp_path: Path, files: dict[str, int], message: str
) -> None:
    flags = []
    for alias, size in files.items():
        (tmp_path / alias).write_bytes(b"x" * size)
        flags += ["--file", f"{alias}={tmp_path / alias}"]
    r = gateway.cli("push", str(guests["read_file"]), "--name", "limited", *flags)
    assert r.returncode == 1
    assert "error: 413: " in r.stderr
    assert message in r.stderr
    assert httpx.get(f"{gateway.url}/admin/v1/functions/limited").status_code == 404
    assert views(gateway, "limited") == []
    assert not list((gateway.data_dir / "files").glob(".staging-*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--file", "vocab"), "--file takes ALIAS=PATH, got 'vocab'"),
        (("--file", "../up=x"), "--file: invalid file alias '../up'"),
        (("--file", ".hidden=x"), "--file: invalid file alias '.hidden'"),
        (("--file", "a=x", "--file", "a=y"), "--file a is given twice"),
    ],
    ids=["no-path", "dot-dot", "hidden", "twice"],
)
def test_bad_file_flags_are_usage_errors(
    gateway: Gateway,
    guests: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # the CLI runs here: x and y are its files
    for path in ("x", "y"):
        Path(path).write_bytes(b"x")
    r = gateway.cli("push", str(guests["read_file"]), "--name", "bad", *args)
    assert r.returncode == 2
    assert message in r.stderr


def test_files_are_for_wasm_functions(gateway: Gateway, digits: Digits, data: dict[str, Path]) -> None:
    r = gateway.cli("push", str(digits.path), "--name", "bare", "--file", f"vocab={data['vocab']}")
    assert r.returncode == 2
    assert "--file is for .wasm functions" in r.stderr
    r = gateway.cli("push", "--name", "remote", "--endpoint", "http://127.0.0.1:9", "--file", f"v={data['vocab']}")
    assert r.returncode == 2
    assert "--file needs a .wasm function" in r.stderr


def test_bad_file_pushes_through_the_admin_api_are_400s_that_change_nothing(
    tmp_path: Path, guests: dict[str, Path], digits: Digits
) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path / "data")
    with AppClient(create_app(settings)) as client:
        module = upload(client, guests["read_file"].read_bytes())
        vocab = upload(client, VOCAB)
        model = upload(client, digits.model)
        cases: list[tuple[dict[str, object], str]] = [
            ({"module": module, "files": ["vocab"]}, "'files' must map aliases to digests"),
            ({"module": module, "files": {"vocab": 7}}, "'files' must map aliases to digests"),
            ({"module": module, "files": {"../vocab": vocab}}, "invalid file alias '../vocab'"),
            ({"module": module, "files": {"sub/vocab": vocab}}, "invalid file alias 'sub/vocab'"),
            ({"module": module, "files": {".vocab": vocab}}, "invalid file alias '.vocab'"),
            ({"module": module, "files": {"vocab": "sha256:zz"}}, "invalid digest"),
            ({"module": module, "files": {"vocab": "sha256:" + "1" * 64}}, "was never uploaded"),
            ({"module": None, "models": {"model": model}, "files": {"vocab": vocab}}, "files are for .wasm functions"),
            ({"module": None, "endpoint": "http://127.0.0.1:9", "files": {"vocab": vocab}}, "no code to read files"),
        ]
        for doc, message in cases:
            r = client.put("/admin/v1/functions/fn", json=doc)
            assert r.status_code == 400, (doc, r.text)
            assert message in r.json()["error"], doc
        twice = f'{{"module": "{module}", "files": {{"vocab": "{vocab}", "vocab": "{vocab}"}}}}'
        r = client.put("/admin/v1/functions/fn", content=twice, headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert "key 'vocab' appears twice in one object" in r.json()["error"]
        assert client.get("/admin/v1/functions").json()["functions"] == []

        # The same file under two aliases is two entries of one blob; the function reads both.
        r = client.put("/admin/v1/functions/fn", json={"module": module, "files": {"a": vocab, "b": vocab}})
        assert r.status_code == 201, r.text
        assert r.json()["files"] == {"a": vocab, "b": vocab}
        for alias in ("a", "b"):
            assert file_contents(client.post("/v2/models/fn/infer", json=read_file_body(alias))) == VOCAB
    assert assert_consistent(tmp_path / "data") == ["fn"]
    assert not list((tmp_path / "data" / "files").glob(".staging-*"))


def test_a_view_is_repaired_from_the_blobs_when_it_was_tampered_with(tmp_path: Path, guests: dict[str, Path]) -> None:
    """What a guest sees is re-checked at each load: an entry that is no longer its blob's own file (a blob the
    registry cache fetched again lives in a new file) is linked again, and anything else there is removed."""
    data_dir = tmp_path / "data"
    app = create_app(Settings.from_env({}, data_dir=data_dir))
    with AppClient(app) as client:
        module = upload(client, guests["read_file"].read_bytes())
        r = client.put("/admin/v1/functions/fn", json={"module": module, "files": {"vocab": upload(client, VOCAB)}})
        assert r.status_code == 201, r.text
        assert file_contents(client.post("/v2/models/fn/infer", json=read_file_body("vocab"))) == VOCAB
        view = data_dir / "files" / "fn" / set_id({"vocab": sha256(VOCAB)})
        (view / "vocab").unlink()
        (view / "vocab").write_bytes(b"not the blob")
        (view / "stray").write_bytes(b"not the function's")
        app.state.wasmgate.registry.forget("fn")  # the next request loads it again
        assert file_contents(client.post("/v2/models/fn/infer", json=read_file_body("vocab"))) == VOCAB
        assert sorted(p.name for p in view.iterdir()) == ["vocab"]
        assert (view / "vocab").stat().st_ino == (data_dir / "blobs" / "sha256" / sha256(VOCAB)).stat().st_ino


def test_processes_sharing_a_data_dir_make_one_directory_of_a_functions_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    files = {"vocab": store.stage(VOCAB), "labels": store.stage(LABELS)}
    store.commit(Manifest("fn", 0, "custom", store.stage(b"\0asm\1\0\0\0"), {}, None, None, files=files), 10)
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        made = set().union(*pool.map(materialise_files, [str(tmp_path)] * 8, [25] * 8))
    assert made == {str(tmp_path / "files" / "fn" / set_id(files))}
    view = Path(made.pop())
    assert {p.name: p.read_bytes() for p in view.iterdir()} == {"vocab": VOCAB, "labels": LABELS}
    assert not list((tmp_path / "files" / ".tmp").iterdir())
    manifest = store.delete("fn")
    assert not (tmp_path / "files" / "fn").exists()
    with pytest.raises(NotFound):  # a load that comes after the delete finds the function gone, and makes nothing
        store.files_dir(manifest)
    assert not (tmp_path / "files" / "fn").exists()


def test_worker_processes_share_the_files_of_each_version(
    tmp_path: Path, guests: dict[str, Path], data: dict[str, Path]
) -> None:
    """Two workers load each version at about the same time, each making sure of its directory; every request,
    whichever worker takes it, reads the current version's file."""
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", "--workers", "2")
    gw.start()
    try:
        for version, path, expected in (("1", data["vocab"], VOCAB), ("2", data["vocab2"], VOCAB_2)):
            assert (
                gw.cli("push", str(guests["read_file"]), "--name", "shared", "--file", f"vocab={path}").returncode == 0
            )
            for _ in range(16):  # a new connection each time: the kernel spreads them over the workers
                r = read_file(gw.url, "shared", "vocab")
                assert r.json()["model_version"] == version
                assert file_contents(r) == expected
        assert len(views(gw, "shared")) == 2
        assert not list((gw.data_dir / "files" / ".tmp").iterdir())
    finally:
        gw.stop()


def test_a_pod_tier_runner_serves_the_files_identically(
    gateway: Gateway, guests: dict[str, Path], data: dict[str, Path]
) -> None:
    """The local scaler's runners read the gateway's store: the same directory, the same bytes."""
    r = gateway.cli("push", str(guests["read_file"]), "--name", "podded", "--file", f"blob={data['blob']}")
    assert r.returncode == 0, r.stderr
    here = read_file(gateway.url, "podded", "blob", binary=True)
    assert here.headers["x-wasmgate-tier"] == "wasm"
    there = read_file(gateway.url, "podded", "blob", binary=True, **{"x-wasmgate-tier": "pod"})
    assert there.headers["x-wasmgate-tier"] == "pod", there.text
    assert there.headers["x-wasmgate-replica"].startswith("runner-")
    assert file_contents(there) == file_contents(here) == BLOB
    missing = read_file(gateway.url, "podded", "vocab", **{"x-wasmgate-tier": "pod"})
    assert missing.status_code == 400
    assert 'no file "vocab" was pushed' in missing.json()["error"]


def test_a_runner_fetches_a_functions_files_from_its_gateway(
    tmp_path: Path, guests: dict[str, Path], data: dict[str, Path]
) -> None:
    """As in a cluster, where a runner shares no disk with the gateway (``--source-url``)."""
    gw = Gateway(tmp_path / "data", tmp_path / "gateway.log", env={"WASMGATE_POD_SCALER": "none"})
    gw.start()
    runner = Gateway(tmp_path / "runner-data", tmp_path / "runner.log", "--source-url", gw.url, command="runner")
    try:
        fn = str(guests["read_file"])
        assert gw.cli("push", fn, "--name", "fetched", "--file", f"vocab={data['vocab']}").returncode == 0
        runner.start()
        r = httpx.post(f"{runner.url}/v2/models/fetched/versions/1/infer", json=read_file_body("vocab"), timeout=60)
        assert file_contents(r) == VOCAB
        assert (runner.data_dir / "blobs" / "sha256" / sha256(VOCAB)).read_bytes() == VOCAB
        assert gw.cli("push", fn, "--name", "fetched", "--file", f"vocab={data['vocab2']}").returncode == 0
        r = httpx.post(f"{runner.url}/v2/models/fetched/versions/2/infer", json=read_file_body("vocab"), timeout=60)
        assert file_contents(r) == VOCAB_2
        manifest = json.loads((runner.data_dir / "functions" / "fetched.json").read_text())
        assert manifest["files"] == {"vocab": f"sha256:{sha256(VOCAB_2)}"}
    finally:
        runner.stop()
        gw.stop()

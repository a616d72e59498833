"""The embedded function store: content-addressed blobs plus one JSON manifest per function, on local disk.

Layout under the data directory::

    blobs/sha256/<hex>        immutable blobs (Wasm modules, ONNX models), named by their sha256
    uploads/<hex>             blobs uploaded for a push that has not been committed yet
    functions/<name>.json     the current manifest of each function
    versions/<name>/<v>.json  every version each function has had (for rollback)
    cache/                    the engine's compile cache (owned by wasm_host.engine)

Every write goes to a temporary file in the same directory, is fsynced, and is renamed into place, so a reader
(another worker process, or the gateway after a crash) sees either the old file or the new one. A push commits
in one rename of its manifest: blobs are moved into ``blobs/`` first, and until the manifest lands nothing
refers to them. Writers serialise on an ``flock`` so concurrent pushes from several processes cannot interleave
their version numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

from wasm_host.errors import InvalidRequest, NotFound, TooLarge, Unavailable
from wasm_host.figures import ModelFigures
from wasm_host.pool import PoolSettings
from wasm_host.tensors import TensorSpec

NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
DIGEST_RE = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
UPLOAD_TTL_S = 3600
Kind = Literal["passthrough", "custom", "external"]
TierSetting = Literal["auto", "wasm", "pod"]
TIERS: tuple[TierSetting, ...] = ("auto", "wasm", "pod")


def check_name(name: str) -> str:
    """Function names are 1-128 characters of letters, digits, '.', '_' and '-', starting and ending with a
    letter or digit, and without '..': safe as a file name and as a URL path segment."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidRequest(
            f"invalid function name {shown!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_digest(digest: str) -> str:
    m = DIGEST_RE.fullmatch(digest)
    if not m:
        raise InvalidRequest(f"invalid digest {digest[:80]!r}: expected sha256:<64 lowercase hex digits>")
    return m.group(1)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a function is: its module, the models it may load by alias, and its declared tensors; where it
    runs (``tier``); and, for a function served by an existing OIP v2 server (kind ``external``), that
    server's base URL and the model name it knows the function by."""

    name: str
    version: int
    kind: Kind
    module: str  # sha256 hex of the Wasm module; "" for an external function
    models: dict[str, str]  # alias -> sha256 hex of the ONNX model
    inputs: list[TensorSpec] | None  # None: the function declares no signature
    outputs: list[TensorSpec] | None
    created: float = 0.0
    pool: PoolSettings = dataclasses.field(default_factory=PoolSettings)
    tier: TierSetting = "auto"  # where it lives: chosen by the router from its figures, or pinned at push
    endpoint: str | None = None  # base URL of an existing OIP v2 server serving this function's pod tier
    endpoint_model: str | None = None  # the model's name on that server (default: the function's name)
    figures: ModelFigures = dataclasses.field(default_factory=ModelFigures)  # its models' sizes and cost
    spill: bool = True  # a Wasm-tier function may spill large batches and overflow to warm pods
    mask_cold_start: bool = True  # a pod-tier function may be served by the Wasm tier while pods start
    token_sha256: str = dataclasses.field(default="", repr=False)  # sha256 of its own inference token, if any
    digest: str = ""  # the registry store: the OCI manifest this version is ("sha256:..."); "" in the local store

    @property
    def code(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What the function runs: its module and models. Equal codes can share loaded state."""
        return self.module, tuple(sorted(self.models.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "module": f"sha256:{self.module}" if self.module else None,
            "models": {alias: f"sha256:{d}" for alias, d in self.models.items()},
            "inputs": None if self.inputs is None else [s.to_json() for s in self.inputs],
            "outputs": None if self.outputs is None else [s.to_json() for s in self.outputs],
            "created": self.created,
            "pool": self.pool.to_json(),
            "tier": self.tier,
            "endpoint": self.endpoint,
            "endpoint_model": self.endpoint_model,
            "figures": self.figures.to_json(),
            "spill": self.spill,
            "mask_cold_start": self.mask_cold_start,
            "token_sha256": self.token_sha256,
            "digest": self.digest or None,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        def specs(key: str) -> list[TensorSpec] | None:
            raw = doc.get(key)
            return None if raw is None else [TensorSpec.from_json(x) for x in raw]

        kind = doc["kind"]
        return cls(
            name=doc["name"],
            version=int(doc["version"]),
            kind=kind,
            module="" if kind == "external" else check_digest(doc["module"]),
            models={alias: check_digest(d) for alias, d in doc["models"].items()},
            inputs=specs("inputs"),
            outputs=specs("outputs"),
            created=float(doc.get("created", 0.0)),
            pool=PoolSettings.from_json(doc.get("pool") or {}),
            tier=doc.get("tier", "auto"),
            endpoint=doc.get("endpoint"),
            endpoint_model=doc.get("endpoint_model"),
            figures=ModelFigures.from_json(doc.get("figures") or {}),
            spill=bool(doc.get("spill", True)),
            mask_cold_start=bool(doc.get("mask_cold_start", True)),
            token_sha256=str(doc.get("token_sha256") or ""),
            digest="sha256:" + check_digest(doc["digest"]) if doc.get("digest") else "",
        )


#: Validates a function's code the way a push does (``FunctionRegistry.validate``): its name, module digest
#: (None: a bare model behind the passthrough guest) and models by alias. Returns the manifest a push would
#: commit, without its version and settings.
Derive = Callable[[str, str | None, Mapping[str, str]], Manifest]


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.uploads = root / "uploads"
        self.functions = root / "functions"
        self.versions = root / "versions"
        for d in (self.blobs, self.uploads, self.functions, self.versions):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_path = root / ".lock"

    # -- blobs ---------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def upload_path(self, digest: str) -> Path:
        return self.uploads / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists() or self.upload_path(digest).exists()

    def read_staged(self, digest: str) -> bytes:
        """A blob by digest, from the store or from pending uploads. Raises InvalidRequest if neither has it."""
        for path in (self.blob_path(digest), self.upload_path(digest)):
            with contextlib.suppress(FileNotFoundError):
                return path.read_bytes()
        raise InvalidRequest(f"blob sha256:{digest} was never uploaded; upload it before pushing the function")

    async def receive_upload(self, digest: str, chunks: AsyncIterator[bytes], limit: int) -> bool:
        """Stream an upload to ``uploads/``, verifying its sha256 and size. Returns False when the store
        already holds the blob (the body is still drained and checked)."""
        with self._upload(digest, limit) as upload:
            async for chunk in chunks:
                upload.write(chunk)
        return upload.created

    def write_upload(self, digest: str, chunks: Iterable[bytes], limit: int) -> bool:
        """:meth:`receive_upload` for a blocking source."""
        with self._upload(digest, limit) as upload:
            for chunk in chunks:
                upload.write(chunk)
        return upload.created

    @contextlib.contextmanager
    def _upload(self, digest: str, limit: int) -> Iterator[_Upload]:
        with disk_errors("the upload"):
            fd, tmp = tempfile.mkstemp(dir=self.uploads, prefix=".tmp-")
        try:
            with disk_errors("an upload"), os.fdopen(fd, "wb") as fh:  # buffered: flush and close write too
                upload = _Upload(fh, limit)
                yield upload
                fh.flush()
                os.fsync(fh.fileno())
            if upload.sha256.hexdigest() != digest:
                raise InvalidRequest(
                    f"uploaded bytes have sha256:{upload.sha256.hexdigest()}, not the sha256:{digest} named"
                )
            if not self.blob_path(digest).exists():
                os.replace(tmp, self.upload_path(digest))
                upload.created = True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def stage(self, data: bytes) -> str:
        """Stage bytes the gateway itself provides (the built-in passthrough module). Returns the digest."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            _atomic_write(self.upload_path(digest), data)
        return digest

    def prune_uploads(self, older_than_s: float = UPLOAD_TTL_S) -> int:
        """Remove uploads no push committed within ``older_than_s``. Returns how many were removed."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.uploads.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    # -- manifests -----------------------------------------------------------------------------------------
    def _manifest_path(self, name: str) -> Path:
        return self.functions / f"{check_name(name)}.json"

    def get(self, name: str) -> Manifest:
        try:
            doc = json.loads(self._manifest_path(name).read_text())
        except FileNotFoundError:
            raise NotFound(f"function {name!r} not found") from None
        return Manifest.from_json(doc)

    def stamp(self, name: str) -> tuple[int, int] | None:
        """A cheap change marker for ``name``'s manifest (inode, mtime), or None when it does not exist."""
        try:
            st = self._manifest_path(name).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def manifests(self) -> list[Manifest]:
        out = []
        for path in self.functions.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                out.append(Manifest.from_json(json.loads(path.read_text())))
        return sorted(out, key=lambda m: m.name)

    def commit(self, manifest: Manifest, max_functions: int) -> Manifest:
        """Make ``manifest`` the function's current version: move its staged blobs into the store, then
        write the manifest atomically. Returns it with its version and time set."""
        with self._locked():
            path = self._manifest_path(manifest.name)
            previous = None
            with contextlib.suppress(FileNotFoundError):
                previous = Manifest.from_json(json.loads(path.read_text()))
            if previous is None and sum(1 for _ in self.functions.glob("*.json")) >= max_functions:
                raise TooLarge(f"the store holds {max_functions} functions already (setting max_functions)")
            final = dataclasses.replace(
                manifest, version=(previous.version + 1 if previous else 1), created=time.time()
            )
            self._place(final)
            return final

    def install(self, manifest: Manifest) -> Manifest:
        """Make ``manifest`` current exactly as given, version included (a runner mirroring the gateway's
        store). Its blobs must be uploaded or stored already."""
        with self._locked():
            self._place(manifest)
            return manifest

    def _place(self, manifest: Manifest) -> None:
        """Move the manifest's staged blobs into the store, record the version, then write the manifest: the
        one rename that commits. A crash before it leaves the previous version current (and a recorded
        version that never became current, which rollback may still name)."""
        for digest in (manifest.module, *manifest.models.values()):
            if digest and not self.blob_path(digest).exists():
                os.replace(self.upload_path(digest), self.blob_path(digest))
                _fsync_dir(self.blobs)
        data = json.dumps(manifest.to_json(), indent=1).encode()
        history = self.versions / check_name(manifest.name)
        history.mkdir(exist_ok=True)
        _atomic_write(history / f"{manifest.version}.json", data)
        _atomic_write(self._manifest_path(manifest.name), data)

    def history(self, name: str) -> list[int]:
        """The versions ``name`` has had, oldest first."""
        folder = self.versions / check_name(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    def get_version(self, name: str, version: int) -> Manifest:
        try:
            doc = json.loads((self.versions / check_name(name) / f"{version}.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"function {name!r} has no version {version} (it has {self.history(name)})") from None
        return Manifest.from_json(doc)

    def set_pool(self, name: str, pool: PoolSettings) -> Manifest:
        """Change a function's pool settings. The version (which counts pushes of code) stays."""
        with self._locked():
            manifest = dataclasses.replace(self.get(name), pool=pool)
            _atomic_write(self._manifest_path(name), json.dumps(manifest.to_json(), indent=1).encode())
            return manifest

    def delete(self, name: str) -> Manifest:
        """Remove the function and its history (its blobs stay: other functions may share them)."""
        with self._locked():
            manifest = self.get(name)
            self._remove(name)
            return manifest

    def _remove(self, name: str) -> None:
        self._manifest_path(name).unlink()
        _fsync_dir(self.functions)
        shutil.rmtree(self.versions / check_name(name), ignore_errors=True)

    # -- hooks for a store that is a cache of another (gateway.registry_store) -----------------------------
    def refresh(self, name: str, derive: Derive) -> None:
        """Bring ``name`` up to date from where the store's functions live, before a change is made to it.
        The local store is where they live: nothing to do. (``derive`` validates code the way a push does,
        for a cache that must complete what it fetches.)"""

    def check_blobs(self, manifest: Manifest) -> None:
        """Make sure the function's blobs are intact before they are used. The local store trusts its own
        disk: every blob was verified against its digest when it was written, and written atomically."""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


#: errno values that mean the disk (or this process's share of it) is full.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """A full disk is the operator's to fix, not a crash: 503 naming it, with the store left as it was (every
    write here goes to a temporary file that is removed on failure)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            raise Unavailable(f"the store is out of space writing {what}: {exc.strerror}", retry_after=30) from exc
        raise


class _Upload:
    """One upload in progress: counts, hashes and writes its chunks."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self.fh = fh
        self.limit = limit
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.created = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"upload exceeds {self.limit} bytes (setting max_body_bytes)")
        self.sha256.update(chunk)
        self.fh.write(chunk)


def _atomic_write(path: Path, data: bytes) -> None:
    with disk_errors(path.name):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

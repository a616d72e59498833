"""The embedded function store: content-addressed blobs plus one JSON manifest per function, on local disk.

Layout under the data directory::

    blobs/sha256/<hex>        immutable blobs (Wasm modules, ONNX models, data files), named by their sha256
    uploads/<hex>             blobs uploaded for a push that has not been committed yet
    functions/<name>.json     the current manifest of each function
    generation                a counter every manifest write bumps (gateway.store.generation)
    versions/<name>/<v>.json  every version each function has had (for rollback)
    files/<name>/<set>/       the data files of a function as its guests see them: hard links to blobs
                              (owned by gateway.store.files, which says when they are made and removed)
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
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from gateway.store.files import FileViews, flocked
from gateway.store.generation import Generation
from gateway.store.manifest import Derive, Manifest, check_name
from wasm_host.errors import InvalidRequest, NotFound, TooLarge, Unavailable
from wasm_host.pool import PoolSettings

UPLOAD_TTL_S = 3600


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
        # Bumped by every manifest write below, under the lock: how readers see a change without a stat().
        self.generation = Generation(root / "generation")
        self.views = FileViews(root / "files", self.blob_path, self.upload_path)

    # -- blobs ---------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def upload_path(self, digest: str) -> Path:
        return self.uploads / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists() or self.upload_path(digest).exists()

    def staged_size(self, digest: str) -> int:
        """The size of a blob in the store or in pending uploads. Raises InvalidRequest if neither has it."""
        for path in (self.blob_path(digest), self.upload_path(digest)):
            with contextlib.suppress(FileNotFoundError):
                return path.stat().st_size
        raise InvalidRequest(f"blob sha256:{digest} was never uploaded; upload it before pushing the function")

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
        """Remove uploads no push committed within ``older_than_s``, and what crashed pushes left of their
        files' directories. Returns how many uploads were removed."""
        self.views.prune(older_than_s)
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

    def manifests_stamp(self) -> tuple[int, int]:
        """A cheap change marker for the set of manifests: every write of one (a push, a delete, a settings
        change: each renames a file into the directory) changes the directory's mtime."""
        st = self.functions.stat()
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
        with flocked(self._lock_path):
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
        with flocked(self._lock_path):
            self._place(manifest)
            return manifest

    def _place(self, manifest: Manifest) -> None:
        """Move the manifest's staged blobs into the store, record the version, then write the manifest: the
        one rename that commits. A crash before it leaves the previous version current (and a recorded
        version that never became current, which rollback may still name)."""
        for digest in manifest.blobs:
            if not self.blob_path(digest).exists():
                os.replace(self.upload_path(digest), self.blob_path(digest))
                _fsync_dir(self.blobs)
        data = json.dumps(manifest.to_json(), indent=1).encode()
        history = self.versions / check_name(manifest.name)
        history.mkdir(exist_ok=True)
        _atomic_write(history / f"{manifest.version}.json", data)
        _atomic_write(self._manifest_path(manifest.name), data)
        self.generation.bump()

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
        with flocked(self._lock_path):
            manifest = dataclasses.replace(self.get(name), pool=pool)
            _atomic_write(self._manifest_path(name), json.dumps(manifest.to_json(), indent=1).encode())
            self.generation.bump()
            return manifest

    def delete(self, name: str) -> Manifest:
        """Remove the function, its history and its files' directories (its blobs stay: other functions may
        share them)."""
        with flocked(self._lock_path):
            manifest = self.get(name)
            self._remove(name)
            return manifest

    def _remove(self, name: str) -> None:
        self._manifest_path(name).unlink()
        _fsync_dir(self.functions)
        self.generation.bump()
        shutil.rmtree(self.versions / check_name(name), ignore_errors=True)
        self.views.remove(name)

    # -- data files (gateway.store.files) ----------------------------------------------------------------------
    def files_dir(self, manifest: Manifest) -> Path | None:
        """The directory the function's guests see its data files in, made or repaired from the blobs (at
        load); None for a function without files. Raises NotFound when the function is gone meanwhile."""
        if not manifest.files:
            return None
        path = self._manifest_path(manifest.name)
        return self.views.ensure(manifest.name, manifest.files, path.exists)

    @contextlib.contextmanager
    def staged_files(self, files: Mapping[str, str]) -> Iterator[Path | None]:
        """A directory of the files (alias -> sha256 hex) of a push being validated, from the store or the
        pending uploads, for as long as the block runs; None without files."""
        if not files:
            yield None
            return
        with self.views.staging(files) as directory:
            yield directory

    # -- hooks for a store that is a cache of another (gateway.store.registry) -----------------------------
    def refresh(self, name: str, derive: Derive) -> None:
        """Bring ``name`` up to date from where the store's functions live, before a change is made to it.
        The local store is where they live: nothing to do. (``derive`` validates code the way a push does,
        for a cache that must complete what it fetches.)"""

    def check_blobs(self, manifest: Manifest) -> None:
        """Make sure the function's blobs are intact before they are used. The local store trusts its own
        disk: every blob was verified against its digest when it was written, and written atomically."""


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
            raise TooLarge(
                f"upload exceeds {self.limit} bytes, the largest blob taken "
                "(settings max_module_bytes, max_push_model_bytes, max_file_bytes)"
            )
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

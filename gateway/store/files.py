"""A function's data files (``wasm push --file ALIAS=PATH``): the limits a push is held to, and the directory a
guest reads them from.

Files are blobs of the store like models: content-addressed, checked against their digest when they arrive,
and named in the manifest by alias (``Manifest.files``). A guest sees its function's files, and nothing else,
as one directory preopened read-only at ``/files`` (``wasm_host.engine``), each file named by its alias. That
directory is made from the blobs, under the data directory::

    files/<name>/<set>/<alias>   one function's files: hard links to blobs/sha256/<digest>. <set> is the
                                 sha256 of the alias -> digest map, so the versions of a function that have
                                 the same files share one directory, and no two functions ever share one
    files/.staging-*/<alias>     the files of a push while it is validated (its ``_initialize`` and
                                 ``signature`` may read them); removed when the validation ends
    files/.tmp/                  links being made, renamed into place once complete
    files/.lock                  serialises changes to these directories, across processes

Why a directory of its own per function: a guest's preopen is that directory, so ``..`` cannot leave it
(wasmtime's WASI refuses any path that escapes a preopen), and neither another function's files nor any blob
by its digest is reachable. Why hard links: they cost a directory entry, not a copy of the data. Where the
filesystem refuses a link (another device, a file at its link count limit, no hard links at all) the entry
is a copy instead.

The lifecycle:

- **Made at load** (:meth:`FileViews.ensure`), under the lock, by whichever process loads the version first
  (worker processes and local runners share a data directory). At every load each entry is checked to be its
  blob's own file (the same inode), and linked again when it is not: a registry cache that fetched a corrupt
  blob again holds it in a new file, and a copy is made again. A load never serves a partial directory, and
  the directory never holds anything but the set's files.
- **Kept while the function exists.** A directory is not removed when another version replaces its version:
  a worker that has not seen the push yet may still be serving the old one, a rollback may bring it back, and
  it costs directory entries only (the store keeps every blob anyway).
- **Removed with the function** (a delete, or a registry sync that finds its tag gone), under the lock, after
  its manifest; a load that comes later finds the function gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from gateway.settings import Settings
from gateway.store.manifest import check_name
from wasm_host.errors import InvalidRequest, NotFound, TooLarge, Unavailable

#: errno values of a hard link the filesystem refuses, where a copy serves instead.
NO_LINK = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP})


@dataclasses.dataclass(frozen=True)
class FileLimits:
    """What one function's files may add up to: settings ``max_file_bytes`` (each file),
    ``max_function_files_bytes`` (all of them) and ``max_function_files`` (how many)."""

    max_file_bytes: int
    max_function_files_bytes: int
    max_function_files: int

    @classmethod
    def of(cls, settings: Settings) -> FileLimits:
        return cls(settings.max_file_bytes, settings.max_function_files_bytes, settings.max_function_files)

    def check(self, sizes: Mapping[str, int]) -> None:
        """Raise TooLarge, naming the setting, when files of these sizes (alias -> bytes) pass a limit."""
        if len(sizes) > self.max_function_files:
            raise TooLarge(
                f"{len(sizes)} files are more than the {self.max_function_files} a function may have "
                "(setting max_function_files)"
            )
        for alias, size in sorted(sizes.items()):
            if size > self.max_file_bytes:
                raise TooLarge(f"file {alias!r} of {size} bytes exceeds {self.max_file_bytes} (setting max_file_bytes)")
        total = sum(sizes.values())
        if total > self.max_function_files_bytes:
            raise TooLarge(
                f"the function's files total {total} bytes, more than {self.max_function_files_bytes} "
                "(setting max_function_files_bytes)"
            )


def set_id(files: Mapping[str, str]) -> str:
    """The name of the directory of one set of files (alias -> sha256 hex): its map's sha256, shortened."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:32]


class FileViews:
    """The directories functions' guests see their files in, under ``root`` (``data_dir/files``), made from
    the blobs ``blob_path`` names (and, for a push being validated, ``upload_path``)."""

    def __init__(self, root: Path, blob_path: Callable[[str], Path], upload_path: Callable[[str], Path]) -> None:
        self.root = root
        self._tmp = root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._blob_path = blob_path
        self._upload_path = upload_path
        self._lock_path = root / ".lock"

    def ensure(self, name: str, files: Mapping[str, str], exists: Callable[[], bool]) -> Path:
        """The directory of ``name``'s files (alias -> sha256 hex), made or repaired from the blobs. ``exists``
        says, under the lock, whether the function still exists. Raises NotFound when it does not, Unavailable
        when a blob is missing or the disk refuses."""
        directory = self.root / check_name(name) / set_id(files)
        with flocked(self._lock_path):
            if not exists():
                raise NotFound(f"function {name!r} not found")
            try:
                directory.mkdir(parents=True, exist_ok=True)
                for entry in os.listdir(directory):  # what a guest would see: never anything but the set
                    if entry not in files:
                        _remove(directory / entry)
                for alias, digest in sorted(files.items()):
                    self._ensure_entry(name, alias, digest, directory / check_name(alias, "file alias"))
            except OSError as exc:
                raise Unavailable(f"cannot make the data files of {name!r} ready: {exc.strerror or exc}", 5) from exc
        return directory

    def _ensure_entry(self, name: str, alias: str, digest: str, target: Path) -> None:
        blob = self._blob_path(digest)
        try:
            source = blob.stat()
        except FileNotFoundError:
            raise Unavailable(
                f"data file {alias!r} of {name!r} (blob sha256:{digest}) is missing from the store", 5
            ) from None
        with contextlib.suppress(FileNotFoundError):
            st = target.lstat()
            if (st.st_dev, st.st_ino) == (source.st_dev, source.st_ino):
                return
        tmp = self._tmp / f"{os.getpid()}-{secrets.token_hex(8)}"
        try:
            _link_or_copy(blob, tmp)
            os.replace(tmp, target)  # atomic: a guest opening it meanwhile gets the old entry or the new one
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def staging(self, files: Mapping[str, str]) -> Iterator[Path]:
        """A private directory of the files (alias -> sha256 hex) of a push being validated, from the store's
        blobs or the pending uploads, removed when the block ends. Raises InvalidRequest for a blob that was
        never uploaded."""
        directory = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            for alias, digest in sorted(files.items()):
                self._stage(digest, directory / check_name(alias, "file alias"))
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _stage(self, digest: str, target: Path) -> None:
        for source in (self._blob_path(digest), self._upload_path(digest)):
            try:
                _link_or_copy(source, target)
                return
            except FileNotFoundError:  # not there, or moved into the store by another push meanwhile
                continue
        raise InvalidRequest(f"blob sha256:{digest} was never uploaded; upload it before pushing the function")

    def remove(self, name: str) -> None:
        """Remove every directory of ``name``'s files (after its manifest is gone)."""
        with flocked(self._lock_path):
            shutil.rmtree(self.root / check_name(name), ignore_errors=True)

    def prune(self, older_than_s: float) -> int:
        """Remove what a crashed process left of a validation or a link (older than ``older_than_s``)."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in [*self.root.glob(".staging-*"), *self._tmp.iterdir()]:
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_mtime < cutoff:
                    _remove(path)
                    removed += 1
        return removed


@contextlib.contextmanager
def flocked(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created if absent) for the block: how the processes that share a
    data directory take turns writing to it."""
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source``, or a copy where the filesystem refuses the link. Raises
    FileNotFoundError when ``source`` does not exist."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in NO_LINK:
            raise
        shutil.copyfile(source, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

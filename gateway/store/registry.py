"""The registry store: functions live in an OCI registry, one tag per function in one repository, and every
gateway keeps a local cache of them that it serves from.

The cache is a :class:`~gateway.store.LocalStore` in ``data_dir``, used as it is: serving, blob uploads and
runners read it exactly as they read the embedded store, so the function registry and the admin API do not
know which store they have. (It is a subclass rather than a wrapper for that reason: every read is the local
store's own.) What changes is where a change commits:

- **Push** (:meth:`commit`): the push is validated as with the local store, then the blobs the registry lacks
  are uploaded, then the config, then the manifest is ``PUT`` on the function's tag: that one write commits.
  Only then is the function installed in the cache, with the manifest's digest. A push that fails leaves the
  registry's tag and the cache as they were (blobs uploaded before a refused manifest are unreferenced and
  harmless). The version is the registry's current one plus one. Concurrent pushes of one name through two
  gateways: the last tag write wins, and both may get the same version number.
- **Delete** (:meth:`delete`): ``DELETE`` of the manifest by digest (which removes every tag naming it), then
  removal from the cache.
- **Pool settings** (:meth:`set_pool`): a new manifest on the tag with the same version.
- **Rollback**: each manifest pushed by wasmgate names the one it replaced (``io.wasmgate.previous``);
  :meth:`history` and :meth:`get_version` walk that chain by digest, and a rollback pushes the old spec and
  blobs as a new version. A chain ends where a registry's garbage collection removed an untagged manifest.

**Sync** (:meth:`sync`): list the tags, resolve each to its manifest digest (one ``HEAD`` per function), and
for each digest the cache lacks fetch the manifest, config and missing blobs *by digest*, each verified
against its sha256 (the manifest's own digest included), and install it; a function whose tag is gone is
removed from the cache, so it stops being served. A replica therefore serves exactly the bytes of the digest
its tag named when it looked. Installs and removals compare-and-swap on the cache's lock: a sync never
overwrites a newer push made through this gateway meanwhile, and several processes may sync into one cache.

**Blobs before use** (:meth:`check_blobs`): a function's cached blobs are checked against their digests when
it is loaded (again only after a file changed); a missing or corrupt one is fetched again from the registry,
or the load fails while the registry cannot be reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from gateway.settings import Settings
from gateway.store import artifact
from gateway.store.files import FileLimits, flocked
from gateway.store.local import LocalStore
from gateway.store.manifest import NAME_RE, Derive, Manifest, check_name
from gateway.store.oci import Credentials, Reference, RegistryClient, file_chunks
from wasm_host.errors import InvalidArtifact, InvalidRequest, NotFound, TooLarge, Unavailable, UpstreamError
from wasm_host.pool import PoolSettings

log = logging.getLogger("wasmgate.registry")

#: The longest version chain walked (history, rollback).
MAX_CHAIN = 1000


@dataclasses.dataclass(frozen=True)
class SyncResult:
    functions: int
    installed: list[str]
    removed: list[str]


class RegistryStore(LocalStore):
    def __init__(
        self, root: Path, client: RegistryClient, max_module_bytes: int, max_model_bytes: int, file_limits: FileLimits
    ) -> None:
        super().__init__(root)
        self.client = client
        self.max_module_bytes = max_module_bytes
        self.max_model_bytes = max_model_bytes
        self.file_limits = file_limits
        self._verified: dict[str, tuple[int, int, int]] = {}  # digest -> (inode, mtime, size) when it hashed right
        self._refused: dict[str, str] = {}  # name -> manifest digest that cannot be served (logged once)

    @property
    def location(self) -> str:
        return str(self.client.ref)

    # -- changes: the registry first, then the cache ---------------------------------------------------------
    def refresh(self, name: str, derive: Derive) -> None:
        """Install the registry's current version of ``name`` in the cache (or remove it, when the registry
        has none), so a change starts from what the registry holds. Raises Unavailable, UpstreamError."""
        check_name(name)
        remote = self.client.resolve(name)
        local = self._cached_digest(name)
        if remote == local:
            return
        if remote is None:
            if local is not None:
                self._remove_if(name, local)
            return
        try:
            manifest = self._fetch(name, remote, derive)
        except (InvalidRequest, TooLarge) as exc:  # what the tag holds cannot be served; a push may replace it
            log.warning("%s cannot be served: %s", self.client.ref.at(remote), exc)
            return
        self._install_if(name, local, manifest)

    def commit(self, manifest: Manifest, max_functions: int) -> Manifest:
        """Push a validated function to the registry as the next version of its tag, then install it."""
        with flocked(self._lock_path):
            current = self.client.resolve(manifest.name)
            if current is None:
                functions = [t for t in self.client.tags() if _function_tag(t)]
                if len(functions) >= max_functions:
                    raise TooLarge(f"{self.location} holds {max_functions} functions already (setting max_functions)")
            version = self._remote_version(manifest.name, current) if current else 0
            final = dataclasses.replace(manifest, version=version + 1, created=time.time(), digest="")
            return self._publish(final, current)

    def set_pool(self, name: str, pool: PoolSettings) -> Manifest:
        """A new manifest for the same version with other pool settings (the version counts code)."""
        with flocked(self._lock_path):
            cached = self.get(name)
            current = self.client.resolve(name)
            if current is None:
                raise NotFound(f"function {name!r} not found in {self.location}")
            if current != cached.digest:
                raise Unavailable(f"{name!r} changed in {self.location} meanwhile; try again", 1)
            previous = self._artifact(current).previous
            return self._publish(dataclasses.replace(cached, pool=pool, digest=""), previous)

    def delete(self, name: str) -> Manifest:
        """Delete the function's manifest from the registry (by digest: every tag naming the same manifest
        goes with it), then from the cache."""
        with flocked(self._lock_path):
            current = self.client.resolve(check_name(name))
            try:
                cached: Manifest | None = self.get(name)
            except NotFound:
                cached = None
            if current is None:
                if cached is None:
                    raise NotFound(f"function {name!r} not found")
                gone = cached
            elif cached is not None and cached.digest == current:
                gone = cached
            else:  # not synced here yet: what the caller is told is the name and the version deleted
                version = self._remote_version(name, current)
                gone = Manifest(name, version, "external", "", {}, None, None, digest=current)
            if current is not None:
                self.client.delete_manifest(current)
            if cached is not None:
                self._remove(name)
            return gone

    def history(self, name: str) -> list[int]:
        """The versions along the function's chain in the registry, oldest first."""
        return sorted({version for version, _, _ in self._chain(name)})

    def get_version(self, name: str, version: int) -> Manifest:
        """Version ``version`` from the function's chain, its blobs fetched into the cache, ready to be
        committed again (a rollback). Raises NotFound, or InvalidRequest for a version whose config was not
        written by wasmgate."""
        for number, digest, art in self._chain(name):
            if number != version:
                continue
            config = self.client.read_blob(f"sha256:{art.config}", artifact.MAX_DOCUMENT_BYTES)
            manifest = artifact.function(name, digest, art, config, _not_derived(name, version))
            self._fetch_blobs(art)
            return manifest
        raise NotFound(f"function {name!r} has no version {version} in {self.location} (it has {self.history(name)})")

    def _publish(self, manifest: Manifest, previous: str | None) -> Manifest:
        """Upload what the registry lacks, tag the manifest, install it in the cache. Holds the lock."""
        sizes = {}
        for digest in manifest.blobs:
            path = self.blob_path(digest) if self.blob_path(digest).exists() else self.upload_path(digest)
            sizes[digest] = path.stat().st_size
            if not self.client.has_blob(f"sha256:{digest}"):
                self.client.upload_blob(f"sha256:{digest}", sizes[digest], file_chunks(path))
        config = artifact.spec(manifest)
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        if not self.client.has_blob(config_digest):
            self.client.upload_blob(config_digest, len(config), lambda: [config])
        body = artifact.build(manifest, config, sizes, previous)
        digest = self.client.put_manifest(manifest.name, body)
        final = dataclasses.replace(manifest, digest=digest)
        self._place(final)
        log.info("pushed %s version %d to %s", final.name, final.version, self.client.ref.at(digest))
        return final

    # -- sync ------------------------------------------------------------------------------------------------
    def sync(self, derive: Derive) -> SyncResult:
        """One pass: install what changed in the registry, remove what is gone from it. Raises Unavailable or
        UpstreamError when the registry fails (the cache stays as it was); a function whose artifact cannot
        be served is logged once per digest and skipped."""
        before = {m.name: m.digest for m in self.manifests()}
        tags = {t for t in self.client.tags() if _function_tag(t)}
        installed, removed = [], []
        for name in sorted(tags):
            digest = self.client.resolve(name)
            if digest is None or before.get(name) == digest or self._refused.get(name) == digest:
                continue
            try:
                manifest = self._fetch(name, digest, derive)
            except (InvalidRequest, TooLarge, NotFound, UpstreamError) as exc:
                self._refused[name] = digest
                log.warning("not serving %s from %s: %s", name, self.client.ref.at(digest), exc)
                continue
            if self._install_if(name, before.get(name), manifest):
                installed.append(name)
                log.info("installed %s version %d from %s", name, manifest.version, self.client.ref.at(digest))
        for name, digest in before.items():
            # Only what came from the registry: a function the local store left in data_dir is not the sync's.
            if digest and name not in tags and self._remove_if(name, digest):
                removed.append(name)
                log.info("removed %s: its tag is gone from %s", name, self.location)
        for name in set(self._refused) - tags:
            del self._refused[name]
        return SyncResult(len(tags), installed, removed)

    def _fetch(self, name: str, digest: str, derive: Derive) -> Manifest:
        """The function at ``digest``, with its blobs in the cache (uploads until it is installed)."""
        art = self._artifact(digest)
        config = self.client.read_blob(f"sha256:{art.config}", artifact.MAX_DOCUMENT_BYTES)
        self._fetch_blobs(art)
        return artifact.function(name, digest, art, config, derive)

    def _fetch_blobs(self, art: artifact.Artifact) -> None:
        # The files' limits hold for what another tool pushed too, before any of it is fetched.
        self.file_limits.check({alias: art.sizes[digest] for alias, digest in art.files.items()})
        files = set(art.files.values())
        for digest in art.blobs:
            if self.has_blob(digest):
                continue
            if digest == art.module:
                limit, setting = self.max_module_bytes, "max_module_bytes"
            elif digest in files and digest not in art.models.values():
                limit, setting = self.file_limits.max_file_bytes, "max_file_bytes"
            else:
                limit, setting = self.max_model_bytes, "max_push_model_bytes"
            if art.sizes[digest] > limit:
                raise TooLarge(f"blob sha256:{digest} of {art.sizes[digest]} bytes exceeds {limit} (setting {setting})")
            self._fetch_blob(digest, limit)

    def _fetch_blob(self, digest: str, limit: int) -> None:
        """Into uploads/: verified by the client as it streams, and again by the upload itself."""
        with self.client.open_blob(f"sha256:{digest}", limit) as chunks:
            self.write_upload(digest, chunks, limit)

    def _artifact(self, digest: str) -> artifact.Artifact:
        body, _ = self.client.get_manifest(digest)
        return artifact.parse(body)

    def _remote_version(self, name: str, digest: str) -> int:
        """The version the manifest at ``digest`` says it is (0 for what is not a function at all)."""
        with contextlib.suppress(NotFound):
            cached = self.get(name)
            if cached.digest == digest:
                return cached.version
        try:
            return _version(self._config(self._artifact(digest)))
        except InvalidArtifact:
            return 0

    def _config(self, art: artifact.Artifact) -> dict[str, Any]:
        return read_config(self.client, art)

    def _chain(self, name: str) -> list[tuple[int, str, artifact.Artifact]]:
        """(version, manifest digest, artifact) along the chain of previous manifests, newest first."""
        digest = self.client.resolve(check_name(name))
        if digest is None:
            raise NotFound(f"function {name!r} not found in {self.location}")
        chain: list[tuple[int, str, artifact.Artifact]] = []
        while digest is not None and len(chain) < MAX_CHAIN and digest not in {d for _, d, _ in chain}:
            try:
                art = self._artifact(digest)
                chain.append((_version(self._config(art)), digest, art))
            except (NotFound, InvalidArtifact):  # collected, or not a function: the chain ends
                break
            digest = art.previous
        return chain

    # -- the cache -------------------------------------------------------------------------------------------
    def _cached_digest(self, name: str) -> str | None:
        """The digest of the cached manifest of ``name``: None when absent, "" when the local store put it."""
        try:
            return self.get(name).digest
        except NotFound:
            return None

    def _install_if(self, name: str, expected: str | None, manifest: Manifest) -> bool:
        """Install ``manifest`` unless the cache's copy changed since it read ``expected``."""
        with flocked(self._lock_path):
            if self._cached_digest(name) != expected:
                return False
            self._place(manifest)
            return True

    def _remove_if(self, name: str, expected: str) -> bool:
        with flocked(self._lock_path):
            if self._cached_digest(name) != expected:
                return False
            self._remove(name)
            return True

    def check_blobs(self, manifest: Manifest) -> None:
        """Verify the function's cached blobs against their digests (each again only after its file changed);
        fetch a missing or corrupt one again from the registry. Raises Unavailable when one is bad and the
        registry cannot be reached: a corrupt blob is never used."""
        for digest in manifest.blobs:
            path = self.blob_path(digest)
            key = _file_key(path)
            if key is not None and self._verified.get(digest) == key:
                continue
            if key is not None and _file_sha256(path) == digest:
                self._verified[digest] = key
                continue
            state = "missing" if key is None else "corrupt"
            log.warning("cached blob sha256:%s of %s is %s; fetching it again", digest, manifest.name, state)
            limit = max(self.max_module_bytes, self.max_model_bytes, self.file_limits.max_file_bytes)
            with flocked(self._lock_path), contextlib.suppress(FileNotFoundError):
                if _file_key(path) == key:  # no other process replaced it meanwhile
                    path.unlink()
            try:
                self._fetch_blob(digest, limit)
            except (Unavailable, UpstreamError, NotFound) as exc:
                raise Unavailable(
                    f"the cached blob sha256:{digest} of {manifest.name!r} is {state}, and fetching it again "
                    f"failed: {exc}",
                    5,
                ) from exc
            with flocked(self._lock_path), contextlib.suppress(FileNotFoundError):  # gone: another process placed it
                os.replace(self.upload_path(digest), path)
            key = _file_key(path)
            if key is not None:
                self._verified[digest] = key


def read_config(client: RegistryClient, art: artifact.Artifact) -> dict[str, Any]:
    """The artifact's config document; {} for one that is not a JSON object (another tool's)."""
    try:
        return artifact.config_doc(client.read_blob(f"sha256:{art.config}", artifact.MAX_DOCUMENT_BYTES))
    except InvalidArtifact:
        return {}


def _function_tag(tag: str) -> bool:
    return bool(NAME_RE.fullmatch(tag)) and ".." not in tag


def _version(config: dict[str, Any]) -> int:
    try:
        return max(1, int(config.get("version", 1)))
    except (TypeError, ValueError):
        return 1


def _not_derived(name: str, version: int) -> Derive:
    def refuse(*_: object) -> Manifest:
        raise InvalidRequest(
            f"version {version} of {name!r} was not pushed by wasmgate (its config has no 'kind'), so it cannot "
            "be rolled back to; push it again instead"
        )

    return refuse


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def registry_client(settings: Settings) -> RegistryClient:
    """The client of the registry store ``settings.store`` names. Raises ValueError naming the setting."""
    try:
        ref = Reference.parse(settings.store, allow_tag=False)
    except ValueError as exc:
        raise ValueError(f"WASMGATE_STORE: {exc}") from None
    if not settings.registry_sync_interval_s > 0:
        raise ValueError("WASMGATE_REGISTRY_SYNC_INTERVAL_S must be more than 0 seconds")
    return RegistryClient(ref, registry_credentials(settings))


def registry_credentials(settings: Settings) -> Credentials:
    s = settings
    return Credentials(s.registry_username, s.registry_password, s.registry_ca_file, s.registry_plain_http)


def registry_store(settings: Settings, client: RegistryClient) -> RegistryStore:
    store = RegistryStore(
        settings.data_dir, client, settings.max_module_bytes, settings.max_push_model_bytes, FileLimits.of(settings)
    )
    local = [m.name for m in store.manifests() if not m.digest]
    if local:
        log.warning(
            "%s holds %d function(s) of the embedded store (%s): this gateway serves them, but they are not in "
            "%s, so no other replica does; push them to the registry, or delete them",
            settings.data_dir,
            len(local),
            ", ".join(local[:5]) + (", ..." if len(local) > 5 else ""),
            store.location,
        )
    return store

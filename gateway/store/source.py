"""Where a runner gets the functions it is sent, when its store does not share the gateway's disk.

On one machine a runner reads the gateway's own store. In a cluster it runs in another pod, and fetches a
function from the gateway's admin API the first time it is asked for it, or asked for a newer version:
the manifest (``GET /admin/v1/functions/{name}``), then every blob it lacks, data files included
(``GET /admin/v1/blobs/{digest}``), each verified against its sha256 as it streams to disk, and then the
manifest is installed exactly as the gateway has it, version included. A fetch that fails part-way installs
nothing: blobs land in the store's upload area, and only the manifest's atomic write makes the function
visible.
"""

from __future__ import annotations

import logging
import threading

import httpx

from gateway.store.local import LocalStore
from gateway.store.manifest import Manifest
from wasm_host.errors import InvalidRequest, NotFound, Unavailable

log = logging.getLogger("wasmgate.source")


class GatewaySource:
    def __init__(
        self, base_url: str, store: LocalStore, max_blob_bytes: int, token: str = "", timeout_s: float = 300.0
    ) -> None:
        """``token``: the gateway's admin token, when it has one (the admin API serves the artifacts)."""
        self.base_url = base_url.rstrip("/")
        self.store = store
        self.max_blob_bytes = max_blob_bytes
        headers = {"authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        self._lock = threading.Lock()  # one fetch at a time: concurrent first requests share its result

    def close(self) -> None:
        self._http.close()

    def fetch(self, name: str) -> Manifest:
        """Install the gateway's current version of ``name`` into the local store. Blocking; call from a
        thread. Raises NotFound when the gateway has no such function, Unavailable when it cannot be reached."""
        with self._lock:
            try:
                response = self._http.get(f"/admin/v1/functions/{name}")
                if response.status_code == 404:
                    raise NotFound(f"function {name!r} not found (the gateway has no such function)")
                response.raise_for_status()
                manifest = Manifest.from_json(response.json())
                for digest in manifest.blobs:
                    if not self.store.blob_path(digest).exists():
                        self._fetch_blob(digest)
            except httpx.HTTPError as exc:
                raise Unavailable(f"cannot fetch {name!r} from the gateway at {self.base_url}: {exc}", 2) from exc
            installed = self.store.install(manifest)
            log.info("fetched %s version %d from %s", name, manifest.version, self.base_url)
            return installed

    def _fetch_blob(self, digest: str) -> None:
        with self._http.stream("GET", f"/admin/v1/blobs/sha256:{digest}") as response:
            response.raise_for_status()
            try:
                self.store.write_upload(digest, response.iter_bytes(), self.max_blob_bytes)
            except InvalidRequest as exc:  # the bytes did not match their digest: never use them
                raise Unavailable(f"blob sha256:{digest} from the gateway is corrupt: {exc}", 2) from exc

"""Keeping a gateway's cache in step with the registry store, in the background.

Every ``registry_sync_interval_s`` one pass of :meth:`RegistryStore.sync` runs: pushes and deletes made
through any replica reach this one within about an interval (plus the time to fetch what changed). The
registry failing never stops the gateway: it serves from the cache, logs the failure once per outage (and once
again when the registry is back), and ``wasmgate_registry_sync_up`` says 0 until a pass succeeds.

With ``wasm serve --workers N`` the workers share one cache; each does one pass at start (so none starts on an
empty cache when the registry answers), and then only one of them, the holder of an ``flock`` on
``data_dir/.sync.lock``, keeps syncing; when it exits, another takes over at its next tick. The others see
what it installs on their next request, as they see any change to the store. A pass is safe against any
other, and against pushes, in any process: installs and removals compare-and-swap under the store's lock.
"""

from __future__ import annotations

import fcntl
import logging
from typing import BinaryIO

import anyio
import anyio.to_thread

from gateway.metrics import Metrics
from gateway.store.manifest import Derive
from gateway.store.registry import RegistryStore
from wasm_host.errors import Unavailable, UpstreamError

log = logging.getLogger("wasmgate.registry")


class RegistrySync:
    def __init__(self, store: RegistryStore, derive: Derive, metrics: Metrics, interval_s: float) -> None:
        self.store = store
        self.derive = derive
        self.metrics = metrics
        self.interval_s = interval_s
        self.failing: str | None = None  # what went wrong in the current outage; None while the syncs succeed
        self._lead: BinaryIO | None = None

    def once(self, report: bool = True) -> bool:
        """One pass. Returns whether it succeeded; never raises. ``report``: set the sync metrics (the
        syncing worker does; the others' would only be stale)."""
        try:
            result = self.store.sync(self.derive)
        except (Unavailable, UpstreamError) as exc:
            self._failed(str(exc), report)
            return False
        except Exception as exc:  # a bug or a full disk: the same, serve from the cache and say so once
            if self.failing is None:
                log.exception("syncing with %s failed", self.store.location)
            self._failed(f"{type(exc).__name__}: {exc}", report)
            return False
        if self.failing is not None:
            log.warning("the registry store %s answers again; sync resumed", self.store.location)
            self.failing = None
        if report:
            self.metrics.synced(True, len(result.installed), len(result.removed))
        return True

    def _failed(self, reason: str, report: bool) -> None:
        if self.failing is None:
            log.warning("sync with the registry store failed: %s; serving from the cache meanwhile", reason)
        self.failing = reason
        if report:
            self.metrics.synced(False)

    def lead(self) -> bool:
        """Whether this process is the one that syncs: it holds the cache's sync lock (taken when free)."""
        if self._lead is None:
            fh = open(self.store.root / ".sync.lock", "a+b")  # noqa: SIM115 (held for the process's life)
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                return False
            self._lead = fh
        return True

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval_s)
            if await anyio.to_thread.run_sync(self.lead):
                await anyio.to_thread.run_sync(self.once)

    def close(self) -> None:
        if self._lead is not None:
            self._lead.close()
            self._lead = None

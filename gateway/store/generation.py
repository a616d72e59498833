"""The store's generation: one counter, shared by every process on one data directory, that each change of a
manifest bumps, so that a reader knows whether anything changed with one memory read instead of a ``stat()``.

The counter is 8 bytes (little-endian) in ``<data dir>/generation``, mapped ``MAP_SHARED`` into each process:
a write by one process is in the page cache every other mapping reads, with no system call on either side.

- **Writers** bump it while they hold the store's ``flock``, after the change is in place (the manifest renamed
  or unlinked), so a reader that sees the new number also sees the change.
- **Readers** compare the number with the one they last checked a function's manifest at: the same number, the
  same manifest (nothing was written since); another number, the reader looks at the file as before and
  remembers the new number.

Limits: a writer that dies between its rename and its bump leaves the change unseen by a reader that already
checked at the old number, until the next bump or the reaper's own look at each loaded function's manifest
(every ``reap_interval_s``). Only writers that go through ``LocalStore`` bump it: a manifest edited by hand on
disk is seen at the next bump or reap, not at the next request. A torn read of a bump in progress can only give
a number that differs from the old one, which costs one extra look at the file.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

SIZE = 8


class Generation:
    """The shared counter of one data directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < SIZE:
                # Several processes may start at once: each extends the file to the same size (a no-op for the
                # others), none truncates what another wrote.
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the file

    def read(self) -> int:
        """The current number: one read of shared memory, no system call."""
        return int.from_bytes(self._map[:SIZE], "little")

    def bump(self) -> int:
        """Count one change; the caller holds the store's lock (writers never race). Returns the new number."""
        value = (self.read() + 1) % (1 << 64)
        self._map[:SIZE] = value.to_bytes(SIZE, "little")
        return value

    def close(self) -> None:
        self._map.close()

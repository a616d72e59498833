"""``LocalProcessScaler``: the pod tier on one machine, as runner processes on loopback ports.

The embedded default, for a single machine, an edge box or a CPU-only node: no Kubernetes and no container
runtime. Each replica is one ``wasm runner`` process. The scaler binds its listening socket first, on an
ephemeral loopback port, and hands the socket to the child, so a port can never be taken between choosing it
and using it, and the replica's address is known before the process has started.

A replica counts as ready once its ``/v2/health/ready`` answers 200 (polled every ``start_poll_s`` while it
starts, 10 ms: a refused connection on loopback costs microseconds, and held requests wait for the poll that
sees it ready; then every ``health_interval_s``); a replica whose process exits, or that stops answering its health
check, is dropped and, while the wanted count says so, replaced. Scaling down takes a replica out of the
ready set first, then sends SIGTERM so it drains its in-flight requests, and SIGKILL after ``stop_grace_s``.
Runners are started with ``--parent-pid``: they exit if the gateway dies without stopping them. A runner
started for held requests is told their functions (``--preload``) and loads them before it reports ready, so
the first forwarded request finds its model loaded. With ``cpus``
(setting ``runner_cpus``), each runner is pinned to those CPUs as soon as it is spawned, in the first moments
of its interpreter's start-up and before it has started a thread (threads inherit the mask).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from router.scaler import Replica
from router.sockets import tcp_listener  # the same IPPROTO_TCP listener the gateway serves on

if TYPE_CHECKING:  # imported by the first health check: the gateway's start does not pay for it (router.forward)
    import httpx

log = logging.getLogger("wasmgate.scaler.local")


@dataclasses.dataclass
class _Process:
    replica: Replica
    popen: subprocess.Popen[bytes]
    started: float
    ready: bool = False
    failures: int = 0  # consecutive failed health checks once ready


class LocalProcessScaler:
    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        host: str = "127.0.0.1",
        start_poll_s: float = 0.01,
        health_interval_s: float = 1.0,
        start_timeout_s: float = 120.0,
        stop_grace_s: float = 30.0,
        cpus: frozenset[int] | None = None,
    ) -> None:
        """``command`` starts one runner; the scaler appends ``--fd N --parent-pid PID`` and a ``--preload
        NAME`` for each function whose held requests the runner is started for."""
        self.command = list(command)
        self.cpus = cpus
        self.env = dict(env)
        self.host = host
        self.start_poll_s = start_poll_s
        self.health_interval_s = health_interval_s
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self._wanted = 0
        self._procs: dict[str, _Process] = {}
        self._stopping: list[tuple[subprocess.Popen[bytes], float]] = []  # with when SIGTERM was sent
        self._ready: tuple[Replica, ...] = ()
        self._names = itertools.count(1)
        self._on_change: Callable[[], None] = lambda: None
        self._client: httpx.AsyncClient | None = None  # made by the first health check
        self._wake = anyio.Event()

    # -- Scaler --------------------------------------------------------------------------------------------
    def ready(self) -> tuple[Replica, ...]:
        return self._ready

    def wanted(self) -> int:
        return self._wanted

    async def scale(self, replicas: int, functions: Collection[str] = ()) -> None:
        self._wanted = replicas
        self._reconcile(functions)
        self._wake.set()

    async def run(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        while True:
            starting = any(not p.ready for p in self._procs.values())
            with anyio.move_on_after(self.start_poll_s if starting else self.health_interval_s):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self._check()
            self._reconcile()
            self._reap_stopped()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        procs = [p.popen for p in self._procs.values()] + [popen for popen, _ in self._stopping]
        self._procs.clear()
        self._publish()
        for popen in procs:
            _signal(popen, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for popen in procs:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(popen, signal.SIGKILL)
                popen.wait()

    # -- internals -----------------------------------------------------------------------------------------
    def _reconcile(self, functions: Collection[str] = ()) -> None:
        """Start or stop processes until as many are running as wanted; those started load ``functions``
        before they report ready."""
        while len(self._procs) < self._wanted:
            self._start(functions)
        if len(self._procs) > self._wanted:
            # Stop those not yet ready first (they serve nothing), then the newest.
            order = sorted(self._procs.values(), key=lambda p: (p.ready, p.started), reverse=False)
            for proc in order[: len(self._procs) - self._wanted]:
                self._stop(proc)
            self._publish()

    def _start(self, functions: Collection[str] = ()) -> None:
        sock = tcp_listener(self.host, 0)
        try:
            port = sock.getsockname()[1]
            fd = sock.fileno()
            name = f"runner-{next(self._names)}"
            preload = [arg for function in functions for arg in ("--preload", function)]
            popen = subprocess.Popen(
                [*self.command, "--fd", str(fd), "--parent-pid", str(os.getpid()), *preload],
                env=self.env,
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
            )
            if self.cpus is not None:
                _pin(popen, self.cpus)
        finally:
            sock.close()  # the child has its own copy
        host = f"[{self.host}]" if ":" in self.host else self.host
        replica = Replica(f"{name}@{port}", f"http://{host}:{port}")
        self._procs[replica.id] = _Process(replica, popen, time.monotonic())
        log.info("started %s (pid %d) on port %d", replica.id, popen.pid, port)

    def _stop(self, proc: _Process) -> None:
        self._procs.pop(proc.replica.id, None)
        log.info("stopping %s (pid %d)", proc.replica.id, proc.popen.pid)
        _signal(proc.popen, signal.SIGTERM)
        self._stopping.append((proc.popen, time.monotonic()))

    def _reap_stopped(self) -> None:
        """Collect stopped processes (no zombies), and SIGKILL those still draining past ``stop_grace_s``."""
        now = time.monotonic()
        still = []
        for popen, sent in self._stopping:
            if popen.poll() is None:
                if now - sent > self.stop_grace_s:
                    _signal(popen, signal.SIGKILL)
                still.append((popen, sent))
        self._stopping = still

    async def _check(self) -> None:
        changed = False
        for proc in list(self._procs.values()):
            code = proc.popen.poll()
            if code is not None:
                log.warning("%s exited with status %s; replacing it", proc.replica.id, code)
                del self._procs[proc.replica.id]
                changed = True
                continue
            ok = await self._healthy(proc.replica)
            if not proc.ready:
                if ok:
                    proc.ready = changed = True
                    log.info("%s ready after %.2f s", proc.replica.id, time.monotonic() - proc.started)
                elif time.monotonic() - proc.started > self.start_timeout_s:
                    log.warning("%s not ready after %.0f s; stopping it", proc.replica.id, self.start_timeout_s)
                    self._stop(proc)
                    changed = True
            elif ok:
                proc.failures = 0
            else:
                proc.failures += 1
                if proc.failures >= 3:
                    log.warning("%s failed 3 health checks; stopping it", proc.replica.id)
                    self._stop(proc)
                    changed = True
        if changed:
            self._publish()

    async def _healthy(self, replica: Replica) -> bool:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(2.0), trust_env=False)
        try:
            response = await self._client.get(f"{replica.url}/v2/health/ready")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def _publish(self) -> None:
        ready = tuple(p.replica for p in self._procs.values() if p.ready)
        if ready != self._ready:
            self._ready = ready
            self._on_change()


def _pin(popen: subprocess.Popen[bytes], cpus: frozenset[int]) -> None:
    try:
        os.sched_setaffinity(popen.pid, cpus)
    except OSError as exc:  # the CPUs were checked at start; a cgroup may still refuse them
        log.warning("could not pin runner pid %d to CPUs %s: %s", popen.pid, sorted(cpus), exc)


def _signal(popen: subprocess.Popen[bytes], sig: int) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, sig)

"""A real OCI registry for the tests: Debian's ``docker-registry`` (CNCF distribution 2.8) on a loopback port,
with its own config file and filesystem storage in a temporary directory. It can be stopped and started again
on the same port and storage, and serve TLS or require HTTP Basic credentials (htpasswd, bcrypt).

The registry binds its port itself: the first start is retried on another port when another process took the
one chosen first (tests.support.start_on_a_port); a later start must get the same port back, since the clients
set up meanwhile name it."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import LOOPBACK, start_on_a_port

BINARY = Path("/usr/bin/docker-registry")


def require_registry() -> None:
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is absent: install the reference registry with `apt-get install docker-registry`")


class Registry:
    def __init__(
        self,
        root: Path,
        tls: tuple[Path, Path] | None = None,
        htpasswd: Path | None = None,
        repo: str = "fns",
        deletes: bool = True,
    ) -> None:
        require_registry()
        self.deletes = deletes
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = 0  # chosen by the first start()
        self.tls = tls
        self.htpasswd = htpasswd
        self.repo = repo
        self.config = root / "config.yml"
        self.log = root / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        assert self.port, "the port is chosen when the registry first starts: read it after start()"
        return f"{LOOPBACK}:{self.port}"

    @property
    def store(self) -> str:
        """The ``store`` setting for this registry's repository."""
        return f"oci://{self.host}/{self.repo}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _write_config(self, port: int) -> None:
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.root / 'storage'}",
            "  delete:",
            f"    enabled: {'true' if self.deletes else 'false'}",
            "http:",
            f"  addr: {LOOPBACK}:{port}",
            "  secret: wasmgate-tests",
        ]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: wasmgate-tests", f"    path: {self.htpasswd}"]
        self.config.write_text("\n".join(lines) + "\n")

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        self._write_config(port)
        with open(self.log, "ab") as log:
            return subprocess.Popen([str(BINARY), "serve", str(self.config)], stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> None:
        verify: ssl.SSLContext | bool = False
        if self.tls:
            verify = ssl.create_default_context(cafile=str(self.tls[0]))
        scheme = "https" if self.tls else "http"

        def answers(port: int) -> bool:
            return httpx.get(f"{scheme}://{LOOPBACK}:{port}/v2/", verify=verify, timeout=1).status_code in (200, 401)

        # Started again, the registry must be where its clients were told it is: that port or none.
        attempts = 1 if self.port else 5
        self.proc, self.port = start_on_a_port(
            self._launch, self.log, answers, port=self.port, attempts=attempts, timeout=30, interval=0.05
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    cert, key = folder / "registry.crt", folder / "registry.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def htpasswd(folder: Path, user: str, password: str) -> Path:
    """An htpasswd file with one bcrypt entry (the only hash distribution accepts)."""
    bcrypt = pytest.importorskip("bcrypt", reason="the htpasswd test needs the bcrypt package (dev extra)")
    path = folder / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path

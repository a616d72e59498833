"""A minimal client of the OCI Distribution API (the registry HTTP API v2), on httpx: what the registry store
needs and nothing more.

- Blobs: ``HEAD``, ``GET`` (streamed, following redirects, verified against the digest as the bytes arrive),
  and monolithic uploads (``POST`` a session, then one ``PUT`` with the digest).
- Manifests: ``HEAD`` and ``GET`` by tag or digest, ``PUT`` by tag, ``DELETE`` by digest. A manifest fetched by
  digest must hash to it; one fetched by tag is named by its own sha256.
- Tags: ``GET /v2/REPO/tags/list``, following ``Link`` pagination.
- Authentication: HTTP Basic when the registry's ``WWW-Authenticate`` challenge asks for it, or the bearer token
  flow of the distribution spec (``Bearer realm=...,service=...,scope=...``: fetch a token from the realm, with
  the credentials as Basic auth when there are any, and retry). Tokens are cached by scope.
- Transport: HTTPS, verified against the system's trust store plus ``ca_file``; plain HTTP only when
  ``plain_http`` says so, loopback included.

Errors are translated here: a registry that cannot be reached (or answers 5xx) is :class:`Unavailable` (503),
naming the registry; one that refuses the credentials, or answers something a retry will not change, is
:class:`UpstreamError` (502), naming the setting to fix; a missing manifest is :class:`NotFound`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from wasm_host.errors import InvalidRequest, NotFound, Unavailable, UpstreamError, WasmgateError

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
#: Repository path components, as the distribution spec defines them.
REPO_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
HOST_RE = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
RETRY_AFTER_S = 5.0
PAGE = 1000
CHUNK = 1 << 20
#: A request body: bytes, or a callable giving the chunks (called again when the request is repeated).
Body = bytes | Callable[[], Iterable[bytes]] | None


@dataclasses.dataclass(frozen=True)
class Reference:
    """``oci://HOST[:PORT]/REPO[:TAG]``: a repository in a registry, and a tag in it when given."""

    host: str
    repo: str
    tag: str | None = None

    @classmethod
    def parse(cls, url: str, allow_tag: bool = True) -> Reference:
        """Raises ValueError saying what a valid reference looks like."""
        example = "oci://HOST[:PORT]/REPO" + ("[:TAG]" if allow_tag else "")
        if not url.startswith("oci://"):
            raise ValueError(f"{url!r} is not a registry reference: expected {example}")
        host, _, path = url[len("oci://") :].partition("/")
        tag = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, _, tag = path.rpartition(":")
        if not HOST_RE.fullmatch(host) or not REPO_RE.fullmatch(path):
            raise ValueError(
                f"{url!r} is not a registry reference: expected {example}, with a lowercase repository name"
            )
        if tag is not None and (not allow_tag or not TAG_RE.fullmatch(tag)):
            raise ValueError(f"{url!r}: " + ("a store is a repository, without a tag" if not allow_tag else "bad tag"))
        return cls(host, path, tag)

    def __str__(self) -> str:
        return f"oci://{self.host}/{self.repo}" + (f":{self.tag}" if self.tag else "")

    def at(self, digest: str) -> str:
        """The reference pinned to one manifest: ``oci://HOST/REPO@sha256:...``."""
        return f"oci://{self.host}/{self.repo}@{digest}"

    def name(self, reference: str) -> str:
        """A tag or digest in this repository, as a reference to show."""
        sep = "@" if reference.startswith("sha256:") else ":"
        return f"oci://{self.host}/{self.repo}{sep}{reference}"


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    ca_file: str = ""
    plain_http: bool = False


class RegistryClient:
    """One repository of one registry. Blocking (call from a thread); safe to share between threads."""

    def __init__(
        self,
        ref: Reference,
        credentials: Credentials,
        timeout_s: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Raises ValueError when ``ca_file`` cannot be read (a setting to fix at start). ``transport``: httpx's
        default, unless a test stands in for a registry it cannot run (a bearer-token service)."""
        self.ref = ref
        self.credentials = credentials
        scheme = "http" if credentials.plain_http else "https"
        verify: ssl.SSLContext | bool = True
        if not credentials.plain_http:
            verify = ssl.create_default_context()
            if credentials.ca_file:
                try:
                    verify.load_verify_locations(cafile=credentials.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise ValueError(
                        f"WASMGATE_REGISTRY_CA_FILE={credentials.ca_file!r} cannot be used: {exc}"
                    ) from exc
        self.base = f"{scheme}://{ref.host}"
        self._http = httpx.Client(
            base_url=self.base,
            verify=verify,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            follow_redirects=False,
            transport=transport,
        )
        self._auth: dict[str, str] = {}  # scope (or "" for Basic) -> Authorization header value
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _v2(self) -> str:
        return f"/v2/{self.ref.repo}"

    # -- tags and manifests ----------------------------------------------------------------------------------
    def tags(self) -> list[str]:
        """Every tag of the repository (empty when the repository does not exist yet)."""
        out: list[str] = []
        url: str | None = f"{self._v2}/tags/list?n={PAGE}"
        while url is not None:
            response = self._request("GET", url)
            if response.status_code == 404:  # NAME_UNKNOWN: nothing was ever pushed here
                return out
            self._check(response, "list tags")
            out.extend(response.json().get("tags") or [])
            url = _next_link(response.headers.get("link"), url)
        return out

    def resolve(self, reference: str) -> str | None:
        """The digest of the manifest a tag (or digest) names, or None when there is none."""
        response = self._request("HEAD", f"{self._v2}/manifests/{reference}", headers={"accept": MANIFEST_MEDIA_TYPE})
        if response.status_code == 404:
            return None
        self._check(response, f"resolve {reference!r}")
        digest = str(response.headers.get("docker-content-digest", ""))
        if DIGEST_RE.fullmatch(digest):
            return digest
        return self.get_manifest(reference)[1]  # a registry that does not say: hash the manifest itself

    def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """A manifest's bytes and digest. By digest, the bytes must hash to it. Raises NotFound."""
        response = self._request("GET", f"{self._v2}/manifests/{reference}", headers={"accept": MANIFEST_MEDIA_TYPE})
        if response.status_code == 404:
            raise NotFound(f"{self.ref.name(reference)} is not in the registry")
        self._check(response, f"get manifest {reference!r}")
        body = response.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if DIGEST_RE.fullmatch(reference) and digest != reference:
            raise UpstreamError(f"the registry {self.base} sent a manifest for {reference} that hashes to {digest}")
        return body, digest

    def put_manifest(self, tag: str, body: bytes, media_type: str = MANIFEST_MEDIA_TYPE) -> str:
        """Tag ``body`` (a manifest whose blobs are uploaded). Returns its digest."""
        response = self._request(
            "PUT", f"{self._v2}/manifests/{tag}", content=body, headers={"content-type": media_type}
        )
        self._check(response, f"push manifest {tag!r}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        said = response.headers.get("docker-content-digest")
        if said and said != digest:
            raise UpstreamError(f"the registry {self.base} stored manifest {tag!r} as {said}, not {digest}")
        return digest

    def delete_manifest(self, digest: str) -> bool:
        """Delete a manifest (and so every tag naming it). Returns False when it was already gone."""
        response = self._request("DELETE", f"{self._v2}/manifests/{digest}")
        if response.status_code == 404:
            return False
        if response.status_code == 405 or _error_code(response) == "UNSUPPORTED":
            raise UpstreamError(
                f"the registry {self.base} does not allow deletes; enable them in its configuration "
                "(docker-registry / distribution: storage.delete.enabled: true)"
            )
        self._check(response, f"delete manifest {digest}")
        return True

    # -- blobs -----------------------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        response = self._request("HEAD", f"{self._v2}/blobs/{digest}")
        if response.status_code == 404:
            return False
        self._check(response, f"check blob {digest}")
        return True

    def upload_blob(self, digest: str, size: int, chunks: Callable[[], Iterable[bytes]]) -> None:
        """Upload a blob in one request: ``POST`` opens an upload session, ``PUT`` sends the bytes and the
        digest, which the registry checks. ``chunks`` is called again if the request must be repeated."""
        response = self._request("POST", f"{self._v2}/blobs/uploads/", content=b"")
        self._check(response, f"start uploading {digest}")
        location = response.headers.get("location")
        if not location:
            raise UpstreamError(f"the registry {self.base} started an upload without a Location")
        url = httpx.URL(urljoin(self.base + f"{self._v2}/blobs/uploads/", location))
        url = url.copy_merge_params({"digest": digest})
        headers = {"content-type": "application/octet-stream", "content-length": str(size)}
        response = self._request("PUT", str(url), content=chunks, headers=headers)
        self._check(response, f"upload {digest}")

    @contextlib.contextmanager
    def open_blob(self, digest: str, limit: int) -> Iterator[Iterator[bytes]]:
        """The blob's bytes as they arrive, checked against its digest and ``limit``: iterating raises
        :class:`UpstreamError` at the end if they do not hash to the digest, so a consumer that commits only
        after the last chunk never commits bad bytes. Raises NotFound when the registry lacks the blob."""
        response = self._send("GET", f"{self._v2}/blobs/{digest}", stream=True, follow_redirects=True)
        try:
            if response.status_code == 404:
                raise NotFound(f"blob {digest} is not in {self.ref}")
            if response.status_code >= 400:
                response.read()
                self._check(response, f"fetch blob {digest}")
            yield self._verified(response, digest, limit)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        finally:
            response.close()

    def read_blob(self, digest: str, limit: int) -> bytes:
        with self.open_blob(digest, limit) as chunks:
            return b"".join(chunks)

    def _verified(self, response: httpx.Response, digest: str, limit: int) -> Iterator[bytes]:
        sha = hashlib.sha256()
        size = 0
        for chunk in response.iter_bytes(CHUNK):
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"blob {digest} from {self.ref} is larger than {limit} bytes")
            sha.update(chunk)
            yield chunk
        if "sha256:" + sha.hexdigest() != digest:
            raise UpstreamError(f"blob {digest} from {self.ref} hashes to sha256:{sha.hexdigest()}; not used")

    def ping(self) -> None:
        """``GET /v2/``: reachable, speaking the API, and accepting the credentials."""
        self._check(self._request("GET", "/v2/"), "check the API")

    # -- requests and authentication -------------------------------------------------------------------------
    def _request(
        self, method: str, url: str, content: Body = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """One request, read whole."""
        return self._send(method, url, content, headers)

    def _send(
        self,
        method: str,
        url: str,
        content: Body = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """One request, authenticated as the registry asks: on a 401 its ``WWW-Authenticate`` challenge is
        answered once and the request repeated (``content``, when a callable, is called again for it)."""
        for attempt in (1, 2):
            sent = dict(headers or {})
            auth = self._auth.get(self._scope_key(), self._auth.get(""))
            if auth:
                sent["authorization"] = auth
            body = content() if callable(content) else content
            try:
                request = self._http.build_request(method, url, content=body, headers=sent)
                response = self._http.send(request, stream=stream, follow_redirects=follow_redirects)
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from exc
            if response.status_code != 401:
                return response
            if stream:
                response.read()
                response.close()
            if attempt == 2 or not self._answer(response.headers.get("www-authenticate", "")):
                break
        raise self._refused()

    def _scope_key(self) -> str:
        return f"repository:{self.ref.repo}"

    def _answer(self, challenge: str) -> bool:
        """Answer a ``WWW-Authenticate`` challenge: store the header to send from now on. False when there is
        nothing to send (no credentials for Basic, or a challenge of an unknown scheme)."""
        scheme, _, rest = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        c = self.credentials
        if scheme.lower() == "basic":
            if not c.username:
                return False
            with self._lock:
                self._auth[""] = "Basic " + base64.b64encode(f"{c.username}:{c.password}".encode()).decode()
            return True
        if scheme.lower() != "bearer" or "realm" not in params:
            return False
        query = {k: params[k] for k in ("service", "scope") if k in params}
        auth = httpx.BasicAuth(c.username, c.password) if c.username else None
        try:
            response = self._http.get(params["realm"], params=query, auth=auth, timeout=30)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code in (401, 403):
            raise self._refused()
        self._check(response, "get a token")
        doc = response.json()
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise UpstreamError(f"the registry's token service {params['realm']} answered without a token")
        with self._lock:
            self._auth[self._scope_key()] = f"Bearer {token}"
        return True

    def _refused(self) -> UpstreamError:
        if self.credentials.username:
            return UpstreamError(
                f"the registry {self.base} refused the credentials of {self.credentials.username!r}; check "
                "registry_username and registry_password (WASMGATE_REGISTRY_USERNAME, WASMGATE_REGISTRY_PASSWORD)"
            )
        return UpstreamError(
            f"the registry {self.base} requires credentials; set registry_username and registry_password "
            "(WASMGATE_REGISTRY_USERNAME, WASMGATE_REGISTRY_PASSWORD)"
        )

    def _unreachable(self, exc: httpx.HTTPError) -> WasmgateError:
        text = str(exc) or type(exc).__name__
        hint = ""
        if "SSL" in text or "certificate" in text.lower():
            hint = (
                "; TLS failed: trust its certificate with registry_ca_file, or, for a plain-HTTP registry on a "
                "trusted network only, set registry_plain_http"
            )
        return Unavailable(f"the registry {self.base} cannot be reached: {text}{hint}", RETRY_AFTER_S)

    def _check(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = _error_text(response)
        if status >= 500 or status == 429:
            raise Unavailable(f"the registry {self.base} failed to {what}: {status} {detail}", RETRY_AFTER_S)
        if status == 403:
            raise self._refused()
        if status == 400 and _error_code(response) in ("MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "TAG_INVALID"):
            raise InvalidRequest(f"the registry {self.base} refused to {what}: {detail}")
        if status == 400 and "HTTPS" in detail and self.credentials.plain_http:
            detail += " (it speaks HTTPS: unset registry_plain_http)"
        raise UpstreamError(f"the registry {self.base} refused to {what}: {status} {detail}")


def _error_code(response: httpx.Response) -> str | None:
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError, AttributeError):
        code = response.json()["errors"][0]["code"]
        return str(code)
    return None


def _error_text(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        errors: list[dict[str, Any]] = response.json()["errors"]
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:300]
    return response.text[:300] or response.reason_phrase


def _next_link(link: str | None, current: str) -> str | None:
    """The ``rel="next"`` target of a ``Link`` header, relative to the current URL."""
    if not link:
        return None
    m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
    return urljoin(current, m.group(1)) if m else None


def file_chunks(path: Path) -> Callable[[], Iterator[bytes]]:
    """A blob's bytes from disk, readable again for a repeated request."""

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    return chunks

"""Bearer tokens: who may push, and who may infer.

- The admin API (push, delete, settings, blobs) requires ``admin_token`` when it is set.
- Inference (and a function's metadata) requires the function's own token when it was pushed with one, else
  ``inference_token`` when that is set, else nothing.
- With no ``admin_token``, ``wasm serve`` refuses to bind anything but loopback (:func:`check_bind`).

Tokens are compared in constant time, as sha256 digests, so neither their content nor their length leaks
through timing. A function's token is stored only as its sha256. No token is ever logged or put in an error
message. Runners check nothing: they serve the gateway, which has checked already (and they must not be
reachable from outside the cluster; see deploy/README.md).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

from gateway.settings import Settings
from gateway.store.manifest import Manifest
from wasm_host.errors import Unauthorized

SCHEME = "bearer"


def digest(token: str) -> str:
    """What the store keeps of a function's token."""
    return hashlib.sha256(token.encode()).hexdigest()


def presented(headers: Mapping[str, str]) -> str | None:
    """The bearer token of a request, or None."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == SCHEME and token.strip() else None


def matches(token: str | None, expected_digest: str) -> bool:
    """Constant-time comparison of a presented token with a stored digest. No token (or an empty one) never
    matches; the comparison runs all the same, so its absence takes as long as a wrong one."""
    given = digest(token) if token else "0" * 64
    return hmac.compare_digest(given, expected_digest) and bool(token)


def check_admin(settings: Settings, headers: Mapping[str, str]) -> None:
    if settings.admin_token and not matches(presented(headers), digest(settings.admin_token)):
        raise Unauthorized("the admin API needs the gateway's admin token: send 'Authorization: Bearer <token>'")


def may_infer(settings: Settings, manifest: Manifest, headers: Mapping[str, str]) -> bool:
    """Whether the request's bearer token opens ``manifest``'s function (see the module docstring)."""
    if manifest.token_sha256:
        expected = manifest.token_sha256
    elif settings.inference_token:
        expected = digest(settings.inference_token)
    else:
        return True
    return matches(presented(headers), expected)


def check_inference(settings: Settings, manifest: Manifest, headers: Mapping[str, str]) -> None:
    if not may_infer(settings, manifest, headers):
        raise Unauthorized(f"{manifest.name!r} needs an inference token: send 'Authorization: Bearer <token>'")


def check_bind(settings: Settings) -> None:
    """Refuse to serve the admin API beyond this machine without a token. Raises ValueError."""
    if settings.admin_token:
        return
    host = settings.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to bind {settings.host} without an admin token: anyone who can reach it could push code. "
            "Set WASMGATE_ADMIN_TOKEN (and WASMGATE_INFERENCE_TOKEN to guard inference), or bind 127.0.0.1"
        )

"""A small client for the admin API, used by the ``wasm`` CLI."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import httpx

from wasm_host.errors import ClientError


class AdminClient:
    def __init__(self, base_url: str, token: str = "", timeout: float = 300.0) -> None:
        """``token``: the gateway's admin token, sent as a bearer token when not empty."""
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(
                f"cannot reach the gateway at {self.base_url} ({exc}); is `wasm serve` running? "
                "Set --gateway or WASMGATE_URL to point elsewhere."
            ) from exc
        if response.status_code >= 400 and method != "HEAD":
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500] or response.reason_phrase
            raise ClientError(f"{response.status_code}: {message}")
        return response

    def upload(self, data: bytes) -> str:
        """Upload a blob unless the gateway has it. Returns its digest (``sha256:<hex>``)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self._call("HEAD", f"/admin/v1/blobs/{digest}").status_code != 200:
            self._call(
                "PUT",
                f"/admin/v1/blobs/{digest}",
                content=data,
                headers={"content-type": "application/octet-stream"},
            )
        return digest

    def push(
        self,
        name: str,
        module: bytes | None,
        models: Mapping[str, bytes],
        pool: Mapping[str, Any] | None = None,
        placement: Mapping[str, str | bool | None] | None = None,
        inference_token: str | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """Upload what the gateway lacks, then push. ``placement``: ``tier``, ``endpoint``, ``endpoint_model``,
        ``spill``, ``mask_cold_start`` (None values are left out: a re-push keeps the function's own).
        ``files``: the function's data files by alias (the code is the push's alone: none without them)."""
        doc = {
            "module": None if module is None else self.upload(module),
            "models": {alias: self.upload(data) for alias, data in models.items()},
            "pool": dict(pool or {}),
            **{k: v for k, v in (placement or {}).items() if v is not None},
        }
        if files:
            doc["files"] = {alias: self.upload(data) for alias, data in files.items()}
        if inference_token is not None:
            doc["inference_token"] = inference_token
        result: dict[str, Any] = self._call("PUT", f"/admin/v1/functions/{name}", json=doc).json()
        return result

    def set_pool(self, name: str, pool: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", f"/admin/v1/functions/{name}/pool", json=dict(pool)).json()
        return result

    def rollback(self, name: str, to: int | None = None) -> dict[str, Any]:
        doc = {} if to is None else {"to": to}
        result: dict[str, Any] = self._call("POST", f"/admin/v1/functions/{name}/rollback", json=doc).json()
        return result

    def list(self) -> list[dict[str, Any]]:
        functions: list[dict[str, Any]] = self._call("GET", "/admin/v1/functions").json()["functions"]
        return functions

    def delete(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/admin/v1/functions/{name}").json()
        return result

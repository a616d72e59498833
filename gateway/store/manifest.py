"""What a function is, as every store keeps it: the :class:`Manifest`, and the rules for the names and digests
that identify functions and blobs. These patterns are the only ones: the OpenAPI document and the OCI
artifact format take them from here."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

from router.policy import TierSetting
from wasm_host.errors import InvalidRequest
from wasm_host.figures import ModelFigures
from wasm_host.pool import PoolSettings
from wasm_host.tensors import TensorSpec

NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
DIGEST_RE = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
Kind = Literal["passthrough", "custom", "external"]
TIERS: tuple[TierSetting, ...] = get_args(TierSetting)


def check_name(name: str, what: str = "function name") -> str:
    """Function names (and the aliases of models and files, ``what`` says which) are 1-128 characters of
    letters, digits, '.', '_' and '-', starting and ending with a letter or digit, and without '..': safe as a
    file name and as a URL path segment."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidRequest(
            f"invalid {what} {shown!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_digest(digest: str) -> str:
    m = DIGEST_RE.fullmatch(digest)
    if not m:
        raise InvalidRequest(f"invalid digest {digest[:80]!r}: expected sha256:<64 lowercase hex digits>")
    return m.group(1)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a function is: its module, the models it may load by alias, the data files it reads by alias
    (guest_modules/ABI.md, "Files"), and its declared tensors; where it runs (``tier``); and, for a function
    served by an existing OIP v2 server (kind ``external``), that server's base URL and the model name it knows
    the function by."""

    name: str
    version: int
    kind: Kind
    module: str  # sha256 hex of the Wasm module; "" for an external function
    models: dict[str, str]  # alias -> sha256 hex of the ONNX model
    inputs: list[TensorSpec] | None  # None: the function declares no signature
    outputs: list[TensorSpec] | None
    created: float = 0.0
    pool: PoolSettings = dataclasses.field(default_factory=PoolSettings)
    tier: TierSetting = "auto"  # where it lives: chosen by the router from its figures, or pinned at push
    endpoint: str | None = None  # base URL of an existing OIP v2 server serving this function's pod tier
    endpoint_model: str | None = None  # the model's name on that server (default: the function's name)
    figures: ModelFigures = dataclasses.field(default_factory=ModelFigures)  # its models' sizes and cost
    spill: bool = True  # a Wasm-tier function may spill large batches and overflow to warm pods
    mask_cold_start: bool = True  # a pod-tier function may be served by the Wasm tier while pods start
    token_sha256: str = dataclasses.field(default="", repr=False)  # sha256 of its own inference token, if any
    digest: str = ""  # the registry store: the OCI manifest this version is ("sha256:..."); "" in the local store
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # alias -> sha256 hex of a data file

    @property
    def code(self) -> tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        """What the function runs: its module, models and files. Equal codes can share loaded state."""
        return self.module, tuple(sorted(self.models.items())), tuple(sorted(self.files.items()))

    @property
    def blobs(self) -> list[str]:
        """The digests of every blob the function needs: its module, models and files."""
        return [d for d in (self.module, *self.models.values(), *self.files.values()) if d]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "module": f"sha256:{self.module}" if self.module else None,
            "models": {alias: f"sha256:{d}" for alias, d in self.models.items()},
            "files": {alias: f"sha256:{d}" for alias, d in self.files.items()},
            "inputs": None if self.inputs is None else [s.to_json() for s in self.inputs],
            "outputs": None if self.outputs is None else [s.to_json() for s in self.outputs],
            "created": self.created,
            "pool": self.pool.to_json(),
            "tier": self.tier,
            "endpoint": self.endpoint,
            "endpoint_model": self.endpoint_model,
            "figures": self.figures.to_json(),
            "spill": self.spill,
            "mask_cold_start": self.mask_cold_start,
            "token_sha256": self.token_sha256,
            "digest": self.digest or None,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        def specs(key: str) -> list[TensorSpec] | None:
            raw = doc.get(key)
            return None if raw is None else [TensorSpec.from_json(x) for x in raw]

        kind = doc["kind"]
        return cls(
            name=doc["name"],
            version=int(doc["version"]),
            kind=kind,
            module="" if kind == "external" else check_digest(doc["module"]),
            models={alias: check_digest(d) for alias, d in doc["models"].items()},
            # A file alias becomes a file name on the host (gateway.store.files): checked wherever it comes from.
            files={check_name(a, "file alias"): check_digest(d) for a, d in (doc.get("files") or {}).items()},
            inputs=specs("inputs"),
            outputs=specs("outputs"),
            created=float(doc.get("created", 0.0)),
            pool=PoolSettings.from_json(doc.get("pool") or {}),
            tier=doc.get("tier", "auto"),
            endpoint=doc.get("endpoint"),
            endpoint_model=doc.get("endpoint_model"),
            figures=ModelFigures.from_json(doc.get("figures") or {}),
            spill=bool(doc.get("spill", True)),
            mask_cold_start=bool(doc.get("mask_cold_start", True)),
            token_sha256=str(doc.get("token_sha256") or ""),
            digest="sha256:" + check_digest(doc["digest"]) if doc.get("digest") else "",
        )


#: Validates a function's code the way a push does (``Publisher.validate``): its name, module digest (None: a
#: bare model behind the passthrough guest), models by alias and files by alias. Returns the manifest a push
#: would commit, without its version and settings.
Derive = Callable[[str, str | None, Mapping[str, str], Mapping[str, str]], Manifest]

"""A function as an OCI artifact: what the registry store writes, and what it accepts from any OCI client.

An image manifest v1.1 (``application/vnd.oci.image.manifest.v1+json``) whose

- ``config`` is the function's spec, :data:`CONFIG_MEDIA_TYPE` (also the manifest's ``artifactType``): the JSON
  of :class:`~gateway.store.Manifest` without its name (the tag is the name) and blob digests (the layers are);
- layers are the Wasm module, :data:`WASM_MEDIA_TYPE` (at most one; wasmgate always pushes it, the built-in
  passthrough guest included, so the artifact is self-contained), and one :data:`MODEL_MEDIA_TYPE` layer per
  ONNX model, its alias in the :data:`ALIAS_ANNOTATION` annotation (else the stem of its
  ``org.opencontainers.image.title``, the file name OCI clients such as oras write and read), and one
  :data:`FILE_MEDIA_TYPE` layer per data file, its alias in the :data:`FILE_ALIAS_ANNOTATION` annotation
  (else the whole file name its title gives: ``vocab.txt`` is read by the guest as ``/files/vocab.txt``).
  Layers of any other media type are ignored;
- annotations carry ``org.opencontainers.image.created`` and, from the second version on,
  :data:`PREVIOUS_ANNOTATION`: the digest of the manifest this one replaced (the version chain rollback walks).

A config written by wasmgate holds ``kind`` and the signature and figures found when it was validated, and is
trusted as it is. A config without ``kind`` (an artifact made with another tool: oras's empty ``{}`` config, of
any media type, will do) is completed by validating the artifact the way a push is validated; the settings it
does hold (``pool``, ``tier``, ``spill``, ``mask_cold_start``, ``endpoint``, ``endpoint_model``,
``token_sha256``, ``version``) apply over the defaults.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

from gateway.store.manifest import TIERS, Derive, Manifest, check_digest, check_name
from gateway.store.oci import MANIFEST_MEDIA_TYPE
from wasm_host.errors import InvalidArtifact, InvalidRequest
from wasm_host.pool import PoolSettings

CONFIG_MEDIA_TYPE = "application/vnd.wasmgate.function.config.v1+json"
WASM_MEDIA_TYPE = "application/vnd.wasm.content.layer.v1+wasm"
MODEL_MEDIA_TYPE = "application/vnd.wasmgate.model.onnx.v1"
ALIAS_ANNOTATION = "io.wasmgate.model.alias"
FILE_MEDIA_TYPE = "application/vnd.wasmgate.file.v1"
FILE_ALIAS_ANNOTATION = "io.wasmgate.file.alias"
TITLE_ANNOTATION = "org.opencontainers.image.title"
CREATED_ANNOTATION = "org.opencontainers.image.created"
PREVIOUS_ANNOTATION = "io.wasmgate.previous"
#: Largest manifest or config read from a registry: both are small JSON documents.
MAX_DOCUMENT_BYTES = 4 << 20
#: Spec keys the config carries; everything else in a Manifest is the name (the tag) or the layers.
SPEC_KEYS = (
    "version",
    "created",
    "kind",
    "inputs",
    "outputs",
    "pool",
    "tier",
    "endpoint",
    "endpoint_model",
    "figures",
    "spill",
    "mask_cold_start",
    "token_sha256",
)
#: Settings a config may hold without a ``kind``, applied over a manifest found by validation.
SETTING_KEYS = ("tier", "endpoint", "endpoint_model", "spill", "mask_cold_start", "token_sha256")


@dataclasses.dataclass(frozen=True)
class Artifact:
    """What a function's manifest names: its config, module, models and data files (sha256 hex digests),
    their sizes."""

    config: str
    module: str | None
    models: dict[str, str]
    sizes: dict[str, int]
    previous: str | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def blobs(self) -> list[str]:
        return [d for d in (self.module, *self.models.values(), *self.files.values()) if d]


def spec(manifest: Manifest) -> bytes:
    """The config blob of ``manifest``: its spec, as canonical JSON."""
    doc = manifest.to_json()
    return _canonical({k: doc[k] for k in SPEC_KEYS})


def build(manifest: Manifest, config: bytes, sizes: Mapping[str, int], previous: str | None) -> bytes:
    """The OCI manifest of ``manifest`` whose config blob is ``config`` (:func:`spec`), as canonical JSON."""
    layers = []
    if manifest.module:
        title = "passthrough.wasm" if manifest.kind == "passthrough" else f"{manifest.name}.wasm"
        layers.append(_descriptor(WASM_MEDIA_TYPE, manifest.module, sizes[manifest.module], {TITLE_ANNOTATION: title}))
    for alias, digest in sorted(manifest.models.items()):
        annotations = {ALIAS_ANNOTATION: alias, TITLE_ANNOTATION: f"{alias}.onnx"}
        layers.append(_descriptor(MODEL_MEDIA_TYPE, digest, sizes[digest], annotations))
    for alias, digest in sorted(manifest.files.items()):
        annotations = {FILE_ALIAS_ANNOTATION: alias, TITLE_ANNOTATION: alias}
        layers.append(_descriptor(FILE_MEDIA_TYPE, digest, sizes[digest], annotations))
    created = datetime.datetime.fromtimestamp(manifest.created or time.time(), datetime.UTC)
    annotations = {CREATED_ANNOTATION: created.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if previous:
        annotations[PREVIOUS_ANNOTATION] = previous
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": CONFIG_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": "sha256:" + _sha256(config),
            "size": len(config),
        },
        "layers": layers,
        "annotations": annotations,
    }
    return _canonical(doc)


def parse(body: bytes) -> Artifact:
    """The function parts of an OCI image manifest. Raises InvalidArtifact."""
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        media_type = doc.get("mediaType", MANIFEST_MEDIA_TYPE)
        if media_type != MANIFEST_MEDIA_TYPE:
            raise InvalidArtifact(f"it is a {media_type}, not an OCI image manifest ({MANIFEST_MEDIA_TYPE})")
        config = _digest(doc["config"])
        module = None
        models: dict[str, str] = {}
        files: dict[str, str] = {}
        sizes = {}
        for layer in doc.get("layers") or []:
            kind = layer.get("mediaType")
            if kind not in (WASM_MEDIA_TYPE, MODEL_MEDIA_TYPE, FILE_MEDIA_TYPE):
                continue  # a README, a signature...: not the function's
            digest = _digest(layer)
            sizes[digest] = int(layer["size"])
            if kind == WASM_MEDIA_TYPE:
                if module is not None:
                    raise InvalidArtifact(f"it has more than one {WASM_MEDIA_TYPE} layer")
                module = digest
                continue
            annotations = layer.get("annotations") or {}
            is_file = kind == FILE_MEDIA_TYPE
            alias = _file_alias(annotations) if is_file else _alias(annotations)
            named = files if is_file else models
            if alias in named:
                raise InvalidArtifact(f"two {'file' if is_file else 'model'} layers have the alias {alias!r}")
            named[alias] = digest
        previous = (doc.get("annotations") or {}).get(PREVIOUS_ANNOTATION)
        if previous is not None:
            previous = "sha256:" + check_digest(previous)
    except InvalidArtifact:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, InvalidRequest) as exc:
        raise InvalidArtifact(f"its manifest is malformed: {exc}") from None
    return Artifact(config, module, models, sizes, previous, files)


def function(name: str, digest: str, artifact: Artifact, config: bytes, derive: Derive) -> Manifest:
    """The function an artifact (``digest``, tagged ``name``) is, with its config blob's bytes: trusted as
    written when the config says its ``kind``, else found by ``derive``. Raises InvalidArtifact, or what
    ``derive`` raises for code that does not validate."""
    doc = config_doc(config)
    try:
        if "kind" in doc:
            parts = {
                "name": name,
                "module": f"sha256:{artifact.module}" if artifact.module else None,
                "models": {alias: f"sha256:{d}" for alias, d in artifact.models.items()},
                "files": {alias: f"sha256:{d}" for alias, d in artifact.files.items()},
            }
            manifest = Manifest.from_json({k: doc[k] for k in SPEC_KEYS if k in doc} | parts)
            if manifest.kind not in ("passthrough", "custom", "external") or manifest.tier not in TIERS:
                raise ValueError(f"kind {manifest.kind!r} or tier {manifest.tier!r} is not known")
            if manifest.kind != "external" and not artifact.module:
                raise InvalidArtifact(f"a {manifest.kind} function needs its {WASM_MEDIA_TYPE} layer")
            if manifest.kind != "custom" and artifact.files:
                raise InvalidArtifact(f"a {manifest.kind} function has no code of its own to read its file layers")
            return dataclasses.replace(manifest, digest=digest)
        settings = {k: doc[k] for k in SETTING_KEYS if k in doc}
        pool = PoolSettings.from_json(doc.get("pool") or {})
        version = int(doc.get("version", 1))
        created = float(doc.get("created", time.time()))
        if settings.get("tier", "auto") not in TIERS:
            raise ValueError(f"tier {settings['tier']!r} is not one of {', '.join(TIERS)}")
    except InvalidArtifact:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, InvalidRequest) as exc:
        raise InvalidArtifact(f"its config is not a wasmgate function spec: {exc}") from None
    if artifact.module is None and not artifact.models:
        if not settings.get("endpoint"):
            raise InvalidArtifact(
                f"it has neither a {WASM_MEDIA_TYPE} layer nor a {MODEL_MEDIA_TYPE} layer, nor an endpoint"
            )
        if artifact.files:
            raise InvalidArtifact(f"its {FILE_MEDIA_TYPE} layers need a {WASM_MEDIA_TYPE} layer to read them")
        manifest = Manifest(name, version, "external", "", {}, None, None, tier="pod")
    else:
        module = f"sha256:{artifact.module}" if artifact.module else None
        manifest = derive(name, module, artifact.models, artifact.files)
    return dataclasses.replace(manifest, version=max(1, version), created=created, pool=pool, digest=digest, **settings)


def config_doc(config: bytes) -> dict[str, Any]:
    """A config blob as a JSON object (empty bytes: ``{}``). Raises InvalidArtifact."""
    try:
        doc = json.loads(config) if config.strip() else {}
    except ValueError as exc:
        raise InvalidArtifact(f"its config is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArtifact("its config is not a JSON object")
    return doc


def _alias(annotations: Mapping[str, Any]) -> str:
    """A model layer's alias: its alias annotation, else its title's stem (``digits.onnx`` -> ``digits``)."""
    return _layer_alias(annotations, ALIAS_ANNOTATION, "model", lambda title: title.stem)


def _file_alias(annotations: Mapping[str, Any]) -> str:
    """A file layer's alias: its alias annotation, else its whole title (``vocab.txt`` stays ``vocab.txt``)."""
    return _layer_alias(annotations, FILE_ALIAS_ANNOTATION, "file", lambda title: title.name)


def _layer_alias(
    annotations: Mapping[str, Any], annotation: str, kind: str, from_title: Callable[[PurePosixPath], str]
) -> str:
    alias = annotations.get(annotation)
    if alias is None and annotations.get(TITLE_ANNOTATION):
        alias = from_title(PurePosixPath(str(annotations[TITLE_ANNOTATION])))
    if not isinstance(alias, str):
        raise InvalidArtifact(f"a {kind} layer has neither a {annotation} nor a {TITLE_ANNOTATION} annotation")
    return check_name(alias, f"{kind} alias")


def _digest(descriptor: Mapping[str, Any]) -> str:
    return check_digest(str(descriptor["digest"]))


def _descriptor(media_type: str, digest: str, size: int, annotations: dict[str, str]) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size, "annotations": annotations}


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

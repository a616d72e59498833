"""``wasm push|ls|rm --registry oci://HOST[:PORT]/REPO[:TAG]``: the registry store without a gateway.

A push builds and validates the function in this process exactly as a gateway would (the same
``Publisher.push``, on a registry store over a temporary cache), then pushes it to the registry; the
gateways on that registry serve it after their next sync. Credentials come from ``--registry-username`` and
``--password-stdin``, else ``WASMGATE_REGISTRY_USERNAME`` and ``WASMGATE_REGISTRY_PASSWORD``;
``--registry-ca-file`` and ``--registry-plain-http`` (else ``WASMGATE_REGISTRY_CA_FILE``,
``WASMGATE_REGISTRY_PLAIN_HTTP``) as for ``wasm serve``, whose flags they are named after (the earlier
``--username``, ``--ca-file`` and ``--plain-http`` still work, with a warning).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.cli.tables import print_table
from gateway.functions.push import Publisher
from gateway.settings import Settings
from gateway.store import artifact
from gateway.store.files import FileLimits
from gateway.store.oci import Reference, RegistryClient
from gateway.store.registry import RegistryStore, read_config, registry_credentials
from wasm_host.errors import InvalidArtifact
from wasm_host.host import Host
from wasm_host.providers import CPU


def settings_of(args: argparse.Namespace) -> Settings:
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
    return Settings.from_env(
        registry_username=args.username,
        registry_password=password,
        registry_ca_file=args.ca_file,
        registry_plain_http=args.plain_http,
    )


def client_of(ref: Reference, settings: Settings) -> RegistryClient:
    return RegistryClient(ref, registry_credentials(settings))


def push(
    args: argparse.Namespace,
    ref: Reference,
    name: str,
    module: bytes | None,
    models: Mapping[str, bytes],
    pool: Mapping[str, Any],
    placement: Mapping[str, Any],
    files: Mapping[str, bytes],
) -> int:
    settings = settings_of(args)
    with tempfile.TemporaryDirectory(prefix="wasmgate-push-") as tmp, client_of(ref, settings) as client:
        limits = FileLimits.of(settings)
        store = RegistryStore(Path(tmp), client, settings.max_module_bytes, settings.max_push_model_bytes, limits)
        host = Host(
            settings.sandbox, store.root / "cache", settings.ort_intra_op_threads, [CPU], settings.host_path
        ).start()
        try:
            publisher = Publisher(store, host, settings)
            module_digest = store.stage(module) if module is not None else None
            digests = {alias: store.stage(data) for alias, data in models.items()}
            file_digests = {alias: store.stage(data) for alias, data in files.items()}
            routing = {k: v for k, v in placement.items() if v is not None}
            token = args.inference_token
            manifest = publisher.push(name, module_digest, digests, pool, routing, token, file_digests)
        finally:
            host.close()
    print(f"pushed {manifest.name} version {manifest.version} ({manifest.kind}, tier {manifest.tier})")
    print(f"  {ref.at(manifest.digest)}")
    return 0


def ls(args: argparse.Namespace, ref: Reference) -> int:
    """Each function tag with its version, kind, tier, models, files and digest, read from the registry."""
    with client_of(ref, settings_of(args)) as client:
        rows = [("NAME", "VERSION", "KIND", "TIER", "MODELS", "FILES", "DIGEST")]
        for tag in sorted(client.tags()):
            digest = client.resolve(tag)
            if digest is None:
                continue
            try:
                parts = artifact.parse(client.get_manifest(digest)[0])
            except InvalidArtifact:
                continue  # not a function
            config = read_config(client, parts)
            kind = str(config.get("kind", "?"))
            models = ",".join(sorted(parts.models)) or "-"
            files = ",".join(sorted(parts.files)) or "-"
            version, tier = str(config.get("version", 1)), str(config.get("tier", "auto"))
            rows.append((tag, version, kind, tier, models, files, digest))
    print_table(rows)
    return 0


def rm(args: argparse.Namespace, ref: Reference, name: str) -> int:
    with client_of(ref, settings_of(args)) as client:
        digest = client.resolve(name)
        if digest is None or not client.delete_manifest(digest):
            print(f"error: {ref.name(name)} is not in the registry", file=sys.stderr)
            return 1
    print(f"deleted {name} ({ref.at(digest)})")
    return 0

"""The ``wasm`` command: serve the gateway, and push, list and remove functions.

Exit status: 0 on success, 1 when the gateway refused or could not be reached (the message says why), 2 for
bad usage.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.tables import function_rows, print_table, tier_label
from wasm_host.errors import ClientError, InvalidRequest, WasmgateError

if TYPE_CHECKING:
    # The settings (wasmtime, through the sandbox limits) are imported by main(), the admin client and the
    # registry reference (httpx) by the commands that use them: see main() and _client.
    from gateway.cli.client import AdminClient
    from gateway.settings import Settings
    from gateway.store.oci import Reference

WASM_MAGIC = b"\0asm"


def main(argv: Sequence[str] | None = None) -> int:
    # The cyclic garbage collector is held off while the command starts: its imports (numpy, onnxruntime,
    # wasmtime, uvicorn and this package's) make hundreds of thousands of objects, all kept, and the
    # collections they set off, about 35 ms of a gateway's start, find nothing to free. This module imports
    # them here for that reason, not at its top. ``serve`` and ``runner`` resume collections when the app is
    # ready (gateway.app's lifespan, after gc.freeze()); every command resumes them when it returns.
    gc.disable()
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        try:
            return int(args.func(args))
        except WasmgateError as exc:  # the gateway's or the registry's refusal (ClientError among them)
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:  # settings that do not parse
            print(f"error: {exc}", file=sys.stderr)
            return 2
    finally:
        gc.enable()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wasm", description="wasmgate: a serverless WebAssembly inference gateway")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    _serve_flags(serve)
    serve.add_argument("--grpc-port", type=int, help="OIP v2 gRPC port (default 8081, 0: none; env WASMGATE_GRPC_PORT)")
    serve.set_defaults(func=cmd_serve)

    runner = sub.add_parser("runner", help="run a pod-tier runner (model server) for the functions sent to it")
    _serve_flags(runner, workers=False)
    runner.add_argument(
        "--providers",
        help="onnxruntime execution providers: auto (default) or e.g. cuda,cpu (env WASMGATE_EXECUTION_PROVIDERS)",
    )
    runner.add_argument("--memory-budget-mb", type=int, help="unload least recently used models past this (0: none)")
    runner.add_argument("--source-url", help="gateway URL to fetch functions from (default: the data dir only)")
    runner.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a listening socket from the local scaler
    runner.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # exit when no longer its child
    runner.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="NAME",
        help="load this function before reporting ready (repeatable; the pod tier's pinned ones always are)",
    )
    runner.set_defaults(func=cmd_runner)

    demo = sub.add_parser("demo", help="run the gateway with demo functions pushed (needs the dev extra)")
    _serve_flags(demo)
    demo.set_defaults(func=cmd_demo)

    example = sub.add_parser(
        "example", help="write the README tour's models, example functions, data files and requests into DIR"
    )
    example.add_argument("dir", type=Path, help="where to write them (made if absent)")
    example.set_defaults(func=cmd_example)

    push = sub.add_parser("push", help="push an ONNX model, or a Wasm function with its models")
    push.add_argument(
        "file", type=Path, nargs="?", help="a .onnx model (served as is) or a .wasm function; optional with --endpoint"
    )
    push.add_argument("--name", help="function name (default: the file name without its extension)")
    push.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ALIAS=FILE",
        help="a model the function may load by ALIAS (repeatable; .wasm functions only)",
    )
    push.add_argument(
        "--file",
        action="append",
        default=[],
        dest="files",
        metavar="ALIAS=PATH",
        help="a read-only data file the function reads as /files/ALIAS (repeatable; .wasm functions only)",
    )
    push.add_argument(
        "--tier",
        choices=["auto", "wasm", "pod"],
        help="where requests run: auto (by the model's size and cost; the default for a new function), the "
        "gateway's sandbox (wasm) or runners (pod)",
    )
    push.add_argument(
        "--spill",
        action=argparse.BooleanOptionalAction,
        help="a Wasm-tier function may send large batches and overflow to ready pods (default: yes)",
    )
    push.add_argument(
        "--mask-cold-start",
        action=argparse.BooleanOptionalAction,
        help="a pod-tier function may be served by the Wasm tier while pods start (default: yes)",
    )
    push.add_argument("--endpoint", help="an existing OIP v2 server (Triton, KServe, ...) to serve the pod tier")
    push.add_argument("--endpoint-model", help="the model's name on --endpoint (default: the function's name)")
    push.add_argument(
        "--inference-token",
        help="a bearer token this function's requests must carry ('' removes it; default: keep the current one)",
    )
    _pool_flags(push)
    _gateway_flag(push)
    registry_flags(push)
    push.set_defaults(func=cmd_push)

    ls = sub.add_parser("ls", help="list functions")
    _gateway_flag(ls)
    registry_flags(ls)
    ls.set_defaults(func=cmd_ls)

    scale = sub.add_parser("scale", help="change a function's pool settings")
    scale.add_argument("name")
    _pool_flags(scale)
    _gateway_flag(scale)
    scale.set_defaults(func=cmd_scale)

    rollback = sub.add_parser("rollback", help="make an earlier version of a function current again")
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, help="the version to go back to (default: the one before the current)")
    _gateway_flag(rollback)
    rollback.set_defaults(func=cmd_rollback)

    rm = sub.add_parser("rm", help="delete a function")
    rm.add_argument("name")
    _gateway_flag(rm)
    registry_flags(rm)
    rm.set_defaults(func=cmd_rm)
    return parser


def registry_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registry (instead of a gateway)")
    g.add_argument("--registry", metavar="oci://HOST[:PORT]/REPO[:TAG]", help="work on this registry directly")
    # The same names as wasm serve's registry flags; the earlier short spellings still work, with a warning.
    g.add_argument(
        "--registry-username",
        "--username",
        dest="username",
        action=Renamed,
        help="registry user (default $WASMGATE_REGISTRY_USERNAME; --username is deprecated)",
    )
    g.add_argument(
        "--password-stdin", action="store_true", help="read the registry password from stdin (default: its env)"
    )
    g.add_argument(
        "--registry-ca-file",
        "--ca-file",
        dest="ca_file",
        action=Renamed,
        help="PEM certificates to trust for the registry's TLS (--ca-file is deprecated)",
    )
    g.add_argument(
        "--registry-plain-http",
        "--plain-http",
        dest="plain_http",
        action=Renamed,
        nargs=0,
        const=True,
        help="talk plain HTTP to the registry, trusted networks only (--plain-http is deprecated)",
    )


class Renamed(argparse.Action):
    """An option whose last spelling is deprecated: given that way it still works, and warns with the name to
    use. ``nargs=0`` with ``const`` makes it a flag."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if option_string == self.option_strings[-1]:
            print(f"warning: {option_string} is deprecated; use {self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def _serve_flags(p: argparse.ArgumentParser, workers: bool = True) -> None:
    p.add_argument("--host", help="interface to bind (default 127.0.0.1; env WASMGATE_HOST)")
    p.add_argument("--port", type=int, help="port (default 8080; env WASMGATE_PORT)")
    p.add_argument("--data-dir", type=Path, help="store directory (default ~/.local/share/wasmgate)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    if workers:
        p.add_argument("--workers", type=int, help="worker processes (default 1; env WASMGATE_WORKERS)")
        g = p.add_argument_group("the registry store (password: env WASMGATE_REGISTRY_PASSWORD only)")
        g.add_argument("--store", metavar="oci://HOST[:PORT]/REPO", help="keep functions in this OCI registry")
        g.add_argument("--registry-username", help="registry user (env WASMGATE_REGISTRY_USERNAME)")
        g.add_argument("--registry-ca-file", help="PEM certificates to trust for the registry's TLS")
        g.add_argument("--registry-plain-http", action="store_true", default=None, help="plain HTTP to the registry")
        g.add_argument("--registry-sync-interval", type=float, help="seconds between syncs (default 5)")


POOL_FLAGS = {
    "min_warm": (int, "instances kept ready without traffic (0: scale to zero)"),
    "max_instances": (int, "most instances alive at once per worker"),
    "idle_timeout": (float, "seconds without requests before scaling down"),
    "concurrency": (int, "requests executing at once per worker"),
    "max_queue": (int, "requests that may wait for a slot (more: 429)"),
    "queue_timeout": (float, "seconds a request may wait for a slot (longer: 503)"),
    "recycle_after": (int, "requests a reused instance serves before it is replaced"),
    "deadline_ms": (int, "its deadline per request in ms on the Wasm tier (0: the gateway's deadline_ms)"),
    "pod_deadline_ms": (int, "its deadline per request in ms on the pod tier (0: the runners' runner_deadline_ms)"),
}
POOL_KEYS = {"idle_timeout": "idle_timeout_s", "queue_timeout": "queue_timeout_s"}


def _pool_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pool settings (omitted: unchanged, or the defaults for a new function)")
    for flag, (kind, text) in POOL_FLAGS.items():
        g.add_argument(f"--{flag.replace('_', '-')}", type=kind, help=text)
    g.add_argument(
        "--isolation",
        choices=["reuse", "fresh"],
        help="reuse: instances serve many requests; fresh: a new instance per request",
    )


def pool_settings_from(args: argparse.Namespace) -> dict[str, object]:
    values = {POOL_KEYS.get(k, k): getattr(args, k) for k in (*POOL_FLAGS, "isolation")}
    return {k: v for k, v in values.items() if v is not None}


def _gateway_flag(p: argparse.ArgumentParser) -> None:
    from gateway.settings import DEFAULT_URL, ClientSettings

    client = ClientSettings.from_env()
    p.add_argument("--gateway", default=client.url, help=f"gateway URL (default $WASMGATE_URL or {DEFAULT_URL})")
    p.add_argument(
        "--token", default=client.admin_token, help="the gateway's admin token (default $WASMGATE_ADMIN_TOKEN)"
    )


def settings_from(args: argparse.Namespace, **more: Any) -> Settings:
    from gateway.settings import Settings

    return Settings.from_env(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        log_level=args.log_level,
        workers=getattr(args, "workers", None),
        grpc_port=getattr(args, "grpc_port", None),
        store=getattr(args, "store", None),
        registry_username=getattr(args, "registry_username", None),
        registry_ca_file=getattr(args, "registry_ca_file", None),
        registry_plain_http=getattr(args, "registry_plain_http", None),
        registry_sync_interval_s=getattr(args, "registry_sync_interval", None),
        **more,
    )


def _client(args: argparse.Namespace) -> AdminClient:
    """The admin client for ``--gateway``. httpx (and with it ssl, http.client, email) is imported here, by the
    commands that talk to a gateway: ``serve``'s start, which the import would add about a tenth of a second to,
    never loads it."""
    from gateway.cli.client import AdminClient

    return AdminClient(args.gateway, args.token)


def _reference(text: str) -> Reference:
    """``--registry``'s reference, parsed (imported here for the reason of :func:`_client`)."""
    from gateway.store.oci import Reference

    return Reference.parse(text)


def cmd_runner(args: argparse.Namespace) -> int:
    from gateway.server import serve_runner

    settings = settings_from(
        args,
        execution_providers=args.providers,
        model_memory_budget_mb=args.memory_budget_mb,
        runner_source_url=args.source_url,
    )
    serve_runner(settings, args.fd, args.parent_pid, args.preload)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    serve(settings_from(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli.demo import run_demo

    return run_demo(settings_from(args))


def cmd_example(args: argparse.Namespace) -> int:
    from gateway.cli.example import write_examples

    written = write_examples(args.dir)
    print(f"wrote {len(written)} files to {args.dir}: {' '.join(p.name for p in written)}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    if args.file is None and args.endpoint is None:
        print("error: push takes a .onnx or .wasm file, or --endpoint for a function served elsewhere", file=sys.stderr)
        return 2
    placement = {
        "tier": args.tier,
        "endpoint": args.endpoint,
        "endpoint_model": args.endpoint_model,
        "spill": args.spill,
        "mask_cold_start": args.mask_cold_start,
    }
    data = _read(args.file) if args.file is not None else None
    name = args.name or (args.file and re.sub(r"[^A-Za-z0-9._-]", "-", args.file.stem).strip("-.")) or None
    if name is None:
        print("error: name the function with --name", file=sys.stderr)
        return 2
    models = _aliased(args.model, "--model", "model alias")
    files = _aliased(args.files, "--file", "file alias")
    if models is None or files is None:
        return 2
    if data is not None and data[:4] != WASM_MAGIC and (models or files):
        flag = "--model" if models else "--file"
        print(f"error: {flag} is for .wasm functions; a bare ONNX model is pushed alone", file=sys.stderr)
        return 2
    if data is None and files:
        print("error: --file needs a .wasm function to read the files", file=sys.stderr)
        return 2
    if args.registry:
        ref = _reference(args.registry)
        if ref.tag and args.name and args.name != ref.tag:
            print(f"error: the tag {ref.tag!r} is the function's name; --name {args.name!r} differs", file=sys.stderr)
            return 2
        module = data if data is None or data[:4] == WASM_MAGIC else None
        bare = {} if module is not None or data is None else {"model": data}
        from gateway.cli import registry

        pool = pool_settings_from(args)
        return registry.push(args, ref, ref.tag or name, module, models or bare, pool, placement, files)
    with _client(args) as client:
        pool = pool_settings_from(args)
        if data is None or data[:4] == WASM_MAGIC:
            result = client.push(name, data, models, pool, placement, args.inference_token, files)
        else:
            result = client.push(name, None, {"model": data}, pool, placement, args.inference_token)
    where = f"tier {tier_label(result)}" + (f" at {result['endpoint']}" if result.get("endpoint") else "")
    print(f"pushed {result['name']} version {result['version']} ({result['kind']}, {where})")
    url = f"{args.gateway.rstrip('/')}/v2/models/{result['name']}"
    print(f"  inputs: curl -s {url}    infer: POST an OIP v2 request to {url}/infer")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    if args.registry:
        from gateway.cli import registry

        return registry.ls(args, _reference(args.registry))
    with _client(args) as client:
        functions = client.list()
    print_table(function_rows(functions))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    pool = pool_settings_from(args)
    if not pool:
        print("error: name at least one setting to change, e.g. --min-warm 1", file=sys.stderr)
        return 2
    with _client(args) as client:
        result = client.set_pool(args.name, pool)
    settings = ", ".join(f"{k}={v}" for k, v in result["pool"].items())
    print(f"{result['name']}: {settings}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.rollback(args.name, args.to)
    source = args.to if args.to is not None else result["version"] - 2
    print(f"rolled {result['name']} back to version {source}: now version {result['version']}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    if args.registry:
        from gateway.cli import registry

        return registry.rm(args, _reference(args.registry), args.name)
    with _client(args) as client:
        result = client.delete(args.name)
    print(f"deleted {result['deleted']} (was version {result['version']})")
    return 0


def _aliased(items: Sequence[str], flag: str, what: str) -> dict[str, bytes] | None:
    """``ALIAS=PATH`` items as alias -> the file's bytes; None (after saying why) for bad usage: a malformed
    item, an alias that is not a name, or an alias given twice."""
    from gateway.store.manifest import check_name

    read: dict[str, bytes] = {}
    for item in items:
        alias, sep, path = item.partition("=")
        if not sep or not alias or not path:
            print(f"error: {flag} takes ALIAS=PATH, got {item!r}", file=sys.stderr)
            return None
        try:
            check_name(alias, what)
        except InvalidRequest as exc:
            print(f"error: {flag}: {exc}", file=sys.stderr)
            return None
        if alias in read:
            print(f"error: {flag} {alias} is given twice; each {what} names one file", file=sys.stderr)
            return None
        read[alias] = _read(Path(path))
    return read


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from exc

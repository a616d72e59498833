"""OpenAI-compatible endpoints, for clients written against OpenAI's API (the official ``openai`` client among
them): ``POST /v1/embeddings`` and ``GET /v1/models``.

An embeddings request is served as an OIP v2 request, on the path every inference request takes
(``Dispatcher.run``): the texts become one BYTES tensor of shape [N] named after the function's input (sent in
the binary extension, so the text is not escaped into JSON twice), and the function's one FP32 output of
shape [N, D] becomes the N embeddings. Routing (``x-wasmgate-tier`` and ``x-wasmgate-deadline-ms`` are taken
from the caller's headers), admission, the one retry, the metrics and the ``x-wasmgate-*`` response headers are
OIP v2's; the pod tier forwards that OIP body to a runner, which speaks nothing else.

The request, and what this gateway makes of each field:

- ``model``: the function's name (its current version). The functions served are those whose signature is
  one BYTES input of rank 1 and one FP32 output of rank 2; any other is refused (400) with its signature, and
  so is a function that declares none.
- ``input``: a non-empty string, or a list of 1 to :data:`MAX_INPUTS` of them. Token arrays (lists of integers),
  which OpenAI's API also takes, are refused: a function takes text and tokenizes it itself.
- ``encoding_format``: ``float`` (the default) or ``base64``, the little-endian float32 bytes of each
  embedding, which the ``openai`` client asks for unless told otherwise.
- ``dimensions``: accepted only when it equals the function's D; a function's embeddings are not shortened.
- ``user``: accepted and ignored. Any other field is refused, as OpenAI refuses it.

The answer's ``usage`` holds 0 tokens: the tokenizer is inside the function, and the gateway does not count
what it cannot see. The bearer key is the function's inference token (else the gateway's), checked as for OIP
v2 (``gateway.auth``); ``GET /v1/models`` lists the functions the key opens, those that need no token included.
Errors are answered in OpenAI's shape, from the one table in ``gateway.http_errors``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import anyio.to_thread
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import check_inference, may_infer
from gateway.codec import HEADER_LENGTH, encode_request, parse_response
from gateway.dispatch import DEADLINE_HEADER, HINT_HEADER, Dispatcher
from gateway.http_errors import answered_error
from gateway.requests import json_object, read_body
from gateway.state import state_of
from gateway.store.manifest import Manifest
from wasm_host.errors import GuestFailure, InvalidRequest, WasmgateError
from wasm_host.tensors import Tensor, TensorSpec, join_bytes

Encoding = Literal["float", "base64"]
ENCODINGS: tuple[Encoding, ...] = get_args(Encoding)
#: The most texts one request may carry (OpenAI's own bound).
MAX_INPUTS = 2048
#: The fields an embeddings request may have; anything else is refused.
FIELDS = ("model", "input", "encoding_format", "dimensions", "user")
#: The caller's headers its OIP request takes on: the routing ones.
ROUTING_HEADERS = (HINT_HEADER, DEADLINE_HEADER)
#: What the function must declare, as the refusal of one that does not says it.
WANTED = "one BYTES input of shape [-1] and one FP32 output of shape [-1, D]"
OWNER = "wasmgate"


@dataclasses.dataclass(frozen=True)
class EmbeddingsRequest:
    """An embeddings request's fields past ``model``, checked."""

    texts: list[str]
    encoding: Encoding
    dimensions: int | None


async def embeddings(request: Request) -> Response:
    """``POST /v1/embeddings`` (see the module docstring)."""
    state = state_of(request)
    dispatcher = state.gateway
    started = time.perf_counter()
    doc = _document(await read_body(request, dispatcher.max_body_bytes))
    manifest, fn = state.registry.current(_model(doc))
    check_inference(state.settings, manifest, request.headers)
    try:  # refused from here on: counted against the function, as OIP v2 counts a bad body
        wanted = parse_embeddings_request(doc)
        text, embedding = embedding_signature(manifest)
        if wanted.dimensions is not None and embedding.shape[1] >= 0:
            _check_dimensions(manifest, wanted.dimensions, embedding.shape[1])
        body, headers = oip_request(text.name, embedding.name, wanted.texts, request.headers)
    except WasmgateError as exc:
        dispatcher.refused(manifest, started, exc)
        raise
    answer = await dispatcher.run(body, headers, manifest, fn, started)
    failed = answered_error(answer)
    if failed is not None:  # a replica's error: answered again, in the caller's shape, from where it ran
        raise failed
    raw = answer.body if isinstance(answer.body, bytes) else bytes(answer.body)
    out = _embedding_output(manifest, embedding.name, raw, answer.headers, len(wanted.texts), dispatcher)
    if wanted.dimensions is not None:
        _check_dimensions(manifest, wanted.dimensions, out.shape[1])
    routing = {k: v for k, v in answer.headers.items() if k.startswith("x-wasmgate-")}
    return Response(_answer(manifest.name, out, wanted.encoding), media_type="application/json", headers=routing)


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: the functions the caller's bearer key opens, in OpenAI's model list."""
    state = state_of(request)
    manifests = await anyio.to_thread.run_sync(state.store.manifests)
    data = [
        {"id": m.name, "object": "model", "created": int(m.created), "owned_by": OWNER}
        for m in manifests
        if may_infer(state.settings, m, request.headers)
    ]
    return JSONResponse({"object": "list", "data": data})


# -- the request ------------------------------------------------------------------------------------------------


def _document(body: bytes) -> dict[str, Any]:
    example = 'send a JSON object such as {"model": "NAME", "input": "some text"}'
    return json_object(body, "the body", f"the body must be a JSON object: {example}", example)


def _model(doc: Mapping[str, Any]) -> str:
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: the name of the function to run, as a string")
    return model


def parse_embeddings_request(doc: Mapping[str, Any]) -> EmbeddingsRequest:
    """The fields of an embeddings request past ``model``, checked: each refusal (InvalidRequest) names the
    field and what to send instead."""
    unknown = [k for k in doc if k not in FIELDS]
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise InvalidRequest(f"unrecognized request argument(s) {names}: /v1/embeddings takes {', '.join(FIELDS)}")
    raw_encoding = doc.get("encoding_format")
    encoding = next((e for e in ENCODINGS if e == raw_encoding), "float" if raw_encoding is None else None)
    if encoding is None:
        raise InvalidRequest(f"'encoding_format' {str(raw_encoding)[:20]!r} must be one of {', '.join(ENCODINGS)}")
    dimensions = doc.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise InvalidRequest(f"'dimensions' {str(dimensions)[:20]!r} must be a positive integer")
    user = doc.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string")
    return EmbeddingsRequest(_texts(doc.get("input")), encoding, dimensions)


def _texts(raw: object) -> list[str]:
    wanted = f"send a non-empty string, or a list of 1 to {MAX_INPUTS} of them"
    if raw is None:
        raise InvalidRequest(f"'input' is required: {wanted}")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list):
        raise InvalidRequest(f"'input' must be text: {wanted}")
    if not texts:
        raise InvalidRequest(f"'input' is an empty list: {wanted}")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"'input' has {len(texts)} items: {wanted}")
    if all(_is_token(x) for x in texts) or all(isinstance(x, list) and all(map(_is_token, x)) for x in texts):
        raise InvalidRequest(f"'input' is token ids: this endpoint takes text, which the function tokenizes; {wanted}")
    for i, text in enumerate(texts):
        where = "'input'" if isinstance(raw, str) else f"'input'[{i}]"
        if not isinstance(text, str):
            raise InvalidRequest(f"{where} is a {type(text).__name__}: {wanted}")
        if not text:
            raise InvalidRequest(f"{where} is an empty string: {wanted}")
    return texts


def _is_token(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def embedding_signature(manifest: Manifest) -> tuple[TensorSpec, TensorSpec]:
    """The function's text input and embedding output. Raises InvalidRequest, naming its signature, for a
    function that does not declare one BYTES input of rank 1 and one FP32 output of rank 2."""
    name = manifest.name
    ins, outs = manifest.inputs, manifest.outputs
    if ins is None or outs is None:
        raise InvalidRequest(
            f"{name!r} declares no signature, so nothing says it returns embeddings; /v1/embeddings serves "
            f"functions that declare {WANTED} (the module's signature export)"
        )
    if len(ins) == 1 and len(outs) == 1:
        text, embedding = ins[0], outs[0]
        if (text.datatype, len(text.shape), embedding.datatype, len(embedding.shape)) == ("BYTES", 1, "FP32", 2):
            return text, embedding
    raise InvalidRequest(
        f"{name!r} does not return embeddings: it takes {_describe(ins)} and returns {_describe(outs)}; "
        f"/v1/embeddings serves functions that declare {WANTED}"
    )


def _describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs) or "nothing"


def _check_dimensions(manifest: Manifest, wanted: int, d: int) -> None:
    if wanted != d:
        raise InvalidRequest(
            f"'dimensions' is {wanted}, but {manifest.name!r} returns {d}-dimensional embeddings and cannot "
            f"shorten them: send {d}, or leave 'dimensions' out"
        )


def oip_request(
    text: str, embedding: str, texts: Sequence[str], caller: Mapping[str, str]
) -> tuple[bytes, dict[str, str]]:
    """The OIP v2 request (a binary-extension body, and its headers) for ``texts``: one BYTES tensor of shape
    [N] named ``text``, the output ``embedding`` asked for in binary; the caller's routing headers kept."""
    encoded = []
    for i, item in enumerate(texts):
        try:
            encoded.append(item.encode())
        except UnicodeEncodeError:  # a lone surrogate, as JSON's \\ud800 escapes can write
            raise InvalidRequest(f"'input'[{i}] is not valid Unicode text (it holds a lone surrogate)") from None
    tensor = Tensor(text, "BYTES", (len(texts),), join_bytes(encoded))
    body, headers = encode_request([tensor], [embedding])
    return body, {k: v for k in ROUTING_HEADERS if (v := caller.get(k)) is not None} | headers


# -- the answer -------------------------------------------------------------------------------------------------


def _embedding_output(
    manifest: Manifest, name: str, body: bytes, headers: Mapping[str, str], n: int, dispatcher: Dispatcher
) -> Tensor:
    """The ``name`` output of an OIP v2 answer, which must be FP32 of shape [n, D]; anything else is the
    function's failure (500)."""
    try:
        outputs = parse_response(body, headers.get(HEADER_LENGTH), dispatcher.max_tensor_bytes)
    except WasmgateError as exc:
        raise GuestFailure(f"{manifest.name!r} answered something that is not an OIP v2 response: {exc}") from None
    out = next((t for t in outputs if t.name == name), None)
    if out is None:
        raise GuestFailure(f"{manifest.name!r} answered without its output {name!r}")
    if out.datatype != "FP32" or len(out.shape) != 2 or out.shape[0] != n:
        raise GuestFailure(
            f"{manifest.name!r} answered {name!r} as {out.datatype} {list(out.shape)} for {n} texts; "
            f"embeddings are FP32 [{n}, D]"
        )
    return out


def _answer(model: str, out: Tensor, encoding: Encoding) -> bytes:
    """OpenAI's embeddings response for ``out``, FP32 [N, D]: each row as numbers, or as the base64 of its
    little-endian float32 bytes."""
    n, d = out.shape
    if encoding == "base64":
        row = d * 4
        vectors: list[Any] = [base64.b64encode(out.data[i * row : (i + 1) * row]).decode() for i in range(n)]
    else:
        matrix = np.frombuffer(out.data, dtype="<f4").reshape(n, d)
        if not np.isfinite(matrix).all():
            i = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
            raise GuestFailure(
                f"{model!r} returned a NaN or an infinity in embedding {i}, which JSON numbers cannot carry "
                "(encoding_format base64 can)"
            )
        vectors = matrix.tolist()
    doc = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},  # the gateway cannot count the function's tokens
    }
    return json.dumps(doc, separators=(",", ":")).encode()


ROUTES = [
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]

"""Bad input at every surface: the OpenAPI document, every operation in it fuzzed against the app in process
(schemathesis cases, sent with a deadline), and targeted cases for the binary extension, refused pushes and
hostile function names.

What holds for every input: no 500 (a 503 only where the document allows it and the cause is real: the pod
tier is off here), a response that matches the document, an answer within ``CALL_TIMEOUT_S``, and nothing
written outside the data directory.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.openapi import DOCUMENT
from gateway.settings import Settings
from tests.support import AppClient, Digits, onnx_predict

CALL_TIMEOUT_S = 10.0
BASE_URL = "http://wasmgate.test"
FUZZ = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class Gateway:
    """The gateway app in process (lifespan run by :class:`AppClient`), called through its own httpx client so
    that every call has a deadline the test thread enforces: a hang fails the test instead of stalling it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        settings = Settings.from_env({}, data_dir=data_dir, pod_scaler="none", deadline_ms=2000)
        self.app = create_app(settings)
        self.client = AppClient(self.app)
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.http = httpx.AsyncClient(transport=transport, base_url=BASE_URL)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            return await self.http.request(method, url, **kwargs)

        future = self.client.portal.start_task_soon(call)
        try:
            return future.result(timeout=CALL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            pytest.fail(f"{method} {url} did not answer within {CALL_TIMEOUT_S} s")

    def upload(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = self.request("PUT", f"/admin/v1/blobs/{digest}", content=data)
        assert r.status_code in (200, 201), r.text
        return digest

    def push(self, name: str, module: bytes | None, models: dict[str, bytes]) -> httpx.Response:
        doc = {
            "module": None if module is None else self.upload(module),
            "models": {alias: self.upload(data) for alias, data in models.items()},
        }
        return self.request("PUT", f"/admin/v1/functions/{quote(name, safe='')}", json=doc)

    def listing(self) -> Any:
        r = self.request("GET", "/admin/v1/functions")
        assert r.status_code == 200
        return r.json()

    def close(self) -> None:
        self.client.portal.call(self.http.aclose)
        self.client.close()


def open_gateway(root: Path, digits: Digits) -> Gateway:
    gw = Gateway(root / "data")
    for name in ("digits", "scratch"):
        r = gw.push(name, None, {"model": digits.model})
        assert r.status_code == 201, r.text
    return gw


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Iterator[Gateway]:
    gw = open_gateway(tmp_path_factory.mktemp("fuzz"), digits)
    yield gw
    gw.close()


@pytest.fixture
def gateway(tmp_path: Path, digits: Digits) -> Iterator[Gateway]:
    gw = open_gateway(tmp_path, digits)
    yield gw
    gw.close()


def assert_no_server_error(response: httpx.Response, allowed: set[str]) -> None:
    """No 5xx except a documented 503 (here: the pod tier asked for, which is off). 500 is never fine."""
    status = response.status_code
    if status >= 500:
        assert status == 503, (status, response.text)
        assert "503" in allowed, (status, response.text)
        assert "pod" in response.json()["error"] or "deadline" in response.json()["error"], response.text


def assert_error_body(response: httpx.Response, *statuses: int) -> str:
    assert response.status_code in statuses, (response.status_code, response.text)
    doc = response.json()
    assert set(doc) == {"error"}, doc
    assert isinstance(doc["error"], str), doc
    message: str = doc["error"]
    return message


# -- the document ------------------------------------------------------------------------------------------


def test_document_is_valid_openapi_and_served(shared: Gateway) -> None:
    r = shared.request("GET", "/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == DOCUMENT
    schema = schemathesis.openapi.from_dict(r.json())
    schema.validate()  # against the OpenAPI 3.1 meta-schema


def test_document_covers_every_route(shared: Gateway) -> None:
    from starlette.routing import Route

    served = set()
    for route in shared.app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD" or route.path.startswith("/admin/v1/blobs"):
                served.add((method.lower(), route.path))
    documented = {
        (method, path) for path, item in DOCUMENT["paths"].items() for method in item if method != "parameters"
    }
    assert served == documented


# -- property-based fuzzing of every operation ---------------------------------------------------------------

SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = [(method, path) for path, item in DOCUMENT["paths"].items() for method in item if method != "parameters"]


def case_strategy(method: str, path: str, digest: str) -> st.SearchStrategy[Any]:
    """Schemathesis cases for one operation, valid and invalid, some of them aimed at a function or blob that
    exists so that the handlers behind the lookups run too."""
    operation = SCHEMA[path][method.upper()]
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    item = DOCUMENT["paths"][path]
    has_input = "parameters" in item or "requestBody" in item[method] or "parameters" in item[method]
    if has_input:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    # Deleting or re-pushing a real function would change what the other examples see; those stay random.
    if "{name}" in path and method not in ("delete", "put"):
        real: dict[str, Any] = {"name": "scratch" if path.endswith("/pool") else "digits"}
        if "{version}" in path:
            real["version"] = "1"
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real))
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=real))
    if "{digest}" in path and method != "put":
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"digest": digest}))
    return st.one_of(strategies)


def send(gw: Gateway, case: Any) -> httpx.Response:
    """A schemathesis case (requests-style keyword arguments) sent with httpx. Headers go as UTF-8 bytes, as
    a client that does not check them would send them."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    headers = {str(k).encode(): str(v).encode() for k, v in kwargs.get("headers", {}).items()}
    extra: dict[str, Any] = {}
    if "json" in kwargs:
        extra["content"] = json.dumps(kwargs["json"]).encode()
    elif isinstance(kwargs.get("data"), bytes | str):
        extra["content"] = kwargs["data"]
    elif kwargs.get("data") is not None:
        extra["data"] = kwargs["data"]
    return gw.request(kwargs["method"], kwargs["url"], headers=headers, params=kwargs.get("params"), **extra)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_fuzz_operation(shared: Gateway, digits: Digits, method: str, path: str) -> None:
    allowed = set(DOCUMENT["paths"][path][method]["responses"])

    @FUZZ
    @given(case=case_strategy(method, path, "sha256:" + digits.digest))
    def run(case: Any) -> None:
        response = send(shared, case)
        assert_no_server_error(response, allowed)
        checks = list(CHECKS)
        if case.meta is not None and case.meta.generation.mode == GenerationMode.NEGATIVE:
            checks.append(negative_data_rejection)
        case.validate_response(response, checks=checks)

    run()


# -- inference requests shaped like the digits model's, valid and nearly valid --------------------------------

ROWS = st.integers(min_value=0, max_value=3)
FEATURES = st.sampled_from([64, 64, 64, 63, 65, 0])
DATATYPES = st.sampled_from(["FP32", "FP32", "FP32", "FP64", "INT64", "BYTES"])


@st.composite
def digits_requests(draw: st.DrawFn) -> tuple[dict[str, Any], bytes, bool]:
    """A request for the digits function: (headers, body, whether it is valid). Shapes, datatypes, data
    lengths, encodings, output selections and routing headers each go wrong now and then."""
    rows, features, datatype = draw(ROWS), draw(FEATURES), draw(DATATYPES)
    count = rows * features + draw(st.sampled_from([0, 0, 0, 1, -1]))
    values = draw(st.lists(st.floats(0, 16, width=32), min_size=max(count, 0), max_size=max(count, 0)))
    valid = features == 64 and datatype == "FP32" and count == rows * features
    spec: dict[str, Any] = {"name": draw(st.sampled_from(["input", "input", "input", "x"])), "shape": [rows, features]}
    spec["datatype"] = datatype
    valid = valid and spec["name"] == "input"
    doc: dict[str, Any] = {"inputs": [spec]}
    outputs = draw(st.none() | st.lists(st.sampled_from(["label", "probabilities", "logits"]), max_size=2))
    binary_out = draw(st.booleans())
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary_out}} for n in outputs]
        valid = valid and "logits" not in outputs
    headers: dict[str, Any] = {}
    tier = draw(st.sampled_from([None, None, "wasm", "pod", "WASM", "gpu"]))
    if tier is not None:
        headers["x-wasmgate-tier"] = tier
        valid = valid and tier.lower() == "wasm"
    if draw(st.booleans()):
        deadline = draw(st.sampled_from(["1000", "5e3", "0", "-1", "nan", "soon"]))
        headers["x-wasmgate-deadline-ms"] = deadline
        valid = valid and deadline in ("1000", "5e3")
    if draw(st.booleans()):  # the binary extension
        raw = np.asarray(values, dtype="<f4").tobytes()
        size = len(raw) + draw(st.sampled_from([0, 0, 0, 4, -4]))
        spec["parameters"] = {"binary_data_size": size}
        head = json.dumps(doc).encode()
        length = len(head) + draw(st.sampled_from([0, 0, 0, 1, -1]))
        headers["inference-header-content-length"] = str(length)
        headers["content-type"] = "application/octet-stream"
        valid = valid and size == len(raw) and length == len(head)
        return headers, head + raw, valid
    spec["data"] = values
    headers["content-type"] = "application/json"
    return headers, json.dumps(doc).encode(), valid


@settings(FUZZ, max_examples=80)
@given(request=digits_requests())
def test_fuzz_digits_requests(shared: Gateway, digits: Digits, request: tuple[dict[str, Any], bytes, bool]) -> None:
    headers, body, valid = request
    operation = SCHEMA["/v2/models/{name}/infer"]["POST"]
    r = shared.request("POST", "/v2/models/digits/infer", headers=headers, content=body)
    assert_no_server_error(r, set(operation.definition.raw["responses"]))
    if valid:
        assert r.status_code == 200, r.text
        assert r.headers["x-wasmgate-tier"] == "wasm"
    else:
        assert r.status_code in (400, 503), r.text
    operation.validate_response(r)


# -- the binary extension: sizes that disagree --------------------------------------------------------------


def binary_request(size_delta: int = 0) -> tuple[bytes, int]:
    """A binary digits request of two rows (512 bytes of FP32) whose binary_data_size is off by
    ``size_delta``: (body, its JSON header's length)."""
    raw = np.arange(2 * 64, dtype="<f4").tobytes()
    spec = {"name": "input", "shape": [2, 64], "datatype": "FP32"}
    head = json.dumps({"inputs": [{**spec, "parameters": {"binary_data_size": len(raw) + size_delta}}]}).encode()
    return head + raw, len(head)


BODY, HEAD_LENGTH = binary_request()


def post_binary(gw: Gateway, body: bytes, header_length: str | None) -> httpx.Response:
    headers = {"content-type": "application/octet-stream"}
    if header_length is not None:
        headers["inference-header-content-length"] = header_length
    return gw.request("POST", "/v2/models/digits/infer", headers=headers, content=body)


def test_binary_body_is_served(shared: Gateway, digits: Digits) -> None:
    x = digits.x_test[:3].astype("<f4")
    spec = {"name": "input", "shape": [3, 64], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
    doc = {"inputs": [spec], "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}
    head = json.dumps(doc).encode()
    r = post_binary(shared, head + x.tobytes(), str(len(head)))
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    out = json.loads(r.content[:n])["outputs"][0]
    labels = np.frombuffer(r.content[n:], dtype="<i8")
    assert out["parameters"]["binary_data_size"] == labels.nbytes == 24
    assert labels.tolist() == onnx_predict(digits.model, x)[0].tolist()


@pytest.mark.parametrize(
    ("header_length", "message"),
    [
        (str(len(BODY) + 1), f"is {len(BODY) + 1} but the body has {len(BODY)} bytes"),
        ("0", "is 0 but the body has"),
        ("-5", "is -5 but the body has"),
        ("abc", "'abc' is not an integer"),
        ("1.5", "is not an integer"),
        ("", "is not an integer"),
        ("9" * 5000, "is not an integer"),
        ("99999999999999999999", "but the body has"),
        ("10", "not valid JSON"),  # cuts the JSON header short
    ],
)
def test_header_length_disagreeing_with_the_body(shared: Gateway, header_length: str, message: str) -> None:
    text = assert_error_body(post_binary(shared, BODY, header_length), 400)
    assert message in text


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("too few bytes", "binary_data_size is 512 but only 508 bytes of binary data remain"),
        ("too many bytes", "the binary section has 516 bytes but the inputs' binary_data_size add up to 512"),
        ("disagrees with the shape", "binary_data_size is 508, shape [2, 64] of FP32 needs 512"),
        ("more than the shape", "binary_data_size is 516 but only 512 bytes of binary data remain"),
        ("no binary section", "binary_data_size is 512 but only 0 bytes of binary data remain"),
        ("no header", "request body is not valid JSON"),
        ("negative", "binary_data_size must be a non-negative integer"),
        ("a string", "binary_data_size must be a non-negative integer"),
        ("a float", "binary_data_size must be a non-negative integer"),
        ("a boolean", "binary_data_size must be a non-negative integer"),
    ],
)
def test_binary_data_size_disagreeing_with_the_bytes(shared: Gateway, case: str, message: str) -> None:
    body, head_len = BODY, HEAD_LENGTH
    length: str | None = str(head_len)
    if case == "too few bytes":
        body = body[:-4]
    elif case == "too many bytes":
        body += b"\0\0\0\0"
    elif case == "disagrees with the shape":
        body, head_len = binary_request(size_delta=-4)
        body, length = body[:-4], str(head_len)
    elif case == "more than the shape":
        body, head_len = binary_request(size_delta=4)
        length = str(head_len)
    elif case == "no binary section":
        body, length = body[:head_len], None
    elif case == "no header":
        length = None
    else:
        value = {"negative": -512, "a string": "512", "a float": 512.0, "a boolean": True}[case]
        doc = json.loads(body[:head_len])
        doc["inputs"][0]["parameters"]["binary_data_size"] = value
        head = json.dumps(doc).encode()
        body, length = head + body[head_len:], str(len(head))
    text = assert_error_body(post_binary(shared, body, length), 400)
    assert message in text


def test_truncated_bytes_tensor_is_400(shared: Gateway) -> None:
    spec = {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}
    head = json.dumps({"inputs": [spec]}).encode()
    body = head + struct.pack("<I", 100) + b"ab"  # an element length past the data
    text = assert_error_body(post_binary(shared, body, str(len(head))), 400)
    assert "BYTES data is truncated" in text


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"inputs": ' + b"[" * 100_000,
        b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ' + b"[" * 5000 + b"1",
        b'{"id": ' + b"1" * 5000 + b"}",
        b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [' + b"7" * 5000 + b"]}]}",
    ],
    ids=["nested", "nested inputs", "nested data", "huge id", "huge number"],
)
def test_hostile_json_is_400(shared: Gateway, body: bytes) -> None:
    r = shared.request("POST", "/v2/models/digits/infer", content=body)
    assert "not valid JSON" in assert_error_body(r, 400)
    r = shared.request("PUT", "/admin/v1/functions/fresh", content=body[:60_000])
    assert "not valid JSON" in assert_error_body(r, 400)
    r = shared.request("PATCH", "/admin/v1/functions/scratch/pool", content=body[:60_000])
    assert "not valid JSON" in assert_error_body(r, 400)


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_pool_settings_must_be_finite(shared: Gateway, value: bytes) -> None:
    before = shared.listing()
    r = shared.request("PATCH", "/admin/v1/functions/scratch/pool", content=b'{"idle_timeout_s": ' + value + b"}")
    assert_error_body(r, 400)
    push = b'{"module": null, "models": {}, "endpoint": "http://x:1", "pool": {"queue_timeout_s": ' + value + b"}}"
    assert_error_body(shared.request("PUT", "/admin/v1/functions/fresh", content=push), 400)
    assert shared.listing() == before


# -- pushes of truncated or garbage files --------------------------------------------------------------------


def garbage_files(digits: Digits) -> dict[str, bytes]:
    from wasm_host.passthrough import passthrough_module

    wasm = passthrough_module()
    noise = np.random.default_rng(0).bytes(4096)
    return {
        "truncated onnx": digits.model[: len(digits.model) // 2],
        "onnx cut to its first bytes": digits.model[:16],
        "truncated wasm": wasm[: len(wasm) // 2],
        "wasm header only": wasm[:8],
        "wasm header then garbage": wasm[:8] + noise,
        "random bytes": noise,
        "empty file": b"",
        "wat text": b'(module (memory (export "memory") 1))',
    }


def store_snapshot(data_dir: Path) -> dict[str, int]:
    """The committed store: manifests, their versions and blobs, with their sizes (uploads pending a push and
    the compile cache may change)."""
    out = {}
    for sub in ("functions", "versions", "blobs"):
        for path in sorted((data_dir / sub).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(data_dir))] = path.stat().st_size
    return out


@pytest.mark.parametrize("as_module", [True, False], ids=["as module", "as model"])
def test_garbage_pushes_are_400_and_change_nothing(shared: Gateway, digits: Digits, as_module: bool) -> None:
    before, files = shared.listing(), store_snapshot(shared.data_dir)
    for what, data in garbage_files(digits).items():
        digest = shared.upload(data)
        for name in ("digits", "newcomer"):  # over an existing function, and a new one
            doc: dict[str, Any] = {"module": None, "models": {"model": digest}}
            if as_module:
                doc = {"module": digest, "models": {"digits": "sha256:" + digits.digest}}
            r = shared.request("PUT", f"/admin/v1/functions/{name}", json=doc)
            text = assert_error_body(r, 400)
            assert any(m in text for m in ("not a valid", "ABI", "model 'model'")), (what, text)
    assert shared.listing() == before
    assert store_snapshot(shared.data_dir) == files
    x = digits.x_test[:1]
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert shared.request("POST", "/v2/models/digits/infer", json=body).status_code == 200


def test_upload_that_does_not_match_its_digest_is_400(shared: Gateway, digits: Digits) -> None:
    files = store_snapshot(shared.data_dir)
    r = shared.request("PUT", f"/admin/v1/blobs/sha256:{digits.digest}", content=digits.model[:-1])
    assert "uploaded bytes have sha256:" in assert_error_body(r, 400)
    assert store_snapshot(shared.data_dir) == files


# -- hostile function names at every route that takes one ----------------------------------------------------

HOSTILE_NAMES = [
    "../x",
    "..",
    ".",
    "a/../../b",
    "../../../../etc/passwd",
    "..\\..\\x",
    "x..y",
    "\x00",
    "a\x00b",
    "bad\nname",
    "\r\n",
    "\x7f",
    "tab\tname",
    "d\u0456gits",  # Cyrillic i
    "\uff44\uff49\uff47\uff49\uff54\uff53",  # fullwidth "digits"
    "digits\u200b",  # zero-width space
    "digits\u202e",  # right-to-left override
    "a" * 129,
    "a" * 10_000,
    "-x",
    ".hidden",
    "x.",
    "%2e%2e%2f",
    " digits",
]
NAME_ROUTES = [
    ("GET", "/v2/models/{}"),
    ("GET", "/v2/models/{}/ready"),
    ("POST", "/v2/models/{}/infer"),
    ("GET", "/v2/models/{}/versions/1"),
    ("GET", "/v2/models/{}/versions/1/ready"),
    ("POST", "/v2/models/{}/versions/1/infer"),
    ("GET", "/admin/v1/functions/{}"),
    ("PUT", "/admin/v1/functions/{}"),
    ("DELETE", "/admin/v1/functions/{}"),
    ("PATCH", "/admin/v1/functions/{}/pool"),
]
RAW_PATHS = [  # already percent-encoded as a client might send them: the gateway decodes them
    "%2e%2e%2fx",
    "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "..%2f..%2fdigits",
    "%2e%2e",
    "digits%00",
    "digits%0a",
    "%252e%252e%252f",
]


def test_hostile_names_are_400_or_404_and_touch_no_file(gateway: Gateway, digits: Digits) -> None:
    root = gateway.data_dir.parent
    before, files = gateway.listing(), store_snapshot(gateway.data_dir)
    push = {"module": None, "models": {"model": gateway.upload(digits.model)}}
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    # Every byte percent-encoded, so that no client-side path normalisation hides a name from the gateway;
    # then the printable ones with '/' and '.' as they are (what a client normalises is its own business).
    encoded = ["".join(f"%{b:02X}" for b in n.encode()) for n in HOSTILE_NAMES]
    plain = [quote(n, safe="/.") for n in HOSTILE_NAMES if n.isprintable() and n not in (".", "..")]
    requests = [(m, r.format(n)) for n in encoded + RAW_PATHS + plain for m, r in NAME_ROUTES]
    for method, url in requests:
        payload = {"PUT": push, "POST": body, "PATCH": {"min_warm": 1}}.get(method)
        r = gateway.request(method, url, json=payload)
        text = assert_error_body(r, 400, 404)
        if r.status_code == 400:
            assert "invalid function name" in text, (method, url, text)
    for name in HOSTILE_NAMES:  # names the router reaches (no '/', not '.' or '..') are refused as names
        if "/" in name or name in (".", ".."):
            continue
        r = gateway.request("GET", f"/admin/v1/functions/{quote(name, safe='')}")
        assert "invalid function name" in assert_error_body(r, 400), name
    # A model alias is a name too, and so is a file alias (a file name on the host).
    for alias in ("../x", "a/b", "..", "\x00", "a" * 129, ".hidden"):
        r = gateway.request(
            "PUT", "/admin/v1/functions/ok", json={"module": None, "models": {alias: push["models"]["model"]}}
        )
        assert "invalid model alias" in assert_error_body(r, 400), alias
        r = gateway.request("PUT", "/admin/v1/functions/ok", json={**push, "files": {alias: push["models"]["model"]}})
        assert "invalid file alias" in assert_error_body(r, 400), alias
    assert gateway.listing() == before
    assert store_snapshot(gateway.data_dir) == files
    assert sorted(p.name for p in root.iterdir()) == ["data"]
    for path in gateway.data_dir.rglob("*"):
        top = path.relative_to(gateway.data_dir).parts[0]
        assert top in ("blobs", "uploads", "functions", "versions", "files", "cache", ".lock", "generation"), path
        assert ".." not in path.name, path
        assert path.name.isprintable(), path
    assert [p.name for p in (gateway.data_dir / "files").iterdir()] == [".tmp"]  # no function has files
    assert sorted(p.name for p in (gateway.data_dir / "functions").iterdir()) == ["digits.json", "scratch.json"]
    assert sorted(p.name for p in (gateway.data_dir / "versions").iterdir()) == ["digits", "scratch"]


# -- endpoints ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://a:abc", "http://a\x00b", "http://a b", "ftp://a"])
def test_unusable_endpoint_is_refused_at_push(gateway: Gateway, endpoint: str) -> None:
    r = gateway.request("PUT", "/admin/v1/functions/ext", json={"module": None, "models": {}, "endpoint": endpoint})
    if r.status_code == 201:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
        r = gateway.request("POST", "/v2/models/ext/infer", json=body)
        assert r.status_code != 500, r.text
    assert_error_body(r, 400)

"""The OpenAI-compatible endpoints: the official ``openai`` client against a real ``wasm serve`` (both tiers, a
runner started by the local scaler included), and in process, every error in OpenAI's shape and the edge cases
of a request. The function is a toy text embedder (tests.support.embedder_wat) whose vectors are known exactly."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.exceptions import HTTPException
from starlette.requests import Request

from gateway.app import create_app
from gateway.http_errors import (
    ERRORS,
    EXCEPTION_HANDLERS,
    error_for_status,
    handle_http_exception,
    handle_wasmgate_error,
)
from gateway.settings import Settings
from tests.support import (
    COUNTER,
    EMBEDDER_SIGNATURE,
    AppClient,
    Digits,
    Gateway,
    embedder_wat,
    metric,
    push,
    runner_pids,
    toy_embedding,
    upload,
)
from wasm_host.errors import TooManyRequests, Unavailable, WasmgateError

TOKEN = "embedder-key"
TEXTS = ["hello", "héllo wörld", "x", "a longer sentence, with punctuation!"]


def embedder() -> bytes:
    return bytes(wasmtime.wat2wasm(embedder_wat()))


# -- the official client against a real gateway ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Iterator[Gateway]:
    """``wasm serve`` with the local scaler (one runner at most), the embedder pushed with its own token and
    the digits model (which returns no embeddings) without one."""
    tmp = tmp_path_factory.mktemp("openai")
    wasm = tmp / "embedder.wasm"
    wasm.write_bytes(embedder())
    env = {"WASMGATE_POD_MAX_REPLICAS": "1", "WASMGATE_POD_IDLE_GRACE_S": "3", "WASMGATE_DRAIN_TIMEOUT_S": "5"}
    gw = Gateway(tmp / "data", tmp / "gateway.log", env=env)
    gw.start()
    try:
        for args in (
            [str(wasm), "--name", "embedder", "--inference-token", TOKEN],
            [str(digits.path), "--name", "digits"],
        ):
            pushed = gw.cli("push", *args)
            assert pushed.returncode == 0, pushed.stderr
        yield gw
    finally:
        gw.stop()


def client(gw: Gateway, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.e2e
def test_the_client_gets_a_strings_embedding_sent_as_base64_by_default(gateway: Gateway) -> None:
    raw = client(gateway).embeddings.with_raw_response.create(model="embedder", input="hello")
    wire = json.loads(raw.text)
    assert isinstance(wire["data"][0]["embedding"], str)  # the client asked for base64 unasked
    sent = np.frombuffer(base64.b64decode(wire["data"][0]["embedding"]), dtype="<f4")
    assert sent.tolist() == toy_embedding("hello")
    assert raw.headers["x-wasmgate-tier"] == "wasm"  # routed as any OIP v2 request
    assert raw.headers["x-wasmgate-reason"] == "home"
    response = raw.parse()
    assert [d.embedding for d in response.data] == [toy_embedding("hello")]
    assert response.model == "embedder"
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (0, 0)


@pytest.mark.e2e
def test_the_client_gets_a_lists_embeddings_in_order_as_floats(gateway: Gateway) -> None:
    raw = client(gateway).embeddings.with_raw_response.create(model="embedder", input=TEXTS, encoding_format="float")
    assert all(isinstance(d["embedding"], list) for d in json.loads(raw.text)["data"])
    response = raw.parse()
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert [d.embedding for d in response.data] == [toy_embedding(t) for t in TEXTS]


@pytest.mark.e2e
def test_the_client_lists_the_functions_its_key_opens(gateway: Gateway) -> None:
    models = client(gateway).models.list()
    assert sorted(m.id for m in models.data) == ["digits", "embedder"]
    assert {m.owned_by for m in models.data} == {"wasmgate"}
    assert all(m.created > 0 for m in models.data)
    # Without the embedder's token, only the function that needs none.
    assert [m.id for m in client(gateway, "not-the-key").models.list().data] == ["digits"]


@pytest.mark.e2e
def test_a_wrong_key_is_the_clients_authentication_error(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(gateway, "wrong-" + TOKEN).embeddings.create(model="embedder", input="hello")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert "needs an inference token" in caught.value.message


@pytest.mark.e2e
def test_an_unknown_model_is_the_clients_not_found_error(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway).embeddings.create(model="no-such-function", input="hello")
    assert caught.value.code == "model_not_found"
    assert "'no-such-function' not found" in caught.value.message


@pytest.mark.e2e
def test_a_function_that_returns_no_embeddings_is_a_bad_request_naming_its_signature(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).embeddings.create(model="digits", input="hello")
    message = caught.value.message
    assert "'digits' does not return embeddings: it takes input FP32 [-1, 64]" in message
    assert "returns label INT64 [-1], probabilities FP32 [-1, 10]" in message
    assert caught.value.type == "invalid_request_error"


@pytest.mark.e2e
def test_the_pod_tier_asked_for_starts_a_runner_that_answers_the_same_vectors(gateway: Gateway) -> None:
    raw = client(gateway).embeddings.with_raw_response.create(
        model="embedder", input=TEXTS, extra_headers={"x-wasmgate-tier": "pod"}
    )
    assert raw.headers["x-wasmgate-tier"] == "pod"
    assert raw.headers["x-wasmgate-replica"].startswith("runner-")
    assert raw.headers["x-wasmgate-cold-start"] == "true"  # held while the local scaler started the runner
    assert [d.embedding for d in raw.parse().data] == [toy_embedding(t) for t in TEXTS]
    assert len(runner_pids(gateway)) == 1


# -- in process: errors, edge cases, metrics --------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[AppClient]:
    """The gateway in process (no pod tier), with the embedder pushed without a token."""
    settings = Settings.from_env({}, data_dir=tmp_path / "data", pod_scaler="none", deadline_ms=2000)
    with AppClient(create_app(settings)) as c:
        push(c, "embedder", embedder(), {})
        yield c


def embed(c: AppClient, **fields: Any) -> Any:
    return c.post("/v1/embeddings", json={"model": "embedder", **fields})


def openai_error(r: Any, status: int) -> dict[str, Any]:
    """The body of an error in OpenAI's shape, checked whole."""
    assert r.status_code == status, r.text
    doc = r.json()
    assert set(doc) == {"error"}, doc
    error: dict[str, Any] = doc["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] is None
    return error


def test_an_embedding_in_process_is_the_functions_output(app: AppClient) -> None:
    r = embed(app, input=TEXTS, encoding_format="base64", user="someone", dimensions=4)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list"
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist() for d in doc["data"]]
    assert rows == [toy_embedding(t) for t in TEXTS]
    assert [d["object"] for d in doc["data"]] == ["embedding"] * len(TEXTS)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"[]", "the body must be a JSON object"),
        (b'{"input": "x"}', "'model' is required"),
        (b'{"model": 7, "input": "x"}', "'model' is required"),
        (b'{"model": "embedder"}', "'input' is required"),
        (b'{"model": "embedder", "input": []}', "'input' is an empty list"),
        (b'{"model": "embedder", "input": ""}', "'input' is an empty string"),
        (b'{"model": "embedder", "input": ["a", ""]}', "'input'[1] is an empty string"),
        (b'{"model": "embedder", "input": ["a", 5]}', "'input'[1] is a int"),
        (b'{"model": "embedder", "input": ["a", null]}', "'input'[1] is a NoneType"),
        (b'{"model": "embedder", "input": {"text": "a"}}', "'input' must be text"),
        (b'{"model": "embedder", "input": [1, 2, 3]}', "'input' is token ids: this endpoint takes text"),
        (b'{"model": "embedder", "input": [[1, 2], [3]]}', "'input' is token ids: this endpoint takes text"),
        (b'{"model": "embedder", "input": ["\\ud800"]}', "'input'[0] is not valid Unicode text"),
        (b'{"model": "embedder", "input": "x", "encoding_format": "int8"}', "must be one of float, base64"),
        (b'{"model": "embedder", "input": "x", "dimensions": 8}', "returns 4-dimensional embeddings"),
        (b'{"model": "embedder", "input": "x", "dimensions": true}', "must be a positive integer"),
        (b'{"model": "embedder", "input": "x", "dimensions": 0}', "must be a positive integer"),
        (b'{"model": "embedder", "input": "x", "user": 5}', "'user' must be a string"),
        (b'{"model": "embedder", "input": "x", "temperature": 1}', "unrecognized request argument(s) 'temperature'"),
        (b'{"model": "../x", "input": "x"}', "invalid function name"),
    ],
)
def test_a_bad_request_is_a_400_that_says_what_to_fix(app: AppClient, body: bytes, message: str) -> None:
    error = openai_error(app.post("/v1/embeddings", content=body), 400)
    assert message in error["message"]
    assert (error["type"], error["code"]) == ("invalid_request_error", None)


#: Text, and now and then text with a lone surrogate (which JSON can carry and UTF-8 cannot).
TEXT = st.text(max_size=12) | st.text(max_size=4).map(lambda t: t + "\ud800")
SURROGATE = re.compile("[\ud800-\udfff]")


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(texts=TEXT | st.lists(TEXT, max_size=4))
def test_any_text_gets_its_exact_embeddings_or_a_400(app: AppClient, texts: str | list[str]) -> None:
    body = json.dumps({"model": "embedder", "input": texts}).encode()  # lone surrogates travel as \ud800 escapes
    r = app.post("/v1/embeddings", content=body)
    items = [texts] if isinstance(texts, str) else texts
    if items and all(t and not SURROGATE.search(t) for t in items):
        assert r.status_code == 200, r.text
        assert [d["embedding"] for d in r.json()["data"]] == [toy_embedding(t) for t in items]
    else:
        openai_error(r, 400)


def test_too_many_texts_are_refused_at_openais_bound(app: AppClient) -> None:
    error = openai_error(embed(app, input=["x"] * 2049), 400)
    assert "'input' has 2049 items: send a non-empty string, or a list of 1 to 2048 of them" in error["message"]
    assert embed(app, input=["x"] * 2048).status_code == 200


def test_nulls_for_the_optional_fields_are_their_defaults(app: AppClient) -> None:
    r = embed(app, input="hello", encoding_format=None, dimensions=None, user=None)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["embedding"] == toy_embedding("hello")


def test_a_function_without_a_signature_is_refused_with_what_it_must_declare(app: AppClient) -> None:
    push(app, "counter", bytes(wasmtime.wat2wasm(COUNTER)), {})
    error = openai_error(app.post("/v1/embeddings", json={"model": "counter", "input": "x"}), 400)
    assert "'counter' declares no signature" in error["message"]
    assert "one BYTES input of shape [-1] and one FP32 output of shape [-1, D]" in error["message"]


def test_dimensions_of_a_function_with_a_variable_d_are_checked_against_its_answer(app: AppClient) -> None:
    variable = {**EMBEDDER_SIGNATURE, "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, -1]}]}
    push(app, "variable", bytes(wasmtime.wat2wasm(embedder_wat(variable))), {})
    ok = app.post("/v1/embeddings", json={"model": "variable", "input": "hello", "dimensions": 4})
    assert ok.status_code == 200, ok.text
    error = openai_error(app.post("/v1/embeddings", json={"model": "variable", "input": "x", "dimensions": 3}), 400)
    assert "'variable' returns 4-dimensional embeddings and cannot shorten them: send 4" in error["message"]


@pytest.mark.parametrize(
    ("signature", "described"),
    [
        (
            {**EMBEDDER_SIGNATURE, "inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, 8]}]},
            "it takes ids INT64 [-1, 8] and returns embedding FP32 [-1, 4]",
        ),
        (
            {**EMBEDDER_SIGNATURE, "outputs": [{"name": "embedding", "datatype": "FP16", "shape": [-1, 4]}]},
            "it takes text BYTES [-1] and returns embedding FP16 [-1, 4]",
        ),
        (
            {**EMBEDDER_SIGNATURE, "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1]}]},
            "it takes text BYTES [-1] and returns embedding FP32 [-1]",
        ),
        (
            {
                **EMBEDDER_SIGNATURE,
                "inputs": [*EMBEDDER_SIGNATURE["inputs"], {"name": "lang", "datatype": "BYTES", "shape": [1]}],
            },
            "it takes text BYTES [-1], lang BYTES [1] and returns",
        ),
    ],
)
def test_a_signature_that_is_not_an_embedders_is_refused_naming_it(
    app: AppClient, signature: dict[str, list[dict[str, object]]], described: str
) -> None:
    push(app, "other", bytes(wasmtime.wat2wasm(embedder_wat(signature))), {})
    error = openai_error(app.post("/v1/embeddings", json={"model": "other", "input": "x"}), 400)
    assert f"'other' does not return embeddings: {described}" in error["message"]


def test_every_v1_route_answers_errors_in_openais_shape_and_oip_keeps_its_own(app: AppClient) -> None:
    assert openai_error(app.get("/v1/chat/completions"), 404)["message"] == "no route for GET /v1/chat/completions"
    assert openai_error(app.get("/v1/embeddings"), 405)["type"] == "invalid_request_error"
    unknown = openai_error(app.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404)
    assert (unknown["type"], unknown["code"]) == ("invalid_request_error", "model_not_found")
    # The OIP v2 routes are answered as before.
    r = app.post("/v2/models/nope/infer", json={"inputs": []})
    assert (r.status_code, r.json()) == (404, {"error": "function 'nope' not found"})


def test_keys_are_the_functions_tokens_and_the_model_list_shows_what_a_key_opens(tmp_path: Path) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path / "data", pod_scaler="none")
    with AppClient(create_app(settings)) as c:
        digest = upload(c, embedder())
        for name, token in (("open", None), ("mine", "key-a"), ("theirs", "key-b")):
            doc = {"module": digest, "models": {}, **({"inference_token": token} if token else {})}
            assert c.put(f"/admin/v1/functions/{name}", json=doc).status_code == 201

        def listed(key: str | None) -> list[str]:
            headers = {"authorization": f"Bearer {key}"} if key else {}
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 200
            assert {m["object"] for m in r.json()["data"]} <= {"model"}
            return sorted(m["id"] for m in r.json()["data"])

        assert listed(None) == ["open"]
        assert listed("key-a") == ["mine", "open"]
        assert listed("key-b") == ["open", "theirs"]
        refused = c.post(
            "/v1/embeddings", json={"model": "mine", "input": "x"}, headers={"authorization": "Bearer key-b"}
        )
        error = openai_error(refused, 401)
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
        assert refused.headers["www-authenticate"] == "Bearer"
        allowed = c.post(
            "/v1/embeddings", json={"model": "mine", "input": "x"}, headers={"authorization": "Bearer key-a"}
        )
        assert allowed.status_code == 200, allowed.text


def test_the_gateways_token_opens_functions_without_their_own(tmp_path: Path) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path / "data", pod_scaler="none", inference_token="global")
    with AppClient(create_app(settings)) as c:
        push(c, "embedder", embedder(), {})
        assert c.get("/v1/models").json() == {"object": "list", "data": []}
        assert [m["id"] for m in c.get("/v1/models", headers={"authorization": "Bearer global"}).json()["data"]] == [
            "embedder"
        ]
        openai_error(embed(c, input="x"), 401)
        ok = c.post(
            "/v1/embeddings", json={"model": "embedder", "input": "x"}, headers={"authorization": "Bearer global"}
        )
        assert ok.status_code == 200, ok.text


def test_embeddings_are_counted_in_the_request_metrics_as_oip_requests_are(app: AppClient) -> None:
    assert embed(app, input="hello").status_code == 200
    oip = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
    assert app.post("/v2/models/embedder/infer", json=oip).status_code == 200
    openai_error(embed(app, input=[1, 2]), 400)  # refused once the function was known: counted against it
    text = app.get("/metrics").text
    labels = {"function": "embedder", "backend": "wasm"}
    assert metric(text, "wasmgate_requests_total", status="200", **labels) == 2
    assert metric(text, "wasmgate_requests_total", status="400", **labels) == 1
    assert metric(text, "wasmgate_route_decisions_total", function="embedder", tier="wasm", reason="home") == 2


def test_the_routing_headers_steer_an_embeddings_request_as_they_steer_oip(app: AppClient) -> None:
    r = app.post("/v1/embeddings", json={"model": "embedder", "input": "x"}, headers={"x-wasmgate-tier": "gpu"})
    assert "x-wasmgate-tier 'gpu' must be one of wasm, pod" in openai_error(r, 400)["message"]
    r = app.post("/v1/embeddings", json={"model": "embedder", "input": "x"}, headers={"x-wasmgate-tier": "pod"})
    error = openai_error(r, 503)  # this gateway has no pod tier
    assert (error["type"], error["code"]) == ("server_error", "service_unavailable")


# -- the one table, answered in either shape --------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request_for(path: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""})


@pytest.mark.anyio
@pytest.mark.parametrize("row", ERRORS, ids=[row.error.__name__ for row in ERRORS])
async def test_each_error_of_the_table_is_answered_in_the_shape_of_its_route(row: Any) -> None:
    exc = row.error("what went wrong")
    openai_shape = await handle_wasmgate_error(request_for("/v1/embeddings"), exc)
    assert openai_shape.status_code == row.status
    error = json.loads(bytes(openai_shape.body))["error"]
    assert error == {"message": "what went wrong", "type": row.openai_type, "param": None, "code": row.openai_code}
    oip_shape = await handle_wasmgate_error(request_for("/v2/models/f/infer"), exc)
    assert (oip_shape.status_code, json.loads(bytes(oip_shape.body))) == (row.status, {"error": "what went wrong"})
    assert EXCEPTION_HANDLERS[WasmgateError] is handle_wasmgate_error


@pytest.mark.anyio
async def test_a_rate_limit_says_when_to_retry_in_openais_shape() -> None:
    response = await handle_wasmgate_error(request_for("/v1/embeddings"), TooManyRequests("queue full", 2.4))
    assert (response.status_code, response.headers["retry-after"]) == (429, "2")
    assert json.loads(bytes(response.body))["error"]["type"] == "rate_limit_error"
    unavailable = await handle_wasmgate_error(request_for("/v1/embeddings"), Unavailable("starting", 5))
    assert (unavailable.status_code, unavailable.headers["retry-after"]) == (503, "5")


@pytest.mark.anyio
async def test_starlettes_own_statuses_take_openais_shape_without_a_code() -> None:
    response = await handle_http_exception(request_for("/v1/models"), HTTPException(405))
    error = json.loads(bytes(response.body))["error"]
    assert (response.status_code, error["type"], error["code"]) == (405, "invalid_request_error", None)


@pytest.mark.parametrize(
    ("status", "expected"), [(400, 400), (404, 404), (500, 500), (503, 503), (504, 504), (418, 400), (599, 500)]
)
def test_a_replicas_error_status_is_answered_again_with_the_same_status(status: int, expected: int) -> None:
    error = error_for_status(status, "the replica's message")
    assert str(error) == "the replica's message"
    assert next((row.status for row in ERRORS if isinstance(error, row.error)), 500) == expected

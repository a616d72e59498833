"""The OpenAPI document against the code it is derived from: each enum is the Literal or table the code defines,
each pattern and bound admits what the code's own check admits, and the objects described from dataclasses
have their fields. (tests/test_fuzz.py checks the document against the running app.)"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, get_args

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codec import parse_request
from gateway.functions.push import ROUTING_KEYS
from gateway.http_errors import ERRORS
from gateway.openai_api import FIELDS, MAX_INPUTS, Encoding
from gateway.openapi import DOCUMENT
from gateway.openapi.derived import field_schema, literal_values
from gateway.state import Role
from gateway.store.manifest import Kind, check_digest, check_name
from router.policy import Reason, Retry, Tier, TierSetting
from tests.support import cnn_model
from wasm_host.errors import InvalidRequest
from wasm_host.figures import ModelFigures, measure
from wasm_host.pool import PoolSettings
from wasm_host.tensors import DTYPES

SCHEMAS: dict[str, Any] = DOCUMENT["components"]["schemas"]
PARAMETERS: dict[str, Any] = DOCUMENT["components"]["parameters"]
INFER_PATHS = ["/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"]


def admits(schema: dict[str, Any], value: object) -> bool:
    """Whether a JSON Schema validator accepts ``value`` (references resolved against the document)."""
    validator = jsonschema.Draft202012Validator({**schema, "components": DOCUMENT["components"]})
    return validator.is_valid(value)


def code_admits(check: Any, value: str) -> bool:
    try:
        check(value)
    except InvalidRequest:
        return False
    return True


# -- enums --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", INFER_PATHS)
def test_reason_header_is_the_policys_reasons_and_the_dispatchers_retry(path: str) -> None:
    headers = DOCUMENT["paths"][path]["post"]["responses"]["200"]["headers"]
    assert headers["x-wasmgate-reason"]["schema"]["enum"] == [*get_args(Reason), *get_args(Retry)]
    assert "faster" in headers["x-wasmgate-reason"]["schema"]["enum"]  # the hand-written list once lacked it
    assert headers["x-wasmgate-tier"]["schema"]["enum"] == list(get_args(Tier))


def test_tier_enums_are_the_policys() -> None:
    assert PARAMETERS["tier"]["schema"]["enum"] == list(get_args(Tier))
    assert SCHEMAS["InferRequest"]["properties"]["parameters"]["properties"]["tier"]["enum"] == list(get_args(Tier))
    assert SCHEMAS["Manifest"]["properties"]["home_tier"]["enum"] == list(get_args(Tier))
    assert SCHEMAS["Manifest"]["properties"]["tier"]["enum"] == list(get_args(TierSetting))
    assert SCHEMAS["PushRequest"]["properties"]["tier"]["enum"] == list(get_args(TierSetting))


def test_datatype_kind_and_role_enums_are_the_codes() -> None:
    assert SCHEMAS["Datatype"]["enum"] == list(DTYPES)
    assert SCHEMAS["Manifest"]["properties"]["kind"]["enum"] == list(get_args(Kind))
    assert SCHEMAS["ServerMetadata"]["properties"]["role"]["enum"] == list(get_args(Role))


def test_openai_enums_and_bounds_are_the_endpoints_and_the_error_tables() -> None:
    request = SCHEMAS["EmbeddingsRequest"]
    assert list(request["properties"]) == list(FIELDS)
    assert request["additionalProperties"] is False
    assert request["properties"]["encoding_format"]["enum"] == [*get_args(Encoding), None]
    texts = request["properties"]["input"]["oneOf"][1]
    assert texts["maxItems"] == MAX_INPUTS
    error = SCHEMAS["OpenAIError"]["properties"]["error"]["properties"]
    assert {row.openai_type for row in ERRORS} <= set(error["type"]["enum"])
    assert set(error["code"]["enum"]) == {row.openai_code for row in ERRORS} | {None}


def test_push_request_names_every_routing_setting() -> None:
    assert set(ROUTING_KEYS) <= set(SCHEMAS["PushRequest"]["properties"])


# -- patterns and bounds --------------------------------------------------------------------------------------

NAMES = [
    "a",
    "A9",
    "digits",
    "a.b",
    "a_b-c.d",
    "a" * 128,
    "a" * 129,
    "",
    ".a",
    "a.",
    "-a",
    "_a",
    "a..b",
    "a...b",
    "a/b",
    "a b",
    "a\nb",
    "é",
    "a%2Fb",
    "x" * 63 + ".." + "y" * 63,
    # No name ending in a newline: Python's "$" matches before one, ECMA-262's (JSON Schema's) does not.
]


HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("name", NAMES, ids=[repr(n)[:24] for n in NAMES])
def test_name_schema_admits_what_check_name_admits(name: str) -> None:
    assert admits(PARAMETERS["name"]["schema"], name) == code_admits(check_name, name)
    endpoint_model = SCHEMAS["PushRequest"]["properties"]["endpoint_model"]
    assert admits(endpoint_model, name) == code_admits(check_name, name)
    push = SCHEMAS["PushRequest"]["properties"]
    for key in ("models", "files"):  # aliases are names too
        assert admits(push[key], {name: "sha256:" + HEX}) == code_admits(check_name, name)


@settings(max_examples=300, derandomize=True, database=None)
@given(name=st.text(alphabet="aZ09._-/ é", max_size=130) | st.text(alphabet="a.", min_size=120, max_size=130))
def test_name_schema_agrees_with_check_name_on_any_name(name: str) -> None:
    assert admits(PARAMETERS["name"]["schema"], name) == code_admits(check_name, name)


def test_name_length_bound_is_check_names() -> None:
    longest = PARAMETERS["name"]["schema"]["maxLength"]
    assert code_admits(check_name, "a" * longest)
    assert not code_admits(check_name, "a" * (longest + 1))
    shortest = PARAMETERS["name"]["schema"]["minLength"]
    assert code_admits(check_name, "a" * shortest)
    assert not code_admits(check_name, "a" * (shortest - 1))


DIGESTS = ["sha256:" + HEX, HEX, "sha256:" + HEX.upper(), HEX[:-1], HEX + "0", "sha512:" + HEX, "sha256:", ""]


@pytest.mark.parametrize("digest", DIGESTS)
def test_digest_patterns_admit_what_check_digest_admits(digest: str) -> None:
    accepted = code_admits(check_digest, digest)
    assert admits(PARAMETERS["digest"]["schema"], digest) == accepted
    push = SCHEMAS["PushRequest"]["properties"]
    assert admits(push["module"], digest) == accepted
    assert admits(push["models"], {"model": digest}) == accepted
    assert admits(push["files"], {"vocab": digest}) == accepted


def test_shape_bound_is_the_codecs() -> None:
    most = SCHEMAS["InferInput"]["properties"]["shape"]["maxItems"]

    def request(dims: int) -> bytes:
        return json.dumps({"inputs": [{"name": "x", "shape": [1] * dims, "datatype": "FP32", "data": [0.0]}]}).encode()

    parse_request(request(most), None, 1 << 20)
    with pytest.raises(InvalidRequest, match="at most"):
        parse_request(request(most + 1), None, 1 << 20)


# -- objects described from dataclasses -----------------------------------------------------------------------


def test_pool_settings_are_the_dataclasses_fields() -> None:
    schema = SCHEMAS["PoolSettings"]
    assert list(schema["properties"]) == [f.name for f in dataclasses.fields(PoolSettings)]
    assert PoolSettings.from_json({}).to_json().keys() == schema["properties"].keys()
    assert schema["additionalProperties"] is False
    with pytest.raises(ValueError, match="unknown pool setting"):
        PoolSettings.from_json({"no_such_setting": 1})


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(PoolSettings)])
def test_pool_setting_bounds_and_values_are_what_pool_settings_accepts(name: str) -> None:
    prop = SCHEMAS["PoolSettings"]["properties"][name]
    if "enum" in prop:
        for value in prop["enum"]:
            PoolSettings.from_json({name: value})
        with pytest.raises(ValueError):
            PoolSettings.from_json({name: "no-such-value"})
        return
    least = prop["minimum"]
    below = least - 1 if prop["type"] == "integer" else least - 0.5
    assert admits(prop, least)
    assert not admits(prop, below)
    PoolSettings.from_json({name: least})
    with pytest.raises(ValueError, match=name):
        PoolSettings.from_json({name: below})
    if prop["type"] == "integer":  # an integer setting refuses a fraction, as the schema does
        assert not admits(prop, least + 0.5)
        with pytest.raises(ValueError, match=name):
            PoolSettings.from_json({name: least + 0.5})


def test_manifest_figures_are_model_figures_fields() -> None:
    figures = SCHEMAS["Manifest"]["properties"]["figures"]
    assert figures["properties"].keys() == ModelFigures().to_json().keys()
    assert admits(figures, ModelFigures(bytes=1, params=2, flops_per_row=3).to_json())
    # The figures of a model with dynamic dimensions, as a push measures them, and none the schema refuses.
    measured = measure(cnn_model(size=("height", "width"))).to_json()
    assert measured["dims"]
    assert measured["terms"]
    assert admits(figures, measured)
    assert not admits(figures, {**measured, "terms": [{"flops": "93", "per": ["height"]}]})
    assert not admits(figures, {**measured, "dims": [{"name": "height", "at": [{"input": "images"}]}]})


def test_an_annotation_without_a_schema_stops_the_build() -> None:
    with pytest.raises(TypeError, match="Example_field"):
        field_schema(list[int], "Example_field")
    with pytest.raises(TypeError, match="not a Literal"):
        literal_values(str)

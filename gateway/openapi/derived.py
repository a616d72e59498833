"""Every enum and pattern the OpenAPI document states, taken from the code that enforces or produces it, so
that the document cannot drift from what the gateway accepts and answers:

- tiers and tier settings: ``router.policy.Tier`` and ``TierSetting``; the reasons a response gives in
  ``x-wasmgate-reason``: ``router.policy.Placement`` (the policy's ``Reason``, plus the dispatcher's ``retry``);
- function names and digests: ``gateway.store.manifest.NAME_RE`` and ``DIGEST_RE``, the patterns
  ``check_name`` and ``check_digest`` hold names and digests to; a manifest's ``kind``: ``Kind``;
- datatypes: ``wasm_host.tensors.DTYPES``; the most dimensions an input may have: ``gateway.codec.MAX_DIMS``;
- a process's ``role``: ``gateway.state.Role``;
- the OpenAI-compatible endpoints: an embeddings request's fields, encodings and most texts
  (``gateway.openai_api``), and an error's OpenAI ``type`` and ``code`` (``gateway.http_errors.ERRORS``).

:func:`field_schema` turns a dataclass field's annotation into its JSON Schema type, so that objects such as
the pool settings and a model's figures are described from their dataclasses' fields.
"""

from __future__ import annotations

import re
import types
from typing import Any, Literal, Union, get_args, get_origin

from gateway.codec import MAX_DIMS
from gateway.http_errors import ERRORS
from gateway.openai_api import ENCODINGS, FIELDS, MAX_INPUTS
from gateway.state import Role
from gateway.store.manifest import DIGEST_RE, NAME_RE, Kind
from router.policy import Placement, Tier, TierSetting
from wasm_host.tensors import DTYPES

Schema = dict[str, Any]


def literal_values(annotation: object) -> list[Any]:
    """The values a ``Literal`` (or a union of ``Literal`` types, such as ``Reason | Retry``) admits, in the
    order it names them. Anything else is a TypeError: an enum is only ever taken from a Literal."""
    origin = get_origin(annotation)
    if origin is Literal:
        return list(get_args(annotation))
    if origin in (Union, types.UnionType):
        return [value for member in get_args(annotation) for value in literal_values(member)]
    raise TypeError(f"{annotation!r} is not a Literal")


def whole(regex: re.Pattern[str], *, lookahead: str = "") -> str:
    """A JSON Schema pattern for a whole string that ``regex.fullmatch`` accepts (a JSON Schema pattern is
    searched for, not matched whole, hence the anchors). ``lookahead`` goes after ``^`` for a rule the code
    checks beside the regex."""
    return f"^{lookahead}(?:{regex.pattern})$"


def field_schema(annotation: object, where: str) -> Schema:
    """The JSON Schema type of a dataclass field annotated ``annotation`` (resolved, as ``get_type_hints``
    gives it): the scalar types, and a Literal as an enum. Anything else is a TypeError naming ``where``, so
    a field of a new kind stops the document from being built rather than being described wrongly."""
    scalars: dict[object, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if annotation in scalars:
        return {"type": scalars[annotation]}
    if get_origin(annotation) is Literal:
        values = literal_values(annotation)
        if all(isinstance(v, str) for v in values):
            return {"type": "string", "enum": values}
    raise TypeError(f"{where}: no JSON Schema for {annotation!r}")


TIERS = literal_values(Tier)
TIER_SETTINGS = literal_values(TierSetting)
#: ``x-wasmgate-reason``: the policy's reasons, and ``retry`` for a request the dispatcher retried.
REASONS = literal_values(Placement)
KINDS = literal_values(Kind)
ROLES = literal_values(Role)
DATATYPES = list(DTYPES)

DIGEST_PATTERN = whole(DIGEST_RE)
#: ``check_name`` refuses ``..`` besides what ``NAME_RE`` refuses (a name is also a file name), so the
#: pattern refuses it too.
NAME_PATTERN = whole(NAME_RE, lookahead=r"(?!.*\.\.)")
#: What ``NAME_RE`` allows: a first character, at most 126 more, a last one.
NAME_MAX_LENGTH = 128
MAX_SHAPE_DIMS = MAX_DIMS

#: The OpenAI-compatible endpoints (gateway.openai_api): the fields of an embeddings request, its encodings, and
#: the most texts it may carry; an error's ``type`` and ``code`` (gateway.http_errors' table, and what a status of
#: Starlette's own is answered with: ``invalid_request_error`` or ``server_error``, no code).
EMBEDDINGS_FIELDS = list(FIELDS)
ENCODING_FORMATS = list(ENCODINGS)
MAX_EMBEDDING_INPUTS = MAX_INPUTS
OPENAI_ERROR_TYPES = list(dict.fromkeys([*(r.openai_type for r in ERRORS), "invalid_request_error", "server_error"]))
OPENAI_ERROR_CODES = list(dict.fromkeys([*(r.openai_code for r in ERRORS if r.openai_code), None]))

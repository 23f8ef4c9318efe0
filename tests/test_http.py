"""The request body's JSON: the fast parser answers exactly what the careful one answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.http import MAX_JSON_DEPTH, HttpError, _parse_json_carefully, parse_json


def outcome(parse: Any, body: bytes) -> tuple[str, str]:
    """What a parser made of ``body``: the value with its types spelled out, or the error."""
    try:
        return ("value", typed(parse(body)))
    except HttpError as e:
        return (e.error, e.message)


def typed(value: Any) -> str:
    # 1 == 1.0 and 0.0 == -0.0 in Python; the answer must not change either
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{typed(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(typed(v) for v in value) + "]"
    return f"{type(value).__name__}:{value!r}"


def assert_same(body: bytes) -> None:
    assert outcome(parse_json, body) == outcome(_parse_json_carefully, body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400) | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(json_values, st.booleans())
def test_any_json_document_parses_the_same_both_ways(value: Any, ascii_only: bool) -> None:
    try:
        text = json.dumps(value, ensure_ascii=ascii_only)
    except ValueError:  # an int too long for str()
        return
    assert_same(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=40))
def test_damaged_bytes_get_the_same_answer_both_ways(noise: bytes, at: int) -> None:
    body = b'{"type": "echo", "payload": {"x": [1, 2.5, "\\u00e9", true, null]}}'
    assert_same(body[:at] + noise + body[at:])


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": NaN}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b'{"a": 1E-999}',
        b'{"a": 1' + b"0" * 199 + b"e99}",
        b'{"a": ' + b"9" * 5000 + b"}",
        b"[" + b"9" * 4300 + b"]",
        b"[" + b"9" * 4301 + b"]",
        b"[-" + b"9" * 4300 + b"]",
        b"[-" + b"9" * 4301 + b"]",
        b"[1" + b"0" * 4300 + b"]",
        b'{"a": "\\ud800"}',
        b'{"a": "\\ud83d\\ude00"}',
        b'{"a": "\\ude00\\ud83d"}',
        b'{"a": "\xed\xa0\x80"}',
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": "\x01"}',
        b'{"a": 1, "b": 2, "a": 3}',
        b'{"a": 1} x',
        b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,
        b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
        b" \t\r\n{}\n",
        b'{"a": -0.0, "b": -0}',
    ],
)
def test_the_edges_of_json_parse_the_same_both_ways(body: bytes) -> None:
    assert_same(body)

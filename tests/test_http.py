"""The request body's JSON: the fast parser answers exactly what the careful one answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.http import MAX_JSON_DEPTH, HttpError, _headers, _headers_one_by_one, _parse_json_carefully, parse_json


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
        b'{"a":1e400,"a":0}',  # a repeated key hides an out-of-range number from the parsed value
        b'{"a":-1e999,"a":null}',
        b'{"a" :1e400, "a":0}',
        b'{"a":1e400,"a":0,"b":"\\":"}',
        b'{"a\\":":1}',
        b'{"a": 1} x',
        b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,
        b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
        b" \t\r\n{}\n",
        b'{"a": -0.0, "b": -0}',
    ],
)
def test_the_edges_of_json_parse_the_same_both_ways(body: bytes) -> None:
    assert_same(body)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", 'c\\"']), st.sampled_from(["1e400", "-1e999", "0", "1.5", '"x"'])),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([":", ": ", " :"]),
)
def test_repeated_keys_get_the_same_answer_both_ways(pairs: list[tuple[str, str]], colon: str) -> None:
    body = "{" + ",".join(f'"{key}"{colon}{value}' for key, value in pairs) + "}"
    assert_same(body.encode())


class ListOfValues(list[str]):
    pass


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


HEADER_EVENTS = [
    {"multiValueHeaders": {"X-Foo": ["\ud800"]}},
    {"multiValueHeaders": {"A": ["ok"], "B": ["\ud800"], "a": ["\ud800"]}},
    {"multiValueHeaders": {"Content-Type": ["a", "b"], "X": ["\x01"]}},
    {"multiValueHeaders": {"X": ["\x01"], "Content-Type": ["a", "b"]}},
    {"headers": {"Host": "h\r\nx"}, "multiValueHeaders": {"Host": ["ok"]}},
    {"headers": {"X-Caf\u00e9": "ok", "Idempotency-Key": " k "}},
    {"multiValueHeaders": {"Idempotency-Key": [" k ", "k"], "X": [None, 3]}},
    {"multiValueHeaders": {"Idempotency-Key": ["k", "j"]}},
    {"multiValueHeaders": {"X-A": ListOfValues(["a", "b"])}},
    {"multiValueHeaders": {"x-a": ["a"]}, "headers": {"X-A": Unprintable()}},
]


def assert_headers_read_alike(event: dict[str, Any]) -> None:
    def read(parse: Any) -> Any:
        try:
            return parse(event)
        except HttpError as e:
            return (e.error, e.message)

    assert read(_headers) == read(_headers_one_by_one)


@pytest.mark.parametrize("event", HEADER_EVENTS)
def test_headers_read_in_one_pass_answer_as_header_by_header(event: dict[str, Any]) -> None:
    assert_headers_read_alike(event)


header_names = st.sampled_from(["Host", "host", "Content-Type", "X-Trace", "x-trace", "Idempotency-Key"])
header_values = st.one_of(st.none(), st.integers(0, 9), st.text(alphabet=" ab\t\r\x01é\ud800", max_size=4))


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(header_names, st.one_of(header_values, st.lists(header_values, max_size=3)), max_size=4),
    st.dictionaries(header_names, header_values, max_size=4),
)
def test_any_headers_read_the_same_in_one_pass(multi: dict[str, Any], single: dict[str, Any]) -> None:
    assert_headers_read_alike({"multiValueHeaders": multi, "headers": single})

"""API Gateway REST proxy events in, proxy responses out, and every input error named.

Both API functions (master and callback) parse requests here, so headers in any case,
multi-value headers, base64 bodies and ``null`` bodies are handled once, the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json, to_json

from offload.errors import OffloadError
from offload.json_limits import json_can_write

M = TypeVar("M", bound=BaseModel)

JSON_TYPES = ("application/json",)
# Deeper JSON than this is refused before it reaches a model: nothing offload accepts nests
# half as deep, and the parsers and serializers downstream recurse.
MAX_JSON_DEPTH = 32
# Headers that carry one value: a request that repeats one with different values is refused
# rather than guessed at.
SINGLE_VALUED = frozenset({"content-type", "content-length", "idempotency-key", "authorization", "host"})
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# a key with white space before its colon: the count of keys below could not see it
_SPACED_KEY = re.compile(rb'"[ \t\r\n]+:')


class HttpError(OffloadError):
    """An answer other than success, with the JSON body that explains it."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Request:
    method: str
    resource: str
    path: str
    path_params: dict[str, str]
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes | None
    request_id: str
    context: Mapping[str, Any] = field(default_factory=dict)  # the event's requestContext, not copied

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def _text(value: Any, what: str) -> str:
    """``value`` as text that can be sent on as UTF-8 (no lone surrogates, no CR/LF/NUL)."""
    text = value if type(value) is str else str(value)
    if not text.isascii():  # ASCII is UTF-8 already; only the rest can hold a lone surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise HttpError(400, "bad_encoding", f"{what} is not valid UTF-8") from None
    return text


def _mapping(event: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = event.get(name)
    if type(value) is dict:  # what Lambda hands over; the ABC check below is slow
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise HttpError(400, "bad_request", f"the event's {name} is not an object")
    return value


def _headers(event: Mapping[str, Any]) -> dict[str, str]:
    """Header names in any case, single- and multi-value forms merged (``multiValueHeaders``
    wins: it has every value, ``headers`` only the last of each)."""
    values: dict[str, list[str]] = {}
    for name, items in _mapping(event, "multiValueHeaders").items():
        if not isinstance(items, (list, tuple)):
            items = [items]
        texts = [item if type(item) is str else str(item) for item in items if item is not None]
        if texts:
            key = str(name).lower()
            if key in values:
                values[key] += texts
            else:
                values[key] = texts
    for name, item in _mapping(event, "headers").items():
        if item is not None and (key := str(name).lower()) not in values:
            values[key] = [item if type(item) is str else str(item)]
    # Every name and value checked in one pass (a tab is allowed, so it joins them). A request
    # with anything to refuse goes header by header instead, so the error names the same
    # header, in the same words, as it always has.
    everything = "\t".join([*values, *(item for items in values.values() for item in items)])
    if not everything.isascii() or _CONTROL.search(everything):
        return _headers_one_by_one(event)
    headers: dict[str, str] = {}
    for name, items in values.items():
        if name in SINGLE_VALUED:
            items = list(dict.fromkeys(item.strip() for item in items)) if len(items) > 1 else [items[0].strip()]
            if len(items) > 1:
                raise HttpError(400, "repeated_header", f"header {name!r} is sent with {len(items)} different values")
        headers[name] = items[0] if len(items) == 1 else ", ".join(items)
    return headers


def _headers_one_by_one(event: Mapping[str, Any]) -> dict[str, str]:
    values: dict[str, list[str]] = {}
    for name, items in _mapping(event, "multiValueHeaders").items():
        for item in items if isinstance(items, list | tuple) else [items]:
            if item is not None:
                values.setdefault(str(name).lower(), []).append(_text(item, f"header {name}"))
    for name, item in _mapping(event, "headers").items():
        if item is not None and str(name).lower() not in values:
            values[str(name).lower()] = [_text(item, f"header {name}")]
    headers: dict[str, str] = {}
    for name, items in values.items():
        if _CONTROL.search(name) or any(_CONTROL.search(item) for item in items):
            raise HttpError(400, "bad_header", f"header {name!r} contains a control character")
        if name in SINGLE_VALUED:
            items = list(dict.fromkeys(item.strip() for item in items))
            if len(items) > 1:
                raise HttpError(400, "repeated_header", f"header {name!r} is sent with {len(items)} different values")
        headers[name] = ", ".join(items)
    return headers


def parse_event(event: Mapping[str, Any]) -> Request:
    """The request in an API Gateway REST proxy event; HttpError (400) for one that cannot be read."""
    if not isinstance(event, Mapping):
        raise HttpError(400, "bad_request", "the event is not an object")
    headers = _headers(event)

    raw = event.get("body")
    body: bytes | None
    if raw is None:
        body = None
    elif event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(str(raw), validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(400, "bad_encoding", "the body is flagged base64 but is not valid base64") from None
    else:
        try:
            body = str(raw).encode("utf-8")
        except UnicodeEncodeError:
            raise HttpError(400, "bad_encoding", "the body is not valid UTF-8") from None

    context = _mapping(event, "requestContext")
    params = _mapping(event, "pathParameters")
    return Request(
        method=_text(event.get("httpMethod") or "", "the method").upper(),
        resource=_text(event.get("resource") or "", "the resource"),
        path=_text(event.get("path") or "", "the path"),
        path_params={str(k): _text(v, f"path parameter {k}") for k, v in params.items() if v is not None},
        headers=headers,
        body=body,
        request_id=str(context.get("requestId") or ""),
        context=context,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:32]} is out of range")
    return number


def _check_tree(data: Any) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH, or holding a lone surrogate (``"\\ud800"``:
    valid JSON, but no UTF-8 can carry it on). Iterative: a deep document must not blow the stack."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _text(item, "a string in the body")
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise HttpError(400, "too_deep", f"the JSON nests more than {MAX_JSON_DEPTH} levels deep")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, numbers a float can hold, at most MAX_JSON_DEPTH deep."""
    # pydantic-core's parser refuses what the careful one refuses (invalid UTF-8, NaN and
    # Infinity, lone surrogates, control characters, trailing data) but for three things:
    # it makes a number too large for a float infinite, takes integers of any length, and
    # any depth. No more brackets than the depth limit rules out the last; a look at the
    # numbers it made rules out the others, provided it kept every number: a repeated key
    # drops the earlier value, so the keys it made must be as many as the body's `":`
    # (a string holding `":` only sends the body to the careful parser). Anything else is
    # the careful parser's to name.
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH and _SPACED_KEY.search(body) is None:
        try:
            data = from_json(body, allow_inf_nan=False)
        except ValueError:
            pass
        else:
            if _plain_numbers_and_keys(data) == body.count(b'":'):
                return data
    return _parse_json_carefully(body)


def _plain_numbers_and_keys(data: Any) -> int:
    """How many keys ``data`` holds, or -1 if it holds an infinite float or an integer too
    long for json.loads."""
    keys = 0
    pending = [data]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            keys += len(item)
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
        elif kind is float:
            if item in (math.inf, -math.inf):
                return -1
        elif kind is int and not json_can_write(item):
            return -1
    return keys


def _parse_json_carefully(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HttpError(400, "bad_encoding", f"the body is not UTF-8: {e.reason} at byte {e.start}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise HttpError(400, "too_deep", f"the JSON nests more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as e:
        raise HttpError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    _check_tree(data)
    return data


def json_body(request: Request, model: type[M], *, max_bytes: int) -> M:
    """The body as ``model``: as ``json_document``, then 422 with field paths."""
    return validate(model, json_document(request, max_bytes=max_bytes))


def json_document(request: Request, *, max_bytes: int) -> Any:
    """The body's JSON: 415 for a non-JSON content type or a charset other than UTF-8 (a
    missing content type is taken as JSON), 400 for no body, 413 past ``max_bytes``, 400
    for malformed JSON."""
    media_type, *parameters = request.header("content-type").split(";")
    content_type = media_type.strip().lower()
    if content_type and content_type not in JSON_TYPES and not content_type.endswith("+json"):
        raise HttpError(415, "unsupported_media_type", f"send application/json, not {content_type!r}")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise HttpError(415, "unsupported_media_type", f"send UTF-8 JSON, not charset {value.strip()!r}")
    if not request.body:
        raise HttpError(400, "empty_body", "the request needs a JSON body")
    if len(request.body) > max_bytes:
        raise HttpError(413, "body_too_large", f"the body is {len(request.body)} bytes; the limit is {max_bytes}")
    return parse_json(request.body)


def validate(model: type[M], data: Any, *, prefix: tuple[str | int, ...] = ()) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise HttpError(
            422, "invalid_request", "the request does not match the schema", details=field_errors(e, prefix)
        ) from None


def field_errors(error: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    return [
        {
            "path": ".".join(str(p) for p in (*prefix, *item["loc"])) or "(body)",
            "message": item["msg"],
            "type": item["type"],
        }
        for item in error.errors(include_url=False, include_input=False)
    ]


def respond(
    status: int, body: BaseModel | Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    text = body.model_dump_json() if isinstance(body, BaseModel) else to_json(body).decode()
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": text,
        "isBase64Encoded": False,
    }


def error_response(error: HttpError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error.error, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    return respond(error.status, body, error.headers)


def caller_tenant(request: Request) -> str:
    """The tenant is who the caller is, as the gateway authenticated it; never the body.

    A JWT/Cognito authorizer's ``custom:tenant`` (or ``sub``) claim, a Lambda authorizer's
    ``tenant`` context value (or principal), or the IAM caller's ARN.
    """
    authorizer = request.context.get("authorizer") or {}
    claims = authorizer.get("claims") or {}
    identity = request.context.get("identity") or {}
    for candidate in (
        claims.get("custom:tenant"),
        claims.get("sub"),
        authorizer.get("tenant"),
        authorizer.get("principalId"),
        identity.get("userArn"),
        identity.get("caller"),
    ):
        if candidate:
            return str(candidate)
    return "anonymous"

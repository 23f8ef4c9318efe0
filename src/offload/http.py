"""API Gateway REST proxy events in, proxy responses out, and every input error named.

Both API functions (master and callback) parse requests here, so headers in any case,
multi-value headers, base64 bodies and ``null`` bodies are handled once, the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from offload.errors import OffloadError

M = TypeVar("M", bound=BaseModel)

JSON_TYPES = ("application/json",)


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


@dataclass(frozen=True)
class Request:
    method: str
    resource: str
    path: str
    path_params: dict[str, str]
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes | None
    request_id: str
    context: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def parse_event(event: Mapping[str, Any]) -> Request:
    headers: dict[str, str] = {}
    for name, value in (event.get("headers") or {}).items():
        if value is not None:
            headers[name.lower()] = str(value)
    for name, values in (event.get("multiValueHeaders") or {}).items():
        if values:
            headers[name.lower()] = ", ".join(str(v) for v in values)

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
        body = str(raw).encode()

    context = dict(event.get("requestContext") or {})
    return Request(
        method=str(event.get("httpMethod") or "").upper(),
        resource=str(event.get("resource") or ""),
        path=str(event.get("path") or ""),
        path_params={k: str(v) for k, v in (event.get("pathParameters") or {}).items()},
        headers=headers,
        body=body,
        request_id=str(context.get("requestId") or ""),
        context=context,
    )


def json_body(request: Request, model: type[M], *, max_bytes: int) -> M:
    """The body as ``model``: 415 for a non-JSON content type (a missing one is taken as
    JSON), 413 past ``max_bytes``, 400 for malformed JSON, 422 with field paths for the rest."""
    content_type = request.header("content-type").split(";")[0].strip().lower()
    if content_type and content_type not in JSON_TYPES and not content_type.endswith("+json"):
        raise HttpError(415, "unsupported_media_type", f"send application/json, not {content_type!r}")
    if not request.body:
        raise HttpError(400, "empty_body", "the request needs a JSON body")
    if len(request.body) > max_bytes:
        raise HttpError(413, "body_too_large", f"the body is {len(request.body)} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HttpError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    return validate(model, data)


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
    text = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(body)
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

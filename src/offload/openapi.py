"""The API's OpenAPI 3.1 document, generated from the pydantic models and the registry.

Every status an operation can answer is listed, with the JSON body it carries: the error
answers of the handlers (``ErrorBody``: ``error`` names the problem, ``message`` explains
it), and those of the API gateway in front of them (403 for a missing or bad signature,
413 past its payload limit, 429 when throttled). A schema-driven fuzz run
(``tests/test_fuzz.py``) holds the local stack to it: any other status is a bug.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from offload.handlers import registry
from offload.models import ErrorBody, JobAccepted, JobRequest, JobView
from offload.slice_models import CallbackAnswer, SliceOutcome

_REF_TEMPLATE = "#/components/schemas/{model}"
JOB_ID_PATTERN = "^[0-9a-f]{32}$"
IDEMPOTENCY_KEY_MAX_CHARS = 128


def _ref(model: str) -> dict[str, str]:
    return {"$ref": _REF_TEMPLATE.format(model=model)}


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF_TEMPLATE)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json("ErrorBody", description, headers)


def _json(model: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(model)}}}
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": _header("Seconds to wait before retrying")}
# answered by the API gateway (or by the edge code every handler shares) on every route
_EDGE = {
    "400": _error(
        "Unreadable request: malformed JSON, an empty body, a body that is not UTF-8, JSON nested too deeply, "
        "NaN/Infinity or an out-of-range number, a control character in a header, or a single-valued header "
        "(Content-Type, Idempotency-Key, Authorization) repeated with different values"
    ),
    "403": _error("Missing or bad authentication (SigV4 for AWS_IAM, or the JWT authorizer's token)"),
    "413": _error("Request over the API gateway's 10 MB limit"),
    "429": _error("Throttled by the API gateway", _RETRY_AFTER),
}


def _request_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "description": "JSON (UTF-8). A missing Content-Type is taken as application/json; any other is 415.",
        "content": {"application/json": {"schema": schema}},
    }


def _job_request_schemas() -> tuple[dict[str, Any], list[dict[str, str]]]:
    """One request schema per job type (``type`` fixed, ``payload`` that type's model), so
    the document says what each type accepts; the handler validates the same two steps."""
    schemas: dict[str, Any] = {}
    variants: list[dict[str, str]] = []
    priority = JobRequest.model_json_schema()["properties"]["priority"]
    for name in registry.names():
        payload = registry.get(name).payload_model.model_json_schema(ref_template=_REF_TEMPLATE)
        schemas.update(payload.pop("$defs", {}))
        schemas[f"{name}_payload"] = payload
        schemas[f"{name}_request"] = {
            "title": f"{name} job",
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "payload"],
            "properties": {
                "type": {"const": name, "type": "string"},
                "payload": _ref(f"{name}_payload"),
                "priority": priority,
            },
        }
        variants.append(_ref(f"{name}_request"))
    return schemas, variants


def document() -> dict[str, Any]:
    schemas = _schemas(JobRequest, JobAccepted, JobView, ErrorBody, SliceOutcome, CallbackAnswer)
    request_schemas, variants = _job_request_schemas()
    schemas.update(request_schemas)
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "A job id as POST /jobs returned it (other values are simply not found)",
        "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "offload",
            "version": "1",
            "description": (
                "Submit heavy work; poll for its result. The job routes need authentication (AWS_IAM by default, "
                "or a Cognito JWT with the AuthorizerMode=jwt parameter); the tenant is the caller's identity, "
                "and another tenant's job is 404. /callbacks is AWS_IAM only, for the compute function."
            ),
        },
        "security": [{"sigv4": []}],
        "paths": {
            "/jobs": {
                "post": {
                    "summary": "Submit a job",
                    "operationId": "submitJob",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": (
                                "Same key and same request within a day: the original job, not a new one. "
                                "Empty is the same as absent."
                            ),
                            "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX_CHARS},
                        }
                    ],
                    "requestBody": _request_body({"oneOf": variants, "discriminator": {"propertyName": "type"}}),
                    "responses": {
                        "202": _json(
                            "JobAccepted",
                            "Accepted; poll the Location",
                            {
                                "Location": _header("The job's URL path"),
                                "Idempotent-Replayed": _header("true when this is the original job of a repeated key"),
                            },
                        ),
                        **_EDGE,
                        "400": _error(_EDGE["400"]["description"] + "; an Idempotency-Key over 128 characters"),
                        "409": _error("Idempotency-Key reused for a different request"),
                        "413": _error("Body over the limit (OFFLOAD_MAX_BODY_BYTES, 256 KiB by default)"),
                        "415": _error("Content-Type is not JSON, or its charset is not UTF-8"),
                        "422": _error("Schema violation (details name the field paths) or unknown job type"),
                        "429": _error("Backlog full (or throttled by the API gateway); see Retry-After", _RETRY_AFTER),
                        "503": _error("Queue unavailable; see Retry-After", _RETRY_AFTER),
                    },
                }
            },
            "/jobs/{job_id}": {
                "get": {
                    "summary": "A job's status and result",
                    "operationId": "getJob",
                    "parameters": [job_id],
                    "responses": {
                        "200": _json("JobView", "The job"),
                        **_EDGE,
                        "404": _error("No such job, or another tenant's"),
                        "503": _error("Queue unavailable; see Retry-After", _RETRY_AFTER),
                    },
                }
            },
            "/callbacks/{job_id}": {
                "post": {
                    "summary": "Slice outcome from the compute function (SigV4, AWS_IAM)",
                    "operationId": "callback",
                    "parameters": [job_id],
                    "requestBody": _request_body(_ref("SliceOutcome")),
                    "responses": {
                        "200": _json("CallbackAnswer", "Applied, or ignored (duplicate, stale, inactive)"),
                        **_EDGE,
                        "403": _error(
                            "Bad signature, or a callback token that is forged, expired, or for another job, "
                            "slice or attempt"
                        ),
                        "404": _error("No such job or slice"),
                        "413": _error("Body over the limit (four times OFFLOAD_MAX_BODY_BYTES)"),
                        "415": _error("Content-Type is not JSON, or its charset is not UTF-8"),
                        "422": _error("Schema violation (details name the field paths)"),
                        "503": _error("Job store unavailable; see Retry-After", _RETRY_AFTER),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document (local stack only)",
                    "operationId": "openapi",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "sigv4": {
                    "type": "apiKey",
                    "name": "Authorization",
                    "in": "header",
                    "description": "AWS SigV4 (execute-api); with AuthorizerMode=jwt, a Cognito JWT on the job routes",
                    "x-amazon-apigateway-authtype": "awsSigv4",
                }
            },
        },
    }

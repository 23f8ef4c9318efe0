"""The API's OpenAPI 3.1 document, generated from the pydantic models and the registry."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from offload.handlers import registry
from offload.models import ErrorBody, JobAccepted, JobRequest, JobView, SliceOutcome

_REF_TEMPLATE = "#/components/schemas/{model}"


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF_TEMPLATE)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF_TEMPLATE.format(model="ErrorBody")}}},
    }


def _json(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF_TEMPLATE.format(model=model)}}},
    }


def document() -> dict[str, Any]:
    payload_models = {name: registry.get(name).payload_model for name in registry.names()}
    schemas = _schemas(JobRequest, JobAccepted, JobView, ErrorBody, SliceOutcome)
    for name, model in payload_models.items():
        schemas[f"{name}_payload"] = model.model_json_schema(ref_template=_REF_TEMPLATE)
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "offload", "version": "1", "description": "Submit heavy work; poll for its result."},
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
                            "schema": {"type": "string", "maxLength": 128},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": _REF_TEMPLATE.format(model="JobRequest")}}},
                    },
                    "responses": {
                        "202": _json("JobAccepted", "Accepted; poll the Location header"),
                        "400": _error("Malformed JSON or empty body"),
                        "409": _error("Idempotency-Key reused"),
                        "413": _error("Body too large"),
                        "415": _error("Not JSON"),
                        "422": _error("Schema violation or unknown job type"),
                        "429": _error("Backlog full; see Retry-After"),
                        "503": _error("Queue unavailable; see Retry-After"),
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
                        "404": _error("No such job"),
                        "503": _error("Queue unavailable"),
                    },
                }
            },
            "/callbacks/{job_id}": {
                "post": {
                    "summary": "Slice outcome from the compute function (SigV4, AWS_IAM)",
                    "operationId": "callback",
                    "parameters": [job_id],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": _REF_TEMPLATE.format(model="SliceOutcome")}}
                        },
                    },
                    "responses": {
                        "200": {"description": "Applied or ignored (duplicate, stale)"},
                        "403": _error("Bad signature or token"),
                        "404": _error("No such job or slice"),
                    },
                }
            },
        },
        "components": {"schemas": schemas},
    }

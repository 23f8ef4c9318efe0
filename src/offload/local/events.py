"""API Gateway REST proxy events, built the way the deployed API builds them (tests, fault runs)."""

from __future__ import annotations

import json
from typing import Any


def proxy_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    caller_arn: str = "arn:aws:iam::123456789012:user/tenant-a",
    raw_body: str | None = None,
    request_id: str = "req-1",
) -> dict[str, Any]:
    """A proxy event for ``/jobs``, ``/jobs/{job_id}`` or ``/callbacks/{job_id}``, from an IAM caller."""
    parts = path.strip("/").split("/")
    resource, params = "/" + parts[0], None
    if len(parts) == 2:
        resource, params = f"/{parts[0]}/{{job_id}}", {"job_id": parts[1]}
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": hdrs,
        "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
        "pathParameters": params,
        "requestContext": {"requestId": request_id, "identity": {"userArn": caller_arn}},
        "body": raw_body if raw_body is not None else (json.dumps(body) if body is not None else None),
        "isBase64Encoded": False,
    }

"""Serves the OpenAPI document (``GET /openapi.json`` on the local stack)."""

from __future__ import annotations

from typing import Any

from offload.http import respond
from offload.openapi import document


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return respond(200, document())

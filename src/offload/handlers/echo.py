"""``echo``: runs inline in the worker and returns its payload (diagnostics, benchmarks)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from offload.registry import Registry


class EchoPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


def register(registry: Registry) -> None:
    @registry.inline("echo", EchoPayload, max_tries=1)
    def echo(payload: EchoPayload) -> Any:
        return payload.model_dump()

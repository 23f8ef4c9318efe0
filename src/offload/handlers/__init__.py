"""The job types this deployment knows. Add one by registering it here."""

from __future__ import annotations

from offload.handlers import echo, thumbnail
from offload.registry import Registry

registry = Registry()
echo.register(registry)
thumbnail.register(registry)

__all__ = ["registry"]

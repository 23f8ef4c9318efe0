"""What every boundary model shares: strict objects and JSON whole numbers."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


def whole_number(value: Any) -> int:
    """A JSON integer (``3`` or ``3.0``); not ``true``, not ``"3"``, not ``3.5``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError("must be a whole number")


# pydantic's lax int takes true as 1 and "3" as 3; JSON Schema's integer does not
WholeNumber = Annotated[int, BeforeValidator(whole_number)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

"""``thumbnail``: one slice per image; each slice writes one thumbnail per requested size.

This module is imported by the master (to validate payloads) and the worker (to split),
so it stays free of Pillow; the pixel work is in ``thumbnail_compute``.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from offload.model_base import whole_number
from offload.registry import Registry
from offload.storage import ALLOWED_SCHEMES

MAX_IMAGES = 1000
MAX_SIZES = 8
MAX_EDGE_PX = 4096
MAX_URI_CHARS = 2048


# What urlsplit() surely reads as file: or s3: without failing: an allowed scheme first, and
# nothing it strips, normalises or refuses (space, control characters, brackets, non-ASCII).
_PLAINLY_ALLOWED = re.compile(r"(?:[fF][iI][lL][eE]|[sS]3):[!-Z\\^-~]*", re.ASCII)


def _check_uri(uri: str) -> str:
    if _PLAINLY_ALLOWED.fullmatch(uri):  # the common case, without urlsplit's cost
        return uri
    scheme = urllib.parse.urlsplit(uri).scheme  # a ValueError (an unclosed "[") is a field error too
    if scheme not in ALLOWED_SCHEMES:
        raise ValueError(f"scheme {scheme or 'missing'!r} is not allowed; use file:// or s3://")
    return uri


# what the validators below check, for the OpenAPI document
_URI_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_URI_CHARS, "pattern": "^([fF][iI][lL][eE]|[sS]3):"}
_SIZE_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_EDGE_PX}


class ThumbnailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[Annotated[str, Field(min_length=1, max_length=MAX_URI_CHARS), WithJsonSchema(_URI_SCHEMA)]] = Field(
        min_length=1, max_length=MAX_IMAGES, description="Image URIs (s3:// or file://)."
    )
    sizes: list[Annotated[int, BeforeValidator(whole_number), WithJsonSchema(_SIZE_SCHEMA)]] = Field(
        min_length=1, max_length=MAX_SIZES, description="Longest edge of each thumbnail, px."
    )
    format: Literal["jpeg", "png", "webp"] = "jpeg"

    @field_validator("images")
    @classmethod
    def _allowed_schemes(cls, images: list[str]) -> list[str]:
        return [_check_uri(uri) for uri in images]

    @field_validator("sizes")
    @classmethod
    def _sane_sizes(cls, sizes: list[int]) -> list[int]:
        for size in sizes:
            if not 1 <= size <= MAX_EDGE_PX:
                raise ValueError(f"each size must be between 1 and {MAX_EDGE_PX} px, got {size}")
        return sizes


class ThumbnailSlice(BaseModel):
    """The input of one slice: one image, every size."""

    model_config = ConfigDict(extra="forbid")

    image: str
    sizes: list[int]
    format: Literal["jpeg", "png", "webp"]


def split(payload: ThumbnailPayload) -> list[dict[str, Any]]:
    return [
        ThumbnailSlice(image=uri, sizes=payload.sizes, format=payload.format).model_dump() for uri in payload.images
    ]


def register(registry: Registry) -> None:
    registry.fan_out(
        "thumbnail", ThumbnailPayload, compute="offload.handlers.thumbnail_compute:make_thumbnails", max_tries=3
    )(split)

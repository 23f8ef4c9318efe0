"""The pixel work of a ``thumbnail`` slice; runs in the compute function only."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from offload.config import settings
from offload.errors import SliceFailed
from offload.handlers.thumbnail import ThumbnailSlice
from offload.registry import SliceContext
from offload.storage import read_bytes, write_bytes

MAX_INPUT_BYTES = 50 * 1024 * 1024
# the formats a thumbnail is made from; anything else is refused unread
READ_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def make_thumbnails(context: SliceContext, slice_input: dict[str, Any]) -> dict[str, Any]:
    spec = ThumbnailSlice.model_validate(slice_input)
    conf = settings()
    if not conf.output_uri:
        raise SliceFailed("OFFLOAD_OUTPUT_URI is not set: nowhere to write thumbnails")

    data = read_bytes(spec.image, root=conf.input_root, allowed_buckets=conf.allowed_buckets, max_bytes=MAX_INPUT_BYTES)
    image = _decode(spec.image, data, conf.max_image_pixels)

    stem = PurePosixPath(urlsplit(spec.image).path).stem or "image"
    outputs = []
    for size in spec.sizes:
        encoded, width, height = _encode(image, size, spec.format)
        name = f"{context.job_id}/{context.slice:04d}-{stem}-{size}.{_EXTENSIONS[spec.format]}"
        uri = write_bytes(conf.output_uri, name, encoded, _CONTENT_TYPES[spec.format])
        outputs.append(
            {
                "size": size,
                "uri": uri,
                "width": width,
                "height": height,
                "bytes": len(encoded),
                "sha256": hashlib.sha256(encoded).hexdigest(),
            }
        )
    return {"image": spec.image, "source": {"width": image.width, "height": image.height}, "thumbnails": outputs}


def _decode(uri: str, data: bytes, max_pixels: int) -> Image.Image:
    """Open and fully decode, refusing bombs before decoding a single pixel.

    Only the formats in ``READ_FORMATS`` are tried, whatever the file is called: a JPEG named
    ``.png`` is read as the JPEG it is; PostScript (which Pillow hands to Ghostscript), PSD,
    ICO and the rest are refused as unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=READ_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise SliceFailed(f"{uri}: {width}x{height} is {width * height} pixels, over the limit of {max_pixels}")
            image.load()
            return _normalized(ImageOps.exif_transpose(image))
    except SliceFailed:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SliceFailed(f"{uri}: refused as a decompression bomb ({e})") from e
    except UnidentifiedImageError:
        raise SliceFailed(
            f"{uri}: not an image Pillow can read as {'/'.join(READ_FORMATS)} (is the file what its name says?)"
        ) from None
    except MemoryError:
        raise SliceFailed(f"{uri}: too big to decode in this function's memory") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError, ZeroDivisionError) as e:
        # Pillow's plugins report damage in every one of these
        raise SliceFailed(f"{uri}: the image is damaged or truncated ({type(e).__name__}: {e})") from e


def _normalized(image: Image.Image) -> Image.Image:
    """An 8-bit mode every encoder takes (16-bit greyscale, CMYK, palette... converted)."""
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _encode(image: Image.Image, size: int, fmt: str) -> tuple[bytes, int, int]:
    thumb = image.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    if fmt == "jpeg" and thumb.mode not in ("RGB", "L"):
        thumb = thumb.convert("RGB")
    out = io.BytesIO()
    options: dict[str, Any] = {"optimize": True} if fmt in ("jpeg", "png") else {"quality": 85}
    if fmt == "jpeg":
        options["quality"] = 85
    thumb.save(out, _PIL_FORMATS[fmt], **options)
    return out.getvalue(), thumb.width, thumb.height

"""Reading inputs and writing outputs by URI: ``file://`` under a root locally, ``s3://`` in AWS.

Only these two schemes are read, ``file://`` only below the configured input root, and
``s3://`` only from allowed buckets, so a job cannot make the compute function read
anything else it can reach.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from offload.errors import SliceFailed

ALLOWED_SCHEMES = ("file", "s3")


def _split(uri: str) -> tuple[str, str, str]:
    parsed = urllib.parse.urlsplit(uri)
    return parsed.scheme, parsed.netloc, urllib.parse.unquote(parsed.path)


def local_path(uri: str, root: str) -> Path:
    """The file a ``file://`` URI names, refusing anything outside ``root`` (symlinks resolved)."""
    scheme, host, path = _split(uri)
    if scheme != "file" or host not in ("", "localhost"):
        raise SliceFailed(f"{uri}: not a local file URI")
    if not root:
        raise SliceFailed(f"{uri}: file:// input is disabled (no OFFLOAD_INPUT_ROOT)")
    # ``file:relative/path`` (no slashes after the colon) is relative to the root
    resolved = Path(os.path.realpath(os.path.join(root, path)))
    if not resolved.is_relative_to(Path(os.path.realpath(root))):
        raise SliceFailed(f"{uri}: outside the allowed input folder")
    return resolved


def read_bytes(uri: str, *, root: str, allowed_buckets: tuple[str, ...], max_bytes: int) -> bytes:
    scheme, bucket, key = _split(uri)
    if scheme == "file":
        path = local_path(uri, root)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise SliceFailed(f"{uri}: {size} bytes, over the {max_bytes}-byte input limit")
            return path.read_bytes()
        except FileNotFoundError:
            raise SliceFailed(f"{uri}: no such file") from None
        except IsADirectoryError:
            raise SliceFailed(f"{uri}: is a folder, not a file") from None
        except PermissionError:
            raise SliceFailed(f"{uri}: permission denied") from None
    if scheme == "s3":
        if bucket not in allowed_buckets:
            raise SliceFailed(f"{uri}: bucket {bucket!r} is not in OFFLOAD_ALLOWED_BUCKETS")
        return _s3_read(bucket, key.lstrip("/"), uri, max_bytes)
    raise SliceFailed(f"{uri}: scheme {scheme!r} is not allowed (use {' or '.join(ALLOWED_SCHEMES)})")


def write_bytes(base_uri: str, name: str, data: bytes, content_type: str) -> str:
    """Write ``data`` as ``name`` below ``base_uri``; returns the new object's URI."""
    scheme, bucket, prefix = _split(base_uri)
    if scheme == "file":
        path = Path(prefix) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see half a file, and a retried slice overwrites
        return path.as_uri()
    if scheme == "s3":
        key = f"{prefix.strip('/')}/{name}".lstrip("/")
        _s3().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        return f"s3://{bucket}/{key}"
    raise SliceFailed(f"output {base_uri}: scheme {scheme!r} is not supported")


_S3_CLIENT: Any = None


def _s3() -> Any:
    global _S3_CLIENT
    if _S3_CLIENT is None:
        import boto3

        _S3_CLIENT = boto3.client("s3")
    return _S3_CLIENT


def _s3_read(bucket: str, key: str, uri: str, max_bytes: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        obj = _s3().get_object(Bucket=bucket, Key=key)
        if obj["ContentLength"] > max_bytes:
            raise SliceFailed(f"{uri}: {obj['ContentLength']} bytes, over the {max_bytes}-byte input limit")
        return bytes(obj["Body"].read())
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "403"):
            raise SliceFailed(f"{uri}: {code}") from e
        raise SliceFailed(f"{uri}: {code or e}", retryable=True) from e
    except BotoCoreError as e:
        raise SliceFailed(f"{uri}: {e}", retryable=True) from e

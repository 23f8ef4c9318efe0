"""Reading inputs and writing outputs by URI: ``file://`` under a root locally, ``s3://`` in AWS.

Only these two schemes are read, ``file://`` only below the configured input root, and
``s3://`` only from allowed buckets, so a job cannot make the compute function read
anything else it can reach.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from pathlib import Path
from typing import Any

from offload.errors import SliceFailed

ALLOWED_SCHEMES = ("file", "s3")


def _split(uri: str) -> tuple[str, str, str]:
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError as e:  # e.g. "s3://[bucket/key": an unterminated IPv6 host
        raise SliceFailed(f"{uri}: not a URI ({e})") from None
    return parsed.scheme, parsed.netloc, urllib.parse.unquote(parsed.path)


def local_path(uri: str, root: str) -> Path:
    """The file a ``file://`` URI names, refusing anything outside ``root`` (symlinks resolved)."""
    scheme, host, path = _split(uri)
    if scheme != "file" or host not in ("", "localhost"):
        raise SliceFailed(f"{uri}: not a local file URI")
    if not root:
        raise SliceFailed(f"{uri}: file:// input is disabled (no OFFLOAD_INPUT_ROOT)")
    if "\x00" in path:
        raise SliceFailed(f"{uri}: the path contains a NUL byte")
    # ``file:relative/path`` (no slashes after the colon) is relative to the root
    try:
        resolved = Path(os.path.realpath(os.path.join(root, path)))
        inside = resolved.is_relative_to(Path(os.path.realpath(root)))
    except (OSError, ValueError) as e:
        raise SliceFailed(f"{uri}: cannot resolve the path ({e})") from None
    if not inside:
        raise SliceFailed(f"{uri}: outside the allowed input folder")
    return resolved


def read_bytes(uri: str, *, root: str, allowed_buckets: tuple[str, ...], max_bytes: int) -> bytes:
    """The bytes ``uri`` names, at most ``max_bytes``; SliceFailed (not retryable unless the
    store itself failed) for anything not allowed, missing or too big."""
    scheme, bucket, key = _split(uri)
    if scheme == "file":
        return _file_read(local_path(uri, root), uri, max_bytes)
    if scheme == "s3":
        # checked before any client exists: a refused bucket costs no S3 call
        if bucket not in allowed_buckets:
            raise SliceFailed(f"{uri}: bucket {bucket!r} is not in OFFLOAD_ALLOWED_BUCKETS")
        if not key.strip("/"):
            raise SliceFailed(f"{uri}: no object key")
        return _s3_read(bucket, key.lstrip("/"), uri, max_bytes)
    raise SliceFailed(f"{uri}: scheme {scheme!r} is not allowed (use {' or '.join(ALLOWED_SCHEMES)})")


def _file_read(path: Path, uri: str, max_bytes: int) -> bytes:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            # a folder, FIFO or device: a FIFO would block the read, a device never end it
            what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise SliceFailed(f"{uri}: is {what}, not a file")
        if info.st_size > max_bytes:
            raise SliceFailed(f"{uri}: {info.st_size} bytes, over the {max_bytes}-byte input limit")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise SliceFailed(f"{uri}: no such file") from None
    except PermissionError:
        raise SliceFailed(f"{uri}: permission denied") from None
    except OSError as e:
        raise SliceFailed(f"{uri}: cannot read ({e.strerror or e})") from None
    if len(data) > max_bytes:  # grew since the stat
        raise SliceFailed(f"{uri}: over the {max_bytes}-byte input limit")
    return data


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
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

    try:
        obj = _s3().get_object(Bucket=bucket, Key=key)
        if obj["ContentLength"] > max_bytes:
            obj["Body"].close()
            raise SliceFailed(f"{uri}: {obj['ContentLength']} bytes, over the {max_bytes}-byte input limit")
        data = bytes(obj["Body"].read(max_bytes + 1))
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "403"):
            raise SliceFailed(f"{uri}: {code}") from e
        raise SliceFailed(f"{uri}: {code or e}", retryable=True) from e
    except ParamValidationError as e:  # a key S3 cannot hold; another try would not help
        raise SliceFailed(f"{uri}: {e}") from e
    except BotoCoreError as e:
        raise SliceFailed(f"{uri}: {e}", retryable=True) from e
    if len(data) > max_bytes:
        raise SliceFailed(f"{uri}: over the {max_bytes}-byte input limit")
    return data

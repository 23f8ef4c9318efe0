"""Callback tokens: an HMAC bound to one job, slice and attempt, with an expiry."""

from __future__ import annotations

import base64
import hmac
import re
import time

from offload.errors import CallbackRejected

# ``<expires, unix seconds>.<HMAC-SHA256, unpadded url-safe base64>``, ASCII only
_TOKEN = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{43})", re.ASCII)


def _mac(secret: str, job_id: str, slice_index: int, attempt: int, expires: int) -> str:
    # backslashreplace: a job id that is not valid UTF-8 gets a MAC that matches nothing, not an error
    message = f"{job_id}/{slice_index}/{attempt}/{expires}".encode("utf-8", "backslashreplace")
    digest = hmac.digest(secret.encode(), message, "sha256")  # one C call (hmac.new is Python)
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(secret: str, job_id: str, slice_index: int, attempt: int, ttl_s: float) -> str:
    expires = int(time.time() + ttl_s)
    return f"{expires}.{_mac(secret, job_id, slice_index, attempt, expires)}"


def verify(secret: str, token: str, job_id: str, slice_index: int, attempt: int) -> None:
    """Raise CallbackRejected unless the token was issued for exactly this slice attempt."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise CallbackRejected("malformed callback token")
    expires = int(match[1])
    expected = _mac(secret, job_id, slice_index, attempt, expires)
    # compare first, in constant time, so a forged token learns nothing from the timing
    if not hmac.compare_digest(expected.encode(), match[2].encode()):
        raise CallbackRejected("callback token does not match this job, slice and attempt")
    if expires < time.time():
        raise CallbackRejected("callback token has expired")


def signing_secret(callback_secret: str, callback_secret_arn: str) -> str:
    """The key tokens are made with: given directly (local), or a Secrets Manager ARN (AWS)."""
    if callback_secret:
        return callback_secret
    if callback_secret_arn:
        from offload.secret_store import secret_string

        return secret_string(callback_secret_arn)
    from offload.errors import ConfigError

    raise ConfigError("set OFFLOAD_CALLBACK_SECRET or OFFLOAD_CALLBACK_SECRET_ARN")

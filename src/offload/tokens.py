"""Callback tokens: an HMAC bound to one job, slice and attempt, with an expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from offload.errors import CallbackRejected


def _mac(secret: str, job_id: str, slice_index: int, attempt: int, expires: int) -> str:
    message = f"{job_id}/{slice_index}/{attempt}/{expires}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(secret: str, job_id: str, slice_index: int, attempt: int, ttl_s: float) -> str:
    expires = int(time.time() + ttl_s)
    return f"{expires}.{_mac(secret, job_id, slice_index, attempt, expires)}"


def verify(secret: str, token: str, job_id: str, slice_index: int, attempt: int) -> None:
    """Raise CallbackRejected unless the token was issued for exactly this slice attempt."""
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit() or not mac:
        raise CallbackRejected("malformed callback token")
    expected = _mac(secret, job_id, slice_index, attempt, int(expires_text))
    # compare first, in constant time, so a forged token learns nothing from the timing
    if not hmac.compare_digest(expected, mac):
        raise CallbackRejected("callback token does not match this job, slice and attempt")
    if int(expires_text) < time.time():
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

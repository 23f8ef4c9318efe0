"""Redis connections: timeouts that fail fast on the API path and never fire on an idle pop."""

from __future__ import annotations

from typing import Literal

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from offload.config import Settings
from offload.secret_store import secret_string

Role = Literal["api", "worker"]

# Errors after which the connection is dropped and the command retried on a new one.
# READONLY means we are talking to a replica that was promoted away from: after a
# failover the endpoint's DNS points at the new primary, so reconnecting is the cure.
RECONNECT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
)


def connect(settings: Settings, role: Role) -> redis.Redis:
    """A client for ``settings.redis_url``.

    ``api``: one fast retry, 1 s to connect, 2 s per command; the master must answer 503
    quickly rather than hold a request. ``worker``: the socket timeout is longer than the
    blocking pop (redis-py 8 defaults it to 5 s, which would break a long BLMOVE), and
    reconnects back off up to a few seconds.
    """
    password = secret_string(settings.redis_auth_secret_arn) if settings.redis_auth_secret_arn else None
    if role == "api":
        retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), retries=1)
        timeouts = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}
    else:
        retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=5)
        timeouts = {"socket_connect_timeout": 2.0, "socket_timeout": settings.block_s + 10.0}
    return redis.Redis.from_url(
        settings.redis_url,
        password=password,
        decode_responses=True,
        retry=retry,
        retry_on_error=list(RECONNECT_ERRORS),
        health_check_interval=30,
        client_name=f"offload-{role}",
        **timeouts,
    )

"""Redis connections: timeouts that fail fast on the API path and never fire on an idle pop,
and a connection that hangs up, rather than stays wedged, when the server can no longer serve.

After a failover the endpoint's DNS name points at the new primary, but a connection opened
before it still talks to the old node, now a replica: every write there answers READONLY,
and a blocked BLMOVE is cut with UNBLOCKED. redis-py returns such answers inside a pipeline as
values and keeps the connection, so a client would get READONLY forever. The connection here
turns them (and the other "cannot serve now" answers: OOM, BUSY, MISCONF, MASTERDOWN,
TRYAGAIN, CLUSTERDOWN) into ``ServerUnavailable``, a ``ConnectionError``: the socket is
closed, and the command is retried on a new connection, which the DNS sends to the new
primary. Each of those answers means the command was refused, so sending it again is safe.

A reply lost on the way back (the connection dropped or timed out after the command was sent)
is different: the command may have run. redis-py retries it all the same, so every script
offload runs must tolerate running twice, and a worker that might hold something it was never
told about checks its processing list. ``lost_replies()`` counts these events in the process,
for that check.
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any, Literal

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.credentials import CredentialProvider
from redis.retry import Retry

from offload.config import Settings
from offload.errors import ConfigError
from offload.secret_store import secret_string

Role = Literal["api", "worker"]


class ServerUnavailable(redis.ConnectionError):
    """The server answered that it cannot serve this command now (a replica after a failover,
    out of memory, busy, loading...). The command did not run; the connection is closed."""


# Error codes (the first word of an error reply) that ServerUnavailable stands for.
UNAVAILABLE_CODES = frozenset(
    {"READONLY", "UNBLOCKED", "MASTERDOWN", "LOADING", "OOM", "BUSY", "MISCONF", "TRYAGAIN", "CLUSTERDOWN"}
)

# Errors after which the connection is dropped and the command retried on a new one, and
# which every edge reports as "the queue is unavailable" (queue.redis_guard; 503 on the API).
RECONNECT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,  # includes ServerUnavailable and BusyLoadingError
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # from a client whose connections were not made here
    redis.exceptions.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,
)

_lost = 0
_lost_lock = threading.Lock()


def lost_replies() -> int:
    """How many times, in this process, a reply did not arrive after its command was sent."""
    return _lost


def _note_lost_reply() -> None:
    global _lost
    with _lost_lock:
        _lost += 1


def error_code(error: redis.ResponseError) -> str:
    status = getattr(error, "status_code", None)
    if isinstance(status, str) and status:
        return status
    if isinstance(error, redis.exceptions.ReadOnlyError):
        return "READONLY"
    if isinstance(error, redis.exceptions.OutOfMemoryError):
        return "OOM"
    text = str(error.args[0]) if error.args else ""
    return text.split(" ", 1)[0]


class _FaultAware(AbstractConnection):
    """Mixed into redis-py's connection classes (TCP, TLS, Unix socket)."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.exceptions.BusyLoadingError:
            raise  # an answer (LOADING), not a lost reply; retried as a ConnectionError
        except redis.ResponseError as e:
            if error_code(e) not in UNAVAILABLE_CODES:
                raise
            # replies of later pipelined commands may still be on the wire: drop them with the socket
            self.disconnect()  # type: ignore[no-untyped-call]
            raise ServerUnavailable(f"{e} (connection closed, to be retried on a new one)") from e
        except (redis.ConnectionError, redis.TimeoutError):
            _note_lost_reply()
            raise


class FaultAwareConnection(_FaultAware, Connection):
    pass


class FaultAwareSSLConnection(_FaultAware, SSLConnection):
    pass


class FaultAwareUnixConnection(_FaultAware, UnixDomainSocketConnection):
    pass


def connection_class(url: str) -> type[AbstractConnection]:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "rediss":
        return FaultAwareSSLConnection
    if scheme == "unix":
        return FaultAwareUnixConnection
    return FaultAwareConnection


class SecretsManagerPassword(CredentialProvider):
    """The Redis AUTH token, read from Secrets Manager when the first connection is made.

    Not at import: in Lambda the Parameters and Secrets extension answers only once the
    function's init phase is over, and module scope runs during init. A failure to read it
    is a connection failure (503 at the API, a retry in the worker), never a crash.
    """

    def __init__(self, secret_arn: str) -> None:
        self.secret_arn = secret_arn

    def get_credentials(self) -> tuple[str]:
        try:
            return (secret_string(self.secret_arn),)
        except ConfigError as e:
            raise redis.ConnectionError(str(e)) from e


def connect(settings: Settings, role: Role) -> redis.Redis:
    """A client for ``settings.redis_url``.

    ``api``: one fast retry, 1 s to connect, 2 s per command; the master must answer 503
    quickly rather than hold a request. ``worker``: the socket timeout is a little longer
    than the blocking pop (redis-py 8 defaults it to 5 s, which would break a long BLMOVE)
    but well below the lease, so a connection that went silent is noticed before the lease
    runs out; reconnects back off up to a few seconds.
    """
    auth = {"credential_provider": SecretsManagerPassword(settings.redis_auth_secret_arn)}
    if role == "api":
        retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), retries=1)
        timeouts = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}
    else:
        retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=5)
        timeouts = {"socket_connect_timeout": 2.0, "socket_timeout": settings.block_s + 3.0}
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        retry=retry,
        retry_on_error=list(RECONNECT_ERRORS),
        health_check_interval=30,
        client_name=f"offload-{role}",
        connection_class=connection_class(settings.redis_url),
        **(auth if settings.redis_auth_secret_arn else {}),
        **timeouts,
    )

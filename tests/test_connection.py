"""Redis connections: the AUTH token comes from Secrets Manager, and only when first needed."""

from __future__ import annotations

import boto3
import pytest
import redis
from moto import mock_aws

from offload.config import Settings
from offload.connection import connect
from offload.errors import QueueUnavailable
from offload.local.redis_server import start_redis
from offload.queue import Queue
from offload.secret_store import secret_string


@mock_aws
def test_the_auth_token_is_read_from_secrets_manager_at_the_first_command_not_at_connect() -> None:
    server = start_redis(extra_args=("--requirepass", "tok3n-from-secrets-manager"))
    secret_string.cache_clear()
    try:
        sm = boto3.client("secretsmanager")
        arn = sm.create_secret(Name="redis-auth", SecretString='{"token": "tok3n-from-secrets-manager"}')["ARN"]
        settings = Settings(redis_url=server.url, redis_auth_secret_arn=arn)

        client = connect(settings, "api")  # module scope in Lambda: no secret read yet
        assert secret_string.cache_info().currsize == 0

        assert client.ping() is True
        assert secret_string.cache_info().currsize == 1
        client.close()
    finally:
        secret_string.cache_clear()
        server.stop()


@mock_aws
def test_an_unreadable_auth_secret_is_a_queue_outage_not_a_crash() -> None:
    server = start_redis(extra_args=("--requirepass", "x"))
    secret_string.cache_clear()
    try:
        settings = Settings(
            redis_url=server.url, redis_auth_secret_arn="arn:aws:secretsmanager:us-east-1:1:secret:nope"
        )
        queue = Queue(connect(settings, "api"), settings)

        with pytest.raises(QueueUnavailable, match="could not read secret"):
            queue.stats()
        queue.client.close()
    finally:
        secret_string.cache_clear()
        server.stop()


def test_a_wrong_password_is_refused_by_the_server(redis_server: object) -> None:
    server = start_redis(extra_args=("--requirepass", "right"))
    try:
        client = redis.Redis.from_url(server.url.replace("redis://", "redis://:wrong@"))
        with pytest.raises(redis.AuthenticationError):
            client.ping()
        client.close()
    finally:
        server.stop()

"""Settings, read once from the environment. Every component uses the same names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache

from offload.errors import ConfigError


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in os.environ.get(name, "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Secrets Manager ARN of the Redis AUTH token (AWS); read through the Lambda extension
    # or boto3, never logged.
    redis_auth_secret_arn: str = ""
    queue: str = "default"
    stage: str = "local"  # a metric dimension: staging | prod | local

    # Master
    max_body_bytes: int = 256 * 1024
    max_backlog: int = 0  # 0 = no limit
    retry_after_s: int = 5

    # Worker
    lease_s: float = 10.0
    heartbeat_s: float = 2.0
    reaper_interval_s: float = 5.0
    max_stalls: int = 3
    block_s: float = 1.0
    batch_size: int = 32
    shutdown_grace_s: float = 25.0
    metrics_interval_s: float = 15.0  # gauges and counters are published this often
    dispatch_concurrency: int = 16
    tenant_max_inflight: int = 64  # slices one tenant may have dispatched at once; 0 = no cap
    slice_timeout_s: float = 900.0
    retry_base_s: float = 1.0
    retry_max_s: float = 300.0
    compute_function: str = ""
    callback_base_url: str = ""
    max_invoke_payload_bytes: int = 256 * 1024

    # Callback tokens
    callback_secret: str = field(default="", repr=False)
    callback_secret_arn: str = ""
    callback_token_grace_s: float = 3600.0

    # Compute
    output_uri: str = ""
    input_root: str = ""
    allowed_buckets: tuple[str, ...] = ()
    max_image_pixels: int = 50_000_000

    # Lifetimes
    finished_job_ttl_s: int = 7 * 24 * 3600
    dead_job_ttl_s: int = 30 * 24 * 3600
    idempotency_ttl_s: int = 24 * 3600

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()
        return cls(
            redis_url=os.environ.get("REDIS_URL", d.redis_url),
            redis_auth_secret_arn=os.environ.get("REDIS_AUTH_SECRET_ARN", ""),
            queue=os.environ.get("OFFLOAD_QUEUE", d.queue),
            stage=os.environ.get("OFFLOAD_STAGE", d.stage),
            max_body_bytes=_int("OFFLOAD_MAX_BODY_BYTES", d.max_body_bytes),
            max_backlog=_int("OFFLOAD_MAX_BACKLOG", d.max_backlog),
            retry_after_s=_int("OFFLOAD_RETRY_AFTER_S", d.retry_after_s),
            lease_s=_float("OFFLOAD_LEASE_S", d.lease_s),
            heartbeat_s=_float("OFFLOAD_HEARTBEAT_S", d.heartbeat_s),
            reaper_interval_s=_float("OFFLOAD_REAPER_INTERVAL_S", d.reaper_interval_s),
            max_stalls=_int("OFFLOAD_MAX_STALLS", d.max_stalls),
            block_s=_float("OFFLOAD_BLOCK_S", d.block_s),
            batch_size=_int("OFFLOAD_BATCH_SIZE", d.batch_size),
            shutdown_grace_s=_float("OFFLOAD_SHUTDOWN_GRACE_S", d.shutdown_grace_s),
            metrics_interval_s=_float("OFFLOAD_METRICS_INTERVAL_S", d.metrics_interval_s),
            dispatch_concurrency=_int("OFFLOAD_DISPATCH_CONCURRENCY", d.dispatch_concurrency),
            tenant_max_inflight=_int("OFFLOAD_TENANT_MAX_INFLIGHT", d.tenant_max_inflight),
            slice_timeout_s=_float("OFFLOAD_SLICE_TIMEOUT_S", d.slice_timeout_s),
            retry_base_s=_float("OFFLOAD_RETRY_BASE_S", d.retry_base_s),
            retry_max_s=_float("OFFLOAD_RETRY_MAX_S", d.retry_max_s),
            compute_function=os.environ.get("OFFLOAD_COMPUTE_FUNCTION", ""),
            callback_base_url=os.environ.get("OFFLOAD_CALLBACK_BASE_URL", "").rstrip("/"),
            max_invoke_payload_bytes=_int("OFFLOAD_MAX_INVOKE_PAYLOAD_BYTES", d.max_invoke_payload_bytes),
            callback_secret=os.environ.get("OFFLOAD_CALLBACK_SECRET", ""),
            callback_secret_arn=os.environ.get("OFFLOAD_CALLBACK_SECRET_ARN", ""),
            callback_token_grace_s=_float("OFFLOAD_CALLBACK_TOKEN_GRACE_S", d.callback_token_grace_s),
            output_uri=os.environ.get("OFFLOAD_OUTPUT_URI", ""),
            input_root=os.environ.get("OFFLOAD_INPUT_ROOT", ""),
            allowed_buckets=_list("OFFLOAD_ALLOWED_BUCKETS"),
            max_image_pixels=_int("OFFLOAD_MAX_IMAGE_PIXELS", d.max_image_pixels),
            finished_job_ttl_s=_int("OFFLOAD_FINISHED_JOB_TTL_S", d.finished_job_ttl_s),
            dead_job_ttl_s=_int("OFFLOAD_DEAD_JOB_TTL_S", d.dead_job_ttl_s),
            idempotency_ttl_s=_int("OFFLOAD_IDEMPOTENCY_TTL_S", d.idempotency_ttl_s),
        )


@cache
def settings() -> Settings:
    """The process's settings (read from the environment on first use)."""
    return Settings.from_env()

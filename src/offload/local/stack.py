"""``offload local up``: the whole architecture on one machine, with no Docker and no AWS.

Embedded Redis, a local API Gateway in front of the real master and callback handlers,
the real worker loop, and a local Lambda that runs the real compute handler in separate
processes. Everything it starts, it stops.
"""

from __future__ import annotations

import importlib
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from offload import config
from offload.connection import connect
from offload.dispatch import Dispatcher
from offload.handlers import registry
from offload.local.context import LocalContext
from offload.local.gateway import Gateway
from offload.local.lambda_service import LocalLambda
from offload.local.redis_server import RedisServer, start_redis
from offload.queue import Queue
from offload.worker import Worker

LOCAL_ACCESS_KEY = "AKIAOFFLOADLOCAL0001"


def _lambda(module: str) -> Any:
    def invoke(event: dict[str, Any], context: Any) -> Any:
        return importlib.import_module(f"offload.lambdas.{module}").handler(event, context)

    return invoke


class LocalStack:
    def __init__(
        self,
        *,
        port: int = 0,
        state_dir: Path = Path(".offload"),
        input_root: Path | None = None,
        compute_concurrency: int = 2,
        lambda_retries: int = 2,
        tenant_keys: dict[str, str] | None = None,
    ) -> None:
        """``tenant_keys`` (access key -> secret key) lets clients sign job requests as
        distinct tenants, as IAM identities would in AWS."""
        self.port = port
        self.state_dir = state_dir.resolve()
        self.input_root = (input_root or Path.cwd()).resolve()
        self.compute_concurrency = compute_concurrency
        self.lambda_retries = lambda_retries
        self.tenant_keys = dict(tenant_keys or {})
        self.redis: RedisServer | None = None
        self.gateway: Gateway | None = None
        self.lambda_service: LocalLambda | None = None
        self.worker: Worker | None = None
        self._worker_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def output_dir(self) -> Path:
        return self.state_dir / "output"

    def start(self) -> None:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            self.redis = start_redis()
            redis_url = self.redis.url
        secret_key = secrets.token_urlsafe(24)
        self.gateway = Gateway(
            {"master": _lambda("master"), "callback": _lambda("callback"), "openapi": _lambda("openapi")},
            {**self.tenant_keys, LOCAL_ACCESS_KEY: secret_key},
            port=self.port,
            context_factory=lambda name: LocalContext(function_name=f"offload-{name}"),
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Every component reads its settings from the environment, as in Lambda and Fargate;
        # the compute processes inherit it.
        os.environ.update(
            {
                "REDIS_URL": redis_url,
                "OFFLOAD_CALLBACK_BASE_URL": self.gateway.url,
                "OFFLOAD_CALLBACK_SECRET": os.environ.get("OFFLOAD_CALLBACK_SECRET") or secrets.token_urlsafe(32),
                "OFFLOAD_OUTPUT_URI": self.output_dir.as_uri(),
                "OFFLOAD_INPUT_ROOT": os.environ.get("OFFLOAD_INPUT_ROOT") or str(self.input_root),
                "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_NAMESPACE": os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "offload-local"),
            }
        )
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        config.settings.cache_clear()
        settings = config.settings()

        callback = _lambda("callback")
        self.lambda_service = LocalLambda(
            lambda record: callback(record, LocalContext(function_name="offload-callback")),
            concurrency=self.compute_concurrency,
            max_retries=self.lambda_retries,
        )
        dispatcher = Dispatcher.from_settings(self.lambda_service, settings, secret=settings.callback_secret)
        self.worker = Worker(Queue(connect(settings, "worker"), settings), registry, settings, dispatcher)
        self.gateway.start()

    def run_worker_in_background(self) -> None:
        assert self.worker is not None
        self._worker_thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)
        self._worker_thread.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self._worker_thread is not None:
            self._worker_thread.join(timeout=10)
        if self.worker is not None:
            self.worker.queue.client.close()
        if self.lambda_service is not None:
            self.lambda_service.close()
        if self.gateway is not None:
            self.gateway.stop()
        if self.redis is not None:
            self.redis.stop()

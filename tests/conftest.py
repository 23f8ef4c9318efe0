"""Test session: one real redis-server on a free loopback port, flushed before every test."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from offload import config, tokens
from offload.config import Settings
from offload.connection import connect
from offload.local.events import proxy_event
from offload.local.redis_server import RedisServer, start_redis
from offload.queue import NewJob, Queue
from offload.worker import Worker

REPO = Path(__file__).resolve().parent.parent
EVENTS = REPO / "events"
SAMPLES = REPO / "samples" / "images"
# the key the tokens in events/ were made with (also in env.json, for sam local invoke)
EVENTS_SECRET = "offload-local-events-secret"
EVENTS_JOB_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def environment(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """What a deployed function would find in its environment, pointed at the test Redis."""
    output = tmp_path_factory.mktemp("output")
    env = {
        "REDIS_URL": redis_server.url,
        "OFFLOAD_CALLBACK_SECRET": EVENTS_SECRET,
        "OFFLOAD_INPUT_ROOT": str(REPO),
        "OFFLOAD_OUTPUT_URI": output.as_uri(),
        "OFFLOAD_CALLBACK_BASE_URL": "http://127.0.0.1:9/unused",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_DEV": "false",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "OFFLOAD_CALLBACK_SECRET_ARN", "REDIS_AUTH_SECRET_ARN"):
        os.environ.pop(name, None)
    os.environ.update(env)
    config.settings.cache_clear()
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    config.settings.cache_clear()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _flush(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()


@pytest.fixture
def settings(environment: dict[str, str]) -> Settings:
    """Fast timings so recovery paths run in test time."""
    return dataclasses.replace(
        Settings.from_env(),
        lease_s=1.0,
        heartbeat_s=0.2,
        reaper_interval_s=0.2,
        block_s=0.1,
        retry_base_s=0.01,
        retry_max_s=0.05,
        shutdown_grace_s=2.0,
    )


@pytest.fixture
def make_queue(settings: Settings) -> Iterator[Callable[..., Queue]]:
    made: list[Queue] = []

    def build(**overrides: Any) -> Queue:
        s = dataclasses.replace(settings, **overrides)
        made.append(Queue(connect(s, "worker"), s))
        return made[-1]

    yield build
    for queue in made:
        queue.client.close()


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue()


@pytest.fixture
def worker_threads() -> Iterator[Callable[[Worker], Worker]]:
    """Run workers in threads of the test; each is stopped and joined when the test ends."""
    started: list[tuple[Worker, threading.Thread]] = []

    def start(worker: Worker) -> Worker:
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(timeout=10)


def _lambda(name: str) -> ModuleType:
    return importlib.import_module(f"offload.lambdas.{name}")


@pytest.fixture
def master(environment: dict[str, str]) -> ModuleType:
    return _lambda("master")


@pytest.fixture
def callback(environment: dict[str, str]) -> ModuleType:
    return _lambda("callback")


@pytest.fixture
def compute(environment: dict[str, str]) -> ModuleType:
    return _lambda("compute")


def load_event(name: str) -> dict[str, Any]:
    return dict(json.loads((EVENTS / name).read_text()))


def api_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    tenant: str = "arn:aws:iam::123456789012:user/tenant-a",
    raw_body: str | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event, as the deployed API would send it."""
    return proxy_event(method, path, body, headers=headers, caller_arn=tenant, raw_body=raw_body)


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def dispatched_job(
    queue: Queue,
    slices: int = 2,
    *,
    tenant: str = "t",
    max_tries: int = 2,
    job_id: str = "",
    worker: str = "w1",
    slice_input: str = "{}",
) -> str:
    """A fan-out job as a worker leaves it: taken, split, every slice dispatched (attempt 1)."""
    job = NewJob(type="thumbnail", payload="{}", tenant=tenant, max_tries=max_tries)
    job_id = queue.enqueue(job, job_id=job_id).job_id
    queue.take(worker, 1)
    queue.fan_out(worker, job_id, [slice_input] * slices)
    queue.take_slices(worker, slices)
    return job_id


def slice_outcome(job_id: str, slice_index: int = 0, attempt: int = 1, **fields: Any) -> dict[str, Any]:
    """A callback body for one slice attempt, with a valid token (fields override the rest)."""
    token = tokens.issue(EVENTS_SECRET, job_id, slice_index, attempt, 60)
    return {
        "slice": slice_index,
        "attempt": attempt,
        "token": token,
        "status": "succeeded",
        "result": {"ok": 1},
        **fields,
    }

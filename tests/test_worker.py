"""The worker loop against a real Redis: inline jobs, fan-out dispatch, and Lambda's invoke API (moto)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from offload import tokens
from offload.dispatch import Dispatcher, LambdaInvoker
from offload.errors import DispatchFailed
from offload.handlers import registry
from offload.jobs import Status
from offload.queue import NewJob, Queue
from offload.worker import Worker
from tests.conftest import EVENTS_SECRET


class RecordingInvoker:
    """An Invoker that keeps what it was asked to start (no compute runs)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def invoke_async(self, payload: bytes, trace: str = "") -> None:
        self.events.append(json.loads(payload))


def dispatcher_for(invoker: Any, queue: Queue, max_payload_bytes: int = 256 * 1024) -> Dispatcher:
    return Dispatcher(
        invoker,
        queue_name=queue.settings.queue,
        callback_base_url="https://api.example/staging",
        secret=EVENTS_SECRET,
        token_ttl_s=60,
        max_payload_bytes=max_payload_bytes,
        concurrency=4,
    )


@pytest.fixture
def run_worker(queue: Queue, worker_threads: Callable[[Worker], Worker]) -> Callable[..., Worker]:
    def start(dispatcher: Dispatcher | None = None, q: Queue | None = None) -> Worker:
        return worker_threads(Worker(q or queue, registry, (q or queue).settings, dispatcher))

    return start


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def submit(queue: Queue, type_: str, payload: dict[str, Any], max_tries: int = 3) -> str:
    return queue.enqueue(NewJob(type=type_, payload=json.dumps(payload), tenant="t", max_tries=max_tries)).job_id


def status(queue: Queue, job_id: str) -> Status | None:
    job = queue.get(job_id)
    return job.status if job else None


def test_inline_jobs_run_and_are_acknowledged(queue: Queue, run_worker: Callable[..., Worker]) -> None:
    ids = [submit(queue, "echo", {"n": n}) for n in range(50)]

    run_worker()

    wait_until(lambda: all(status(queue, i) == Status.SUCCEEDED for i in ids))
    assert [queue.get(i).result for i in ids] == [{"n": n} for n in range(50)]  # type: ignore[union-attr]
    assert queue.client.llen(queue.keys.queued) == 0 and queue.stats().balanced


def test_a_job_of_an_unknown_type_is_dead_lettered_with_the_reason(
    queue: Queue, run_worker: Callable[..., Worker]
) -> None:
    job_id = submit(queue, "retired-type", {})

    run_worker()

    wait_until(lambda: status(queue, job_id) == Status.DEAD)
    assert "unknown job type 'retired-type'" in (queue.get(job_id).error or "")  # type: ignore[union-attr]


def test_a_fan_out_job_dispatches_one_signed_invocation_per_slice(
    queue: Queue, run_worker: Callable[..., Worker]
) -> None:
    invoker = RecordingInvoker()
    job_id = submit(queue, "thumbnail", {"images": ["file:a.png", "file:b.png", "file:c.png"], "sizes": [64]})

    run_worker(dispatcher_for(invoker, queue))

    wait_until(lambda: len(invoker.events) == 3)
    assert sorted(e["slice"] for e in invoker.events) == [0, 1, 2]
    for event in invoker.events:
        assert event["callback_url"] == f"https://api.example/staging/callbacks/{job_id}"
        assert event["attempt"] == 1 and event["input"]["sizes"] == [64]
        tokens.verify(EVENTS_SECRET, event["callback_token"], job_id, event["slice"], 1)
    assert status(queue, job_id) == Status.WAITING
    wait_until(
        lambda: queue.client.llen(queue.keys.processing(next(iter(queue.client.zrange(queue.keys.workers, 0, 0))))) == 0
    )


def test_a_slice_over_the_async_payload_limit_fails_clearly_before_dispatch(
    queue: Queue, run_worker: Callable[..., Worker]
) -> None:
    invoker = RecordingInvoker()
    job_id = submit(queue, "thumbnail", {"images": ["file:a.png"], "sizes": [64]})

    run_worker(dispatcher_for(invoker, queue, max_payload_bytes=100))

    wait_until(lambda: status(queue, job_id) == Status.DEAD)
    assert invoker.events == []
    assert "asynchronous invocation limit" in (queue.get(job_id).error or "")  # type: ignore[union-attr]


@mock_aws(config={"lambda": {"use_docker": False}})
def test_lambda_invoker_starts_an_event_invocation_through_the_lambda_api() -> None:
    iam = boto3.client("iam")
    role = iam.create_role(RoleName="compute", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    client = boto3.client("lambda")
    client.create_function(
        FunctionName="compute",
        Runtime="python3.12",
        Role=role,
        Handler="x.handler",
        Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
    )

    sent: list[Any] = []
    client.meta.events.register_last("before-sign.lambda.Invoke", lambda request, **_: sent.append(request))

    LambdaInvoker(client, "compute").invoke_async(b'{"job_id": "x"}')

    [request] = sent  # one call, answered 202 (anything else would have raised DispatchFailed)
    assert request.headers["X-Amz-Invocation-Type"] == "Event" and request.body == b'{"job_id": "x"}'
    assert request.url.endswith("/functions/compute/invocations")


def test_lambda_invoker_retries_throttling_then_succeeds() -> None:
    client = boto3.client("lambda")
    with Stubber(client) as stub:
        for _ in range(2):
            stub.add_client_error("invoke", "TooManyRequestsException", http_status_code=429)
        stub.add_response("invoke", {"StatusCode": 202})

        LambdaInvoker(client, "compute", base_delay_s=0.001).invoke_async(b"{}")

        stub.assert_no_pending_responses()


def test_lambda_invoker_gives_up_with_a_reason() -> None:
    client = boto3.client("lambda")
    with Stubber(client) as stub:
        for _ in range(3):
            stub.add_client_error("invoke", "ServiceException", http_status_code=500)
        with pytest.raises(DispatchFailed, match="ServiceException") as failed:
            LambdaInvoker(client, "compute", tries=3, base_delay_s=0.001).invoke_async(b"{}")
    assert failed.value.retryable


def test_lambda_invoker_does_not_retry_a_refusal() -> None:
    client = boto3.client("lambda")
    with Stubber(client) as stub:
        stub.add_client_error("invoke", "ResourceNotFoundException", http_status_code=404)
        with pytest.raises(DispatchFailed) as failed:
            LambdaInvoker(client, "compute", base_delay_s=0.001).invoke_async(b"{}")
    assert not failed.value.retryable


def test_a_slow_batch_acknowledges_each_result_as_it_finishes(queue: Queue) -> None:
    from faults import diag

    ids = [submit(queue, "fault.work", {"n": n, "ms": 400}) for n in range(3)]
    worker = Worker(queue, diag.build_registry(), queue.settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: status(queue, ids[0]) == Status.SUCCEEDED)
        # the first result is in while the rest of the batch is still to come
        assert [status(queue, i) for i in ids[1:]] == [Status.RUNNING, Status.RUNNING]
        wait_until(lambda: all(status(queue, i) == Status.SUCCEEDED for i in ids))
    finally:
        worker.stop()
        thread.join(timeout=10)


def test_a_worker_started_while_redis_is_down_starts_once_it_is_up(queue: Queue) -> None:
    from offload.connection import connect
    from offload.local.redis_server import free_port, start_redis

    port = free_port()
    settings = dataclasses.replace(queue.settings, redis_url=f"redis://127.0.0.1:{port}/0")
    worker = Worker(Queue(connect(settings, "worker"), settings), registry, settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # waiting for Redis, not crashed
    server = start_redis(port)
    try:
        job_id = submit(worker.queue, "echo", {"n": 1})
        wait_until(lambda: status(worker.queue, job_id) == Status.SUCCEEDED, 15)
    finally:
        worker.stop()
        thread.join(timeout=15)
        worker.queue.client.close()
        server.stop()
    assert not thread.is_alive()

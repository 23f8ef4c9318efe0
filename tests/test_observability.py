"""One trace per job (the X-Ray header travels master -> worker -> compute -> callback),
log lines that carry the job's keys, and EMF metrics the alarms can read."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from offload import observability as obs
from offload.dispatch import LambdaInvoker
from offload.local.gateway import Gateway
from offload.queue import Queue
from tests.conftest import api_event, body_of
from tests.test_worker import RecordingInvoker, dispatcher_for

TRACE = "Root=1-6750a1b2-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1"
THUMBNAIL = {"type": "thumbnail", "payload": {"images": ["file:samples/images/rocket.jpg"], "sizes": [16]}}


class TracingInvoker(RecordingInvoker):
    def __init__(self) -> None:
        super().__init__()
        self.traces: list[str] = []

    def invoke_async(self, payload: bytes, trace: str = "") -> None:
        super().invoke_async(payload, trace)
        self.traces.append(trace)


@contextmanager
def json_logs(logger: Any) -> Iterator[list[dict[str, Any]]]:
    """The JSON lines a Powertools logger writes while the block runs."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logger.registered_formatter)
    logger._logger.addHandler(handler)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        logger._logger.removeHandler(handler)
        lines += [json.loads(line) for line in buffer.getvalue().splitlines()]


def emf_documents(text: str) -> list[dict[str, Any]]:
    docs = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


def metric_values(docs: list[dict[str, Any]], name: str) -> list[float]:
    values: list[float] = []
    for doc in docs:
        if name in doc:
            values += doc[name] if isinstance(doc[name], list) else [doc[name]]
    return values


@pytest.fixture
def recording_callback(callback: ModuleType) -> Iterator[tuple[Gateway, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        response: dict[str, Any] = callback.handler(event, context)
        return response

    gateway = Gateway({"callback": handler}, {"testing": "testing"})
    gateway.start()
    yield gateway, seen
    gateway.stop()


def test_the_trace_header_is_carried_from_the_api_call_to_the_last_callback(
    master: ModuleType,
    compute: ModuleType,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
    recording_callback: tuple[Gateway, list[dict[str, Any]]],
) -> None:
    gateway, seen = recording_callback
    monkeypatch.setenv("_X_AMZN_TRACE_ID", TRACE)  # what Lambda sets for the master's invocation
    job_id = body_of(master.handler(api_event("POST", "/jobs", THUMBNAIL), None))["job_id"]
    monkeypatch.delenv("_X_AMZN_TRACE_ID")

    [job], _ = queue.take("w1", 1)
    queue.fan_out("w1", job_id, [json.dumps({"image": "file:samples/images/rocket.jpg", "sizes": [16],
                                              "format": "jpeg"})])  # fmt: skip
    invoker = TracingInvoker()
    dispatcher = dispatcher_for(invoker, queue)
    dispatcher.callback_base_url = gateway.url
    dispatcher.dispatch(queue.take_slices("w1", 1))
    compute.handler(invoker.events[0], None)

    root = obs.trace_root(TRACE)
    assert job.trace == TRACE
    assert obs.trace_root(invoker.traces[0]) == root and invoker.events[0]["trace"] == invoker.traces[0]
    assert obs.trace_fields(invoker.traces[0])["Parent"] != "53995c3f42cd8ad8"  # the worker's own span
    callback_headers = {k.lower(): v for k, v in seen[0]["headers"].items()}
    assert obs.trace_root(callback_headers["x-amzn-trace-id"]) == root
    assert queue.get(job_id).status == "succeeded"  # type: ignore[union-attr]


@mock_aws(config={"lambda": {"use_docker": False}})
def test_the_lambda_invoke_request_carries_the_trace_header() -> None:
    iam = boto3.client("iam")
    role = iam.create_role(RoleName="compute", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    client = boto3.client("lambda")
    client.create_function(
        FunctionName="compute", Runtime="python3.12", Role=role, Handler="x.handler", Code={"ZipFile": b"PK"}
    )
    sent: list[dict[str, str]] = []
    invoker = LambdaInvoker(client, "compute")
    client.meta.events.register_last(
        "before-sign.lambda.Invoke", lambda request, **_: sent.append(dict(request.headers))
    )

    invoker.invoke_async(b"{}", TRACE)
    invoker.invoke_async(b"{}")

    assert sent[0]["X-Amzn-Trace-Id"] == TRACE
    assert "X-Amzn-Trace-Id" not in sent[1]


def test_the_master_logs_one_json_line_with_the_job_keys(master: ModuleType) -> None:
    with json_logs(master.logger) as lines:
        master.handler(api_event("POST", "/jobs", THUMBNAIL), None)

    [accepted] = [line for line in lines if line["message"] == "job accepted"]
    assert accepted["job_type"] == "thumbnail" and len(accepted["job_id"]) == 32
    assert accepted["correlation_id"] == "req-1" and accepted["tenant"]


def test_the_callback_logs_carry_job_slice_attempt_type_and_tenant(callback: ModuleType, queue: Queue) -> None:
    from tests.conftest import dispatched_job
    from tests.conftest import slice_outcome as outcome
    from tests.test_callback import post

    job_id = dispatched_job(queue)
    with json_logs(callback.logger) as lines:
        post(callback, job_id, outcome(job_id))

    [applied] = [line for line in lines if line["message"] == "slice succeeded"]
    assert applied["job_id"] == job_id and applied["slice_id"] == 0 and applied["attempt"] == 1
    assert applied["job_type"] == "thumbnail" and applied["tenant"] == "t"


def test_the_master_emits_emf_only_for_rejected_jobs(master: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    master.handler(api_event("POST", "/jobs", THUMBNAIL), None)
    master.handler(api_event("POST", "/jobs", {"type": "nope", "payload": {}}), None)

    docs = emf_documents(capsys.readouterr().out)
    assert metric_values(docs, obs.JOBS_ACCEPTED) == []  # published from the queue's counters instead
    [rejected] = [d for d in docs if obs.JOBS_REJECTED in d]
    directive = rejected["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "offload" and sorted(directive["Dimensions"][0]) == ["queue", "reason", "stage"]
    assert rejected["reason"] == "unknown_job_type"


def test_the_callback_emits_the_job_latency_when_the_last_slice_lands(
    callback: ModuleType, queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import dispatched_job
    from tests.conftest import slice_outcome as outcome
    from tests.test_callback import post

    job_id = dispatched_job(queue, slices=1)
    post(callback, job_id, outcome(job_id))

    docs = emf_documents(capsys.readouterr().out)
    [latency] = metric_values(docs, obs.JOB_LATENCY)
    assert latency >= 0
    doc = next(d for d in docs if obs.JOB_LATENCY in d)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["stage", "queue"]]
    assert doc["stage"] == "local" and doc["queue"] == "default"


def test_the_worker_dispatch_span_continues_the_jobs_x_ray_trace(queue: Queue) -> None:
    from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from offload.jobs import TakenSlice
    from offload.worker_tracing import OpenTelemetrySpans

    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=AwsXRayIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    invoker = TracingInvoker()
    dispatcher = dispatcher_for(invoker, queue)
    dispatcher.spans = OpenTelemetrySpans(provider)
    item = TakenSlice(job_id="j" * 32, slice=3, attempt=2, input="{}", type="thumbnail", tenant="t", trace=TRACE)

    dispatcher.dispatch([item])

    [span] = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == "6750a1b20123456789abcdef01234567"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "53995c3f42cd8ad8"
    assert span.attributes == {"job_id": "j" * 32, "job_type": "thumbnail", "slice": 3, "attempt": 2}
    header = obs.trace_fields(invoker.traces[0])
    assert header["Root"] == obs.trace_root(TRACE) and header["Parent"] == f"{span.context.span_id:016x}"


def test_one_worker_at_a_time_publishes_the_queues_gauges_and_counter_growth(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    from offload.queue import NewJob

    def publish(worker_id: str) -> tuple[bool, list[dict[str, Any]]]:
        metrics = obs.SharedMetrics(queue.settings)
        published = obs.QueueGauges(queue, metrics, worker_id, interval_s=60).publish()
        metrics.flush(force=True)
        return published, emf_documents(capsys.readouterr().out)

    for _ in range(3):
        queue.enqueue(NewJob(type="echo", payload="{}", tenant="t", max_tries=1))
    first, baseline = publish("w1")
    for _ in range(2):
        queue.enqueue(NewJob(type="echo", payload="{}", tenant="t", max_tries=1))
    queue.client.delete(queue.keys.metrics_leader)  # the interval is over
    second, docs = publish("w2")
    blocked, nothing = publish("w3")  # w2 holds this interval

    assert first and second and not blocked and nothing == []
    assert metric_values(baseline, obs.JOBS_ACCEPTED) == []  # the first reading is the baseline
    assert metric_values(docs, obs.JOBS_ACCEPTED) == [2.0]
    assert metric_values(docs, obs.QUEUE_DEPTH) == [5.0] and metric_values(docs, obs.DEAD_LETTER_DEPTH) == [0.0]
    assert metric_values(docs, obs.BACKLOG_PER_WORKER) == [5.0]
    assert docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["stage", "queue"]]


def test_a_running_worker_emits_its_heartbeat_and_job_counts(queue: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses
    import threading
    import time

    from offload.handlers import registry
    from offload.queue import NewJob
    from offload.worker import Worker

    settings = dataclasses.replace(queue.settings, metrics_interval_s=0.2)
    worker = Worker(Queue(queue.client, settings), registry, settings)
    queue.enqueue(NewJob(type="echo", payload="{}", tenant="t", max_tries=1))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    worker.stop()
    thread.join(timeout=10)

    docs = emf_documents(capsys.readouterr().out)
    assert sum(metric_values(docs, obs.WORKER_HEARTBEAT)) >= 2
    assert sum(metric_values(docs, obs.JOBS_TAKEN)) == 1 and len(metric_values(docs, obs.JOB_LATENCY)) == 1

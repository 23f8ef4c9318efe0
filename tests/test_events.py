"""Every file in events/ goes through the handler `sam local invoke` would give it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from offload.jobs import Status
from offload.local.gateway import Gateway
from offload.queue import Queue
from tests.conftest import EVENTS, EVENTS_JOB_ID, body_of, dispatched_job, load_event

TENANT = "arn:aws:iam::123456789012:user/tenant-a"


def seed_dispatched_job(queue: Queue, slices: int = 2) -> None:
    """The job the sample events name, its slices dispatched."""
    dispatched_job(
        queue, slices, tenant=TENANT, job_id=EVENTS_JOB_ID, slice_input='{"image":"file:samples/images/rocket.jpg"}'
    )


@pytest.fixture
def gateway(master: ModuleType, callback: ModuleType) -> Iterator[Gateway]:
    """The local API in front of the real handlers; it accepts the test's AWS key."""
    gw = Gateway({"master": master.handler, "callback": callback.handler}, {"testing": "testing"})
    gw.start()
    yield gw
    gw.stop()


def test_every_event_file_has_a_test() -> None:
    tested = {
        "submit_thumbnail.json",
        "get_job.json",
        "compute_slice.json",
        "callback_succeeded.json",
        "callback_failed.json",
        "on_failure_record.json",
    }
    assert {p.name for p in EVENTS.glob("*.json")} == tested


def test_submit_event(master: ModuleType) -> None:
    response = master.handler(load_event("submit_thumbnail.json"), None)

    assert response["statusCode"] == 202 and body_of(response)["status"] == "queued"


def test_get_job_event(master: ModuleType, queue: Queue) -> None:
    seed_dispatched_job(queue)

    response = master.handler(load_event("get_job.json"), None)

    assert response["statusCode"] == 200
    view = body_of(response)
    assert view["job_id"] == EVENTS_JOB_ID and view["status"] == "waiting" and view["slices"]["total"] == 2


def test_compute_event_makes_thumbnails_and_calls_back_signed(
    compute: ModuleType, queue: Queue, gateway: Gateway, environment: dict[str, str]
) -> None:
    seed_dispatched_job(queue)
    event = load_event("compute_slice.json")
    event["callback_url"] = f"{gateway.url}/callbacks/{EVENTS_JOB_ID}"  # the only change: where the API listens

    answer = compute.handler(event, None)

    assert answer == {"status": "succeeded"}
    record = queue.get(EVENTS_JOB_ID)
    assert record is not None and record.slices_succeeded == 1
    [slice_result] = [
        json.loads(v) for k, v in queue.client.hgetall(queue.keys.slices(EVENTS_JOB_ID)).items() if k == "0:out"
    ]
    for thumb in slice_result["thumbnails"]:
        path = Path(thumb["uri"].removeprefix("file://"))
        with Image.open(path) as image:
            assert image.format == "WEBP" and max(image.size) == thumb["size"]
            assert image.size == (thumb["width"], thumb["height"])


def test_callback_succeeded_event(callback: ModuleType, queue: Queue) -> None:
    seed_dispatched_job(queue)

    response = callback.handler(load_event("callback_succeeded.json"), None)

    assert response["statusCode"] == 200 and body_of(response)["verdict"] == "applied"


def test_callback_failed_event(callback: ModuleType, queue: Queue) -> None:
    seed_dispatched_job(queue)

    response = callback.handler(load_event("callback_failed.json"), None)

    assert response["statusCode"] == 200 and body_of(response) == {"verdict": "dead", "job_status": "dead"}
    record = queue.get(EVENTS_JOB_ID)
    assert record is not None and record.status == Status.DEAD and "not an image" in (record.error or "")


def test_on_failure_record_event(callback: ModuleType, queue: Queue) -> None:
    seed_dispatched_job(queue)

    answer: dict[str, Any] = callback.handler(load_event("on_failure_record.json"), None)

    assert answer == {"verdict": "retrying", "job_status": "waiting"}
    assert "Task timed out" in queue.get(EVENTS_JOB_ID).history[-1]["error"]  # type: ignore[union-attr]


def test_the_local_gateway_reads_a_chunked_body(gateway: Gateway) -> None:
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(gateway.url)
    body = json.dumps({"type": "echo", "payload": {"chunked": True}}).encode()
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.putrequest("POST", "/jobs")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    for part in (body[:10], body[10:]):
        connection.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()

    assert response.status == 202 and json.loads(response.read())["status"] == "queued"
    connection.close()

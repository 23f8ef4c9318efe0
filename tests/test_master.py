"""The master function: 202 and a Location, clear errors for bad input, 503 when Redis is away."""

from __future__ import annotations

import base64
import json
import time
from types import ModuleType

import pytest
import redis

from offload.config import Settings
from offload.connection import connect
from offload.queue import Queue
from tests.conftest import api_event, body_of

THUMBNAIL = {"type": "thumbnail", "payload": {"images": ["file:samples/images/rocket.jpg"], "sizes": [64]}}


def test_submit_answers_202_with_the_job_id_and_a_location(master: ModuleType, r: redis.Redis) -> None:
    response = master.handler(api_event("POST", "/jobs", THUMBNAIL), None)

    assert response["statusCode"] == 202
    body = body_of(response)
    assert body["status"] == "queued" and response["headers"]["Location"] == f"/jobs/{body['job_id']}"
    assert r.lrange(master.QUEUE.keys.queued, 0, -1) == [body["job_id"]]


def test_submit_costs_one_redis_round_trip(master: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    master.handler(api_event("POST", "/jobs", THUMBNAIL), None)  # loads the script once
    sent = []
    original = redis.connection.Connection.send_packed_command

    def counting(self: redis.connection.Connection, command: object, check_health: bool = True) -> None:
        sent.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)

    assert master.handler(api_event("POST", "/jobs", THUMBNAIL), None)["statusCode"] == 202
    assert len(sent) == 1


def test_status_reports_the_job(master: ModuleType) -> None:
    job_id = body_of(master.handler(api_event("POST", "/jobs", THUMBNAIL), None))["job_id"]

    response = master.handler(api_event("GET", f"/jobs/{job_id}"), None)

    assert response["statusCode"] == 200
    view = body_of(response)
    assert view["job_id"] == job_id and view["type"] == "thumbnail" and view["status"] == "queued"
    assert view["attempts"] == 0 and view["slices"] == {"total": 0, "succeeded": 0, "failed": 0}
    assert view["created_at"].endswith("+00:00") and view["result"] is None and view["error"] is None


def test_an_unknown_job_is_404(master: ModuleType) -> None:
    response = master.handler(api_event("GET", "/jobs/0123456789abcdef0123456789abcdef"), None)

    assert response["statusCode"] == 404 and body_of(response)["error"] == "job_not_found"


def test_another_tenants_job_is_404_not_403(master: ModuleType) -> None:
    job_id = body_of(master.handler(api_event("POST", "/jobs", THUMBNAIL, tenant="tenant-a"), None))["job_id"]

    response = master.handler(api_event("GET", f"/jobs/{job_id}", tenant="tenant-b"), None)

    assert response["statusCode"] == 404


def test_the_tenant_comes_from_the_identity_not_the_body(master: ModuleType) -> None:
    body = {**THUMBNAIL, "tenant": "someone-else"}

    response = master.handler(api_event("POST", "/jobs", body), None)

    assert response["statusCode"] == 422
    assert body_of(response)["details"][0]["path"] == "tenant"


@pytest.mark.parametrize(
    ("body", "status", "error", "path"),
    [
        ({"type": "nope", "payload": {}}, 422, "unknown_job_type", "type"),
        ({"type": "thumbnail"}, 422, "invalid_request", "payload"),
        ({"type": "thumbnail", "payload": {"images": [], "sizes": [64]}}, 422, "invalid_request", "payload.images"),
        (
            {"type": "thumbnail", "payload": {"images": ["http://x/a.png"], "sizes": [64]}},
            422,
            "invalid_request",
            "payload.images",
        ),
        (
            {"type": "thumbnail", "payload": {"images": ["file:a.png"], "sizes": [0]}},
            422,
            "invalid_request",
            "payload.sizes",
        ),
        (
            {"type": "thumbnail", "payload": {"images": ["file:a.png"], "sizes": [8], "format": "gif"}},
            422,
            "invalid_request",
            "payload.format",
        ),
        ([1, 2], 422, "invalid_request", "(body)"),
    ],
)
def test_schema_errors_are_422_with_the_field_path(
    master: ModuleType, body: object, status: int, error: str, path: str
) -> None:
    response = master.handler(api_event("POST", "/jobs", body), None)

    assert response["statusCode"] == status
    answer = body_of(response)
    assert answer["error"] == error and answer["message"]
    assert path in [d["path"] for d in answer["details"]]


def test_malformed_json_is_400(master: ModuleType) -> None:
    response = master.handler(api_event("POST", "/jobs", raw_body="{not json"), None)

    assert response["statusCode"] == 400 and body_of(response)["error"] == "malformed_json"


@pytest.mark.parametrize("raw", [None, ""])
def test_a_missing_body_is_400(master: ModuleType, raw: str | None) -> None:
    event = api_event("POST", "/jobs")
    event["body"] = raw

    response = master.handler(event, None)

    assert response["statusCode"] == 400 and body_of(response)["error"] == "empty_body"


def test_a_body_over_the_limit_is_413(master: ModuleType) -> None:
    big = {"type": "echo", "payload": {"blob": "x" * (master.SETTINGS.max_body_bytes + 1)}}

    response = master.handler(api_event("POST", "/jobs", big), None)

    assert response["statusCode"] == 413 and body_of(response)["error"] == "body_too_large"


def test_a_non_json_content_type_is_415(master: ModuleType) -> None:
    response = master.handler(api_event("POST", "/jobs", THUMBNAIL, headers={"Content-Type": "text/plain"}), None)

    assert response["statusCode"] == 415


def test_header_names_in_any_case_and_base64_bodies_are_understood(master: ModuleType) -> None:
    event = api_event("POST", "/jobs", headers={"CONTENT-TYPE": "application/json; charset=utf-8"})
    del event["headers"]["Content-Type"]
    event["multiValueHeaders"] = {"content-type": ["application/json; charset=utf-8"]}
    event["body"] = base64.b64encode(json.dumps(THUMBNAIL).encode()).decode()
    event["isBase64Encoded"] = True

    assert master.handler(event, None)["statusCode"] == 202


def test_a_body_flagged_base64_that_is_not_is_400(master: ModuleType) -> None:
    event = api_event("POST", "/jobs", raw_body="%%%not base64%%%")
    event["isBase64Encoded"] = True

    response = master.handler(event, None)

    assert response["statusCode"] == 400 and body_of(response)["error"] == "bad_encoding"


def test_an_unknown_route_is_404_and_a_wrong_method_405(master: ModuleType) -> None:
    assert master.handler(api_event("GET", "/nothing"), None)["statusCode"] == 404
    assert master.handler(api_event("DELETE", "/jobs"), None)["statusCode"] == 405


def test_redis_unreachable_is_503_with_retry_after_and_no_hang(
    master: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a loopback port nothing listens on
    dead = Settings(redis_url="redis://127.0.0.1:9/0")
    monkeypatch.setattr(master, "QUEUE", Queue(connect(dead, "api"), master.SETTINGS))
    started = time.monotonic()

    responses = [
        master.handler(api_event("POST", "/jobs", THUMBNAIL), None),
        master.handler(api_event("GET", "/jobs/0123456789abcdef0123456789abcdef"), None),
    ]

    assert time.monotonic() - started < 5
    for response in responses:
        assert response["statusCode"] == 503
        assert response["headers"]["Retry-After"] == str(master.SETTINGS.retry_after_s)
        assert body_of(response)["error"] == "queue_unavailable"

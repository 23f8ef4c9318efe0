"""Issue #4, row by row: who may call what, every bad input a clear answer, hostile media,
and secrets that never reach a log. (Row 4, the fuzz run, is tests/test_fuzz.py.)

Already covered elsewhere and not repeated here: forged, expired and foreign-slice tokens
(test_callback), tenancy through the master and unsigned or badly signed callbacks at the
local gateway (test_master, test_local_stack).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import botocore.auth
import pytest
import redis
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws
from PIL import Image

from offload import config, signing, storage, tokens
from offload.errors import SliceFailed
from offload.handlers.thumbnail_compute import make_thumbnails
from offload.http import MAX_JSON_DEPTH, caller_tenant, parse_event
from offload.local.gateway import Gateway
from offload.local.redis_server import free_port, start_redis
from offload.queue import Queue
from offload.registry import SliceContext
from offload.slice_models import SliceInvocation
from tests.conftest import EVENTS_SECRET, SAMPLES, api_event, body_of, slice_outcome
from tests.conftest import dispatched_job as shared_dispatched_job

ECHO = {"type": "echo", "payload": {"hello": "world"}}
JOB = "0123456789abcdef0123456789abcdef"


def dispatched_job(queue: Queue, slices: int = 2, tenant: str = "t") -> str:
    return shared_dispatched_job(queue, slices, tenant=tenant, max_tries=3)


def outcome(job_id: str, slice_index: int = 0, attempt: int = 1, **fields: Any) -> dict[str, Any]:
    return slice_outcome(job_id, slice_index, attempt, **{"result": 1, **fields})


def snapshot(r: redis.Redis) -> dict[str, Any]:
    """Every key and its value: "changes nothing" means this stays equal."""
    return {key: r.dump(key) for key in sorted(r.keys("*"))}


def call(function: ModuleType, event: dict[str, Any]) -> tuple[int, Any]:
    response = function.handler(event, None)
    return response["statusCode"], body_of(response)


# -- 1. callback authentication ----------------------------------------------------------
#
# Decision: a *replayed* valid callback (the same outcome again, or the same token with a
# different body) is answered 200 "duplicate" and changes nothing, rather than 403. The
# token is valid, so 403 would say "forged" when it is not, and a compute invocation that
# Lambda retries after a lost answer sends exactly such a replay; what must hold is that it
# changes nothing, which the queue guarantees by fencing on the slice attempt.


def test_a_replayed_callback_is_a_duplicate_and_changes_nothing(
    callback: ModuleType, queue: Queue, r: redis.Redis
) -> None:
    job_id = dispatched_job(queue)
    body = outcome(job_id, result={"thumb": "a"})
    assert call(callback, api_event("POST", f"/callbacks/{job_id}", body))[1]["verdict"] == "applied"
    before = snapshot(r)

    status, answer = call(callback, api_event("POST", f"/callbacks/{job_id}", body))

    assert (status, answer["verdict"]) == (200, "duplicate")
    assert snapshot(r) == before


def test_a_used_token_with_a_flipped_outcome_changes_nothing(
    callback: ModuleType, queue: Queue, r: redis.Redis
) -> None:
    job_id = dispatched_job(queue, slices=1)
    token_body = outcome(job_id)
    call(callback, api_event("POST", f"/callbacks/{job_id}", token_body))
    before = snapshot(r)

    flipped = {**token_body, "status": "failed", "result": None, "error": "evil", "retryable": False}
    status, answer = call(callback, api_event("POST", f"/callbacks/{job_id}", flipped))

    assert (status, answer["verdict"]) == (200, "duplicate")  # the job has succeeded; nothing reopens it
    assert snapshot(r) == before
    job = queue.get(job_id)
    assert job is not None and job.status == "succeeded" and job.result == [1]


def test_the_token_of_a_failed_attempt_cannot_turn_it_into_a_success(
    callback: ModuleType, queue: Queue, r: redis.Redis
) -> None:
    job_id = dispatched_job(queue, slices=1)
    call(callback, api_event("POST", f"/callbacks/{job_id}", outcome(job_id, status="failed", retryable=True)))
    before = snapshot(r)

    status, answer = call(callback, api_event("POST", f"/callbacks/{job_id}", outcome(job_id)))

    assert (status, answer["verdict"]) == (200, "duplicate")
    assert snapshot(r) == before and queue.get(job_id).slices_succeeded == 0  # type: ignore[union-attr]


def test_a_token_taken_to_another_job_is_403_and_changes_nothing(
    callback: ModuleType, queue: Queue, r: redis.Redis
) -> None:
    mine, theirs = dispatched_job(queue), dispatched_job(queue, tenant="other")
    before = snapshot(r)

    status, answer = call(callback, api_event("POST", f"/callbacks/{theirs}", outcome(mine)))

    assert (status, answer["error"]) == (403, "forbidden")
    assert snapshot(r) == before


@pytest.mark.parametrize(
    "token",
    [
        "\u00b2.abc",  # a digit to str.isdigit, not to int()
        "1\u0663.abc",  # an Arabic-Indic digit
        "123.\u00e9\u00e9\u00e9",  # non-ASCII MAC: hmac.compare_digest raises on it
        "9" * 13 + "." + "A" * 43,
        "123." + "A" * 43 + "\n",
        ".",
        "1.",
        "." + "A" * 43,
    ],
)
def test_a_malformed_token_is_403_never_a_500(callback: ModuleType, queue: Queue, token: str) -> None:
    job_id = dispatched_job(queue)

    status, answer = call(callback, api_event("POST", f"/callbacks/{job_id}", {**outcome(job_id), "token": token}))

    assert (status, answer["error"]) == (403, "forbidden")


def test_a_slice_or_attempt_too_big_to_compute_with_is_422(callback: ModuleType, queue: Queue) -> None:
    # found by the fuzz run: 2 ** attempt (the retry backoff) overflowed a float, a 502
    job_id = dispatched_job(queue)
    huge = 10**400

    status, answer = call(callback, api_event("POST", f"/callbacks/{job_id}", outcome(job_id, 0, huge)))

    assert status == 422 and [d["path"] for d in answer["details"]] == ["attempt"]


@dataclass
class Api:
    url: str
    key: str
    secret: str

    def post(self, path: str, body: bytes, *, sign_path: str | None = None, key: str | None = None) -> Any:
        credentials = _credentials(key or self.key, self.secret)
        headers = signing.sign(self.url + (sign_path or path), body, credentials, "us-east-1")
        return requests.post(self.url + path, data=body, headers=headers, timeout=10)


def _credentials(key: str, secret: str) -> Any:
    from botocore.credentials import Credentials

    return Credentials(key, secret)


@pytest.fixture(scope="module")
def api(environment: dict[str, str]) -> Iterator[Api]:
    """The local gateway in front of the real handlers, every route authenticated (as AWS_IAM)."""
    from offload.lambdas import callback, master

    key, secret = "AKIAOFFLOADSECURITY1", "local-secret-for-tests"
    gateway = Gateway(
        {"master": master.handler, "callback": callback.handler},
        {key: secret, "AKIAOFFLOADSECURITY2": "another-secret"},
        anonymous_jobs=False,
    )
    gateway.start()
    yield Api(gateway.url, key, secret)
    gateway.stop()


def test_a_signed_callback_with_a_good_token_is_applied_and_its_replay_changes_nothing(
    api: Api, queue: Queue, r: redis.Redis
) -> None:
    job_id = dispatched_job(queue)
    body = json.dumps(outcome(job_id)).encode()
    first = api.post(f"/callbacks/{job_id}", body)
    assert (first.status_code, first.json()["verdict"]) == (200, "applied")
    before = snapshot(r)

    # the very same signed request again (SigV4 itself allows it for 5 minutes)
    replay = requests.post(api.url + f"/callbacks/{job_id}", data=body, headers=dict(first.request.headers), timeout=10)

    assert (replay.status_code, replay.json()["verdict"]) == (200, "duplicate")
    assert snapshot(r) == before


def test_a_callback_whose_body_changed_after_signing_is_403(api: Api, queue: Queue, r: redis.Redis) -> None:
    job_id = dispatched_job(queue)
    body = json.dumps(outcome(job_id)).encode()
    headers = signing.sign(f"{api.url}/callbacks/{job_id}", body, _credentials(api.key, api.secret), "us-east-1")
    tampered = body.replace(b'"succeeded"', b'"failed"')
    before = snapshot(r)

    response = requests.post(f"{api.url}/callbacks/{job_id}", data=tampered, headers=headers, timeout=10)

    assert response.status_code == 403 and "signature does not match" in response.json()["message"]
    assert snapshot(r) == before


def test_a_callback_signed_for_another_url_an_unknown_key_or_long_ago_is_403(
    api: Api, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = dispatched_job(queue)
    body = json.dumps(outcome(job_id)).encode()

    other_url = api.post(f"/callbacks/{job_id}", body, sign_path=f"/callbacks/{'f' * 32}")
    unknown_key = api.post(f"/callbacks/{job_id}", body, key="AKIAOFFLOADNOBODY001")
    ten_minutes_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: ten_minutes_ago.replace(tzinfo=None))
    too_old = api.post(f"/callbacks/{job_id}", body)

    for response, reason in ((other_url, "does not match"), (unknown_key, "unknown access key"), (too_old, "too old")):
        assert response.status_code == 403 and reason in response.json()["message"]
        assert response.json()["error"] == "forbidden"
    assert queue.get(job_id).slices_succeeded == 0  # type: ignore[union-attr]


def test_signing_at_debug_level_logs_no_signature(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")  # as Lambda's ApplicationLogLevel=DEBUG sets the root logger

    headers = signing.sign("https://api.example/callbacks/x", b"{}", _credentials("AKIAX", "s3cr3t"), "us-east-1")

    signature = headers["Authorization"].rsplit("Signature=", 1)[1]
    assert signature not in caplog.text and "Signature" not in caplog.text


# -- 2. job API authentication and tenancy -----------------------------------------------


def test_an_unsigned_job_request_is_403_when_every_route_needs_iam(api: Api) -> None:
    response = requests.post(api.url + "/jobs", json=ECHO, timeout=10)

    assert response.status_code == 403 and response.json()["error"] == "forbidden"


def test_a_signed_tenant_sees_its_own_job_and_another_tenants_is_404(api: Api) -> None:
    accepted = api.post("/jobs", json.dumps(ECHO).encode())
    assert accepted.status_code == 202
    location = accepted.json()["location"]

    def get(key: str, secret: str) -> requests.Response:
        headers = signing.sign(api.url + location, b"", _credentials(key, secret), "us-east-1", method="GET")
        return requests.get(api.url + location, headers=headers, timeout=10)

    assert get(api.key, api.secret).status_code == 200
    other = get("AKIAOFFLOADSECURITY2", "another-secret")
    assert (other.status_code, other.json()["error"]) == (404, "job_not_found")


def test_a_jwt_tenant_claim_is_the_tenant_and_the_body_cannot_name_one(master: ModuleType) -> None:
    def as_claims(event: dict[str, Any], claims: dict[str, str]) -> dict[str, Any]:
        event["requestContext"] = {"requestId": "r", "authorizer": {"claims": claims}}
        return event

    event = as_claims(api_event("POST", "/jobs", ECHO), {"sub": "user-1", "custom:tenant": "acme"})
    assert caller_tenant(parse_event(event)) == "acme"
    status, accepted = call(master, event)
    assert status == 202

    own = call(master, as_claims(api_event("GET", f"/jobs/{accepted['job_id']}"), {"custom:tenant": "acme"}))
    other = call(master, as_claims(api_event("GET", f"/jobs/{accepted['job_id']}"), {"custom:tenant": "zenith"}))
    assert own[0] == 200 and other[0] == 404
    assert call(master, api_event("POST", "/jobs", {**ECHO, "tenant": "acme"}))[0] == 422


def test_one_idempotency_key_in_two_tenants_makes_two_jobs(master: ModuleType) -> None:
    headers = {"Idempotency-Key": "order-1"}
    a = call(master, api_event("POST", "/jobs", ECHO, headers=headers, tenant="tenant-a"))[1]
    b = call(master, api_event("POST", "/jobs", ECHO, headers=headers, tenant="tenant-b"))[1]

    assert a["job_id"] != b["job_id"]


def test_an_idempotency_key_cannot_reach_into_another_tenants_namespace(master: ModuleType) -> None:
    a = call(master, api_event("POST", "/jobs", ECHO, headers={"Idempotency-Key": "dev:k"}, tenant="acme"))[1]
    status, b = call(master, api_event("POST", "/jobs", ECHO, headers={"Idempotency-Key": "k"}, tenant="acme:dev"))

    assert status == 202 and b["job_id"] != a["job_id"]


# -- 3. input hardening: every bad input a named error, never a 500 ----------------------


def raw_event(method: str, path: str, raw: str | None, **overrides: Any) -> dict[str, Any]:
    event = api_event(method, path, raw_body=raw if raw is not None else "")
    if raw is None:
        event["body"] = None
    event.update(overrides)
    return event


@pytest.mark.parametrize(
    ("name", "headers", "multi"),
    [
        ("lower", {"content-type": "application/json"}, None),
        ("upper", {"CONTENT-TYPE": "application/json"}, None),
        ("mixed", {"cOnTeNt-TyPe": "Application/JSON; Charset=UTF-8"}, None),
        ("multi only", None, {"Content-Type": ["application/json"]}),
        ("both forms", {"Content-Type": "application/json"}, {"content-type": ["application/json"]}),
        ("repeated, same value", None, {"Content-Type": ["application/json", "application/json"]}),
        ("split across cases", None, {"Content-Type": ["application/json"], "content-type": ["application/json"]}),
        ("other header repeated", {"Content-Type": "application/json"}, {"X-Forwarded-For": ["1.2.3.4", "5.6.7.8"]}),
        ("missing: taken as JSON", {}, None),
        ("+json", {"Content-Type": "application/vnd.offload+json"}, None),
        ("null values", {"Content-Type": "application/json", "X-Nothing": None}, {"X-Nothing": None}),
    ],
)
def test_headers_in_any_case_and_form_are_understood(
    master: ModuleType, name: str, headers: dict[str, Any] | None, multi: dict[str, Any] | None
) -> None:
    event = api_event("POST", "/jobs", ECHO)
    event["headers"], event["multiValueHeaders"] = headers, multi

    assert call(master, event)[0] == 202, name


@pytest.mark.parametrize(
    ("headers", "multi", "status", "error"),
    [
        (None, {"Content-Type": ["application/json", "text/plain"]}, 400, "repeated_header"),
        (None, {"Content-Type": ["application/json"], "CONTENT-TYPE": ["text/csv"]}, 400, "repeated_header"),
        (None, {"Idempotency-Key": ["a", "b"]}, 400, "repeated_header"),
        ({"Content-Type": "text/plain"}, None, 415, "unsupported_media_type"),
        ({"Content-Type": "application/json; charset=utf-16"}, None, 415, "unsupported_media_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, None, 415, "unsupported_media_type"),
        ({"Content-Type": "application/json", "X-Evil": "a\r\nSet-Cookie: x"}, None, 400, "bad_header"),
        ({"Content-Type": "application/json", "Idempotency-Key": "a\x00b"}, None, 400, "bad_header"),
        ({"Content-Type": "application/json", "X-Bad": "\ud800"}, None, 400, "bad_encoding"),
    ],
)
def test_ambiguous_or_unacceptable_headers_are_named(
    master: ModuleType, headers: dict[str, Any] | None, multi: dict[str, Any] | None, status: int, error: str
) -> None:
    event = api_event("POST", "/jobs", ECHO)
    event["headers"], event["multiValueHeaders"] = headers, multi

    answer = call(master, event)

    assert answer[0] == status and answer[1]["error"] == error and answer[1]["message"]


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        ("3", 422, "invalid_request"),
        ('"a string"', 422, "invalid_request"),
        ("null", 422, "invalid_request"),
        ("true", 422, "invalid_request"),
        ("[]", 422, "invalid_request"),
        ('{"type": "echo", "payload": {"x": NaN}}', 400, "malformed_json"),
        ('{"type": "echo", "payload": {"x": Infinity}}', 400, "malformed_json"),
        ('{"type": "echo", "payload": {"x": -Infinity}}', 400, "malformed_json"),
        ('{"type": "echo", "payload": {"x": 1e400}}', 400, "malformed_json"),
        ('{"type": "echo", "payload": {"x": ' + "9" * 5000 + "}}", 400, "malformed_json"),
        ('{"type": "echo", "payload": {"x": "\\ud800"}}', 400, "bad_encoding"),
        ('{"type": "echo", "payload": {"\\udfff": 1}}', 400, "bad_encoding"),
        ('{"type": "echo", "payload": {"x": "\ud800"}}', 400, "bad_encoding"),
        ('\ufeff{"type": "echo", "payload": {}}', 400, "malformed_json"),
        ('{"type": "echo", "payload": {}} trailing', 400, "malformed_json"),
        ('{"type": "echo", "payload": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "too_deep"),
        ('{"type": "echo", "payload": {"a": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}}", 400, "too_deep"),
        ('{"type": "Echo!", "payload": {}}', 422, "invalid_request"),
        ('{"type": "nope", "payload": {}}', 422, "unknown_job_type"),
        ('{"type": "thumbnail", "payload": {"images": ["file:a.png"], "sizes": [true]}}', 422, "invalid_request"),
        ('{"type": "thumbnail", "payload": {"images": ["file:a.png"], "sizes": [1e300]}}', 422, "invalid_request"),
        ('{"type": "thumbnail", "payload": {"images": ["s3://[b/k"], "sizes": [8]}}', 422, "invalid_request"),
    ],
)
def test_bodies_that_are_not_a_job_are_named(master: ModuleType, raw: str, status: int, error: str) -> None:
    answer = call(master, raw_event("POST", "/jobs", raw))

    assert answer[0] == status and answer[1]["error"] == error and answer[1]["message"]


def test_json_just_within_the_depth_limit_and_huge_but_finite_numbers_are_accepted(master: ModuleType) -> None:
    depth = MAX_JSON_DEPTH - 2  # the body object and payload are two levels
    nested = "[" * depth + "]" * depth
    payload = f'{{"a": {nested}, "big": {"9" * 4000}, "small": -1e-300, "zero": -0.0}}'
    body = f'{{"type": "echo", "payload": {payload}}}'

    status, accepted = call(master, raw_event("POST", "/jobs", body))

    assert status == 202, accepted


@pytest.mark.parametrize(
    ("body", "flag", "status", "error"),
    [
        (base64.b64encode(b'{"type": "echo", "payload": {"x": "\xff"}}').decode(), True, 400, "bad_encoding"),
        (base64.b64encode(json.dumps(ECHO).encode("utf-16")).decode(), True, 400, "bad_encoding"),
        (base64.b64encode(json.dumps(ECHO).encode()).decode(), True, 202, None),
        ("", True, 400, "empty_body"),
        (None, True, 400, "empty_body"),
        ("not base64!", True, 400, "bad_encoding"),
    ],
)
def test_base64_and_null_bodies(master: ModuleType, body: str | None, flag: bool, status: int, error: str) -> None:
    answer = call(master, raw_event("POST", "/jobs", body, isBase64Encoded=flag))

    assert answer[0] == status
    if error:
        assert answer[1]["error"] == error


@pytest.mark.parametrize(
    "job_id",
    ["../../etc/passwd", "%2e%2e%2f", "a b", "*", "\u00e9t\u00e9", "\u0661" * 32, "x" * 10_000, "", "0" * 31 + "\n"],
)
def test_odd_job_ids_are_404(master: ModuleType, callback: ModuleType, job_id: str) -> None:
    status_get = call(master, raw_event("GET", "/jobs/x", None, pathParameters={"job_id": job_id}))
    status_post = call(
        callback, raw_event("POST", "/callbacks/x", json.dumps(outcome(JOB)), pathParameters={"job_id": job_id})
    )

    assert status_get[0] == 404 and status_get[1]["error"] == "job_not_found"
    # the callback checks the token (bound to the job id) first: no token is valid for these
    assert status_post[0] == 403


@pytest.mark.parametrize("key", ["order #1/2?x=y", "\u00e9\u00e8", "  padded  ", "*", "a:b:c", "'\";--", "k" * 128])
def test_odd_idempotency_keys_work_and_replay_the_same_job(master: ModuleType, key: str) -> None:
    first = call(master, api_event("POST", "/jobs", ECHO, headers={"Idempotency-Key": key}))
    again = call(master, api_event("POST", "/jobs", ECHO, headers={"Idempotency-Key": key}))

    assert (first[0], again[0]) == (202, 202) and first[1]["job_id"] == again[1]["job_id"]


@pytest.mark.parametrize(("key", "error"), [("k" * 129, "bad_idempotency_key"), ("a\nb", "bad_header")])
def test_unusable_idempotency_keys_are_400(master: ModuleType, key: str, error: str) -> None:
    status, answer = call(master, api_event("POST", "/jobs", ECHO, headers={"Idempotency-Key": key}))

    assert (status, answer["error"]) == (400, error)


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"httpMethod": "POST", "resource": "/jobs", "headers": None, "multiValueHeaders": None, "body": None},
        {"httpMethod": "POST", "resource": "/jobs", "headers": "nope", "body": "{}"},
        {"httpMethod": "POST", "resource": "/jobs", "requestContext": ["x"], "body": "{}"},
        {"httpMethod": "GET", "resource": "/jobs/{job_id}", "pathParameters": None},
        {"httpMethod": "GET", "resource": "/jobs/{job_id}", "pathParameters": {"job_id": None}},
    ],
)
def test_odd_event_shapes_get_a_named_4xx(master: ModuleType, event: dict[str, Any]) -> None:
    status, answer = call(master, event)

    assert 400 <= status < 500 and answer["error"] and answer["message"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ('{"slice": 0, "attempt": 1, "token": "1.a", "status": "succeeded", "result": NaN}', 400),
        ('{"slice": 0, "attempt": 1, "token": "1.a", "status": "succeeded", "result": ' + "[" * 5000, 400),
        ('{"slice": 0, "attempt": 1, "token": "1.a", "status": "succeeded", "result": "\\udc00"}', 400),
        ('{"slice": 0, "attempt": 1, "token": "1.a", "status": "succeeded", "extra": 1}', 422),
        ('{"slice": true, "attempt": 1, "token": "1.a", "status": "succeeded"}', 422),
        ("null", 422),
    ],
)
def test_the_callback_names_bad_bodies_too(callback: ModuleType, raw: str, status: int) -> None:
    answer = call(callback, raw_event("POST", f"/callbacks/{JOB}", raw))

    assert answer[0] == status and answer[1]["error"] and answer[1]["message"]


def test_a_callback_body_over_its_limit_is_413(callback: ModuleType) -> None:
    big = json.dumps(outcome(JOB, result="x" * (callback.SETTINGS.max_body_bytes * 4)))

    status, answer = call(callback, raw_event("POST", f"/callbacks/{JOB}", big))

    assert (status, answer["error"]) == (413, "body_too_large")


def raw_http(url: str, request: bytes) -> tuple[bytes, bytes]:
    """Send bytes no HTTP client would; the answer's head and body (the server then hangs up)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(request)
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def test_the_local_gateway_answers_its_own_refusals_in_json(api: Api) -> None:
    # (every byte sent is read before the server hangs up: unread bytes would make it a reset)
    # an unreadable request line: http.server answers it as HTTP/0.9, a body and no head
    head, body = raw_http(api.url, b"GET / HTTP/x.y\r\n")
    assert json.loads(body or head) == {"error": "bad_request", "message": "Bad request version ('HTTP/x.y')"}

    head, body = raw_http(api.url, b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["message"] == "bad Content-Length"

    head, body = raw_http(api.url, b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 10485761\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"] == "request_too_large"

    for response, status in (
        (requests.get(api.url + "/nowhere", timeout=5), 404),
        (requests.delete(api.url + "/jobs", timeout=5), 405),
    ):
        assert response.status_code == status and set(response.json()) == {"error", "message"}


def test_a_handler_that_fails_is_a_502_in_json_not_a_dropped_connection() -> None:
    def broken(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    gateway = Gateway({"master": broken}, {})
    gateway.start()
    try:
        response = requests.post(gateway.url + "/jobs", json=ECHO, timeout=5)
    finally:
        gateway.stop()

    assert response.status_code == 502 and response.json() == {
        "error": "bad_gateway",
        "message": "Internal server error",
    }


# -- 5. hostile media --------------------------------------------------------------------


@dataclass
class Media:
    root: Path
    outside: Path
    output: Path

    def thumbnail(self, uri: str, sizes: tuple[int, ...] = (16,)) -> dict[str, Any]:
        return make_thumbnails(SliceContext(JOB, 0, 1), {"image": uri, "sizes": list(sizes), "format": "png"})

    def refused(self, uri: str) -> SliceFailed:
        with pytest.raises(SliceFailed) as e:
            self.thumbnail(uri)
        return e.value


@pytest.fixture
def media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Media]:
    """An input root with a sample image, a secret next to it (outside), and an output folder;
    a network connection attempt fails the test."""
    root, outside, output = tmp_path / "inputs", tmp_path / "private", tmp_path / "out"
    for folder in (root, outside, output):
        folder.mkdir()
    shutil.copy(SAMPLES / "rocket.jpg", root / "rocket.jpg")
    (outside / "secret.txt").write_text("not for you")
    monkeypatch.setenv("OFFLOAD_INPUT_ROOT", str(root))
    monkeypatch.setenv("OFFLOAD_OUTPUT_URI", output.as_uri())
    monkeypatch.setenv("OFFLOAD_MAX_IMAGE_PIXELS", "4000000")
    monkeypatch.setenv("OFFLOAD_ALLOWED_BUCKETS", "offload-inputs")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a network connection was attempted: {args[:1]}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(storage, "_S3_CLIENT", None)
    config.settings.cache_clear()
    yield Media(root, outside, output)
    config.settings.cache_clear()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_a_decompression_bomb_is_refused_before_it_is_decoded(media: Media, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png(Image.new("1", (4000, 4000)))  # 16 Mpx of one colour: a few kB
    assert len(bomb) < 10_000
    (media.root / "bomb.png").write_bytes(bomb)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the bomb was decoded"))

    error = media.refused("file:bomb.png")

    assert "16000000 pixels, over the limit of 4000000" in error.reason and not error.retryable


def test_an_image_that_claims_gigapixels_is_refused_by_pillow_too(media: Media) -> None:
    # a PNG header claiming 100000 x 100000 and no pixels: Pillow refuses it at open
    def chunk(kind: bytes, data: bytes) -> bytes:
        import zlib

        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = (100_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    (media.root / "claims.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))

    error = media.refused("file:claims.png")

    assert "decompression bomb" in error.reason or "over the limit" in error.reason


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.png", b"this is not a PNG", "not an image Pillow can read"),
        ("empty.jpg", b"", "not an image Pillow can read"),
        ("page.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image Pillow can read"),
        ("icon.png", png(Image.new("RGB", (8, 8))).replace(b"PNG", b"PNX", 1), "not an image Pillow can read"),
    ],
)
def test_unreadable_or_mislabelled_files_fail_their_slice_with_a_reason(
    media: Media, name: str, content: bytes, reason: str
) -> None:
    (media.root / name).write_bytes(content)

    error = media.refused(f"file:{name}")

    assert error.reason.startswith(f"file:{name}: {reason}") and not error.retryable


def test_a_truncated_image_fails_its_slice_with_a_reason(media: Media) -> None:
    data = (SAMPLES / "rocket.jpg").read_bytes()
    (media.root / "half.jpg").write_bytes(data[: len(data) // 2])

    error = media.refused("file:half.jpg")

    assert "damaged or truncated" in error.reason and not error.retryable


def test_a_jpeg_named_png_is_read_as_the_jpeg_it_is_and_16_bit_greyscale_works(media: Media) -> None:
    # decision: the bytes decide the format, the name is only a name
    shutil.copy(SAMPLES / "rocket.jpg", media.root / "rocket.png")
    Image.new("I;16", (64, 32), 40000).save(media.root / "deep.png")

    for uri in ("file:rocket.png", "file:deep.png"):
        result = media.thumbnail(uri)
        with Image.open(Path(result["thumbnails"][0]["uri"].removeprefix("file://"))) as thumb:
            assert thumb.format == "PNG" and max(thumb.size) == 16


@pytest.mark.parametrize(
    "uri",
    [
        "file:../private/secret.txt",
        "file:%2e%2e/private/secret.txt",
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "file:link-out",
        "file:link-dir/secret.txt",
    ],
)
def test_file_uris_outside_the_root_are_refused_unread(media: Media, uri: str) -> None:
    (media.root / "link-out").symlink_to(media.outside / "secret.txt")
    (media.root / "link-dir").symlink_to(media.outside, target_is_directory=True)

    error = media.refused(uri)

    assert "outside the allowed input folder" in error.reason and not error.retryable


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("file://elsewhere/rocket.jpg", "not a local file URI"),
        ("file:rock%00et.jpg", "NUL byte"),
        ("file:missing.jpg", "no such file"),
        ("file:", "is a folder"),
        ("file:fifo", "not a regular file"),
        ("http://127.0.0.1:9/rocket.jpg", "scheme 'http' is not allowed"),
        ("https://192.0.2.1/rocket.jpg", "scheme 'https' is not allowed"),
        ("ftp://192.0.2.1/rocket.jpg", "scheme 'ftp' is not allowed"),
        ("gopher://127.0.0.1:9/x", "scheme 'gopher' is not allowed"),
        ("data:image/png;base64,AAAA", "scheme 'data' is not allowed"),
        ("rocket.jpg", "scheme '' is not allowed"),
        ("s3://[bucket/key", "not a URI"),
    ],
)
def test_other_uris_fail_the_slice_with_a_reason_and_no_connection(media: Media, uri: str, reason: str) -> None:
    os.mkfifo(media.root / "fifo")  # would block a plain read forever

    error = media.refused(uri)

    assert reason in error.reason and not error.retryable


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1:9/a.png", "ftp://192.0.2.1/a.png", "gopher://x/a", "//host/a.png", "a.png", ""]
)
def test_the_master_refuses_other_schemes_with_the_field_path(master: ModuleType, uri: str) -> None:
    body = {"type": "thumbnail", "payload": {"images": ["file:ok.png", uri], "sizes": [64]}}

    status, answer = call(master, api_event("POST", "/jobs", body))

    assert status == 422 and any(d["path"].startswith("payload.images") for d in answer["details"])


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["s3:", "file:", "S3:", "FiLe:", "http:", "s3", ""]), st.text(max_size=12))
def test_the_masters_quick_scheme_check_agrees_with_urlsplit(scheme: str, rest: str) -> None:
    from offload.handlers.thumbnail import _check_uri

    uri = scheme + rest
    try:
        expected: str | None = uri if urllib.parse.urlsplit(uri).scheme in storage.ALLOWED_SCHEMES else None
    except ValueError:
        expected = None
    try:
        got: str | None = _check_uri(uri)
    except ValueError:
        got = None
    assert got == expected


def test_the_compute_function_reports_a_refused_input_as_a_failed_slice(media: Media, compute: ModuleType) -> None:
    invocation = SliceInvocation(
        job_id=JOB,
        queue="default",
        type="thumbnail",
        slice=0,
        attempt=1,
        callback_url="http://127.0.0.1:9/callbacks/x",
        callback_token="t",
        input={"image": "http://127.0.0.1:9/a.png", "sizes": [8], "format": "png"},
    )

    result = compute.run_slice(invocation)

    assert result.status == "failed" and not result.retryable
    assert result.error == "http://127.0.0.1:9/a.png: scheme 'http' is not allowed (use file or s3)"


def test_an_s3_bucket_not_allowed_is_refused_without_an_s3_call(media: Media, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_s3", lambda: pytest.fail("S3 was called"))

    for uri in ("s3://someone-elses-bucket/photo.jpg", "s3://offload-inputs.evil/photo.jpg", "s3://x@offload-inputs/k"):
        error = media.refused(uri)
        assert "is not in OFFLOAD_ALLOWED_BUCKETS" in error.reason and not error.retryable
    assert "no object key" in media.refused("s3://offload-inputs/").reason


@mock_aws
def test_an_allowed_bucket_is_read_and_thumbnails_go_to_s3(media: Media, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in ("offload-inputs", "offload-outputs"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="offload-inputs", Key="in/rocket.jpg", Body=(SAMPLES / "rocket.jpg").read_bytes())
    monkeypatch.setenv("OFFLOAD_OUTPUT_URI", "s3://offload-outputs/thumbs")
    config.settings.cache_clear()

    result = media.thumbnail("s3://offload-inputs/in/rocket.jpg", sizes=(32, 64))
    missing = media.refused("s3://offload-inputs/in/nothing.jpg")

    assert [t["uri"] for t in result["thumbnails"]] == [
        f"s3://offload-outputs/thumbs/{JOB}/0000-rocket-{size}.png" for size in (32, 64)
    ]
    stored = s3.get_object(Bucket="offload-outputs", Key=f"thumbs/{JOB}/0000-rocket-64.png")
    assert stored["ContentType"] == "image/png"
    with Image.open(io.BytesIO(stored["Body"].read())) as thumb:
        assert thumb.format == "PNG" and max(thumb.size) == 64
    assert missing.reason.endswith("NoSuchKey") and not missing.retryable


# -- 7. secrets never logged -------------------------------------------------------------

HARNESS = """
import json, logging, os, sys
from pathlib import Path

logging.basicConfig(level=logging.DEBUG)  # every library's DEBUG lines too, on stderr
from offload.local.stack import LocalStack

stack = LocalStack(state_dir=Path(sys.argv[1]), input_root=Path(sys.argv[2]), compute_concurrency=1, lambda_retries=0)
stack.start()
stack.run_worker_in_background()
# for the test only, out of band: what the stack made up
Path(sys.argv[3]).write_text(json.dumps({"url": stack.url, "aws_secret": os.environ["AWS_SECRET_ACCESS_KEY"]}))
sys.stdin.read()
stack.stop()
"""
TOKEN_SHAPE = re.compile(r"\b\d{9,11}\.[A-Za-z0-9_-]{43}\b")


def _mac_candidates(secret: str, job_id: str, slices: int, since: float, until: float) -> set[str]:
    """Every token the worker can have issued for the job's slices in the time window."""
    ttl = 60 + 60  # OFFLOAD_SLICE_TIMEOUT_S + OFFLOAD_CALLBACK_TOKEN_GRACE_S below
    return {
        tokens._mac(secret, job_id, s, a, expires)
        for s in range(slices)
        for a in (1, 2, 3)
        for expires in range(int(since + ttl) - 2, int(until + ttl) + 2)
    }


@pytest.fixture
def password_redis() -> Iterator[tuple[str, str]]:
    server = start_redis()
    password = "redis-auth-" + os.urandom(12).hex()
    # start_redis(extra_args=("--requirepass", ...)) never comes up (its readiness ping gets
    # NOAUTH, a ConnectionError, until the deadline), so the password is set once it is up
    redis.Redis(host="127.0.0.1", port=server.port).config_set("requirepass", password)
    yield f"redis://:{password}@127.0.0.1:{server.port}/0", password
    server.stop()


@pytest.mark.timeout(90)
def test_a_full_job_logs_no_token_secret_signature_or_password(tmp_path: Path, password_redis: tuple[str, str]) -> None:
    redis_url, password = password_redis
    callback_secret = "callback-secret-" + os.urandom(12).hex()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(SAMPLES / "rocket.jpg", inputs / "rocket.jpg")
    (inputs / "fake.png").write_text("not an image")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "OFFLOAD_", "AWS_", "POWERTOOLS_"))}
    env.update(
        REDIS_URL=redis_url,
        OFFLOAD_CALLBACK_SECRET=callback_secret,
        OFFLOAD_SLICE_TIMEOUT_S="60",
        OFFLOAD_CALLBACK_TOKEN_GRACE_S="60",
        POWERTOOLS_LOG_LEVEL="DEBUG",
        POWERTOOLS_TRACE_DISABLED="true",
    )
    info = tmp_path / "info.json"
    logs = tmp_path / "stdout.log", tmp_path / "stderr.log"
    started = time.time()
    with open(logs[0], "wb") as out, open(logs[1], "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", HARNESS, str(tmp_path / "state"), str(inputs), str(info)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
        )
        try:
            stack = _wait_for_file(info, process)
            url = stack["url"]
            job = requests.post(
                f"{url}/jobs",
                json={"type": "thumbnail", "payload": {"images": ["file:rocket.jpg", "file:fake.png"], "sizes": [32]}},
                headers={"Idempotency-Key": "secret-test"},
                timeout=10,
            ).json()["job_id"]
            echo = requests.post(f"{url}/jobs", json=ECHO, timeout=10).json()["job_id"]
            views = {job_id: _wait_for_end(url, job_id) for job_id in (job, echo)}
            # and a refusal or two, which log too
            requests.post(f"{url}/callbacks/{job}", json=outcome(job), timeout=10)
            requests.post(f"{url}/jobs", data=b"{", timeout=10)
        finally:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=30)
    finished = time.time()

    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert views[job]["status"] == "dead" and "fake.png" in views[job]["error"]
    assert views[echo]["status"] == "succeeded"
    assert job in text and '"level":"DEBUG"' in text  # the capture saw the job, at DEBUG
    secrets = {
        "Redis AUTH password": password,
        "callback secret": callback_secret,
        "AWS secret key": stack["aws_secret"],
    }
    for name, value in secrets.items():
        assert value not in text, f"the {name} is in the logs"
    assert "Signature=" not in text and "AWS4-HMAC-SHA256" not in text, "a SigV4 signature is in the logs"
    assert not TOKEN_SHAPE.findall(text), "a callback token is in the logs"
    leaked = [mac for mac in _mac_candidates(callback_secret, job, 2, started, finished) if mac in text]
    assert not leaked, "a callback token's MAC is in the logs"


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text():
        assert process.poll() is None, "the local stack exited"
        assert time.monotonic() < deadline, "the local stack did not start"
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def _wait_for_end(url: str, job_id: str, timeout_s: float = 45) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = requests.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if view["status"] in ("succeeded", "dead"):
            return dict(view)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture
def logs_of() -> Iterator[Callable[[ModuleType], Callable[[], str]]]:
    """What a function module's Powertools logger writes, as it formats it (extra keys included)."""
    import logging

    added: list[tuple[logging.Logger, logging.Handler]] = []

    def capture(module: ModuleType) -> Callable[[], str]:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(module.logger.registered_formatter)
        target = logging.getLogger(module.logger.name)
        target.addHandler(handler)
        added.append((target, handler))
        return stream.getvalue

    yield capture
    for target, handler in added:
        target.removeHandler(handler)


def test_a_malformed_compute_event_is_dropped_without_logging_its_token(
    compute: ModuleType, logs_of: Callable[[ModuleType], Callable[[], str]]
) -> None:
    token = tokens.issue(EVENTS_SECRET, JOB, 0, 1, 60)
    logged = logs_of(compute)

    compute.handler({"job_id": JOB, "slice": 0, "attempt": 1, "callback_token": token, "input": {}}, None)

    assert "malformed compute event dropped" in logged() and token not in logged()


def test_an_unreadable_on_failure_record_is_dropped_without_logging_its_token(
    callback: ModuleType, logs_of: Callable[[ModuleType], Callable[[], str]]
) -> None:
    token = tokens.issue(EVENTS_SECRET, JOB, 0, 1, 60)
    logged = logs_of(callback)

    answer = callback.handler({"version": "1.0", "requestPayload": {"job_id": JOB, "callback_token": token}}, None)

    assert answer == {"verdict": "rejected"}
    assert "unreadable OnFailure record dropped" in logged() and token not in logged()


@pytest.mark.timeout(60)
def test_local_up_does_not_print_the_redis_password(tmp_path: Path, password_redis: tuple[str, str]) -> None:
    redis_url, password = password_redis
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "OFFLOAD_", "AWS_"))}
    env.update(REDIS_URL=redis_url, OFFLOAD_INPUT_ROOT=str(tmp_path))
    command = [sys.executable, "-m", "offload.cli", "local", "up", "--port", str(free_port()), "--json"]
    process = subprocess.Popen(
        [*command, "--state-dir", str(tmp_path / "state")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)

    assert '"ready"' in ready
    assert password not in ready + errors

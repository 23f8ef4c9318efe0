"""The callback function: token checks, idempotent outcomes, Lambda failure records."""

from __future__ import annotations

import json
from types import ModuleType

from offload import tokens
from offload.jobs import Status
from offload.queue import Queue
from tests.conftest import EVENTS_SECRET, api_event, body_of, dispatched_job
from tests.conftest import slice_outcome as outcome


def post(callback: ModuleType, job_id: str, body: object) -> dict[str, object]:
    response: dict[str, object] = callback.handler(api_event("POST", f"/callbacks/{job_id}", body), None)
    return response


def test_a_valid_outcome_is_applied(callback: ModuleType, queue: Queue) -> None:
    job_id = dispatched_job(queue)

    response = post(callback, job_id, outcome(job_id))

    assert response["statusCode"] == 200
    assert body_of(response) == {"verdict": "applied", "job_status": "waiting"}  # type: ignore[arg-type]


def test_a_repeated_callback_is_200_and_changes_nothing(callback: ModuleType, queue: Queue) -> None:
    job_id = dispatched_job(queue)
    post(callback, job_id, outcome(job_id))

    response = post(callback, job_id, outcome(job_id, result={"ok": 2}))

    assert response["statusCode"] == 200 and body_of(response)["verdict"] == "duplicate"  # type: ignore[arg-type]
    assert queue.get(job_id).slices_succeeded == 1  # type: ignore[union-attr]


def test_a_forged_token_is_403_and_changes_nothing(callback: ModuleType, queue: Queue) -> None:
    job_id = dispatched_job(queue)
    forged = {**outcome(job_id), "token": tokens.issue("not-the-secret", job_id, 0, 1, 60)}

    response = post(callback, job_id, forged)

    assert response["statusCode"] == 403 and body_of(response)["error"] == "forbidden"  # type: ignore[arg-type]
    assert queue.get(job_id).slices_succeeded == 0  # type: ignore[union-attr]


def test_a_token_for_another_slice_attempt_or_job_is_403(callback: ModuleType, queue: Queue) -> None:
    job_id = dispatched_job(queue)
    other = dispatched_job(queue)

    for body in (
        {**outcome(job_id, 1), "slice": 0},
        {**outcome(job_id, 0, attempt=2), "attempt": 1},
        outcome(other),
    ):
        assert post(callback, job_id, body)["statusCode"] == 403
    assert queue.get(job_id).slices_succeeded == 0  # type: ignore[union-attr]


def test_an_expired_token_is_403(callback: ModuleType, queue: Queue) -> None:
    job_id = dispatched_job(queue)
    expired = {**outcome(job_id), "token": tokens.issue(EVENTS_SECRET, job_id, 0, 1, -1)}

    response = post(callback, job_id, expired)

    assert response["statusCode"] == 403 and "expired" in body_of(response)["message"]  # type: ignore[arg-type]


def test_a_failed_outcome_that_cannot_be_retried_dead_letters_the_job(callback: ModuleType, queue: Queue) -> None:
    job_id = dispatched_job(queue)

    response = post(
        callback, job_id, outcome(job_id, status="failed", result=None, error="unreadable", retryable=False)
    )

    assert body_of(response) == {"verdict": "dead", "job_status": "dead"}  # type: ignore[arg-type]
    record = queue.get(job_id)
    assert record is not None and record.status == Status.DEAD and record.error == "slice 0: unreadable"


def test_an_unknown_job_is_404(callback: ModuleType) -> None:
    job_id = "f" * 32

    assert post(callback, job_id, outcome(job_id))["statusCode"] == 404


def test_a_malformed_outcome_is_422(callback: ModuleType, queue: Queue) -> None:
    job_id = dispatched_job(queue)

    response = post(callback, job_id, {"slice": -1, "attempt": 1, "token": "x", "status": "maybe"})

    assert response["statusCode"] == 422
    assert {d["path"] for d in body_of(response)["details"]} == {"slice", "status"}  # type: ignore[arg-type]


def test_an_on_failure_record_fails_that_slice_attempt_with_lambdas_reason(callback: ModuleType, queue: Queue) -> None:
    job_id = dispatched_job(queue, slices=1)
    token = tokens.issue(EVENTS_SECRET, job_id, 0, 1, 60)
    record = {
        "version": "1.0",
        "timestamp": "2026-12-03T00:00:00Z",
        "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": {
            "job_id": job_id,
            "queue": "default",
            "type": "thumbnail",
            "slice": 0,
            "attempt": 1,
            "callback_url": "https://x/callbacks",
            "callback_token": token,
            "input": {},
        },
        "responsePayload": {"errorMessage": "Task timed out after 300.00 seconds", "errorType": "Sandbox.Timedout"},
    }

    answer = callback.handler(record, None)

    assert answer == {"verdict": "retrying", "job_status": "waiting"}
    history = queue.get(job_id).history  # type: ignore[union-attr]
    assert "Task timed out after 300.00 seconds" in history[-1]["error"]
    assert json.loads(json.dumps(history))[-1]["slice"] == 0

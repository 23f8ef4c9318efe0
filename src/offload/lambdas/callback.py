"""Callback function: the single writer of a dispatched job's state.

Two doors in: ``POST /callbacks/{job_id}`` (AWS_IAM on the route, SigV4-signed by the
compute function) with a slice outcome, and Lambda's ``OnFailure`` destination record
when the compute function itself failed. Both carry the slice's callback token.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json

from offload import observability as obs
from offload import tokens
from offload.config import settings
from offload.connection import connect
from offload.errors import CallbackRejected, QueueUnavailable
from offload.http import HttpError, error_response, json_body, parse_event, respond
from offload.logs import service_logger
from offload.queue import Outcome, OutcomeVerdict, Queue
from offload.retries import backoff_ms
from offload.slice_models import LambdaFailureRecord, SliceInvocation, SliceOutcome

logger = service_logger("offload-callback")
# No Powertools Tracer, for the cold start: see the master function's note.

SETTINGS = settings()
QUEUE = Queue(connect(SETTINGS, "api"), SETTINGS)
METRICS = obs.new_metrics(SETTINGS)
# Every key an invocation appends; forgetting them is all clear_state() would do here, at a
# fraction of the cost.
REQUEST_KEYS = ("correlation_id", "job_id", "slice_id", "attempt", "job_type", "tenant")
_SECRET: str | None = None


def _result_json(result: Any) -> str:
    """The slice's result as compact JSON (it came from parse_json: finite numbers only)."""
    return to_json(result).decode()


def _secret() -> str:
    global _SECRET
    if _SECRET is None:
        _SECRET = tokens.signing_secret(SETTINGS.callback_secret, SETTINGS.callback_secret_arn)
    return _SECRET


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.remove_keys(REQUEST_KEYS)
    try:
        if "requestPayload" in event and "httpMethod" not in event:
            return on_failure_record(event)
        return on_request(event)
    finally:
        obs.flush(METRICS)


def on_request(event: dict[str, Any]) -> dict[str, Any]:
    try:
        request = parse_event(event)
        logger.set_correlation_id(request.request_id or None)
        if request.method != "POST" or request.resource != "/callbacks/{job_id}":
            raise HttpError(404, "not_found", f"no route for {request.method} {request.path or request.resource}")
        job_id = request.path_params.get("job_id", "")
        outcome = json_body(request, SliceOutcome, max_bytes=SETTINGS.max_body_bytes * 4)
        applied = apply(job_id, outcome)
    except HttpError as e:
        return error_response(e)
    except QueueUnavailable as e:
        logger.warning("queue unavailable; answering 503", extra={"reason": str(e)})
        return error_response(
            HttpError(
                503,
                "queue_unavailable",
                "the job store is unavailable; retry later",
                headers={"Retry-After": str(SETTINGS.retry_after_s)},
            )
        )
    if applied.verdict == OutcomeVerdict.UNKNOWN:
        return error_response(HttpError(404, "job_not_found", f"no job {job_id!r} with slice {outcome.slice}"))
    return respond(200, {"verdict": applied.verdict, "job_status": applied.job_status})


def apply(job_id: str, outcome: SliceOutcome) -> Outcome:
    logger.append_keys(job_id=job_id, slice_id=outcome.slice, attempt=outcome.attempt)
    try:
        tokens.verify(_secret(), outcome.token, job_id, outcome.slice, outcome.attempt)
    except CallbackRejected as e:
        logger.warning("callback rejected", extra={"reason": str(e)})
        raise HttpError(403, "forbidden", str(e)) from None

    succeeded = outcome.status == "succeeded"
    applied = QUEUE.apply_outcome(
        job_id,
        outcome.slice,
        outcome.attempt,
        succeeded=succeeded,
        result_json=_result_json(outcome.result) if succeeded else "",
        reason=outcome.error or "the compute function reported a failure without a reason",
        retryable=outcome.retryable,
        backoff_ms=0 if succeeded else backoff_ms(outcome.attempt, SETTINGS.retry_base_s, SETTINGS.retry_max_s),
    )
    logger.append_keys(job_type=applied.type or None, tenant=applied.tenant or None)
    _record(applied, outcome.error)
    return applied


def on_failure_record(event: dict[str, Any]) -> dict[str, Any]:
    """Lambda gave up on a compute invocation: fail that slice attempt with Lambda's reason."""
    try:
        record = LambdaFailureRecord.model_validate(event)
    except ValidationError as e:
        logger.error(
            "unreadable OnFailure record dropped", extra={"errors": e.errors(include_url=False, include_input=False)}
        )
        return {"verdict": "rejected"}
    invocation: SliceInvocation = record.request_payload
    outcome = SliceOutcome(
        slice=invocation.slice,
        attempt=invocation.attempt,
        token=invocation.callback_token,
        status="failed",
        error=record.reason[:4096],
        retryable=True,
    )
    try:
        applied = apply(invocation.job_id, outcome)
    except HttpError as e:
        return {"verdict": "rejected", "reason": e.message}
    # QueueUnavailable propagates: the destination invocation fails and Lambda retries it
    return {"verdict": str(applied.verdict), "job_status": applied.job_status}


def _record(applied: Outcome, error: str | None) -> None:
    """One log line and the metrics for what the outcome did."""
    verdict = applied.verdict
    if verdict in (OutcomeVerdict.STALE, OutcomeVerdict.DUPLICATE, OutcomeVerdict.INACTIVE):
        logger.info("callback ignored", extra={"verdict": verdict})
        return
    # job and slice counts are published from the queue's counters (observability.QueueGauges)
    if verdict == OutcomeVerdict.COMPLETED:
        if applied.created_ms:
            obs.milliseconds(METRICS, obs.JOB_LATENCY, time.time() * 1000 - applied.created_ms)
        logger.info("slice succeeded; job succeeded")
    elif verdict == OutcomeVerdict.APPLIED:
        logger.info("slice succeeded")
    elif verdict == OutcomeVerdict.RETRYING:
        logger.info("slice failed; retrying", extra={"error": error})
    elif verdict == OutcomeVerdict.DEAD:
        logger.info("slice failed; job dead-lettered", extra={"error": error})

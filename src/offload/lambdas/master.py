"""Master function: ``POST /jobs`` validates and enqueues (one round trip), ``GET /jobs/{job_id}``
reports. It never runs the work, and it answers 503 rather than queue into a void."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, cast

from pydantic import BaseModel, Field, ValidationError, create_model

from offload import observability as obs
from offload.config import settings
from offload.connection import connect
from offload.errors import QueueUnavailable, UnknownJobType
from offload.handlers import registry
from offload.http import (
    HttpError,
    Request,
    caller_tenant,
    error_response,
    json_document,
    parse_event,
    respond,
    validate,
)
from offload.jobs import Status
from offload.logs import service_logger
from offload.models import JobAccepted, JobRequest, JobView
from offload.queue import EnqueueVerdict, NewJob, Queue
from offload.registry import JobType

logger = service_logger("offload-master")
# No Powertools Tracer here: the X-Ray SDK under it loads botocore, half of this function's
# cold start (see docs/benchmarks.md). Lambda's active tracing still records the invocation,
# and the job carries its trace header on to the worker, compute and callback; the compute
# function's annotations (job_id, job_type) make the whole trace findable.

SETTINGS = settings()
# Module scope: one connection pool per execution environment, reused across invocations.
QUEUE = Queue(connect(SETTINGS, "api"), SETTINGS)
METRICS = obs.new_metrics(SETTINGS)
# The only key an invocation appends (job keys go on each line as extras); forgetting it
# is all clear_state() would do here, at a fraction of the cost.
REQUEST_KEYS = ("correlation_id",)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.remove_keys(REQUEST_KEYS)
    try:
        response = answer(event)
    finally:
        obs.flush(METRICS)
    return response


def answer(event: dict[str, Any]) -> dict[str, Any]:
    try:
        request = parse_event(event)
        logger.set_correlation_id(request.request_id or None)
        return route(request)
    except HttpError as e:
        if e.status not in (404, 405):
            obs.rejected(SETTINGS, e.error)
        return error_response(e)
    except QueueUnavailable as e:
        logger.warning("queue unavailable; answering 503", extra={"reason": str(e)})
        obs.rejected(SETTINGS, "queue_unavailable")
        retry_after = str(SETTINGS.retry_after_s)
        return error_response(
            HttpError(
                503,
                "queue_unavailable",
                "the job queue is unavailable; retry later",
                headers={"Retry-After": retry_after},
            )
        )


def route(request: Request) -> dict[str, Any]:
    if request.resource == "/jobs" and request.method == "POST":
        return submit(request)
    if request.resource == "/jobs/{job_id}" and request.method == "GET":
        return status(request, request.path_params.get("job_id", ""))
    if request.resource in ("/jobs", "/jobs/{job_id}"):
        raise HttpError(405, "method_not_allowed", f"{request.method} is not allowed on {request.resource}")
    raise HttpError(404, "not_found", f"no route for {request.method} {request.path or request.resource}")


def submit(request: Request) -> dict[str, Any]:
    body, payload, job_type = job_request(json_document(request, max_bytes=SETTINGS.max_body_bytes))
    payload_json = payload.model_dump_json()

    tenant = caller_tenant(request)
    idempotency_key = request.header("idempotency-key")
    if len(idempotency_key) > 128:
        raise HttpError(400, "bad_idempotency_key", "Idempotency-Key must be at most 128 characters")
    digest = ""
    if idempotency_key:
        digest = hashlib.sha256(json.dumps([body.type, payload_json, body.priority]).encode()).hexdigest()[:32]

    result = QUEUE.enqueue(
        NewJob(
            type=body.type,
            payload=payload_json,
            tenant=tenant,
            max_tries=job_type.max_tries,
            # Lambda's own trace (the API's request, in AWS), else the gateway's header
            trace=os.environ.get("_X_AMZN_TRACE_ID") or request.header(obs.TRACE_HEADER),
            priority=body.priority,
        ),
        idempotency_key=idempotency_key,
        request_digest=digest,
    )
    if result.verdict == EnqueueVerdict.SHED:
        logger.warning("backlog full; job shed", extra={"job_type": body.type, "tenant": tenant, "depth": result.depth})
        raise HttpError(
            429,
            "backlog_full",
            f"the queue holds {result.depth} jobs, its limit; retry later",
            headers={"Retry-After": str(SETTINGS.retry_after_s)},
        )
    if result.verdict == EnqueueVerdict.CONFLICT:
        raise HttpError(
            409,
            "idempotency_conflict",
            f"Idempotency-Key {idempotency_key!r} was used for a different request (job {result.job_id})",
        )

    location = f"/jobs/{result.job_id}"
    headers = {"Location": location}
    if result.verdict == EnqueueVerdict.DUPLICATE:
        headers["Idempotent-Replayed"] = "true"
    logger.info(
        "job accepted" if result.verdict == EnqueueVerdict.ACCEPTED else "duplicate submission; original job returned",
        extra={"job_id": result.job_id, "job_type": body.type, "tenant": tenant},
    )
    job = QUEUE.get(result.job_id) if result.verdict == EnqueueVerdict.DUPLICATE else None
    status_now = job.status if job else Status.QUEUED
    return respond(202, JobAccepted(job_id=result.job_id, status=status_now, location=location), headers)


def job_request(data: Any) -> tuple[JobRequest, BaseModel, JobType]:
    """The request, its payload and its job type; 422 for what does not validate.

    A valid request of a known type is validated in one pass, by the model of its type; any
    other is looked at step by step (the envelope, the type, the payload), so the error
    names the first thing wrong, the same every time.
    """
    job_type = registry.find(data.get("type")) if type(data) is dict else None
    if job_type is not None:
        try:
            typed = typed_request_model(job_type).model_validate(data)
            return typed, cast(BaseModel, typed.payload), job_type
        except ValidationError:
            pass
    body = validate(JobRequest, data)
    try:
        job_type = registry.get(body.type)
    except UnknownJobType as e:
        raise HttpError(422, "unknown_job_type", str(e), details=[{"path": "type", "message": str(e)}]) from None
    return body, validate(job_type.payload_model, body.payload, prefix=("payload",)), job_type


@functools.cache
def typed_request_model(job_type: JobType) -> type[JobRequest]:
    """``JobRequest`` with the payload typed as ``job_type``'s model."""
    payload_field = (job_type.payload_model, Field(description=JobRequest.model_fields["payload"].description))
    model: type[JobRequest] = create_model(f"{job_type.name}_request", __base__=JobRequest, payload=payload_field)
    return model


def status(request: Request, job_id: str) -> dict[str, Any]:
    job = QUEUE.get(job_id) if job_id.isalnum() and len(job_id) <= 64 else None
    # another tenant's job answers exactly like a missing one: its existence is not leaked
    if job is None or job.tenant != caller_tenant(request):
        raise HttpError(404, "job_not_found", f"no job {job_id!r}")
    return respond(200, JobView.of(job))

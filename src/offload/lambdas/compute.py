"""Compute function: runs one slice's heavy work, then POSTs the outcome to the callback URL,
signed with SigV4. Invoked asynchronously (``InvocationType=Event``) by the worker."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
from aws_lambda_powertools.tracing import Tracer
from pydantic import ValidationError

from offload import observability as obs
from offload import signing
from offload.config import settings
from offload.errors import SliceFailed, UnknownJobType
from offload.handlers import registry
from offload.logs import service_logger
from offload.registry import SliceContext
from offload.slice_models import SliceInvocation, SliceOutcome

logger = service_logger("offload-compute")
tracer = Tracer(service="offload-compute", patch_modules=["botocore"])
METRICS = obs.new_metrics(settings())

_SESSION = boto3.Session()
CALLBACK_TIMEOUT_S = 10.0


class CallbackUndelivered(Exception):
    """The outcome could not be delivered; raising lets Lambda retry the invocation, and
    after its retries the OnFailure destination reports the slice as failed."""


@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.clear_state()
    try:
        return run(event)
    finally:
        obs.flush(METRICS)


def run(event: dict[str, Any]) -> dict[str, Any]:
    try:
        invocation = SliceInvocation.model_validate(event)
    except ValidationError as e:
        # Nobody to report to without a callback URL: log it and do not retry.
        logger.error(
            "malformed compute event dropped", extra={"errors": e.errors(include_url=False, include_input=False)}
        )
        return {"status": "rejected", "reason": "malformed event"}
    logger.append_keys(
        job_id=invocation.job_id, job_type=invocation.type, slice_id=invocation.slice, attempt=invocation.attempt
    )

    tracer.put_annotation(key="job_id", value=invocation.job_id)
    tracer.put_annotation(key="job_type", value=invocation.type)
    if invocation.trace:
        logger.append_keys(xray_trace_id=obs.trace_root(invocation.trace))

    started = time.monotonic()
    outcome = run_slice(invocation)
    obs.milliseconds(METRICS, obs.SLICE_DURATION, (time.monotonic() - started) * 1000)
    deliver(invocation, outcome)
    logger.info("slice " + outcome.status, extra={"error": outcome.error} if outcome.error else None)
    return {"status": outcome.status}


def run_slice(invocation: SliceInvocation) -> SliceOutcome:
    base: dict[str, Any] = {
        "slice": invocation.slice,
        "attempt": invocation.attempt,
        "token": invocation.callback_token,
    }
    try:
        compute = registry.get(invocation.type).compute()
        result = compute(SliceContext(invocation.job_id, invocation.slice, invocation.attempt), invocation.input)
        return SliceOutcome(**base, status="succeeded", result=result)
    except SliceFailed as e:
        return SliceOutcome(**base, status="failed", error=e.reason[:4096], retryable=e.retryable)
    except UnknownJobType as e:
        return SliceOutcome(**base, status="failed", error=str(e), retryable=False)
    except Exception as e:
        logger.exception("slice raised an unexpected error")
        return SliceOutcome(**base, status="failed", error=f"{type(e).__name__}: {e}"[:4096], retryable=True)


def deliver(invocation: SliceInvocation, outcome: SliceOutcome) -> None:
    body = outcome.model_dump_json().encode()
    credentials = _SESSION.get_credentials()
    if credentials is None:
        raise CallbackUndelivered("no AWS credentials to sign the callback with")
    region = os.environ.get("AWS_REGION") or _SESSION.region_name or "us-east-1"
    headers = signing.sign(invocation.callback_url, body, credentials, region)
    # In Lambda, this invocation's own segment (same trace); elsewhere the worker's header.
    # Added after signing: API Gateway does not need it signed, and it changes per hop.
    trace = os.environ.get("_X_AMZN_TRACE_ID") or invocation.trace
    if trace:
        headers[obs.TRACE_HEADER] = trace
    request = urllib.request.Request(invocation.callback_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=CALLBACK_TIMEOUT_S) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode(errors="replace")
        if e.code in (400, 403, 404, 409, 413, 422):
            # the callback refused this outcome for good; retrying would change nothing
            logger.error("callback refused the outcome", extra={"status": e.code, "detail": detail})
            return
        raise CallbackUndelivered(f"callback answered {e.code}: {detail}") from e
    except (OSError, ValueError) as e:
        raise CallbackUndelivered(f"callback unreachable: {e}") from e
    logger.debug("callback answered", extra={"verdict": answer.get("verdict")})

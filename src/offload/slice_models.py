"""Pydantic models of what travels with one slice: the compute event, its outcome, and Lambda's
failure record. Apart from the job API's models, so the callback function builds only these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from offload.model_base import Strict, WholeNumber


class SliceInvocation(Strict):
    """The event the worker sends to the compute function, one per slice."""

    job_id: str
    queue: str
    type: str
    slice: int = Field(ge=0)
    attempt: int = Field(ge=1)
    callback_url: str
    callback_token: str
    input: dict[str, Any]
    trace: str = ""


# Bounds on what a callback may claim: far above any real job (a slice per image, a few tries),
# and low enough that the arithmetic on them (2 ** attempt for the backoff) stays finite.
MAX_SLICE_INDEX = 1_000_000
MAX_ATTEMPT = 1000


class SliceOutcome(Strict):
    """Body of ``POST /callbacks/{job_id}``: what became of one slice attempt."""

    slice: WholeNumber = Field(ge=0, le=MAX_SLICE_INDEX)
    attempt: WholeNumber = Field(ge=1, le=MAX_ATTEMPT)
    token: str = Field(min_length=1, max_length=512)
    status: Literal["succeeded", "failed"]
    result: Any = None
    error: str | None = Field(default=None, max_length=4096)
    retryable: bool = False


class CallbackAnswer(BaseModel):
    """Body of the ``200`` answer to ``POST /callbacks/{job_id}``: what the outcome did."""

    verdict: Literal["applied", "completed", "retrying", "dead", "duplicate", "stale", "inactive"] = Field(
        description="`duplicate`, `stale` and `inactive` changed nothing."
    )
    job_status: str


class LambdaFailureRecord(BaseModel):
    """What Lambda's ``OnFailure`` destination delivers when the compute function failed
    (unhandled error, timeout, out of memory) after its own retries."""

    model_config = ConfigDict(extra="allow")

    version: str
    timestamp: str
    request_context: dict[str, Any] = Field(alias="requestContext")
    request_payload: SliceInvocation = Field(alias="requestPayload")
    response_context: dict[str, Any] = Field(default_factory=dict, alias="responseContext")
    response_payload: Any = Field(default=None, alias="responsePayload")

    @property
    def reason(self) -> str:
        payload = self.response_payload if isinstance(self.response_payload, dict) else {}
        condition = self.request_context.get("condition", "failure")
        message = payload.get("errorMessage") or self.response_context.get("functionError") or condition
        kind = payload.get("errorType")
        tries = self.request_context.get("approximateInvokeCount")
        text = f"{kind}: {message}" if kind else str(message)
        return f"compute function failed ({condition}, {tries} invocations): {text}"

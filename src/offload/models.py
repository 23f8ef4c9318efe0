"""Pydantic models of everything that crosses a boundary: API bodies, compute events, callbacks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from offload.jobs import JobRecord, Status

JOB_TYPE_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"


def whole_number(value: Any) -> int:
    """A JSON integer (``3`` or ``3.0``); not ``true``, not ``"3"``, not ``3.5``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError("must be a whole number")


# pydantic's lax int takes true as 1 and "3" as 3; JSON Schema's integer does not
WholeNumber = Annotated[int, BeforeValidator(whole_number)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobRequest(_Strict):
    """Body of ``POST /jobs``."""

    type: str = Field(pattern=JOB_TYPE_PATTERN, description="A registered job type, e.g. `thumbnail`.")
    payload: dict[str, Any] = Field(description="Input of the job, validated by the job type's model.")
    priority: Literal["interactive", "batch"] = "batch"


class JobAccepted(BaseModel):
    """Body of the ``202`` answer to ``POST /jobs``."""

    job_id: str
    status: Status
    location: str


class SliceCounts(BaseModel):
    total: int
    succeeded: int
    failed: int


class JobView(BaseModel):
    """Body of ``GET /jobs/{job_id}``."""

    job_id: str
    type: str
    status: Status
    attempts: int
    slices: SliceCounts
    result: Any = None
    error: str | None = None
    history: list[dict[str, Any]] = []
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def of(cls, job: JobRecord) -> JobView:
        from datetime import UTC, datetime

        def iso(ms: int | None) -> str | None:
            return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") if ms else None

        return cls(
            job_id=job.job_id,
            type=job.type,
            status=job.status,
            attempts=job.attempts,
            slices=SliceCounts(total=job.slices_total, succeeded=job.slices_succeeded, failed=job.slices_failed),
            result=job.result,
            error=job.error,
            history=job.history,
            created_at=iso(job.created_ms) or "",
            updated_at=iso(job.updated_ms) or "",
            started_at=iso(job.started_ms),
            finished_at=iso(job.finished_ms),
        )


class ErrorBody(BaseModel):
    """Every error answer: a message a person can act on, and details where there are some."""

    error: str
    message: str
    details: list[dict[str, Any]] | None = None


class SliceInvocation(_Strict):
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


class SliceOutcome(_Strict):
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

"""Pydantic models of the job API's bodies (the compute events and callbacks are in slice_models)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from offload.jobs import JobRecord, Status
from offload.model_base import Strict

JOB_TYPE_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"


class JobRequest(Strict):
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

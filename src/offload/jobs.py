"""The job's life cycle, as plain data: statuses and the records read back from Redis."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    QUEUED = "queued"  # waiting for a worker
    RUNNING = "running"  # held by a worker (inline work, or being split into slices)
    WAITING = "waiting"  # slices dispatched, waiting for their callbacks
    RETRYING = "retrying"  # failed, waiting out its backoff before the next attempt
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # in the dead-letter list, with the reason


ACTIVE_STATUSES = frozenset({Status.QUEUED, Status.RUNNING, Status.WAITING, Status.RETRYING})
TERMINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.DEAD})


@dataclass(frozen=True, slots=True)
class TakenJob:
    """A job a worker holds in its processing list."""

    job_id: str
    type: str
    tenant: str
    payload: str  # JSON, validated by the handler's model
    attempt: int
    max_tries: int
    failures: int
    trace: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class TakenSlice:
    """A slice a worker is about to hand to the compute function."""

    job_id: str
    slice: int
    attempt: int
    input: str  # JSON
    type: str
    tenant: str
    trace: str

    @property
    def ref(self) -> str:
        return f"{self.job_id}/{self.slice}"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """Everything the job hash holds, decoded."""

    job_id: str
    type: str
    tenant: str
    status: Status
    attempts: int
    max_tries: int
    slices_total: int
    slices_succeeded: int
    slices_failed: int
    result: Any
    error: str | None
    history: list[dict[str, Any]]
    created_ms: int
    updated_ms: int
    started_ms: int | None
    finished_ms: int | None
    payload: Any = field(repr=False, default=None)

    @classmethod
    def from_hash(cls, job_id: str, h: dict[str, str]) -> JobRecord:
        def num(name: str) -> int:
            return int(h.get(name) or 0)

        def opt(name: str) -> int | None:
            return int(h[name]) if h.get(name) else None

        return cls(
            job_id=job_id,
            type=h.get("type", ""),
            tenant=h.get("tenant", ""),
            status=Status(h["status"]),
            attempts=num("attempts"),
            max_tries=num("max_tries"),
            slices_total=num("slices_total"),
            slices_succeeded=num("slices_succeeded"),
            slices_failed=num("slices_failed"),
            result=json.loads(h["result"]) if h.get("result") else None,
            error=h.get("error") or None,
            history=json.loads(h["history"]) if h.get("history") else [],
            created_ms=num("created_ms"),
            updated_ms=num("updated_ms") or num("created_ms"),
            started_ms=opt("started_ms"),
            finished_ms=opt("finished_ms"),
            payload=json.loads(h["payload"]) if h.get("payload") else None,
        )

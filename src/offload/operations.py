"""Operator actions composed from the Queue's public API: watch a job, inspect and replay
dead jobs, read the stats of several queues. The CLI renders what these return."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from offload.config import Settings
from offload.errors import OffloadError
from offload.jobs import TERMINAL_STATUSES, JobRecord, Status
from offload.queue import Queue, QueueStats

log = logging.getLogger(__name__)


class JobNotFound(OffloadError):
    """No job with that id (never was, or its record has expired)."""


class NotDead(OffloadError):
    """The job exists but is not in the dead-letter list."""


class WatchTimeout(OffloadError):
    """The job had not ended when the watch gave up."""


def iso_ms(ms: int | float | None) -> str | None:
    """Epoch milliseconds as an ISO 8601 UTC time, or None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(float(ms) / 1000, UTC).isoformat(timespec="milliseconds")


def require_job(queue: Queue, job_id: str) -> JobRecord:
    job = queue.get(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job


# -- watch -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """What a watcher sees of a job; two equal snapshots mean nothing changed."""

    job_id: str
    status: Status
    attempts: int
    total: int
    succeeded: int
    failed: int
    error: str | None

    @classmethod
    def of(cls, job: JobRecord) -> Progress:
        return cls(
            job.job_id, job.status, job.attempts, job.slices_total, job.slices_succeeded, job.slices_failed, job.error
        )

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": str(self.status),
            "attempts": self.attempts,
            "slices": {"total": self.total, "succeeded": self.succeeded, "failed": self.failed},
            "error": self.error,
        }


def watch(
    queue: Queue,
    job_id: str,
    *,
    interval_s: float = 0.5,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Progress]:
    """Poll the job every ``interval_s`` and yield its progress each time it changes; the
    last one yielded is the job's end (succeeded or dead). Raises JobNotFound if the job is
    missing (or expires meanwhile), WatchTimeout after ``timeout_s``."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last: Progress | None = None
    while True:
        now = Progress.of(require_job(queue, job_id))
        if now != last:
            yield now
            last = now
        if now.ended:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise WatchTimeout(f"job {job_id} still {now.status} after {timeout_s:g} s")
        sleep(interval_s)


# -- dead-letter list --------------------------------------------------------------------


def dead_job_ids(queue: Queue, limit: int | None = None) -> list[str]:
    """Ids in the dead-letter list, newest first: ``limit`` of them, or all of them."""
    if limit is None:
        limit = queue.stats().dead
    # dead_job_ids(0) would read LRANGE 0 -1, the whole list
    return queue.dead_job_ids(limit) if limit > 0 else []


def dead_jobs(queue: Queue, *, limit: int | None = None, job_type: str | None = None) -> list[JobRecord]:
    """Dead jobs, newest first, optionally of one type; ids whose record expired are skipped."""
    jobs = []
    for job_id in dead_job_ids(queue, None if job_type else limit):
        job = queue.get(job_id)
        if job is not None and job.status == Status.DEAD and job_type in (None, job.type):
            jobs.append(job)
    return jobs if limit is None else jobs[:limit]


def dead_row(job: JobRecord) -> dict[str, Any]:
    """One line of ``dlq list``."""
    return {
        "job_id": job.job_id,
        "type": job.type,
        "tenant": job.tenant,
        "error": job.error,
        "attempts": job.attempts,
        "finished_ms": job.finished_ms,
    }


def dead_detail(queue: Queue, job_id: str) -> dict[str, Any]:
    """Everything an operator needs to decide on a dead job: reason, attempts, history."""
    job = require_job(queue, job_id)
    if job.status != Status.DEAD:
        raise NotDead(f"job {job_id} is not in the dead-letter list (it is {job.status})")
    return {
        "job_id": job.job_id,
        "type": job.type,
        "tenant": job.tenant,
        "status": str(job.status),
        "reason": job.error,
        "attempts": job.attempts,
        "max_tries": job.max_tries,
        "slices": {"total": job.slices_total, "succeeded": job.slices_succeeded, "failed": job.slices_failed},
        "created_at": iso_ms(job.created_ms),
        "finished_at": iso_ms(job.finished_ms),
        "history": [history_entry(h) for h in job.history],
    }


def history_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A history entry with its ``at_ms`` also given as an ISO time (``at``)."""
    at = entry.get("at_ms")
    return {"at": iso_ms(at) if isinstance(at, int | float) else None, **entry}


@dataclass(frozen=True, slots=True)
class ReplayReport:
    replayed: list[str]
    skipped: list[str]  # no longer dead when we got to it (replayed meanwhile, or expired)

    def as_dict(self) -> dict[str, Any]:
        return {"replayed": len(self.replayed), "skipped": len(self.skipped), "job_ids": self.replayed}


def replay_many(queue: Queue, job_ids: Iterable[str]) -> ReplayReport:
    """Replay each job; one that is no longer dead is skipped, not an error."""
    replayed: list[str] = []
    skipped: list[str] = []
    for job_id in job_ids:
        (replayed if queue.replay(job_id) else skipped).append(job_id)
    log.info("replayed %d dead jobs (%d skipped)", len(replayed), len(skipped))
    return ReplayReport(replayed, skipped)


def replay_dead(queue: Queue, *, job_type: str | None = None) -> ReplayReport:
    """Replay every job now in the dead-letter list (only ``job_type``'s, if given). The
    list is read once first, so a job that dies again meanwhile is not replayed twice."""
    if job_type is None:
        return replay_many(queue, dead_job_ids(queue))
    return replay_many(queue, [job.job_id for job in dead_jobs(queue, job_type=job_type)])


# -- stats -------------------------------------------------------------------------------


def queues(client: redis.Redis, settings: Settings, names: Iterable[str]) -> list[Queue]:
    """One Queue per name, sharing one connection; each with the settings of that queue."""
    return [Queue(client, dataclasses.replace(settings, queue=name)) for name in dict.fromkeys(names)]


def stats_row(stats: QueueStats) -> dict[str, Any]:
    """A queue's stats as plain data (the ``stats --json`` shape)."""
    return {
        "queue": stats.queue,
        "depth": stats.depth,
        "backlog_limit": stats.max_backlog or None,
        "shed": stats.counts.get("shed", 0),
        "in_flight": stats.in_flight,
        "slices_in_flight": stats.slices_in_flight,
        "retrying": stats.delayed,
        "dead": stats.dead,
        "slices_ready": stats.slices_ready,
        "workers_alive": stats.workers_alive,
        "oldest_queued_age_s": stats.oldest_queued_age_s,
        "counts": stats.counts,
        "balanced": stats.balanced,
    }

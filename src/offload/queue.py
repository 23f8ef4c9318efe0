"""The queue: every operation on jobs and slices, each one script call (one round trip)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import redis

from offload import scripts
from offload.config import Settings
from offload.connection import RECONNECT_ERRORS
from offload.errors import QueueUnavailable
from offload.jobs import JobRecord, Status, TakenJob, TakenSlice
from offload.keys import WAKE_MARKER, QueueKeys
from offload.observability import compact_trace, expand_trace


def now_ms() -> int:
    return int(time.time() * 1000)


def new_job_id() -> str:
    """32 random hex digits (uuid4().hex's shape, at a fifth of its cost)."""
    return os.urandom(16).hex()


class _RedisGuard:
    """Turns a Redis outage into QueueUnavailable, so each edge can answer it plainly. A class,
    not @contextmanager: it guards the master's and callback's one call, and a generator-based
    context manager costs several times as much to enter and leave."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> Literal[False]:
        if error is not None and isinstance(error, RECONNECT_ERRORS):
            raise QueueUnavailable(f"Redis is unavailable: {error}") from error
        return False


_GUARD = _RedisGuard()


def redis_guard() -> _RedisGuard:
    return _GUARD


class EnqueueVerdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # same idempotency key, same request: the original job
    CONFLICT = "conflict"  # same idempotency key, different request
    SHED = "shed"  # backlog at its limit; nothing was enqueued


# NamedTuples, not frozen dataclasses, for what is made on every request: as immutable, and
# a frozen dataclass's __init__ costs four times as much (object.__setattr__ per field).
class NewJob(NamedTuple):
    type: str
    payload: str  # JSON
    tenant: str
    max_tries: int
    trace: str = ""
    priority: str = "batch"  # or "interactive": served first, three take slots in four


class EnqueueResult(NamedTuple):
    verdict: EnqueueVerdict
    job_id: str
    depth: int = 0


class OutcomeVerdict(StrEnum):
    APPLIED = "applied"  # slice recorded, job still waiting for others
    COMPLETED = "completed"  # last slice: job succeeded
    RETRYING = "retrying"  # slice failed, will be dispatched again after a backoff
    DEAD = "dead"  # slice failed for good: job dead-lettered
    DUPLICATE = "duplicate"  # this attempt's outcome was applied already
    STALE = "stale"  # outcome of an older attempt, fenced off
    INACTIVE = "inactive"  # the job is no longer waiting for slices
    UNKNOWN = "unknown"  # no such job or slice


class Outcome(NamedTuple):
    """What applying a slice outcome did, and what the job is now."""

    verdict: OutcomeVerdict
    job_status: str
    type: str
    tenant: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class ReapReport:
    jobs_recovered: int
    slices_recovered: int
    jobs_lost: int
    slices_timed_out: int
    promoted: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    depth: int
    delayed: int
    dead: int
    slices_ready: int
    workers_alive: int
    oldest_queued_age_s: float | None
    counts: dict[str, int]
    slices_in_flight: dict[str, int]  # per tenant
    max_backlog: int = 0  # the depth past which the master sheds (0: no limit)

    @property
    def in_flight(self) -> int:
        return self.counts.get(Status.RUNNING, 0) + self.counts.get(Status.WAITING, 0)

    @property
    def balanced(self) -> bool:
        """accepted = queued + running + waiting + retrying + succeeded + dead."""
        return self.counts.get("accepted", 0) == sum(self.counts.get(s, 0) for s in Status)


class Queue:
    """One named queue in one Redis. Cheap to build; keep one per process."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = QueueKeys(settings.queue)

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call (one round trip); a Redis outage comes out as QueueUnavailable."""
        with _GUARD:
            return scripts.run(self.client, scripts.call(name, keys, args))

    # -- master --------------------------------------------------------------------------

    def enqueue(
        self, job: NewJob, *, idempotency_key: str = "", request_digest: str = "", job_id: str = ""
    ) -> EnqueueResult:
        """Store the job and push it, in one round trip (with the idempotency check and the
        backlog limit in the same script, so neither can be raced). ``job_id`` is for
        fixtures and imports only; the master always lets one be made."""
        job_id = job_id or new_job_id()
        idem_key = self.keys.idempotency(job.tenant, idempotency_key) if idempotency_key else self.keys.base
        answer = self._run(
            "enqueue",
            [self.keys.job(job_id), self.keys.queued, self.keys.counts, idem_key, self.keys.queued_interactive],
            [
                job_id,
                self.settings.max_backlog,
                request_digest if idempotency_key else "",
                self.settings.idempotency_ttl_s,
                self.keys.base,
                job.priority,
                job.type,
                job.tenant,
                job.payload,
                job.max_tries,
                now_ms(),
                compact_trace(job.trace),
            ],
        )
        if answer == EnqueueVerdict.ACCEPTED:
            return EnqueueResult(EnqueueVerdict.ACCEPTED, job_id)
        verdict, value = answer
        if verdict == EnqueueVerdict.SHED:
            return EnqueueResult(EnqueueVerdict.SHED, "", int(value))
        return EnqueueResult(EnqueueVerdict(verdict), value)

    def get(self, job_id: str) -> JobRecord | None:
        with redis_guard():
            h: dict[str, str] = self.client.hgetall(self.keys.job(job_id))  # type: ignore[assignment]
        return JobRecord.from_hash(job_id, h) if h else None

    # -- worker: jobs --------------------------------------------------------------------

    def take_call(self, worker_id: str, max_jobs: int, moved_id: str = "") -> scripts.ScriptCall:
        at = now_ms()
        return scripts.call(
            "take",
            [
                self.keys.queued,
                self.keys.processing(worker_id),
                self.keys.counts,
                self.keys.workers,
                self.keys.queued_interactive,
                self.keys.picks,
            ],
            [self.keys.base, max_jobs, at, moved_id, worker_id, at + int(self.settings.lease_s * 1000)],
        )

    def take(
        self,
        worker_id: str,
        max_jobs: int,
        block_s: float = 0.0,
        acks: Sequence[scripts.ScriptCall] = (),
    ) -> tuple[list[TakenJob], list[Any]]:
        """Take up to ``max_jobs`` jobs into this worker's processing list.

        ``acks`` (finish/fail calls for the previous batch) ride in the same round trip.
        When nothing is queued and ``block_s`` > 0, wait with BLMOVE: the job moves into the
        processing list in the same command that hands it over, so a worker that dies
        right after still has it on record and the reaper gives it back.
        """
        with redis_guard():
            *ack_results, rows = scripts.run_all(self.client, [*acks, self.take_call(worker_id, max_jobs)])
            if not rows and block_s > 0:
                # Redis takes fractional seconds here, whatever redis-py's annotation says
                moved = self.client.blmove(
                    self.keys.queued,
                    self.keys.processing(worker_id),
                    block_s,  # type: ignore[arg-type]
                    "RIGHT",
                    "LEFT",
                )
                if moved:
                    rows = scripts.run(self.client, self.take_call(worker_id, max_jobs, str(moved)))
        return [_taken_job(row) for row in rows], ack_results

    def start_moved(self, worker_id: str, job_id: str) -> list[TakenJob]:
        """Start a job already in this worker's processing list (moved there by a BLMOVE whose
        reply was lost); empty if it is not a job to run."""
        with redis_guard():
            rows = scripts.run(self.client, self.take_call(worker_id, 1, job_id))
        return [_taken_job(row) for row in rows]

    def finish_call(self, worker_id: str, job_id: str, result_json: str) -> scripts.ScriptCall:
        return scripts.call(
            "finish",
            [self.keys.processing(worker_id), self.keys.counts],
            [self.keys.base, job_id, result_json, now_ms(), self.settings.finished_job_ttl_s],
        )

    def fail_call(
        self, worker_id: str, job: TakenJob, reason: str, *, retryable: bool, backoff_ms: int
    ) -> scripts.ScriptCall:
        at = now_ms()
        entry = json.dumps({"attempt": job.attempt, "error": reason, "at_ms": at})
        return scripts.call(
            "fail",
            [self.keys.processing(worker_id), self.keys.counts],
            [
                self.keys.base,
                job.job_id,
                reason,
                "1" if retryable else "0",
                at,
                backoff_ms,
                self.settings.dead_job_ttl_s,
                entry,
            ],
        )

    def requeue(self, worker_id: str, job_id: str) -> str:
        return str(
            self._run(
                "requeue", [self.keys.processing(worker_id), self.keys.counts], [self.keys.base, job_id, now_ms()]
            )
        )

    def fan_out(self, worker_id: str, job_id: str, slice_inputs: Sequence[str]) -> str:
        """The job leaves the worker; its slices wait in the ready list for dispatch."""
        return str(
            self._run(
                "fan_out",
                [self.keys.processing(worker_id), self.keys.counts],
                [self.keys.base, job_id, now_ms(), *slice_inputs],
            )
        )

    # -- worker: slices ------------------------------------------------------------------

    def take_slices(self, worker_id: str, max_slices: int) -> list[TakenSlice]:
        rows = self._run(
            "take_slices",
            [self.keys.tenants, self.keys.processing(worker_id), self.keys.deadlines, self.keys.inflight],
            [
                self.keys.base,
                max_slices,
                now_ms(),
                int(self.settings.slice_timeout_s * 1000),
                self.settings.tenant_max_inflight,
            ],
        )
        return [
            TakenSlice(
                job_id=r[0],
                slice=int(r[1]),
                attempt=int(r[2]),
                input=r[3],
                type=r[4],
                tenant=r[5],
                trace=expand_trace(r[6]),
            )
            for r in rows
        ]

    def release_slices(self, worker_id: str, refs: Sequence[str]) -> None:
        if refs:
            self._run("release", [self.keys.processing(worker_id)], list(refs))

    # -- callback ------------------------------------------------------------------------

    def apply_outcome(
        self,
        job_id: str,
        slice_index: int,
        attempt: int,
        *,
        succeeded: bool,
        result_json: str = "",
        reason: str = "",
        retryable: bool = False,
        backoff_ms: int = 0,
    ) -> Outcome:
        """Apply one slice outcome atomically; a repeat or an older attempt changes nothing."""
        verdict, status, type_, tenant, created_ms = self._run(
            "apply_outcome",
            [self.keys.counts, self.keys.deadlines],
            [
                self.keys.base,
                job_id,
                slice_index,
                attempt,
                "succeeded" if succeeded else "failed",
                result_json if succeeded else reason,
                "1" if retryable else "0",
                now_ms(),
                backoff_ms,
                self.settings.finished_job_ttl_s,
                self.settings.dead_job_ttl_s,
            ],
        )
        return Outcome(OutcomeVerdict(verdict), status, type_, tenant, int(created_ms or 0))

    # -- recovery ------------------------------------------------------------------------

    def replay(self, job_id: str) -> bool:
        """Push a dead job back on its queue, keeping its id and history."""
        answer = self._run("replay", [self.keys.dead, self.keys.counts], [self.keys.base, job_id, now_ms()])
        return bool(answer == "queued")

    def dead_job_ids(self, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        with redis_guard():
            ids: list[str] = self.client.lrange(self.keys.dead, 0, limit - 1)  # type: ignore[assignment]
        return ids

    def heartbeat(self, worker_id: str) -> bool:
        """Extend this worker's lease; False if it had run out (its jobs went back)."""
        at = now_ms()
        kept = self._run("heartbeat", [self.keys.workers], [worker_id, at + int(self.settings.lease_s * 1000), at])
        return bool(kept)

    def retire(self, worker_id: str) -> None:
        """A worker that stops cleanly drops its lease (its processing list is empty by then)."""
        with redis_guard():
            self.client.zrem(self.keys.workers, worker_id)

    def reap(self, *, backoff_ms: int, limit: int = 1000) -> ReapReport:
        row = self._run(
            "reap",
            [self.keys.workers, self.keys.counts, self.keys.deadlines, self.keys.delayed],
            [self.keys.base, now_ms(), self.settings.max_stalls, limit, backoff_ms, self.settings.dead_job_ttl_s],
        )
        return ReapReport(*(int(x) for x in row))

    def adopt_orphans(self) -> int:
        """Give every processing list whose worker has no lease an expired one, so the next
        reap returns its jobs. Covers a worker that died between BLMOVE and its first lease."""
        adopted = 0
        with redis_guard():
            for key in self.client.scan_iter(match=self.keys.processing_prefix + "*", count=500):
                worker_id = key[len(self.keys.processing_prefix) :]
                if self.client.zadd(self.keys.workers, {worker_id: 0}, nx=True):
                    adopted += 1
        return adopted

    # -- operators -----------------------------------------------------------------------

    def stats(self) -> QueueStats:
        at = now_ms()
        with redis_guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.llen(self.keys.queued)
            pipe.llen(self.keys.queued_interactive)
            pipe.zcard(self.keys.delayed)
            pipe.llen(self.keys.dead)
            pipe.zcount(self.keys.workers, at, "+inf")
            pipe.lrange(self.keys.queued, -4, -1)
            pipe.lindex(self.keys.queued_interactive, -1)
            pipe.hgetall(self.keys.counts)
            pipe.hgetall(self.keys.inflight)
            pipe.lrange(self.keys.tenants, 0, -1)
            batch, interactive, delayed, dead, alive, batch_tail, interactive_head, counts, inflight, tenants = (
                pipe.execute()
            )
            oldest = [i for i in batch_tail if i != WAKE_MARKER][-1:] + ([interactive_head] if interactive_head else [])
            for job_id in oldest:
                pipe.hget(self.keys.job(job_id), "created_ms")
            for tenant in tenants:
                pipe.llen(self.keys.ready(tenant))
            answers = pipe.execute()
        created = [int(ms) for ms in answers[: len(oldest)] if ms]
        markers = batch_tail.count(WAKE_MARKER)
        return QueueStats(
            queue=self.settings.queue,
            depth=max(0, batch - markers) + interactive,
            delayed=delayed,
            dead=dead,
            slices_ready=sum(answers[len(oldest) :]),
            workers_alive=alive,
            oldest_queued_age_s=(at - min(created)) / 1000 if created else None,
            counts={k: int(v) for k, v in counts.items()},
            slices_in_flight={k: int(v) for k, v in inflight.items()},
            max_backlog=self.settings.max_backlog,
        )


def _taken_job(row: Sequence[str]) -> TakenJob:
    return TakenJob(
        job_id=row[0],
        type=row[1],
        tenant=row[2],
        payload=row[3],
        attempt=int(row[4]),
        max_tries=int(row[5]),
        failures=int(row[6]),
        trace=expand_trace(row[7]),
        created_ms=int(row[8] or 0),
    )

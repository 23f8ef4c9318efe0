"""The worker: takes jobs reliably, runs light ones inline, fans heavy ones out as slices.

One main loop (take, run, acknowledge with the next take; dispatch ready slices) and one
heartbeat thread (renew the lease, reap dead workers' jobs), so a long inline job never
lets the lease run out.

What the worker holds is written down twice: in Redis (its processing list, guarded by its
lease) and in hand (the batch it has yet to run, the acknowledgements it has yet to send,
the slices it has handed to the compute function but not yet released). Whenever the two
may have drifted apart (a Redis call failed, a reply was lost and redis-py sent the command
again, the lease ran out) the worker reconciles them before it goes on: an entry Redis holds
for it that it never heard of goes back to the queue (or, for a slice, is dispatched), and a
job it has in hand that Redis no longer lists for it is dropped, as the reaper gave it to
another worker. So the worker never keeps a job it cannot account for.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import redis
from pydantic import ValidationError

from offload import connection
from offload import observability as obs
from offload.config import Settings
from offload.dispatch import Dispatcher, DispatchResult
from offload.errors import QueueUnavailable, SliceFailed, UnknownJobType
from offload.jobs import TakenJob, TakenSlice
from offload.logs import service_logger
from offload.queue import Queue, redis_guard
from offload.registry import Registry
from offload.retries import backoff_ms
from offload.scripts import ScriptCall

logger = service_logger("offload-worker")

# How many rounds of slice dispatch one loop turn may do before it takes jobs again.
_DISPATCH_ROUNDS_PER_TURN = 4
_ORPHAN_SWEEP_S = 60.0
# Results of finished jobs ride with the next take, unless the oldest of them has waited this
# long since its job started: a slow job's result is sent as soon as it is in.
_ACK_MAX_DELAY_S = 0.05
# The main loop's wait after Redis failed it (redis-py has already retried by then).
_RETRY_BASE_S = 0.1
_RETRY_CAP_S = 2.0
# With nothing to block on (block_s = 0), an idle loop waits this long between takes.
_IDLE_WAIT_S = 0.05

# A failed call to Redis that the main loop survives: it waits, reconciles, and goes on.
_TRANSIENT = (QueueUnavailable, redis.RedisError)


class GraceExpired(BaseException):
    """Raised inside an inline handler when the shutdown grace period is over.

    A BaseException, so a handler's ``except Exception`` does not swallow it. It is raised
    only while a handler runs, never in the middle of a call to Redis.
    """


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def retry_delay(failures: int) -> float:
    """Wait before the main loop's next try: short at first, at most ``_RETRY_CAP_S``, jittered."""
    return float(min(_RETRY_CAP_S, _RETRY_BASE_S * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0))


class Worker:
    def __init__(
        self,
        queue: Queue,
        registry: Registry,
        settings: Settings,
        dispatcher: Dispatcher | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.settings = settings
        self.dispatcher = dispatcher
        self.worker_id = worker_id or new_worker_id()
        self.stopping = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self.processed = 0

        # What this worker has in hand (the main loop's state; see the module docstring).
        self._batch: list[TakenJob] = []  # taken, not yet run; the head may be running now
        self._acks: list[tuple[TakenJob, ScriptCall]] = []  # (job, finish/fail call) not yet sent
        self._acks_since = 0.0
        self._slices_out: list[str] = []  # slice refs handed to the compute function, not yet released
        self._slice_failures: list[DispatchResult] = []  # dispatch failures not yet recorded

        self._reconcile_due = threading.Event()
        self._lost_replies_seen = connection.lost_replies()
        self._reconcile_every_s = max(1.0, settings.lease_s)
        self._next_reconcile = 0.0
        self._in_handler = False
        self.grace_expired = False
        # The reaper holds off for a lease after Redis comes back (or after a start that had
        # to wait for it): other workers were cut off too, and get that long to renew their
        # leases before theirs count as run out.
        self._reap_after = 0.0
        self._outage = False
        self.metrics = obs.SharedMetrics(settings, flush_every_s=settings.metrics_interval_s)
        self.gauges = obs.QueueGauges(queue, self.metrics, self.worker_id, settings.metrics_interval_s)

    # -- life cycle ----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop taking jobs; the job in hand gets ``shutdown_grace_s``, then is
        requeued (without spending a try), and so are the jobs of the batch not yet started."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            if not self.stopping.is_set():
                logger.info("stop requested; finishing the job in hand", extra={"signal": signum})
                self.stopping.set()
                # 0 would disarm the timer: a grace of 0 means "at once"
                signal.setitimer(signal.ITIMER_REAL, max(self.settings.shutdown_grace_s, 0.001))

        def on_grace_over(signum: int, frame: FrameType | None) -> None:
            self.grace_expired = True
            if self._in_handler:
                raise GraceExpired()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGALRM, on_grace_over)

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        logger.append_keys(worker_id=self.worker_id, queue=self.settings.queue)
        # hold a lease before the first job can land in our processing list
        if not self._take_lease():
            logger.info("worker stopped before it could reach Redis")
            return
        self._heartbeat.start()
        logger.info("worker started")
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    self._turn()
                    failures = 0
                except _TRANSIENT as e:
                    failures += 1
                    self._reconcile_due.set()
                    delay = retry_delay(failures)
                    if isinstance(e, QueueUnavailable):
                        logger.warning("Redis unavailable; retrying", extra={"reason": str(e), "retry_in_s": delay})
                    else:
                        logger.exception("Redis refused a call; retrying", extra={"retry_in_s": delay})
                    self.stopping.wait(delay)
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.setitimer(signal.ITIMER_REAL, 0)
            self._shutdown()

    def _take_lease(self) -> bool:
        failures = 0
        while not self.stopping.is_set():
            try:
                self._renew_lease()
            except _TRANSIENT as e:
                failures += 1
                delay = retry_delay(failures)
                logger.warning("cannot reach Redis to start; retrying", extra={"reason": str(e), "retry_in_s": delay})
                self.stopping.wait(delay)
                continue
            if failures:
                self._reap_after = time.monotonic() + self.settings.lease_s
            return True
        return False

    def _turn(self) -> None:
        self._settle_slices()
        if self._must_reconcile():
            self._reconcile()
        self._dispatch_ready()
        if not self._batch:
            if self.stopping.is_set():
                return
            jobs, results = self.queue.take(
                self.worker_id, self.settings.batch_size, self.settings.block_s, [call for _, call in self._acks]
            )
            self._acked(results)
            self._batch = jobs
            if jobs:
                self.metrics.count(obs.JOBS_TAKEN, len(jobs))
                # one line per take, not per job: at thousands of jobs a second the log is the
                # bottleneck; each job's own line follows when it ends
                logger.info("jobs taken", extra={"job_ids": [job.job_id for job in jobs], "count": len(jobs)})
            if not jobs and self.settings.block_s <= 0:
                self.stopping.wait(_IDLE_WAIT_S)
        self._run_batch()

    def _shutdown(self) -> None:
        # The heartbeat stops first: one still running could renew the lease after retire()
        # dropped it. The lease outlives the few round trips below by far.
        self._heartbeat_stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join(timeout=self.settings.heartbeat_s + 5)
        try:
            self._settle_slices()
            self._requeue_batch()
            self._flush_acks()
            self._reconcile()  # entries we never heard of go back now, not after the lease
            self._requeue_batch()
            held = int(self.queue.client.llen(self.queue.keys.processing(self.worker_id)))
            if held == 0:
                self.queue.retire(self.worker_id)
            else:
                logger.warning("stopping with jobs held; the reaper returns them after the lease", extra={"held": held})
        except _TRANSIENT as e:
            logger.warning("could not flush on shutdown; the reaper will recover", extra={"reason": str(e)})
        finally:
            if self.dispatcher:
                self.dispatcher.close()
            self.metrics.flush(force=True)
            logger.info("worker stopped", extra={"processed": self.processed})

    # -- jobs ----------------------------------------------------------------------------

    def _run_batch(self) -> None:
        while self._batch:
            if self.stopping.is_set():
                self._requeue_batch()
                return
            job = self._batch[0]
            started = time.monotonic()
            try:
                ack = self._run_job(job)
            except GraceExpired:
                logger.warning("shutdown grace period over; the job in hand goes back to the queue")
                self._requeue_batch()
                return
            # a job stays at the head of the batch until its outcome is safe in hand
            self._batch.pop(0)
            self.processed += 1
            if ack is not None:
                if not self._acks:
                    self._acks_since = started
                self._acks.append((job, ack))
            if self._acks and time.monotonic() - self._acks_since >= _ACK_MAX_DELAY_S:
                self._flush_acks()

    def _run_job(self, job: TakenJob) -> ScriptCall | None:
        """Run one job; returns its acknowledgement (sent with the next take), if any."""
        keys = {"job_id": job.job_id, "job_type": job.type, "tenant": job.tenant, "attempt": job.attempt}
        try:
            job_type = self.registry.get(job.type)
            payload = job_type.payload_model.model_validate_json(job.payload)
        except (UnknownJobType, ValidationError) as e:
            return self._fail(job, f"cannot run this job: {e}", retryable=False, keys=keys)

        if job_type.fans_out:
            return self._fan_out(job, job_type.split, payload, keys)

        assert job_type.run is not None
        try:
            result = self._call_handler(job_type.run, payload)
            result_json = json.dumps(result, separators=(",", ":"), allow_nan=False)
        except SliceFailed as e:
            return self._fail(job, e.reason, retryable=e.retryable, keys=keys)
        except (TypeError, ValueError) as e:
            return self._fail(job, f"handler returned a result that is not JSON: {e}", retryable=False, keys=keys)
        except Exception as e:
            logger.exception("inline handler raised", extra=keys)
            return self._fail(job, f"{type(e).__name__}: {e}", retryable=True, keys=keys)
        return self.queue.finish_call(self.worker_id, job.job_id, result_json)

    def _call_handler(self, run: Callable[[Any], Any], payload: Any) -> Any:
        if self.grace_expired:
            raise GraceExpired()
        self._in_handler = True
        try:
            return run(payload)
        finally:
            self._in_handler = False

    def _fan_out(self, job: TakenJob, split: Any, payload: Any, keys: dict[str, Any]) -> ScriptCall | None:
        if self.dispatcher is None:
            return self._fail(job, "this worker has no compute function configured", retryable=True, keys=keys)
        try:
            inputs = [json.dumps(item, separators=(",", ":")) for item in split(payload)]
        except Exception as e:
            logger.exception("split raised", extra=keys)
            return self._fail(job, f"could not split the job: {type(e).__name__}: {e}", retryable=False, keys=keys)
        if not inputs:
            return self.queue.finish_call(self.worker_id, job.job_id, "[]")
        verdict = self.queue.fan_out(self.worker_id, job.job_id, inputs)
        logger.info("job split into slices", extra={**keys, "slices": len(inputs), "verdict": verdict})
        return None

    def _fail(self, job: TakenJob, reason: str, *, retryable: bool, keys: dict[str, Any]) -> ScriptCall:
        will_retry = retryable and job.failures + 1 < job.max_tries
        logger.info("job failed; " + ("retrying" if will_retry else "dead-lettering"), extra={**keys, "error": reason})
        delay = backoff_ms(job.failures + 1, self.settings.retry_base_s, self.settings.retry_max_s)
        return self.queue.fail_call(self.worker_id, job, reason, retryable=retryable, backoff_ms=delay)

    def _flush_acks(self) -> None:
        if self._acks:
            _, results = self.queue.take(self.worker_id, 0, 0, [call for _, call in self._acks])
            self._acked(results)

    def _acked(self, results: Sequence[Any]) -> None:
        for (job, _), result in zip(self._acks, results, strict=False):
            keys = {"job_id": job.job_id, "job_type": job.type, "tenant": job.tenant, "attempt": job.attempt}
            if result == "lost":
                # applied by an earlier send whose reply was lost, or our lease ran out and the
                # reaper gave the job to another worker: either way this result changes nothing
                logger.info("result not applied: the job was no longer held by this worker", extra=keys)
            elif result == "succeeded":
                logger.info("job succeeded", extra=keys)
                if job.created_ms:
                    self.metrics.milliseconds(obs.JOB_LATENCY, time.time() * 1000 - job.created_ms)
        self._acks = []

    def _requeue_batch(self) -> None:
        """Put the jobs of the batch not yet run back at the head of the queue (no try spent),
        last first, so that they are taken again in the order they were taken."""
        while self._batch:
            self.queue.requeue(self.worker_id, self._batch[-1].job_id)
            self._batch.pop()

    # -- slices --------------------------------------------------------------------------

    def _dispatch_ready(self) -> None:
        if self.dispatcher is None:
            return
        batch = self.settings.batch_size
        for _ in range(_DISPATCH_ROUNDS_PER_TURN):
            slices = self.queue.take_slices(self.worker_id, batch)
            if not slices:
                return
            self._dispatch(slices)
            if len(slices) < batch:
                return

    def _dispatch(self, slices: Sequence[TakenSlice]) -> None:
        assert self.dispatcher is not None
        results = self.dispatcher.dispatch(slices)
        self._slices_out.extend(s.ref for s in slices)
        for outcome in results:
            item = outcome.slice
            keys = {
                "job_id": item.job_id,
                "job_type": item.type,
                "tenant": item.tenant,
                "slice_id": item.slice,
                "attempt": item.attempt,
            }
            if outcome.error is None:
                logger.info("slice dispatched", extra=keys)
                self.metrics.count(obs.SLICES_DISPATCHED)
            else:
                logger.warning("slice dispatch failed", extra={**keys, "error": outcome.error.reason})
                self._slice_failures.append(outcome)
        self._settle_slices()

    def _settle_slices(self) -> None:
        """Record failed dispatches, then release the dispatched slices from the processing list.
        Each step is safe to repeat, so after a failure the next turn simply does it again."""
        while self._slice_failures:
            outcome = self._slice_failures[0]
            item, error = outcome.slice, outcome.error
            assert error is not None
            self.queue.apply_outcome(
                item.job_id,
                item.slice,
                item.attempt,
                succeeded=False,
                reason=error.reason,
                retryable=error.retryable,
                backoff_ms=backoff_ms(item.attempt, self.settings.retry_base_s, self.settings.retry_max_s),
            )
            self._slice_failures.pop(0)
        if self._slices_out:
            self.queue.release_slices(self.worker_id, self._slices_out)
            self._slices_out = []

    # -- reconciling what Redis holds for us with what we have in hand -------------------

    def _must_reconcile(self) -> bool:
        if self._reconcile_due.is_set() or time.monotonic() >= self._next_reconcile:
            return True
        # a reply lost in this process: the command may have run without our seeing it
        return connection.lost_replies() != self._lost_replies_seen

    def _reconcile(self) -> None:
        self._lost_replies_seen = connection.lost_replies()
        # A live lease keeps the reaper away from our list while we look at it and act.
        self._renew_lease()
        self._reconcile_due.clear()
        key = self.queue.keys.processing(self.worker_id)
        with redis_guard():
            listed: list[str] = self.queue.client.lrange(key, 0, -1)  # type: ignore[assignment]
        present = set(listed)
        gone = [job.job_id for job in self._batch if job.job_id not in present]
        if gone:
            logger.warning("jobs in hand were given to another worker; dropping them", extra={"job_ids": gone})
            self._batch = [job for job in self._batch if job.job_id in present]
        known = {job.job_id for job in self._batch} | {job.job_id for job, _ in self._acks}
        known |= set(self._slices_out) | {outcome.slice.ref for outcome in self._slice_failures}
        strays = [item for item in dict.fromkeys(listed) if item not in known]
        for item in strays:
            if "/" in item:
                self._adopt_slice(item)
            else:
                self._adopt_job(item)
        if strays:
            logger.warning("processing list held entries this worker never heard of", extra={"entries": strays})
        self._next_reconcile = time.monotonic() + self._reconcile_every_s

    def _adopt_job(self, item: str) -> None:
        with redis_guard():
            status = self.queue.client.hget(self.queue.keys.job(item), "status")
            if status == "queued":
                # moved by a BLMOVE whose reply was lost: start it as the take would have
                self._batch.extend(self.queue.start_moved(self.worker_id, item))
                return
        if status == "running":
            # started by a take whose reply was lost: back to the head of the queue
            self.queue.requeue(self.worker_id, item)
        else:
            # a wake-up marker, or a job that ended meanwhile: the entry holds nothing
            self.queue.release_slices(self.worker_id, [item])

    def _adopt_slice(self, ref: str) -> None:
        job_id, _, n = ref.partition("/")
        with redis_guard():
            pipe = self.queue.client.pipeline(transaction=False)
            pipe.hmget(self.queue.keys.slices(job_id), [f"{n}:st", f"{n}:a", f"{n}:in"])
            pipe.hmget(self.queue.keys.job(job_id), ["status", "type", "tenant", "trace"])
            (state, attempt, slice_input), (status, type_, tenant, trace) = pipe.execute()
        if (
            self.dispatcher is not None
            and state == "dispatched"
            and status == "waiting"
            and attempt
            and slice_input is not None
            and n.isdigit()
        ):
            # taken for dispatch by a call whose reply was lost: nobody invoked it yet
            taken = TakenSlice(job_id, int(n), int(attempt), slice_input, type_ or "", tenant or "", trace or "")
            self._dispatch([taken])
        else:
            self.queue.release_slices(self.worker_id, [ref])

    # -- heartbeat and reaping -----------------------------------------------------------

    def _renew_lease(self) -> None:
        if not self.queue.heartbeat(self.worker_id):
            logger.info("lease taken (new, or after it had run out)")
            self._reconcile_due.set()

    def _heartbeat_loop(self) -> None:
        next_reap = 0.0
        next_publish = 0.0
        next_sweep = time.monotonic() + _ORPHAN_SWEEP_S
        while not self._heartbeat_stop.wait(self.settings.heartbeat_s):
            try:
                self._renew_lease()
                now = time.monotonic()
                if self._outage:
                    self._outage = False
                    self._reap_after = now + self.settings.lease_s
                    logger.info("Redis reachable again; reaping resumes after one lease")
                if now >= next_sweep:
                    next_sweep = now + _ORPHAN_SWEEP_S
                    self.queue.adopt_orphans()
                if now >= next_reap and now >= self._reap_after:
                    next_reap = now + self.settings.reaper_interval_s
                    self._reap()
                if now >= next_publish:
                    next_publish = now + self.settings.metrics_interval_s
                    self.metrics.count(obs.WORKER_HEARTBEAT)
                    self.gauges.publish()
                self.metrics.flush()
            except _TRANSIENT as e:
                self._outage = True
                logger.warning("heartbeat failed; Redis unavailable", extra={"reason": str(e)})
            except Exception:
                logger.exception("heartbeat thread error")

    def _reap(self) -> None:
        report = self.queue.reap(backoff_ms=int(self.settings.retry_base_s * 1000))
        if report.jobs_recovered or report.slices_recovered or report.jobs_lost or report.slices_timed_out:
            logger.warning(
                "reaper recovered work",
                extra={
                    "jobs_recovered": report.jobs_recovered,
                    "slices_recovered": report.slices_recovered,
                    "jobs_dead_worker_lost": report.jobs_lost,
                    "slices_no_callback": report.slices_timed_out,
                },
            )

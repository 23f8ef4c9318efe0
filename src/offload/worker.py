"""The worker: takes jobs reliably, runs light ones inline, fans heavy ones out as slices.

One main loop (take, run, acknowledge with the next take; dispatch ready slices) and one
heartbeat thread (renew the lease, reap dead workers' jobs), so a long inline job never
lets the lease run out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import Any

from aws_lambda_powertools.logging import Logger
from pydantic import ValidationError

from offload.config import Settings
from offload.dispatch import Dispatcher
from offload.errors import QueueUnavailable, SliceFailed, UnknownJobType
from offload.jobs import TakenJob
from offload.queue import Queue
from offload.registry import Registry
from offload.retries import backoff_ms
from offload.scripts import ScriptCall

logger = Logger(service="offload-worker")

# How many rounds of slice dispatch one loop turn may do before it takes jobs again.
_DISPATCH_ROUNDS_PER_TURN = 4
_ORPHAN_SWEEP_S = 60.0


class GraceExpired(BaseException):
    """Raised inside an inline handler when the shutdown grace period is over.

    A BaseException, so a handler's ``except Exception`` does not swallow it.
    """


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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

    # -- life cycle ----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop taking jobs; the job in hand gets ``shutdown_grace_s``."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            if not self.stopping.is_set():
                logger.info("stop requested; finishing the job in hand", extra={"signal": signum})
                self.stopping.set()
                signal.setitimer(signal.ITIMER_REAL, self.settings.shutdown_grace_s)

        def on_grace_over(signum: int, frame: FrameType | None) -> None:
            raise GraceExpired()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGALRM, on_grace_over)

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        logger.append_keys(worker_id=self.worker_id, queue=self.settings.queue)
        self._renew_lease()  # hold a lease before the first job can land in our processing list
        self._heartbeat.start()
        logger.info("worker started")
        acks: list[ScriptCall] = []
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    self._dispatch_ready()
                    jobs, results = self.queue.take(
                        self.worker_id, self.settings.batch_size, self.settings.block_s, acks
                    )
                    self._check_acks(acks, results)
                    failures = 0
                    acks = self._run_batch(jobs)
                except QueueUnavailable as e:
                    # Pending acks stay pending: re-sending one is harmless (each checks that the
                    # job is still in our processing list), so nothing is lost or applied twice.
                    failures += 1
                    delay = min(5.0, 0.2 * 2**failures)
                    logger.warning("Redis unavailable; retrying", extra={"reason": str(e), "retry_in_s": delay})
                    self.stopping.wait(delay)
        except GraceExpired:
            logger.warning("shutdown grace period over; the job in hand went back to the queue")
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.setitimer(signal.ITIMER_REAL, 0)
            self._shutdown(acks)

    def _shutdown(self, acks: list[ScriptCall]) -> None:
        try:
            if acks:
                _, results = self.queue.take(self.worker_id, 0, 0, acks)
                self._check_acks(acks, results)
            held = self.queue.client.llen(self.queue.keys.processing(self.worker_id))
            if held == 0:
                self.queue.retire(self.worker_id)
            else:
                logger.warning("stopping with jobs held; the reaper returns them after the lease", extra={"held": held})
        except QueueUnavailable as e:
            logger.warning("could not flush on shutdown; the reaper will recover", extra={"reason": str(e)})
        finally:
            self._heartbeat_stop.set()
            if self.dispatcher:
                self.dispatcher.close()
            logger.info("worker stopped", extra={"processed": self.processed})

    # -- jobs ----------------------------------------------------------------------------

    def _run_batch(self, jobs: list[TakenJob]) -> list[ScriptCall]:
        acks: list[ScriptCall] = []
        for index, job in enumerate(jobs):
            if self.stopping.is_set():
                for rest in jobs[index:]:
                    self.queue.requeue(self.worker_id, rest.job_id)
                break
            try:
                ack = self._run_job(job)
            except GraceExpired:
                self.queue.requeue(self.worker_id, job.job_id)
                for rest in jobs[index + 1 :]:
                    self.queue.requeue(self.worker_id, rest.job_id)
                self._flush(acks)
                raise
            if ack is not None:
                acks.append(ack)
            self.processed += 1
        return acks

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
            result = job_type.run(payload)
            result_json = json.dumps(result, separators=(",", ":"), allow_nan=False)
        except SliceFailed as e:
            return self._fail(job, e.reason, retryable=e.retryable, keys=keys)
        except (TypeError, ValueError) as e:
            return self._fail(job, f"handler returned a result that is not JSON: {e}", retryable=False, keys=keys)
        except Exception as e:
            logger.exception("inline handler raised", extra=keys)
            return self._fail(job, f"{type(e).__name__}: {e}", retryable=True, keys=keys)
        return self.queue.finish_call(self.worker_id, job.job_id, result_json)

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

    def _flush(self, acks: list[ScriptCall]) -> None:
        if acks:
            _, results = self.queue.take(self.worker_id, 0, 0, acks)
            self._check_acks(acks, results)
            acks.clear()

    def _check_acks(self, acks: list[ScriptCall], results: list[Any]) -> None:
        for call, result in zip(acks, results, strict=False):
            if result == "lost":
                # our lease ran out and the reaper gave the job to another worker
                logger.warning("result discarded: the job was no longer ours", extra={"job_id": call.args[1]})

    # -- slices --------------------------------------------------------------------------

    def _dispatch_ready(self) -> None:
        if self.dispatcher is None:
            return
        batch = self.settings.batch_size
        for _ in range(_DISPATCH_ROUNDS_PER_TURN):
            slices = self.queue.take_slices(self.worker_id, batch)
            if not slices:
                return
            for outcome in self.dispatcher.dispatch(slices):
                item, error = outcome.slice, outcome.error
                keys = {
                    "job_id": item.job_id,
                    "job_type": item.type,
                    "tenant": item.tenant,
                    "slice_id": item.slice,
                    "attempt": item.attempt,
                }
                if error is None:
                    logger.info("slice dispatched", extra=keys)
                    continue
                logger.warning("slice dispatch failed", extra={**keys, "error": error.reason})
                self.queue.apply_outcome(
                    item.job_id,
                    item.slice,
                    item.attempt,
                    succeeded=False,
                    reason=error.reason,
                    retryable=error.retryable,
                    backoff_ms=backoff_ms(item.attempt, self.settings.retry_base_s, self.settings.retry_max_s),
                )
            self.queue.release_slices(self.worker_id, [s.ref for s in slices])
            if len(slices) < batch:
                return

    # -- heartbeat and reaping -----------------------------------------------------------

    def _renew_lease(self) -> None:
        if not self.queue.heartbeat(self.worker_id):
            logger.info("lease taken (new, or after it had run out)")

    def _heartbeat_loop(self) -> None:
        next_reap = 0.0
        next_sweep = time.monotonic() + _ORPHAN_SWEEP_S
        while not self._heartbeat_stop.wait(self.settings.heartbeat_s):
            try:
                self._renew_lease()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + _ORPHAN_SWEEP_S
                    self.queue.adopt_orphans()
                if now >= next_reap:
                    next_reap = now + self.settings.reaper_interval_s
                    self._reap()
            except QueueUnavailable as e:
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

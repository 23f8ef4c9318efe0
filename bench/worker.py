"""Worker: how fast one worker process drains a queue of inline jobs, offload next to arq and RQ.

Each child drains jobs its parent queued beforehand (``bench.peers``) and times the drain
from the worker's start to its last acknowledgement:

* offload: the real ``Worker`` with the default settings (batch of ``batch_size``, each
  batch's acknowledgements pipelined with the next take) running ``echo``; it is stopped
  once every job has run, and stopping flushes the last batch's acknowledgements. The
  only change is a 10 ms blocking pop, so the final idle wait does not pad the time.
* arq: ``Worker(burst=True)``, asyncio, up to ``ARQ_MAX_JOBS`` jobs at once.
* RQ: ``SimpleWorker.work(burst=True)``, each job in the worker's own process.

With ``rss_mark``, the offload child also samples its resident set size after that many
jobs and at the end: the growth between the two is the leak figure.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.common import BenchError, rss_bytes
from bench.peers import ARQ_MAX_JOBS, ARQ_POLL_DELAY_S, RQ_QUEUE

IDLE_BLOCK_S = 0.01
WATCH_S = 0.002


def child(params: dict[str, Any]) -> dict[str, Any]:
    system, jobs = str(params["system"]), int(params["jobs"])
    if system == "offload":
        return drain_offload(jobs, int(params.get("rss_mark", 0)))
    if system == "arq":
        return drain_arq(jobs)
    if system == "rq":
        return drain_rq(jobs)
    raise BenchError(f"no such system {system!r}")


def _result(jobs: int, elapsed_s: float, **extra: Any) -> dict[str, Any]:
    return {"jobs": jobs, "seconds": round(elapsed_s, 4), "jobs_per_s": round(jobs / elapsed_s, 1), **extra}


def drain_offload(jobs: int, rss_mark: int) -> dict[str, Any]:
    import dataclasses

    from offload.config import Settings
    from offload.connection import connect
    from offload.handlers import registry
    from offload.queue import Queue
    from offload.worker import Worker

    settings = dataclasses.replace(Settings.from_env(), block_s=IDLE_BLOCK_S)
    queue = Queue(connect(settings, "worker"), settings)
    worker = Worker(queue, registry, settings)
    rss: dict[str, int] = {"start": rss_bytes()}

    def watch() -> None:
        while worker.processed < jobs:
            if rss_mark and "mark" not in rss and worker.processed >= rss_mark:
                rss["mark"] = rss_bytes()
                rss["mark_at_job"] = worker.processed
            time.sleep(WATCH_S)
        worker.stop()

    watcher = threading.Thread(target=watch, name="bench-watch", daemon=True)
    start = time.perf_counter()
    watcher.start()
    worker.run()
    elapsed = time.perf_counter() - start
    rss["end"] = rss_bytes()

    succeeded = int(queue.client.hget(queue.keys.counts, "succeeded") or 0)  # type: ignore[arg-type]
    if succeeded != jobs:
        raise BenchError(f"offload: {jobs} jobs queued, {succeeded} succeeded")
    extra: dict[str, Any] = {"batch_size": settings.batch_size}
    if rss_mark:
        if "mark" not in rss:
            raise BenchError("the RSS mark was never reached")
        extra["rss"] = {**rss, "growth": round((rss["end"] - rss["mark"]) / rss["mark"], 4)}
    return _result(jobs, elapsed, **extra)


def drain_arq(jobs: int) -> dict[str, Any]:
    import asyncio
    import warnings

    from arq.connections import RedisSettings
    from arq.worker import Worker

    from bench.peers import noop_async

    async def drain() -> dict[str, Any]:
        worker = Worker(
            functions=[noop_async],
            redis_settings=RedisSettings.from_dsn(os.environ["REDIS_URL"]),
            burst=True,
            handle_signals=False,
            max_jobs=ARQ_MAX_JOBS,
            poll_delay=ARQ_POLL_DELAY_S,
        )
        start = time.perf_counter()
        await worker.async_run()
        elapsed = time.perf_counter() - start
        complete, failed = worker.jobs_complete, worker.jobs_failed
        with warnings.catch_warnings():  # arq 0.25 calls redis-py's deprecated close()
            warnings.simplefilter("ignore", DeprecationWarning)
            await worker.close()
        if complete != jobs or failed:
            raise BenchError(f"arq: {jobs} jobs queued, {complete} complete, {failed} failed")
        return _result(jobs, elapsed, max_jobs=ARQ_MAX_JOBS, poll_delay_s=ARQ_POLL_DELAY_S)

    return asyncio.run(drain())


def drain_rq(jobs: int) -> dict[str, Any]:
    import redis
    import rq

    conn = redis.Redis.from_url(os.environ["REDIS_URL"])
    queue = rq.Queue(RQ_QUEUE, connection=conn)
    worker = rq.SimpleWorker([queue], connection=conn)
    start = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - start
    finished, failed = queue.finished_job_registry.count, queue.failed_job_registry.count
    if finished != jobs or failed:
        raise BenchError(f"rq: {jobs} jobs queued, {finished} finished, {failed} failed")
    return _result(jobs, elapsed)

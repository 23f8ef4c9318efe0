"""The peers' no-op jobs (importable by path, as RQ needs), and how each peer's queue is filled.

Every system gets the same number of jobs with the same one small argument; filling is
not timed. The worker that drains them runs in a child process (``bench.worker``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

ARQ_QUEUE = "arq:queue"  # arq's default queue name
RQ_QUEUE = "bench"
# arq's best showing here: up to 100 jobs at once and a short poll (with its defaults, 10
# and 0.5 s, it drains these no-op jobs several times slower). Results are kept, as RQ and
# offload keep theirs.
ARQ_MAX_JOBS = 100
ARQ_POLL_DELAY_S = 0.01
# redis-py 8 caps an asyncio pool at 100 connections; arq takes one per concurrent call
ARQ_ENQUEUE_CONCURRENCY = 50


def noop(i: int) -> None:
    """RQ's job."""


async def noop_async(ctx: dict[str, Any], i: int) -> None:
    """arq's job."""


def fill_offload(redis_url: str, n: int) -> None:
    import dataclasses

    from offload.config import Settings
    from offload.connection import connect
    from offload.queue import NewJob, Queue

    settings = dataclasses.replace(Settings(), redis_url=redis_url)
    queue = Queue(connect(settings, "worker"), settings)
    for i in range(n):
        queue.enqueue(NewJob("echo", json.dumps({"i": i}), "bench", 1))
    queue.client.close()


def fill_rq(redis_url: str, n: int) -> None:
    import redis
    import rq

    conn = redis.Redis.from_url(redis_url)
    queue = rq.Queue(RQ_QUEUE, connection=conn)
    jobs = [rq.Queue.prepare_data(noop, args=(i,)) for i in range(n)]
    for start in range(0, n, 500):
        queue.enqueue_many(jobs[start : start + 500])
    conn.close()


def fill_arq(redis_url: str, n: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    async def fill() -> None:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        for start in range(0, n, ARQ_ENQUEUE_CONCURRENCY):
            batch = range(start, min(n, start + ARQ_ENQUEUE_CONCURRENCY))
            await asyncio.gather(*(pool.enqueue_job("noop_async", i) for i in batch))
        await pool.aclose()

    asyncio.run(fill())

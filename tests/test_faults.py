"""Faults, each with its exact outcome: kill -9, SIGTERM, Redis restarts and failovers, killed
connections, lost replies, duplicate, late and missing callbacks, throttling, idle timeouts,
and what is left in Redis afterwards. Real redis-server and worker processes; short leases.
The full-size versions, with figures, are ``make faults`` (faults/run.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import diag
from faults.audit import audit
from faults.harness import (
    FAST,
    Client,
    DurableRedis,
    LocalCompute,
    WorkerProcess,
    api_queue,
    drain,
    fail_over,
    plain_client,
    serving,
    wait_until,
    worker_env,
    worker_queue,
)
from faults.proxy import Proxy
from faults.worker_main import HttpLambdaClient

from offload import scripts
from offload.dispatch import Dispatcher, LambdaInvoker
from offload.jobs import Status
from offload.local.redis_server import RedisServer, start_redis
from offload.queue import NewJob, Queue
from offload.worker import Worker

LEASE_S, REAPER_S = float(FAST["OFFLOAD_LEASE_S"]), float(FAST["OFFLOAD_REAPER_INTERVAL_S"])


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for faults that would disturb the session's."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def proxy(own_redis: RedisServer) -> Iterator[Proxy]:
    """A proxy in front of ``own_redis`` (request it before the workers, so it stops after them)."""
    with Proxy(("127.0.0.1", own_redis.port)) as p:
        yield p


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    diag.reset_runs()  # in-process counts left by an earlier test would spend this one's failures
    return folder


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], name: str = "") -> WorkerProcess:
        worker = WorkerProcess({**FAST, **env}, tmp_path, name or f"worker{len(started)}")
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def in_process(
    runs: Path, monkeypatch: pytest.MonkeyPatch, worker_threads: Callable[[Worker], Worker]
) -> Callable[..., Worker]:
    """Workers as threads of the test process (for faults injected between it and Redis)."""
    monkeypatch.setenv(diag.RUN_LOG_ENV, str(runs))

    def start(queue: Queue, compute: LocalCompute | None = None) -> Worker:
        dispatcher = None
        if compute is not None:
            from faults.harness import callback_secret

            dispatcher = Dispatcher(
                LambdaInvoker(HttpLambdaClient(compute.url), "compute", base_delay_s=0.01),
                queue_name=queue.settings.queue,
                callback_base_url="http://127.0.0.1:9/unused",
                secret=callback_secret(),
                token_ttl_s=600,
                max_payload_bytes=queue.settings.max_invoke_payload_bytes,
                concurrency=4,
            )
        return worker_threads(Worker(queue, diag.build_registry(), queue.settings, dispatcher))

    return start


def submit(queue: Queue, n: int, **payload: Any) -> str:
    job = NewJob(type="fault.work", payload=json.dumps({"n": n, **payload}), tenant="t", max_tries=3)
    return queue.enqueue(job).job_id


def fan(queue: Queue, n: int, slices: int = 2, **payload: Any) -> str:
    job = NewJob(type="fault.fan", payload=json.dumps({"n": n, "slices": slices, **payload}), tenant="t", max_tries=3)
    return queue.enqueue(job).job_id


def statuses(queue: Queue, ids: list[str]) -> list[str | None]:
    return [(job.status if (job := queue.get(i)) else None) for i in ids]


def all_are(queue: Queue, ids: list[str], status: Status) -> Callable[[], bool]:
    return lambda: statuses(queue, ids) == [status] * len(ids)


def held(queue: Queue, worker_id: str) -> list[str]:
    return list(queue.client.lrange(queue.keys.processing(worker_id), 0, -1))  # type: ignore[arg-type]


# -- 1. leases and recovery ------------------------------------------------------------------


def test_after_kill_9_of_the_worker_holding_5_jobs_all_5_succeed_on_the_second_within_lease_and_reaper(
    own_redis: RedisServer, workers: Callable[..., WorkerProcess], runs: Path
) -> None:
    queue = worker_queue(own_redis.url, FAST)
    env = worker_env(own_redis.url, runs, OFFLOAD_BATCH_SIZE="5")
    ids = [submit(queue, n, ms_first=30_000 if n == 0 else 0) for n in range(5)]
    first = workers(env, "first")
    wait_until(lambda: len(held(queue, first.worker_id)) == 5, 10)
    second = workers(env, "second")

    first.kill9()
    killed = time.monotonic()
    wait_until(all_are(queue, ids, Status.SUCCEEDED), 10)

    assert time.monotonic() - killed <= LEASE_S + REAPER_S + 1.5
    jobs = [queue.get(i) for i in ids]
    assert all(j is not None and j.attempts == 2 and j.history[0]["error"] == "worker lost" for j in jobs)
    assert {j.history[0]["worker"] for j in jobs if j} == {first.worker_id}
    assert diag.read_runs(runs) == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1}  # only job 0 had started
    report = audit(queue.client, queue.keys, ids)
    assert report.ok and report.lost == 0 and report.applied_twice == 0 and queue.stats().balanced
    assert queue.client.zscore(queue.keys.workers, second.worker_id) is not None
    assert queue.client.zscore(queue.keys.workers, first.worker_id) is None


def test_a_job_whose_worker_is_alive_and_heartbeating_is_never_taken_from_it(
    own_redis: RedisServer, workers: Callable[..., WorkerProcess], runs: Path
) -> None:
    queue = worker_queue(own_redis.url, FAST)
    env = worker_env(own_redis.url, runs, OFFLOAD_BATCH_SIZE="1")
    busy = workers(env, "busy")
    job_id = submit(queue, 0, ms=4 * int(LEASE_S * 1000))  # four leases long
    wait_until(lambda: held(queue, busy.worker_id) == [job_id], 10)
    workers(env, "other")

    wait_until(all_are(queue, [job_id], Status.SUCCEEDED), 15)

    job = queue.get(job_id)
    assert job is not None and job.attempts == 1 and job.history == []
    assert diag.read_runs(runs) == {0: 1} and queue.stats().counts.get("stalled", 0) == 0


def test_a_job_that_stalls_past_max_stalls_is_dead_lettered_as_worker_lost(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(max_stalls=1)
    job_id = submit(queue, 0)
    for stall in (1, 2):
        queue.take(f"dead-{stall}", 1)
        queue.client.zadd(queue.keys.workers, {f"dead-{stall}": 0})  # its lease ran out
        queue.reap(backoff_ms=0)

    job = queue.get(job_id)
    assert job is not None and job.status == Status.DEAD and job.error == "worker lost"
    assert [h["event"] for h in job.history] == ["stalled", "stalled"]
    assert queue.client.lrange(queue.keys.dead, 0, -1) == [job_id] and queue.stats().balanced


def test_a_job_moved_by_a_worker_that_died_before_starting_it_goes_back_to_the_queue(queue: Queue) -> None:
    job_id = submit(queue, 0)
    queue.client.lmove(queue.keys.queued, queue.keys.processing("dead"), "RIGHT", "LEFT")  # BLMOVE, then kill -9
    queue.client.zadd(queue.keys.workers, {"dead": 0})

    queue.reap(backoff_ms=0)

    assert queue.client.lrange(queue.keys.queued, 0, -1) == [job_id]
    assert audit(queue.client, queue.keys, [job_id]).ok


# -- 2. retries ------------------------------------------------------------------------------


def test_a_failing_job_is_retried_with_each_reason_kept_then_dead_lettered(
    queue: Queue, in_process: Callable[..., Worker]
) -> None:
    flaky, doomed = submit(queue, 0, fail_runs=2), submit(queue, 1, fail=True)

    in_process(queue)

    wait_until(lambda: statuses(queue, [flaky, doomed]) == [Status.SUCCEEDED, Status.DEAD], 10)
    ok, dead = queue.get(flaky), queue.get(doomed)
    assert ok is not None and ok.attempts == 3 and [h["attempt"] for h in ok.history] == [1, 2]
    assert all("fails on purpose" in h["error"] for h in ok.history)
    assert dead is not None and dead.attempts == 3 and len(dead.history) == 3 and dead.error == "job 1 fails on purpose"
    assert queue.stats().counts["retried"] == 4 and audit(queue.client, queue.keys).ok


# -- 6. shutdown -----------------------------------------------------------------------------


def test_sigterm_mid_job_lets_it_finish_and_requeues_the_rest_of_the_batch_without_a_try(
    own_redis: RedisServer, workers: Callable[..., WorkerProcess], runs: Path
) -> None:
    queue = worker_queue(own_redis.url, FAST)
    ids = [submit(queue, n, ms=1000) for n in range(3)]
    worker = workers(worker_env(own_redis.url, runs, OFFLOAD_BATCH_SIZE="3", OFFLOAD_SHUTDOWN_GRACE_S="5"))
    wait_until(lambda: diag.read_runs(runs) == {0: 1} and len(held(queue, worker.worker_id)) == 3, 10)

    worker.terminate()

    assert worker.wait(5) == 0
    assert statuses(queue, ids) == [Status.SUCCEEDED, Status.QUEUED, Status.QUEUED]
    rest = [queue.get(i) for i in ids[1:]]
    assert all(j is not None and j.attempts == 1 and j.history == [] for j in rest)
    assert queue.client.lrange(queue.keys.queued, 0, -1) == ids[:0:-1]  # job 1 is taken next
    assert held(queue, worker.worker_id) == [] and queue.client.zcard(queue.keys.workers) == 0
    assert audit(queue.client, queue.keys, ids).ok


def test_sigterm_past_the_grace_period_requeues_the_job_in_hand_without_spending_a_try(
    own_redis: RedisServer, workers: Callable[..., WorkerProcess], runs: Path
) -> None:
    queue = worker_queue(own_redis.url, FAST)
    env = worker_env(own_redis.url, runs, OFFLOAD_SHUTDOWN_GRACE_S="0.5")
    worker = workers(env)
    job_id = submit(queue, 0, ms_first=60_000)
    wait_until(lambda: diag.read_runs(runs) == {0: 1}, 10)

    worker.terminate()
    stopped = time.monotonic()

    assert worker.wait(5) == 0 and time.monotonic() - stopped < 2.5
    job = queue.get(job_id)
    assert job is not None and job.status == Status.QUEUED and job.attempts == 1 and job.history == []
    workers(env, "next")
    wait_until(all_are(queue, [job_id], Status.SUCCEEDED), 10)
    job = queue.get(job_id)
    assert job is not None and job.attempts == 2 and job.history == []
    assert "shutdown grace period over" in worker.log_text()


# -- 5. Redis faults -------------------------------------------------------------------------


def test_a_redis_restart_loses_nothing_and_the_worker_resumes_within_seconds(
    workers: Callable[..., WorkerProcess], runs: Path
) -> None:
    server = DurableRedis()
    try:
        queue = worker_queue(server.url, FAST)
        worker = workers(worker_env(server.url, runs, OFFLOAD_BATCH_SIZE="4"))
        ids = [submit(queue, n, ms=50) for n in range(40)]
        wait_until(lambda: len(diag.read_runs(runs)) >= 8, 10)

        server.kill()
        time.sleep(1.5)
        server.start()
        back = time.monotonic()
        wait_until(lambda: len(diag.read_runs(runs)) > 12, 10)
        resumed = time.monotonic() - back
        wait_until(all_are(queue, ids, Status.SUCCEEDED), 20)

        assert resumed < 6 and worker.alive
        report = audit(queue.client, queue.keys, ids)
        assert report.ok and report.lost == 0 and report.applied_twice == 0
    finally:
        server.stop()


def primary_and_replica() -> tuple[RedisServer, RedisServer]:
    primary, replica = start_redis(), start_redis()
    plain_client(replica.url).replicaof("127.0.0.1", primary.port)
    wait_until(lambda: plain_client(replica.url).info("replication")["master_link_status"] == "up", 10)
    return primary, replica


def test_after_a_failover_the_worker_and_the_master_carry_on_with_the_new_primary(
    workers: Callable[..., WorkerProcess], runs: Path
) -> None:
    primary, replica = primary_and_replica()
    try:
        with Proxy(("127.0.0.1", primary.port)) as proxy:
            queue = api_queue(proxy.url, FAST)
            client = Client()
            worker = workers(worker_env(proxy.url, runs))
            with serving(queue):
                before = [client.submit("fault.work", {"n": n, "ms": 20}) for n in range(20)]
                fail_over(primary, replica, proxy)
                after = [client.submit("fault.work", {"n": n, "ms": 20}) for n in range(20, 40)]
            ids = [i for i in before + after if i]
            new = worker_queue(replica.url, FAST)
            wait_until(all_are(new, ids, Status.SUCCEEDED), 20)

            assert len(ids) == 40 and client.server_errors == 0 and worker.alive
            report = audit(new.client, new.keys, ids)
            assert report.ok and report.lost == 0 and report.applied_twice == 0
            assert "Traceback" not in worker.log_text()
    finally:
        primary.stop()
        replica.stop()


def test_killed_client_connections_under_load_lose_nothing_and_apply_nothing_twice(
    own_redis: RedisServer, workers: Callable[..., WorkerProcess], runs: Path
) -> None:
    queue = api_queue(own_redis.url, FAST)
    env = worker_env(own_redis.url, runs, OFFLOAD_BATCH_SIZE="8")
    pool = [workers(env, "a"), workers(env, "b")]
    client, killer, stop = Client(), plain_client(own_redis.url), threading.Event()

    def kill_connections() -> None:
        while not stop.wait(0.03):
            killer.client_kill_filter(_type="normal", skipme=True)

    thread = threading.Thread(target=kill_connections, daemon=True)
    thread.start()
    try:
        with serving(queue):
            ids = [client.submit("fault.work", {"n": n, "ms": 5}) for n in range(200)]
        wait_until(lambda: drain(queue, 30) >= 0, 31)
    finally:
        stop.set()
        thread.join()

    report = audit(queue.client, queue.keys, [i for i in ids if i])
    assert report.ok and report.lost == 0 and report.applied_twice == 0, report.problems
    assert report.by_status == {"succeeded": 200} and client.server_errors == 0
    assert all(w.alive for w in pool)


def test_a_lost_take_reply_leaves_no_job_stranded_in_the_worker(
    own_redis: RedisServer, proxy: Proxy, in_process: Callable[..., Worker], runs: Path
) -> None:
    direct = worker_queue(own_redis.url, FAST)
    ids = [submit(direct, n) for n in range(10)]
    proxy.lose_replies(match=scripts.SCRIPTS["take"].sha.encode(), count=1)

    in_process(worker_queue(proxy.url, FAST))
    wait_until(all_are(direct, ids, Status.SUCCEEDED), 10)

    assert proxy.replies_lost == 1
    assert diag.read_runs(runs) == {n: 1 for n in range(10)}  # the batch whose reply was lost ran once, later
    assert audit(direct.client, direct.keys, ids).ok


def test_a_lost_blmove_reply_leaves_no_job_stranded_in_an_idle_worker(
    own_redis: RedisServer, proxy: Proxy, in_process: Callable[..., Worker], runs: Path
) -> None:
    direct = worker_queue(own_redis.url, FAST)
    in_process(worker_queue(proxy.url, FAST))
    time.sleep(0.5)  # blocked in BLMOVE
    proxy.lose_replies(match=b"BLMOVE", count=1)
    time.sleep(0.3)  # the next BLMOVE is the one whose reply is lost
    job_id = submit(direct, 0)

    waited = wait_until(all_are(direct, [job_id], Status.SUCCEEDED), 10)

    assert proxy.replies_lost == 1 and waited < 3
    assert diag.read_runs(runs) == {0: 1} and audit(direct.client, direct.keys, [job_id]).ok


def test_a_lost_reply_to_the_take_after_a_blmove_leaves_no_job_stranded(
    own_redis: RedisServer, proxy: Proxy, in_process: Callable[..., Worker]
) -> None:
    direct = worker_queue(own_redis.url, FAST)
    in_process(worker_queue(proxy.url, FAST))
    time.sleep(0.5)  # idle: blocked in BLMOVE, so the next job comes by BLMOVE, then TAKE with its id
    job_id = uuid.uuid4().hex
    proxy.lose_replies(match=job_id.encode(), count=1)  # the first command the worker sends with the id
    direct.enqueue(NewJob(type="fault.work", payload='{"n": 0}', tenant="t", max_tries=3), job_id=job_id)

    wait_until(all_are(direct, [job_id], Status.SUCCEEDED), 5)


def test_a_lost_take_slices_reply_leaves_no_slice_undispatched(
    own_redis: RedisServer, proxy: Proxy, in_process: Callable[..., Worker]
) -> None:
    direct = worker_queue(own_redis.url, FAST)
    proxy.lose_replies(match=scripts.SCRIPTS["take_slices"].sha.encode(), count=1)
    compute = LocalCompute().start()
    try:
        with serving(api_queue(own_redis.url)):
            in_process(worker_queue(proxy.url, FAST), compute)
            job_id = fan(direct, 0, slices=4)
            wait_until(all_are(direct, [job_id], Status.SUCCEEDED), 10)
    finally:
        compute.stop()

    job = direct.get(job_id)
    assert proxy.replies_lost == 1 and job is not None and job.history == []  # no deadline was missed
    assert [r["sq"] for r in job.result] == [0, 1, 4, 9] and compute.slices_applied_twice() == 0
    assert audit(direct.client, direct.keys, [job_id]).ok


@pytest.mark.parametrize("backlog_limit", ["0", "1000"])  # with and without the backlog check
def test_a_lost_enqueue_reply_enqueues_the_job_once(own_redis: RedisServer, backlog_limit: str) -> None:
    with Proxy(("127.0.0.1", own_redis.port)) as proxy:
        queue = api_queue(proxy.url, {"OFFLOAD_MAX_BACKLOG": backlog_limit})
        submit(queue, 0)  # loads the script
        proxy.lose_replies(match=scripts.SCRIPTS["enqueue"].sha.encode(), count=1)

        job_id = submit(queue, 1)

        direct = worker_queue(own_redis.url)
        assert proxy.replies_lost == 1
        assert direct.client.lrange(direct.keys.queued, 0, -1).count(job_id) == 1
        assert audit(direct.client, direct.keys).ok


def test_the_master_answers_503_not_500_when_redis_is_out_of_memory(own_redis: RedisServer) -> None:
    plain_client(own_redis.url).config_set("maxmemory", "1")
    client = Client(tries=1)
    with serving(api_queue(own_redis.url)):
        assert client.submit("echo", {"n": 1}) is None
    assert client.statuses == {503: 1}


def test_a_worker_idle_for_longer_than_every_timeout_takes_the_next_job_at_once(
    workers: Callable[..., WorkerProcess], runs: Path
) -> None:
    server = start_redis(extra_args=("--timeout", "1"))  # the server drops connections idle 1 s
    try:
        queue = api_queue(server.url)
        worker = workers(worker_env(server.url, runs, OFFLOAD_BLOCK_S="0.5"))
        time.sleep(4.5)  # past the lease, the reaper interval, the server's idle timeout, the socket timeout
        client = Client(tries=1)
        with serving(queue):
            job_id = client.submit("fault.work", {"n": 0})

        waited = wait_until(lambda: diag.read_runs(runs) == {0: 1}, 5)

        assert job_id and client.statuses == {202: 1} and waited < 1.5
        wait_until(all_are(queue, [job_id], Status.SUCCEEDED), 5)
        assert worker.alive and "Traceback" not in worker.log_text()
    finally:
        server.stop()


# -- 3 and 4. slices and Lambda's own behaviour ----------------------------------------------


@pytest.fixture
def fan_queue(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue(slice_timeout_s=0.5)


def run_fan(
    queue: Queue, in_process: Callable[..., Worker], compute: LocalCompute, slices: int = 3, **payload: Any
) -> str:
    with serving(queue):
        in_process(queue, compute)
        job_id = fan(queue, 0, slices=slices, **payload)
        wait_until(lambda: statuses(queue, [job_id])[0] in (Status.SUCCEEDED, Status.DEAD), 15)
        wait_until(compute.idle, 10)
    return job_id


def test_duplicate_deliveries_of_every_callback_apply_each_slice_once(
    fan_queue: Queue, in_process: Callable[..., Worker]
) -> None:
    compute = LocalCompute(lambda invocation: [0.0, 0.0, 0.05]).start()
    try:
        job_id = run_fan(fan_queue, in_process, compute)
    finally:
        compute.stop()

    job = fan_queue.get(job_id)
    assert job is not None and job.status == Status.SUCCEEDED and [r["sq"] for r in job.result] == [0, 1, 4]
    verdicts = compute.verdicts()
    assert verdicts.get("applied", 0) + verdicts.get("completed", 0) == 3
    assert verdicts.get("duplicate", 0) + verdicts.get("inactive", 0) == 6 and compute.slices_applied_twice() == 0
    assert job.slices_succeeded == 3 and audit(fan_queue.client, fan_queue.keys).ok


def test_a_late_callback_from_an_older_attempt_is_fenced_and_logged(
    fan_queue: Queue, in_process: Callable[..., Worker]
) -> None:
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("offload-callback").addHandler(handler)
    compute = LocalCompute(lambda inv: [1.5] if inv["attempt"] == 1 and inv["slice"] == 0 else [0.0]).start()
    try:
        job_id = run_fan(fan_queue, in_process, compute)
    finally:
        compute.stop()
        logging.getLogger("offload-callback").removeHandler(handler)

    job = fan_queue.get(job_id)
    assert job is not None and job.status == Status.SUCCEEDED
    late = [d for d in compute.deliveries if d.slice == 0 and d.attempt == 1]
    assert len(late) == 1 and late[0].verdict in ("stale", "inactive")
    assert [(h["slice"], h["attempt"], h["error"]) for h in job.history] == [(0, 1, "no callback before the deadline")]
    assert "callback ignored" in logged and compute.slices_applied_twice() == 0


def test_a_slice_that_never_calls_back_fails_with_no_callback_and_is_retried(
    fan_queue: Queue, in_process: Callable[..., Worker]
) -> None:
    compute = LocalCompute(lambda inv: [] if inv["attempt"] == 1 else [0.0]).start()
    try:
        job_id = run_fan(fan_queue, in_process, compute, slices=2)
    finally:
        compute.stop()

    job = fan_queue.get(job_id)
    assert job is not None and job.status == Status.SUCCEEDED and compute.dropped == 2
    assert sorted((h["slice"], h["attempt"]) for h in job.history) == [(0, 1), (1, 1)]
    assert fan_queue.stats().counts["slice_retried"] == 2 and audit(fan_queue.client, fan_queue.keys).ok


def test_a_slice_that_never_calls_back_at_all_is_dead_lettered_with_the_reason(
    fan_queue: Queue, in_process: Callable[..., Worker]
) -> None:
    compute = LocalCompute(lambda inv: [] if inv["slice"] == 1 else [0.0]).start()
    try:
        job_id = run_fan(fan_queue, in_process, compute, slices=2)
    finally:
        compute.stop()

    job = fan_queue.get(job_id)
    assert job is not None and job.status == Status.DEAD
    assert job.error == "slice 1: no callback before the deadline" and len(job.history) == 3
    assert (
        fan_queue.client.lrange(fan_queue.keys.dead, 0, -1) == [job_id] and audit(fan_queue.client, fan_queue.keys).ok
    )


def test_throttled_invocations_are_retried_by_the_invoker_and_spend_no_try(
    fan_queue: Queue, in_process: Callable[..., Worker]
) -> None:
    seen: dict[tuple[str, int], int] = {}

    def plan(invocation: dict[str, Any]) -> Any:
        key = (invocation["job_id"], invocation["slice"])
        seen[key] = seen.get(key, 0) + 1
        return "throttle" if seen[key] <= 2 else [0.0]

    compute = LocalCompute(plan).start()
    try:
        job_id = run_fan(fan_queue, in_process, compute)
    finally:
        compute.stop()

    job = fan_queue.get(job_id)
    assert job is not None and job.status == Status.SUCCEEDED and job.history == [] and compute.throttled == 6


def test_a_slice_over_the_invoke_limit_dead_letters_the_job_before_any_dispatch(
    fan_queue: Queue, in_process: Callable[..., Worker]
) -> None:
    compute = LocalCompute().start()
    try:
        job_id = run_fan(fan_queue, in_process, compute, slices=1, pad=300_000)
    finally:
        compute.stop()

    job = fan_queue.get(job_id)
    assert job is not None and job.status == Status.DEAD and "asynchronous invocation limit" in (job.error or "")
    assert compute.invocations == 0


# -- 7. bounded memory -----------------------------------------------------------------------

# Keys of a queue that live as long as the queue (each bounded: a fixed set of fields, one
# entry per live worker or tenant), and the dead-letter list (see the test below).
LONG_LIVED = {"counts", "picks", "dead", "workers", "tenants", "inflight", "published"}


def test_after_a_full_mix_of_jobs_every_key_left_has_a_lifetime_or_is_a_known_queue_key(
    fan_queue: Queue, in_process: Callable[..., Worker]
) -> None:
    compute = LocalCompute(lambda inv: [] if inv["attempt"] == 1 and inv["slice"] == 2 else [0.0, 0.0]).start()
    try:
        with serving(fan_queue):
            worker = in_process(fan_queue, compute)
            ids = [submit(fan_queue, 0), submit(fan_queue, 1, fail_runs=1), submit(fan_queue, 2, fail=True)]
            ids += [fan(fan_queue, 3, slices=3), fan(fan_queue, 4, slices=1, pad=300_000)]
            echo = NewJob(type="echo", payload="{}", tenant="t", max_tries=1)
            ids.append(fan_queue.enqueue(echo, idempotency_key="k1", request_digest="d").job_id)
            drain(fan_queue, 15)
            wait_until(compute.idle, 10)
            worker.stop()
            wait_until(lambda: fan_queue.client.zcard(fan_queue.keys.workers) == 0, 10)
    finally:
        compute.stop()

    assert statuses(fan_queue, ids) == [Status.SUCCEEDED] * 2 + [Status.DEAD, Status.SUCCEEDED, Status.DEAD] + [
        Status.SUCCEEDED
    ]
    forever = {k for k in fan_queue.client.keys("*") if fan_queue.client.ttl(k) == -1}
    assert {k.removeprefix(fan_queue.keys.base + ":") for k in forever} <= LONG_LIVED, forever
    assert audit(fan_queue.client, fan_queue.keys, ids).ok


def test_the_dead_letter_list_lets_go_of_jobs_whose_records_expired(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(dead_job_ttl_s=1)
    for n in range(3):
        submit(queue, n)
        [job], _ = queue.take("w", 1)
        queue.take("w", 0, acks=[queue.fail_call("w", job, "bad", retryable=False, backoff_ms=0)])
    time.sleep(1.2)

    queue.reap(backoff_ms=0)

    assert queue.client.llen(queue.keys.dead) == 0

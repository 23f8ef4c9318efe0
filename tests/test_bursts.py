"""Bursts: idempotent submission, load shedding at the limit, tenant fairness, priorities."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import pytest

from offload.queue import EnqueueVerdict, NewJob, Queue
from tests.conftest import api_event, body_of

ECHO = {"type": "echo", "payload": {"n": 1}}


def submit(master: ModuleType, body: object, key: str = "", tenant: str = "tenant-a") -> dict[str, object]:
    headers = {"Idempotency-Key": key} if key else {}
    response: dict[str, object] = master.handler(api_event("POST", "/jobs", body, headers=headers, tenant=tenant), None)
    return response


def test_the_same_idempotency_key_and_request_returns_the_original_job(master: ModuleType, queue: Queue) -> None:
    first = submit(master, ECHO, key="order-42")
    again = submit(master, ECHO, key="order-42")

    assert first["statusCode"] == again["statusCode"] == 202
    assert body_of(first)["job_id"] == body_of(again)["job_id"]  # type: ignore[arg-type]
    assert again["headers"]["Idempotent-Replayed"] == "true"  # type: ignore[index]
    assert queue.stats().counts["accepted"] == 1


def test_the_same_key_with_a_different_request_is_409(master: ModuleType, queue: Queue) -> None:
    submit(master, ECHO, key="order-42")

    response = submit(master, {"type": "echo", "payload": {"n": 2}}, key="order-42")

    assert response["statusCode"] == 409
    assert "different request" in body_of(response)["message"]  # type: ignore[arg-type]
    assert queue.stats().counts["accepted"] == 1


def test_idempotency_keys_are_per_tenant(master: ModuleType, queue: Queue) -> None:
    a = submit(master, ECHO, key="k", tenant="tenant-a")
    b = submit(master, ECHO, key="k", tenant="tenant-b")

    assert body_of(a)["job_id"] != body_of(b)["job_id"]  # type: ignore[arg-type]


def test_concurrent_duplicate_submissions_create_exactly_one_job(master: ModuleType, queue: Queue) -> None:
    barrier = threading.Barrier(16)

    def racer(_: int) -> str:
        barrier.wait()
        return str(body_of(submit(master, ECHO, key="burst-1"))["job_id"])  # type: ignore[arg-type]

    with ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(racer, range(16)))

    assert len(ids) == 1
    assert queue.stats().counts["accepted"] == 1 and queue.stats().depth == 1


def test_the_idempotency_key_expires_with_its_lifetime(queue: Queue) -> None:
    job = NewJob(type="echo", payload="{}", tenant="t", max_tries=1)
    queue.enqueue(job, idempotency_key="k", request_digest="d")

    ttl = queue.client.ttl(queue.keys.idempotency("t", "k"))

    assert 0 < ttl <= queue.settings.idempotency_ttl_s


@pytest.fixture
def limited(master: ModuleType, monkeypatch: pytest.MonkeyPatch, queue: Queue) -> Queue:
    settings = dataclasses.replace(master.SETTINGS, max_backlog=5)
    limited_queue = Queue(master.QUEUE.client, settings)
    monkeypatch.setattr(master, "QUEUE", limited_queue)
    return limited_queue


def test_past_the_backlog_limit_the_master_sheds_with_429_and_enqueues_nothing(
    master: ModuleType, limited: Queue
) -> None:
    statuses = [submit(master, ECHO)["statusCode"] for _ in range(5)]
    shed = submit(master, ECHO)

    assert statuses == [202] * 5
    assert shed["statusCode"] == 429 and shed["headers"]["Retry-After"] == str(limited.settings.retry_after_s)  # type: ignore[index]
    assert body_of(shed)["error"] == "backlog_full"  # type: ignore[arg-type]
    stats = limited.stats()
    assert stats.depth == 5 and stats.counts["accepted"] == 5 and stats.counts["shed"] == 1


def test_shedding_is_exact_under_concurrency(master: ModuleType, limited: Queue) -> None:
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: submit(master, ECHO)["statusCode"], range(40)))

    assert statuses.count(202) == 5 and statuses.count(429) == 35
    assert limited.stats().depth == 5


def test_once_the_backlog_drains_jobs_are_accepted_again(master: ModuleType, limited: Queue) -> None:
    for _ in range(6):
        submit(master, ECHO)

    limited.take("w1", 1)

    assert submit(master, ECHO)["statusCode"] == 202


def fan_out(queue: Queue, tenant: str, slices: int) -> str:
    job_id = queue.enqueue(NewJob(type="thumbnail", payload="{}", tenant=tenant, max_tries=1)).job_id
    queue.take("w1", 1)
    queue.fan_out("w1", job_id, ["{}"] * slices)
    return job_id


def test_a_small_job_is_dispatched_next_to_a_huge_one_from_another_tenant(make_queue: object) -> None:
    queue: Queue = make_queue(tenant_max_inflight=4)  # type: ignore[operator]
    huge = fan_out(queue, "tenant-a", 1000)
    first = queue.take_slices("w1", 32)
    small = fan_out(queue, "tenant-b", 1)

    second = queue.take_slices("w1", 32)

    assert [s.job_id for s in first] == [huge] * 4  # tenant A is capped at 4 in flight
    assert [s.job_id for s in second] == [small]
    assert queue.stats().slices_in_flight == {"tenant-a": 4, "tenant-b": 1}


def test_a_tenants_in_flight_count_drops_as_its_slices_call_back(make_queue: object) -> None:
    queue: Queue = make_queue(tenant_max_inflight=2)  # type: ignore[operator]
    job_id = fan_out(queue, "tenant-a", 5)
    taken = queue.take_slices("w1", 10)

    queue.apply_outcome(job_id, taken[0].slice, 1, succeeded=True, result_json="0")
    queue.apply_outcome(job_id, taken[1].slice, 1, succeeded=True, result_json="1")

    assert len(taken) == 2 and queue.stats().slices_in_flight == {}
    assert len(queue.take_slices("w1", 10)) == 2


def test_tenants_are_served_in_turn(make_queue: object) -> None:
    queue: Queue = make_queue(tenant_max_inflight=0)  # type: ignore[operator]
    a, b, c = (fan_out(queue, t, 3) for t in ("a", "b", "c"))

    order = [s.job_id for s in queue.take_slices("w1", 9)]

    assert order == [a, b, c] * 3


def enqueue(queue: Queue, priority: str) -> str:
    return queue.enqueue(NewJob(type="echo", payload="{}", tenant="t", max_tries=1, priority=priority)).job_id


def test_interactive_jobs_are_served_first_without_starving_batch(queue: Queue) -> None:
    batch = [enqueue(queue, "batch") for _ in range(4)]
    interactive = [enqueue(queue, "interactive") for _ in range(12)]

    taken = [job.job_id for _ in range(8) for job in queue.take("w1", 1)[0]]

    assert sum(j in interactive for j in taken) == 6 and sum(j in batch for j in taken) == 2
    assert taken[:3] == interactive[:3]


def test_an_interactive_job_wakes_a_worker_blocked_on_an_empty_queue(queue: Queue) -> None:
    result: list[float] = []

    def blocked() -> None:
        started = time.monotonic()
        jobs, _ = queue.take("w1", 1, block_s=5)
        result.append(time.monotonic() - started)
        assert len(jobs) == 1

    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.2)
    enqueue(queue, "interactive")
    thread.join(timeout=10)

    assert result and result[0] < 2


def test_the_master_queues_interactive_work_in_its_class(master: ModuleType, queue: Queue) -> None:
    submit(master, {**ECHO, "priority": "interactive"})

    assert queue.client.llen(queue.keys.queued_interactive) == 1
    assert json.loads(
        queue.client.hget(queue.keys.job(queue.client.lindex(queue.keys.queued_interactive, 0)), "payload")
    ) == {"n": 1}  # type: ignore[arg-type]


def test_the_backlog_limit_counts_both_classes(queue: Queue) -> None:
    limited = Queue(queue.client, dataclasses.replace(queue.settings, max_backlog=2))
    enqueue(limited, "interactive")
    enqueue(limited, "batch")

    verdict = limited.enqueue(NewJob(type="echo", payload="{}", tenant="t", max_tries=1)).verdict

    assert verdict == EnqueueVerdict.SHED


def test_every_way_a_dispatch_ends_frees_its_in_flight_slot(make_queue: object) -> None:
    queue: Queue = make_queue(tenant_max_inflight=0, slice_timeout_s=0.0, lease_s=0.0)  # type: ignore[operator]
    job_id = queue.enqueue(NewJob(type="thumbnail", payload="{}", tenant="a", max_tries=3)).job_id
    queue.take("w1", 1)
    queue.fan_out("w1", job_id, ["{}"] * 4)
    s0, s1, s2, _held = queue.take_slices("w1", 4)
    queue.release_slices("w1", [s0.ref, s1.ref, s2.ref])  # the last stays held by w1, which then dies

    queue.apply_outcome(job_id, s0.slice, 1, succeeded=True, result_json="0")
    queue.apply_outcome(job_id, s1.slice, 1, succeeded=False, reason="flaky", retryable=True, backoff_ms=60_000)
    report = queue.reap(backoff_ms=60_000)  # s2 misses its deadline; w1's lease is over, so s3 comes back

    assert report.slices_timed_out + report.slices_recovered >= 2
    assert queue.stats().slices_in_flight == {}
    assert queue.stats().balanced


def test_the_backlog_limit_and_what_was_shed_are_in_the_stats(limited: Queue, master: ModuleType) -> None:
    from offload.operations import stats_row

    for _ in range(7):
        submit(master, ECHO)

    row = stats_row(limited.stats())

    assert row["depth"] == 5 and row["backlog_limit"] == 5 and row["shed"] == 2

"""The queue's state machine, against a real Redis: every transition and its counts."""

from __future__ import annotations

import json

import pytest
import redis

from offload import scripts
from offload.jobs import Status
from offload.queue import EnqueueVerdict, NewJob, OutcomeVerdict, Queue


def submit(queue: Queue, type_: str = "echo", payload: object = None, max_tries: int = 3, tenant: str = "t") -> str:
    result = queue.enqueue(
        NewJob(type=type_, payload=json.dumps(payload or {"n": 1}), tenant=tenant, max_tries=max_tries)
    )
    assert result.verdict == EnqueueVerdict.ACCEPTED
    return result.job_id


def test_enqueue_stores_the_job_and_pushes_it_in_one_script(queue: Queue, r: redis.Redis) -> None:
    job_id = submit(queue)

    assert r.lrange(queue.keys.queued, 0, -1) == [job_id]
    assert r.hget(queue.keys.job(job_id), "status") == "queued"
    assert queue.stats().counts == {"accepted": 1, "queued": 1}


def test_every_key_of_a_queue_shares_its_hash_tag(queue: Queue, r: redis.Redis) -> None:
    submit(queue)
    queue.take("w1", 1)

    assert r.keys("*") and all(key.startswith("offload:{default}:") for key in r.keys("*"))


def test_take_moves_the_job_into_the_workers_processing_list(queue: Queue, r: redis.Redis) -> None:
    job_id = submit(queue)

    jobs, _ = queue.take("w1", 10)

    assert [j.job_id for j in jobs] == [job_id]
    assert jobs[0].attempt == 1
    assert r.lrange(queue.keys.processing("w1"), 0, -1) == [job_id]
    assert r.llen(queue.keys.queued) == 0
    assert queue.get(job_id).status == Status.RUNNING  # type: ignore[union-attr]


def test_take_is_first_in_first_out(queue: Queue) -> None:
    ids = [submit(queue) for _ in range(5)]

    jobs, _ = queue.take("w1", 10)

    assert [j.job_id for j in jobs] == ids


def test_blocking_take_waits_for_a_job(queue: Queue) -> None:
    jobs, _ = queue.take("w1", 10, block_s=0.1)
    assert jobs == []

    job_id = submit(queue)
    jobs, _ = queue.take("w1", 10, block_s=0.1)
    assert [j.job_id for j in jobs] == [job_id]


def test_finish_acknowledges_atomically_and_sets_a_lifetime(queue: Queue, r: redis.Redis) -> None:
    job_id = submit(queue)
    queue.take("w1", 1)

    _, results = queue.take("w1", 0, acks=[queue.finish_call("w1", job_id, '{"ok":true}')])

    assert results == ["succeeded"]
    job = queue.get(job_id)
    assert job is not None and job.status == Status.SUCCEEDED and job.result == {"ok": True}
    assert r.llen(queue.keys.processing("w1")) == 0
    assert 0 < r.ttl(queue.keys.job(job_id)) <= queue.settings.finished_job_ttl_s
    assert queue.stats().balanced


def test_an_ack_for_a_job_no_longer_held_changes_nothing(queue: Queue) -> None:
    job_id = submit(queue)
    queue.take("w1", 1)
    queue.take("w1", 0, acks=[queue.finish_call("w1", job_id, "1")])

    _, results = queue.take("w1", 0, acks=[queue.finish_call("w1", job_id, "2")])

    assert results == ["lost"]
    assert queue.get(job_id).result == 1  # type: ignore[union-attr]


def test_a_retryable_failure_waits_in_the_delayed_set_then_returns(queue: Queue, r: redis.Redis) -> None:
    job_id = submit(queue, max_tries=3)
    [job], _ = queue.take("w1", 1)

    _, results = queue.take("w1", 0, acks=[queue.fail_call("w1", job, "boom", retryable=True, backoff_ms=0)])

    assert results == ["retrying"]
    assert queue.get(job_id).status == Status.RETRYING  # type: ignore[union-attr]
    assert r.zscore(queue.keys.delayed, job_id) is not None
    assert queue.reap(backoff_ms=0).promoted == 1
    [again], _ = queue.take("w1", 1)
    assert again.job_id == job_id and again.attempt == 2 and again.failures == 1


def test_failures_past_max_tries_dead_letter_the_job_with_every_reason(queue: Queue, r: redis.Redis) -> None:
    job_id = submit(queue, max_tries=2)
    for reason in ("first", "second"):
        queue.reap(backoff_ms=0)
        [job], _ = queue.take("w1", 1)
        queue.take("w1", 0, acks=[queue.fail_call("w1", job, reason, retryable=True, backoff_ms=0)])

    job_record = queue.get(job_id)
    assert job_record is not None and job_record.status == Status.DEAD and job_record.error == "second"
    assert [h["error"] for h in job_record.history] == ["first", "second"]
    assert r.lrange(queue.keys.dead, 0, -1) == [job_id]
    assert queue.stats().counts["dead"] == 1 and queue.stats().balanced


def test_a_permanent_failure_dead_letters_at_once(queue: Queue) -> None:
    job_id = submit(queue, max_tries=5)
    [job], _ = queue.take("w1", 1)

    queue.take("w1", 0, acks=[queue.fail_call("w1", job, "bad input", retryable=False, backoff_ms=0)])

    assert queue.get(job_id).status == Status.DEAD  # type: ignore[union-attr]


def test_replay_requeues_a_dead_job_with_its_id_and_history(queue: Queue, r: redis.Redis) -> None:
    job_id = submit(queue, max_tries=1)
    [job], _ = queue.take("w1", 1)
    queue.take("w1", 0, acks=[queue.fail_call("w1", job, "bad", retryable=False, backoff_ms=0)])

    assert queue.replay(job_id)

    record = queue.get(job_id)
    assert record is not None and record.status == Status.QUEUED and record.error is None
    assert [h.get("error") or h.get("event") for h in record.history] == ["bad", "replayed"]
    assert r.lrange(queue.keys.queued, 0, -1) == [job_id] and r.llen(queue.keys.dead) == 0
    assert r.ttl(queue.keys.job(job_id)) == -1
    assert queue.stats().counts["replayed"] == 1 and queue.stats().balanced
    assert not queue.replay(job_id)  # not dead any more


def test_requeue_on_shutdown_puts_the_job_first_without_spending_a_try(queue: Queue, r: redis.Redis) -> None:
    first = submit(queue)
    second = submit(queue)
    [job], _ = queue.take("w1", 1)

    assert queue.requeue("w1", job.job_id) == "queued"

    [again], _ = queue.take("w1", 1)
    assert again.job_id == first and again.failures == 0 and again.attempt == 2
    assert r.lrange(queue.keys.queued, 0, -1) == [second]


def fan_out(queue: Queue, slices: int, max_tries: int = 2) -> str:
    job_id = submit(queue, "thumbnail", max_tries=max_tries)
    queue.take("w1", 1)
    assert queue.fan_out("w1", job_id, [json.dumps({"n": i}) for i in range(slices)]) == "waiting"
    return job_id


def test_fan_out_readies_every_slice_and_the_job_waits(queue: Queue) -> None:
    job_id = fan_out(queue, 3)

    taken = queue.take_slices("w1", 10)

    assert [(s.job_id, s.slice, s.attempt) for s in taken] == [(job_id, 0, 1), (job_id, 1, 1), (job_id, 2, 1)]
    assert [json.loads(s.input) for s in taken] == [{"n": 0}, {"n": 1}, {"n": 2}]
    record = queue.get(job_id)
    assert record is not None and record.status == Status.WAITING and record.slices_total == 3


def test_the_last_slice_completes_the_job_with_results_in_slice_order(queue: Queue) -> None:
    job_id = fan_out(queue, 3)
    queue.take_slices("w1", 10)

    verdicts = [
        queue.apply_outcome(job_id, n, 1, succeeded=True, result_json=json.dumps({"slice": n}))[0] for n in (2, 0, 1)
    ]

    assert verdicts == [OutcomeVerdict.APPLIED, OutcomeVerdict.APPLIED, OutcomeVerdict.COMPLETED]
    record = queue.get(job_id)
    assert record is not None and record.status == Status.SUCCEEDED
    assert record.result == [{"slice": 0}, {"slice": 1}, {"slice": 2}]
    assert queue.stats().balanced


def test_a_job_of_thousands_of_slices_assembles_every_result_in_order(queue: Queue) -> None:
    job_id = fan_out(queue, 2500)  # more outputs than one read takes, and than Lua can unpack
    verdicts = []
    while batch := queue.take_slices("w1", 500):
        verdicts += [
            queue.apply_outcome(job_id, s.slice, s.attempt, succeeded=True, result_json=str(s.slice))[0] for s in batch
        ]

    assert verdicts.count(OutcomeVerdict.COMPLETED) == 1 and len(verdicts) == 2500
    record = queue.get(job_id)
    assert record is not None and record.result == list(range(2500))


@pytest.mark.parametrize("later", ["taken", "finished"])
def test_an_enqueue_sent_again_after_the_job_moved_on_changes_nothing(
    queue: Queue, later: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[scripts.ScriptCall] = []
    real_run = scripts.run
    monkeypatch.setattr(scripts, "run", lambda client, call: (sent.append(call), real_run(client, call))[1])
    job_id = queue.enqueue(NewJob(type="echo", payload="{}", tenant="t", max_tries=3)).job_id
    [job], _ = queue.take("w1", 1)
    if later == "finished":
        queue.take("w1", 0, acks=[queue.finish_call("w1", job.job_id, "{}")])
    before = queue.get(job_id)

    assert real_run(queue.client, sent[0]) == "accepted"  # what redis-py resends after a lost reply

    after = queue.get(job_id)
    assert before is not None and after is not None and after.status == before.status
    assert queue.client.llen(queue.keys.queued) == 0 and queue.stats().balanced


def test_a_repeated_callback_changes_nothing(queue: Queue) -> None:
    job_id = fan_out(queue, 2)
    queue.take_slices("w1", 10)
    queue.apply_outcome(job_id, 0, 1, succeeded=True, result_json='"first"')

    again = queue.apply_outcome(job_id, 0, 1, succeeded=True, result_json='"second"')
    failed_later = queue.apply_outcome(job_id, 0, 1, succeeded=False, reason="late failure")

    assert again[0] == OutcomeVerdict.DUPLICATE and failed_later[0] == OutcomeVerdict.DUPLICATE
    record = queue.get(job_id)
    assert record is not None and record.slices_succeeded == 1 and record.slices_failed == 0


def test_a_failed_slice_is_retried_with_a_new_attempt_and_the_old_one_is_fenced(queue: Queue) -> None:
    job_id = fan_out(queue, 1, max_tries=2)
    queue.take_slices("w1", 10)

    assert (
        queue.apply_outcome(job_id, 0, 1, succeeded=False, reason="flaky", retryable=True)[0] == OutcomeVerdict.RETRYING
    )
    queue.reap(backoff_ms=0)
    [retry] = queue.take_slices("w1", 10)
    stale = queue.apply_outcome(job_id, 0, 1, succeeded=True, result_json='"late"')
    done = queue.apply_outcome(job_id, 0, 2, succeeded=True, result_json='"fresh"')

    assert retry.attempt == 2
    assert stale[0] == OutcomeVerdict.STALE
    assert done[0] == OutcomeVerdict.COMPLETED
    assert queue.get(job_id).result == ["fresh"]  # type: ignore[union-attr]


def test_a_slice_failing_for_good_dead_letters_the_job_with_its_reason(queue: Queue, r: redis.Redis) -> None:
    job_id = fan_out(queue, 3)
    queue.take_slices("w1", 10)
    queue.apply_outcome(job_id, 0, 1, succeeded=True, result_json="0")

    verdict = queue.apply_outcome(job_id, 1, 1, succeeded=False, reason="not an image", retryable=False)
    late = queue.apply_outcome(job_id, 2, 1, succeeded=True, result_json="2")

    assert verdict[:2] == (OutcomeVerdict.DEAD, "dead")
    assert late[0] == OutcomeVerdict.INACTIVE
    record = queue.get(job_id)
    assert record is not None and record.status == Status.DEAD and record.error == "slice 1: not an image"
    assert r.lrange(queue.keys.dead, 0, -1) == [job_id]
    assert queue.stats().balanced


def test_a_replayed_fan_out_job_runs_again_and_old_callbacks_stay_fenced(queue: Queue) -> None:
    job_id = fan_out(queue, 1)
    queue.take_slices("w1", 10)
    queue.apply_outcome(job_id, 0, 1, succeeded=False, reason="broken", retryable=False)
    assert queue.replay(job_id)
    queue.take("w1", 1)
    queue.fan_out("w1", job_id, ['{"n":0}'])

    [again] = queue.take_slices("w1", 10)
    stale = queue.apply_outcome(job_id, 0, 1, succeeded=True, result_json='"old"')

    assert again.attempt == 2 and stale[0] == OutcomeVerdict.STALE
    assert queue.apply_outcome(job_id, 0, 2, succeeded=True, result_json='"new"')[0] == OutcomeVerdict.COMPLETED


def test_an_outcome_for_an_unknown_job_or_slice_is_unknown(queue: Queue) -> None:
    job_id = fan_out(queue, 1)

    assert queue.apply_outcome("nope", 0, 1, succeeded=True, result_json="1")[0] == OutcomeVerdict.UNKNOWN
    assert queue.apply_outcome(job_id, 7, 1, succeeded=True, result_json="1")[0] == OutcomeVerdict.UNKNOWN


def test_scripts_are_reloaded_after_the_server_forgets_them(queue: Queue, r: redis.Redis) -> None:
    submit(queue)
    r.script_flush()

    assert submit(queue)
    assert queue.stats().counts["accepted"] == 2

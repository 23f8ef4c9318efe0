"""Callback: time to apply one slice outcome through the real handler, over one raw round trip.

Setup, through the Queue API: fan-out jobs of ``slices_per_job`` slices each are taken,
split and dispatched (every slice gets its attempt number and deadline), as the worker
would leave them. Each measured call is then the sample ``POST /callbacks/{job_id}``
event (``events/callback_succeeded.json``) with that slice's index, attempt and token;
one in ``slices_per_job`` completes its job (the result is assembled in the same script).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import TYPE_CHECKING, Any

from bench.common import (
    RAW_KEY,
    RAW_VALUE,
    SECRET,
    BenchError,
    counting_round_trips,
    load_event,
    own_work,
    paired_rounds,
    per_call_s,
    per_item_s,
)

if TYPE_CHECKING:
    from offload.jobs import TakenSlice
    from offload.queue import Queue

WARMUP = 100
COUNTED = 50
TENANTS = 8
SETUP_WORKER = "bench-setup"
THUMBNAIL_PAYLOAD = {"images": ["s3://bench-input/photos/0001.jpg"], "sizes": [64, 256], "format": "webp"}
SLICE_INPUT = json.dumps({"image": "s3://bench-input/photos/0001.jpg", "sizes": [64, 256], "format": "webp"})


def prepare(queue: Queue, needed: int, per_job: int) -> list[dict[str, Any]]:
    """``needed`` callback events, one per dispatched slice, for jobs of ``per_job`` slices."""
    from offload import tokens
    from offload.queue import NewJob

    n_jobs = math.ceil(needed / per_job)
    for i in range(n_jobs):
        queue.enqueue(NewJob("thumbnail", json.dumps(THUMBNAIL_PAYLOAD), f"tenant-{i % TENANTS}", 3))
    taken = 0
    while taken < n_jobs:
        jobs, _ = queue.take(SETUP_WORKER, 256)
        if not jobs:
            break
        for job in jobs:
            queue.fan_out(SETUP_WORKER, job.job_id, [SLICE_INPUT] * per_job)
        taken += len(jobs)
    slices: list[TakenSlice] = []
    while True:
        batch = queue.take_slices(SETUP_WORKER, 256)
        if not batch:
            break
        queue.release_slices(SETUP_WORKER, [s.ref for s in batch])
        slices += batch
    if len(slices) < needed:
        raise BenchError(f"setup dispatched {len(slices)} slices, {needed} needed")

    template = load_event("callback_succeeded.json")
    body = json.loads(template["body"])

    def event_for(s: TakenSlice) -> dict[str, Any]:
        token = tokens.issue(SECRET, s.job_id, s.slice, s.attempt, 3600)
        return {
            **template,
            "path": f"/callbacks/{s.job_id}",
            "pathParameters": {"job_id": s.job_id},
            "body": json.dumps({**body, "slice": s.slice, "attempt": s.attempt, "token": token}),
        }

    return [event_for(s) for s in slices[:needed]]


def child(params: dict[str, Any]) -> dict[str, Any]:
    from offload.lambdas import callback  # reads the environment the parent gave us
    from offload.local.context import LocalContext

    rounds, outcomes, per_job = int(params["rounds"]), int(params["outcomes"]), int(params["slices_per_job"])
    per_round = max(1, outcomes // rounds)
    warmup, counted = min(WARMUP, per_round), min(COUNTED, per_round)
    client = callback.QUEUE.client
    script_rounds = max(1, rounds // 5)
    events = prepare(callback.QUEUE, warmup + counted + (rounds + script_rounds) * per_round, per_job)
    events, floor_events = events[: -script_rounds * per_round], events[-script_rounds * per_round :]
    context = LocalContext(function_name="offload-callback")
    verdicts: dict[str, int] = {}

    def apply(event: dict[str, Any]) -> None:
        response = callback.handler(event, context)
        if response["statusCode"] != 200:
            raise BenchError(f"the callback answered {response['statusCode']}: {response['body']}")
        verdict = json.loads(response["body"])["verdict"]
        verdicts[verdict] = verdicts.get(verdict, 0) + 1

    def lpush() -> None:
        client.lpush(RAW_KEY, RAW_VALUE)

    def apply_quietly(event: dict[str, Any]) -> None:  # as apply(), without counting verdicts
        if callback.handler(event, context)["statusCode"] != 200:
            raise BenchError("the callback refused an outcome with the stub's reply")

    # -- measure -------------------------------------------------------------------------
    for event in events[:warmup]:
        apply(event)
        lpush()
    with counting_round_trips() as writes:
        for event in events[warmup : warmup + counted]:
            apply(event)
    first = warmup + counted
    measured = events[first:]

    def path(r: int) -> float:
        return per_item_s(apply, measured[r * per_round : (r + 1) * per_round])

    paired = paired_rounds(rounds, path, lambda: per_call_s(lpush, per_round))
    # the reply of an outcome that did not complete its job, for every call (nothing changes)
    reply = ["applied", "waiting", "thumbnail", "tenant-0", "1"]
    replayed = itertools.cycle(measured)
    own = own_work(callback.QUEUE, reply, lambda: apply_quietly(next(replayed)), min(per_round, len(measured)))

    # the floor: outcomes of the same kind applied by the queue call alone (no event, token, log)
    def outcome_call(event: dict[str, Any]) -> tuple[str, int, int, str]:
        body = json.loads(event["body"])
        return event["pathParameters"]["job_id"], body["slice"], body["attempt"], json.dumps(body["result"])

    calls = [outcome_call(e) for e in floor_events]

    def apply_only(c: tuple[str, int, int, str]) -> None:
        callback.QUEUE.apply_outcome(c[0], c[1], c[2], succeeded=True, result_json=c[3])

    script_only = paired_rounds(
        script_rounds,
        lambda r: per_item_s(apply_only, calls[r * per_round : (r + 1) * per_round]),
        lambda: per_call_s(lpush, per_round),
    )
    client.delete(RAW_KEY)

    if set(verdicts) - {"applied", "completed"}:
        raise BenchError(f"unexpected verdicts: {verdicts}")
    return {
        **paired.as_dict(),
        "outcomes_measured": rounds * per_round,
        "round_trips_per_outcome": writes[0] / counted,
        **own.as_dict(),
        "script_only": script_only.as_dict(),
        "slices_per_job": per_job,
        "verdicts": verdicts,
    }

"""Master: time per accepted job through the real handler, over one raw LPUSH round trip.

The event is the project's sample ``POST /jobs`` (``events/submit_thumbnail.json``): an
API Gateway proxy event in, a 202 out, with the function's JSON log lines written to
stdout as in Lambda. The raw round trip is an ``LPUSH`` of a job-id-sized value on the
handler's own Redis client, measured in rounds alternating with the handler's.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bench.common import (
    RAW_KEY,
    RAW_VALUE,
    BenchError,
    counting_round_trips,
    load_event,
    own_work,
    paired_rounds,
    per_call_s,
)

WARMUP = 200
COUNTED = 100


def child(params: dict[str, Any]) -> dict[str, Any]:
    from offload.lambdas import master  # reads the environment the parent gave us
    from offload.local.context import LocalContext
    from offload.queue import NewJob

    rounds, jobs = int(params["rounds"]), int(params["jobs"])
    per_round = max(1, jobs // rounds)
    event = load_event("submit_thumbnail.json")
    context = LocalContext(function_name="offload-master")
    client = master.QUEUE.client

    def submit() -> None:
        response = master.handler(event, context)
        if response["statusCode"] != 202:
            raise BenchError(f"the master answered {response['statusCode']}: {response['body']}")

    def lpush() -> None:
        client.lpush(RAW_KEY, RAW_VALUE)

    for _ in range(min(WARMUP, per_round)):  # scripts loaded, connection open, code paths warm
        submit()
        lpush()
    counted = min(COUNTED, per_round)
    with counting_round_trips() as writes:
        for _ in range(counted):
            submit()
    paired = paired_rounds(rounds, lambda _: per_call_s(submit, per_round), lambda: per_call_s(lpush, per_round))
    own = own_work(master.QUEUE, "accepted", submit, per_round)

    # the floor: the same job enqueued by the queue call alone (no event, validation or log)
    body = json.loads(event["body"])
    job = NewJob(
        type=body["type"],
        payload=json.dumps(body["payload"], separators=(",", ":")),
        tenant=event["requestContext"]["identity"]["userArn"],
        max_tries=3,
        trace=os.environ.get("_X_AMZN_TRACE_ID", ""),
    )
    script_rounds = max(1, rounds // 5)
    script_only = paired_rounds(
        script_rounds,
        lambda _: per_call_s(lambda: master.QUEUE.enqueue(job), per_round),
        lambda: per_call_s(lpush, per_round),
    )
    client.delete(RAW_KEY)

    submitted = min(WARMUP, per_round) + counted + (rounds + script_rounds) * per_round
    accepted = int(client.hget(master.QUEUE.keys.counts, "accepted") or 0)  # type: ignore[arg-type]
    if accepted != submitted:
        raise BenchError(f"{submitted} jobs submitted but {accepted} accepted")
    return {
        **paired.as_dict(),
        "jobs_measured": rounds * per_round,
        "round_trips_per_job": writes[0] / counted,
        **own.as_dict(),
        "script_only": script_only.as_dict(),
        "payload_bytes": len(event["body"]),
    }

"""Memory: Redis bytes per queued job beyond its payload.

Jobs are submitted through the real master handler, then every key in the (otherwise
empty) Redis is sized with ``MEMORY USAGE <key> SAMPLES 0`` (exact: every element
counted): the job hashes, the queue list(s) holding their ids, and the shared keys (the
counts hash) spread over the jobs. The payload's own bytes are taken off. ``used_memory``
before and after is reported next to it, as a cross-check that includes the keyspace's
own tables.

Variants: the sample thumbnail request (``events/submit_thumbnail.json``) and a small
``echo`` one, each with the trace id Lambda sets for every invocation
(``_X_AMZN_TRACE_ID``, which the master stores with the job); the thumbnail one also
with only the gateway's shorter trace header, and on a server configured to keep such
hashes compact.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bench.common import BenchError, load_event

TRACE = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=0"
LISTPACK_VALUE = "hash-max-listpack-value"
ECHO_BODY = json.dumps({"type": "echo", "payload": {"n": 1}})
# The first variant is the figure; the others show what moves it. The last one runs on a
# server that keeps hashes with values up to 1 KiB in the compact listpack encoding (the
# default, 64 bytes, turns a job hash into a hash table as soon as one value is longer).
VARIANTS: list[dict[str, Any]] = [
    {"name": "thumbnail", "echo": False, "trace": True, "listpack_value": None},
    {"name": "thumbnail, gateway trace header only", "echo": False, "trace": False, "listpack_value": None},
    {"name": "echo", "echo": True, "trace": True, "listpack_value": None},
    {"name": "thumbnail, server hash-max-listpack-value 1024", "echo": False, "trace": True, "listpack_value": 1024},
]


def child(params: dict[str, Any]) -> dict[str, Any]:
    from offload.lambdas import master  # reads the environment the parent gave us
    from offload.local.context import LocalContext

    jobs = int(params["jobs"])
    client = master.QUEUE.client
    keys = master.QUEUE.keys
    context = LocalContext(function_name="offload-master")
    template = load_event("submit_thumbnail.json")
    variants = []
    for variant in VARIANTS:
        event = {**template, "body": ECHO_BODY} if variant["echo"] else template
        if variant["trace"]:
            os.environ["_X_AMZN_TRACE_ID"] = TRACE
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        client.flushall()
        default_value = client.config_get(LISTPACK_VALUE)[LISTPACK_VALUE]  # type: ignore[index]
        if variant["listpack_value"]:
            client.config_set(LISTPACK_VALUE, variant["listpack_value"])
        used_before = int(client.info("memory")["used_memory"])  # type: ignore[index]
        for _ in range(jobs):
            response = master.handler(event, context)
            if response["statusCode"] != 202:
                raise BenchError(f"the master answered {response['statusCode']}: {response['body']}")
        used_after = int(client.info("memory")["used_memory"])  # type: ignore[index]
        client.config_set(LISTPACK_VALUE, default_value)

        names = [str(k) for k in client.scan_iter(count=1000)]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)
            pipe.type(name)
        answers = pipe.execute()
        sizes = {name: int(answers[2 * i]) for i, name in enumerate(names)}
        types = {name: str(answers[2 * i + 1]) for i, name in enumerate(names)}
        job_keys = [n for n in names if n.startswith(keys.job_prefix)]
        if len(job_keys) != jobs:
            raise BenchError(f"{jobs} jobs submitted, {len(job_keys)} job hashes found")
        lists = [n for n in names if types[n] == "list"]
        others = [n for n in names if n not in set(job_keys) | set(lists)]
        payload = client.hget(job_keys[0], "payload") or ""
        payload_bytes = len(str(payload).encode())
        encoding = client.object("encoding", job_keys[0])

        job_hash = sum(sizes[n] for n in job_keys) / jobs
        list_share = sum(sizes[n] for n in lists) / jobs
        shared = sum(sizes[n] for n in others) / jobs
        per_job = job_hash + list_share + shared
        variants.append(
            {
                "name": variant["name"],
                "payload_bytes": payload_bytes,
                "job_hash_bytes": round(job_hash, 1),
                "job_hash_encoding": str(encoding),
                "queue_list_bytes_per_job": round(list_share, 1),
                "shared_keys_bytes_per_job": round(shared, 1),
                "bytes_per_job": round(per_job, 1),
                "overhead_bytes": round(per_job - payload_bytes, 1),
                "used_memory_overhead_bytes": round((used_after - used_before) / jobs - payload_bytes, 1),
                "keys": {"job hashes": len(job_keys), "lists": sorted(lists), "others": sorted(others)},
            }
        )
    return {"jobs": jobs, "variants": variants}

"""The invariant check: every job of a queue is where its status says, once, and the counts
hash agrees with the records. Used by the fault scenarios and by the tests.

``lost`` counts jobs the master accepted that are neither succeeded nor dead (nor still
legitimately on their way) and accepted jobs with no record at all; ``applied_twice`` counts
terminal transitions applied more than once: the ``counts`` hash holding more succeeded or
dead jobs than there are records in that state, a dead id listed twice, or a fan-out job
with more slices succeeded than it has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from offload.jobs import ACTIVE_STATUSES, Status
from offload.keys import WAKE_MARKER, QueueKeys

_FIELDS = ("status", "type", "slices_total", "slices_succeeded", "slices_failed", "stalls", "error")


@dataclass
class Audit:
    counts: dict[str, int]
    by_status: dict[str, int]
    records: dict[str, dict[str, str]]
    problems: list[str] = field(default_factory=list)
    applied_twice: int = 0
    missing: list[str] = field(default_factory=list)  # accepted ids without a record

    @property
    def active(self) -> int:
        return sum(self.by_status.get(s, 0) for s in ACTIVE_STATUSES)

    @property
    def balanced(self) -> bool:
        """accepted = queued + running + waiting + retrying + succeeded + dead."""
        return self.counts.get("accepted", 0) == sum(self.counts.get(s, 0) for s in Status)

    @property
    def lost(self) -> int:
        return self.active + len(self.missing)

    @property
    def ok(self) -> bool:
        return not self.problems

    def ids(self, status: Status) -> list[str]:
        return sorted(i for i, r in self.records.items() if r.get("status") == status)


def audit(client: redis.Redis, keys: QueueKeys, accepted: Iterable[str] = ()) -> Audit:
    """Read the whole queue and check it. ``accepted``: the ids the master answered 202 for."""
    records = _records(client, keys)
    counts = {k: int(v) for k, v in client.hgetall(keys.counts).items()}  # type: ignore[union-attr]
    by_status = Counter(r.get("status", "") for r in records.values())
    result = Audit(counts, dict(by_status), records)
    problems = result.problems

    if not result.balanced:
        problems.append(f"counts do not balance: {counts}")
    for status in Status:
        if counts.get(status, 0) != by_status.get(status, 0):
            problems.append(f"counts say {counts.get(status, 0)} {status}, records say {by_status.get(status, 0)}")
    if counts.get("accepted", 0) != len(records):
        problems.append(f"counts say {counts.get('accepted', 0)} accepted, there are {len(records)} records")

    # where each id is listed
    places: dict[str, list[str]] = {}
    for name in (keys.queued, keys.queued_interactive):
        for item in client.lrange(name, 0, -1):  # type: ignore[union-attr]
            if item != WAKE_MARKER:
                places.setdefault(item, []).append("queued")
    for key in client.scan_iter(match=keys.processing_prefix + "*", count=500):
        for item in client.lrange(key, 0, -1):  # type: ignore[union-attr]
            if "/" not in item and item != WAKE_MARKER:
                places.setdefault(item, []).append(f"processing:{key[len(keys.processing_prefix) :]}")
    delayed = {m for m in client.zrange(keys.delayed, 0, -1) if "/" not in m}  # type: ignore[union-attr]
    dead = list(client.lrange(keys.dead, 0, -1))  # type: ignore[arg-type]

    for job_id, record in records.items():
        status = record.get("status")
        where = places.get(job_id, [])
        if status == Status.QUEUED and len(where) != 1:
            problems.append(f"queued job {job_id} is listed {len(where)} times: {where}")
        elif status == Status.RUNNING and (len(where) != 1 or not where[0].startswith("processing:")):
            problems.append(f"running job {job_id} is in {where or 'no processing list'}")
        elif status not in (Status.QUEUED, Status.RUNNING) and where:
            problems.append(f"{status} job {job_id} is still listed in {where}")
        if status == Status.RETRYING and job_id not in delayed:
            problems.append(f"retrying job {job_id} is not in the delayed set")
        total, done = int(record.get("slices_total") or 0), int(record.get("slices_succeeded") or 0)
        if done > total:
            result.applied_twice += done - total
            problems.append(f"job {job_id} has {done} of {total} slices succeeded")
        if status == Status.SUCCEEDED and total and done != total:
            problems.append(f"succeeded job {job_id} has {done} of {total} slices succeeded")
    for item in places:
        if item not in records:
            problems.append(f"{item} is listed in {places[item]} but has no record")

    dead_counts = Counter(dead)
    for job_id, times in dead_counts.items():
        if times > 1:
            result.applied_twice += times - 1
            problems.append(f"dead job {job_id} is in the dead-letter list {times} times")
        if records.get(job_id, {}).get("status") != Status.DEAD:
            problems.append(f"{job_id} is in the dead-letter list but is {records.get(job_id, {}).get('status')}")
    for status in (Status.SUCCEEDED, Status.DEAD):
        excess = counts.get(status, 0) - by_status.get(status, 0)
        if excess > 0:
            result.applied_twice += excess
    result.missing = sorted(set(accepted) - set(records))
    if result.missing:
        problems.append(f"{len(result.missing)} accepted jobs have no record")
    return result


def _records(client: redis.Redis, keys: QueueKeys) -> dict[str, dict[str, str]]:
    ids = [key[len(keys.job_prefix) :] for key in client.scan_iter(match=keys.job_prefix + "*", count=1000)]
    records: dict[str, dict[str, str]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hmget(keys.job(job_id), list(_FIELDS))
        for job_id, values in zip(chunk, pipe.execute(), strict=True):
            records[job_id] = {k: v for k, v in zip(_FIELDS, values, strict=True) if v is not None}
    return records

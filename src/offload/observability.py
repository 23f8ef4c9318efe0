"""Metrics (CloudWatch EMF) and the X-Ray trace header that ties one job's trace together.

Metric names and dimensions are the ones template.yaml's alarms, dashboard and scaling
policy read: namespace ``POWERTOOLS_METRICS_NAMESPACE`` (``offload``), dimensions
``stage`` and ``queue``.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from typing import Any

from aws_lambda_powertools.metrics import Metrics, MetricUnit, single_metric

from offload.config import Settings

TRACE_HEADER = "X-Amzn-Trace-Id"

# Counters
JOBS_ACCEPTED = "JobsAccepted"
JOBS_REJECTED = "JobsRejected"
JOBS_TAKEN = "JobsTaken"
JOBS_SUCCEEDED = "JobsSucceeded"
JOBS_RETRIED = "JobsRetried"
JOBS_DEAD_LETTERED = "JobsDeadLettered"
JOBS_REPLAYED = "JobsReplayed"
SLICES_DISPATCHED = "SlicesDispatched"
SLICES_SUCCEEDED = "SlicesSucceeded"
SLICES_FAILED = "SlicesFailed"
WORKER_HEARTBEAT = "WorkerHeartbeat"
# Gauges (published by one worker per interval)
QUEUE_DEPTH = "QueueDepth"
OLDEST_QUEUED_AGE = "OldestQueuedAgeSeconds"
DEAD_LETTER_DEPTH = "DeadLetterDepth"
BACKLOG_PER_WORKER = "BacklogPerWorker"
SLICES_IN_FLIGHT = "SlicesInFlight"
BACKLOG_LIMIT = "BacklogLimit"
# Timings
JOB_LATENCY = "JobLatencyMs"
SLICE_DURATION = "SliceDurationMs"


def new_metrics(settings: Settings) -> Metrics:
    metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "offload"))
    metrics.set_default_dimensions(stage=settings.stage, queue=settings.queue)
    return metrics


def rejected(settings: Settings, reason: str) -> None:
    """One rejected submission, with its reason as an extra dimension (emitted at once)."""
    with single_metric(
        name=JOBS_REJECTED,
        unit=MetricUnit.Count,
        value=1,
        namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "offload"),
        default_dimensions={"stage": settings.stage, "queue": settings.queue},
    ) as metric:
        metric.add_dimension(name="reason", value=reason)


def count(metrics: Metrics, name: str, value: float = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def milliseconds(metrics: Metrics, name: str, value: float) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)


def flush(metrics: Metrics) -> None:
    """Print what was recorded as one EMF document (nothing if nothing was recorded)."""
    if metrics.metric_set:
        metrics.flush_metrics()


class SharedMetrics:
    """Metrics a long-running process records from several threads and flushes now and then.

    Recording is a dict update under a lock: Powertools' ``add_metric`` costs tens of
    microseconds, too much for every job of a worker doing thousands a second. Counts are
    summed, and of each timing at most ``MAX_SAMPLES`` values (a uniform sample) are kept
    per interval, which is what one EMF document can carry per metric.
    """

    MAX_SAMPLES = 100

    def __init__(self, settings: Settings, flush_every_s: float = 10.0) -> None:
        self._metrics = new_metrics(settings)
        self._lock = threading.Lock()
        self._flush_every_s = flush_every_s
        self._next_flush = time.monotonic() + flush_every_s
        self._counts: dict[str, float] = {}
        self._gauges: dict[str, tuple[float, MetricUnit]] = {}
        self._samples: dict[str, list[float]] = {}
        self._seen: dict[str, int] = {}

    def count(self, name: str, value: float = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + value

    def milliseconds(self, name: str, value: float) -> None:
        with self._lock:
            seen = self._seen[name] = self._seen.get(name, 0) + 1
            samples = self._samples.setdefault(name, [])
            if len(samples) < self.MAX_SAMPLES:
                samples.append(value)
            elif (slot := random.randrange(seen)) < self.MAX_SAMPLES:
                samples[slot] = value  # reservoir sampling: every value equally likely to be kept

    def gauge(self, name: str, value: float, unit: MetricUnit = MetricUnit.Count) -> None:
        with self._lock:
            self._gauges[name] = (value, unit)

    def flush(self, *, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() < self._next_flush:
                return
            self._next_flush = time.monotonic() + self._flush_every_s
            counts, gauges, samples = self._counts, self._gauges, self._samples
            self._counts, self._gauges, self._samples, self._seen = {}, {}, {}, {}
        for name, total in counts.items():
            count(self._metrics, name, total)
        for name, (value, unit) in gauges.items():
            self._metrics.add_metric(name=name, unit=unit, value=value)
        for name, values in samples.items():
            for value in values:
                milliseconds(self._metrics, name, value)
        flush(self._metrics)


# -- the trace header --------------------------------------------------------------------


def new_trace_header() -> str:
    """A fresh X-Ray header, as API Gateway makes for a request that has none."""
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Sampled=1"


def trace_fields(header: str) -> dict[str, str]:
    fields = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value
    return fields


def trace_root(header: str) -> str:
    return trace_fields(header).get("Root", "")


def compact_trace(header: str) -> str:
    """The header as a job stores it: ``<root> <parent> <sampled>`` (every byte of a queued job
    counts: docs/benchmarks.md, memory). Other fields (``Lineage``) do not travel further."""
    fields = trace_fields(header)
    if "Root" not in fields:
        return ""
    return " ".join((fields["Root"], fields.get("Parent", ""), fields.get("Sampled", ""))).rstrip()


def expand_trace(stored: str) -> str:
    """The X-Ray header again, from what ``compact_trace`` stored."""
    if not stored or "=" in stored:
        return stored
    root, parent, sampled = [*stored.split(" "), "", ""][:3]
    return ";".join(
        [f"Root={root}"] + ([f"Parent={parent}"] if parent else []) + ([f"Sampled={sampled}"] if sampled else [])
    )


def child_header(header: str, parent_id: str = "") -> str:
    """The header a downstream call carries: same root and sampling, a new parent span."""
    fields = trace_fields(header)
    if "Root" not in fields:
        return ""
    parent = parent_id or secrets.token_hex(8)
    return f"Root={fields['Root']};Parent={parent};Sampled={fields.get('Sampled', '1')}"


# -- a queue's gauges, published by one worker at a time ---------------------------------

# counts-hash field -> the metric its growth is published as
COUNTER_METRICS = {
    "accepted": JOBS_ACCEPTED,
    "succeeded": JOBS_SUCCEEDED,
    "retried": JOBS_RETRIED,
    "dead": JOBS_DEAD_LETTERED,
    "replayed": JOBS_REPLAYED,
    "shed": "JobsShed",
    "slices_succeeded": SLICES_SUCCEEDED,
    "slices_failed": SLICES_FAILED,
}


class QueueGauges:
    """The queue's backlog gauges and the growth of its lifetime counters.

    The counters live in Redis (the scripts keep them), so the master and the callback
    need not emit a metric per request; whichever worker holds the short publishing lease
    reads them, and the values last published are kept in Redis too, so a change of
    publisher counts nothing twice.
    """

    def __init__(self, queue: Any, metrics: SharedMetrics, worker_id: str, interval_s: float) -> None:
        self.queue = queue
        self.metrics = metrics
        self.worker_id = worker_id
        self.interval_ms = int(interval_s * 1000)

    def publish(self) -> bool:
        keys, client = self.queue.keys, self.queue.client
        mine = client.set(keys.metrics_leader, self.worker_id, nx=True, px=self.interval_ms)
        if not mine:
            return False
        stats = self.queue.stats()
        previous = {k: int(v) for k, v in client.hgetall(keys.published).items()}
        current = {name: stats.counts.get(name, 0) for name in COUNTER_METRICS}
        client.hset(keys.published, mapping=current)
        for name, metric in COUNTER_METRICS.items():
            grown = current[name] - previous.get(name, current[name] if not previous else 0)
            if grown > 0:
                self.metrics.count(metric, grown)
        backlog = stats.depth + stats.slices_ready
        self.metrics.gauge(QUEUE_DEPTH, stats.depth)
        if stats.max_backlog:
            self.metrics.gauge(BACKLOG_LIMIT, stats.max_backlog)
        self.metrics.gauge(DEAD_LETTER_DEPTH, stats.dead)
        self.metrics.gauge(SLICES_IN_FLIGHT, sum(stats.slices_in_flight.values()))
        self.metrics.gauge(BACKLOG_PER_WORKER, backlog / max(1, stats.workers_alive))
        self.metrics.gauge(OLDEST_QUEUED_AGE, stats.oldest_queued_age_s or 0.0, MetricUnit.Seconds)
        return True

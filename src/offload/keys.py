"""Every Redis key offload uses, and how long each one lives.

All keys of one queue share the hash tag ``{<queue>}`` so that every script touches a
single cluster slot and runs unchanged on cluster-mode Redis (ElastiCache Serverless).
How long finished records live is a setting (``config.Settings.*_ttl_s``); the scripts
apply it with EXPIRE when a job ends.
"""

from __future__ import annotations

from dataclasses import dataclass

KEY_PREFIX = "offload"
WAKE_MARKER = "~"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Key names for one queue. Build once per process and reuse."""

    queue: str

    @property
    def base(self) -> str:
        return f"{KEY_PREFIX}:{{{self.queue}}}"

    @property
    def queued(self) -> str:
        """List of ``batch`` job ids waiting for a worker (LPUSH in, BLMOVE out from the right).

        Workers block on this list; an ``interactive`` job pushed while it is empty also
        leaves a wake-up marker (``WAKE_MARKER``) here, which the take script skips."""
        return f"{self.base}:queued"

    @property
    def queued_interactive(self) -> str:
        """List of ``interactive`` job ids; taken first, three picks in every four."""
        return f"{self.base}:queued:interactive"

    @property
    def picks(self) -> str:
        """Counter of take slots handed out, which spaces the picks between the two classes."""
        return f"{self.base}:picks"

    @property
    def delayed(self) -> str:
        """Sorted set of job ids waiting out a retry backoff, scored by ready time (ms)."""
        return f"{self.base}:delayed"

    @property
    def dead(self) -> str:
        """List of dead-lettered job ids, newest first."""
        return f"{self.base}:dead"

    @property
    def workers(self) -> str:
        """Sorted set of worker ids, scored by the time (ms) their lease runs out."""
        return f"{self.base}:workers"

    @property
    def counts(self) -> str:
        """Hash: number of jobs in each status, plus lifetime counters (accepted, replayed...)."""
        return f"{self.base}:counts"

    @property
    def deadlines(self) -> str:
        """Sorted set of dispatched slices ``<job_id>/<slice>/<attempt>``, scored by deadline (ms)."""
        return f"{self.base}:deadlines"

    @property
    def tenants(self) -> str:
        """List used as a ring of the tenants that have slices ready; dispatch rotates it."""
        return f"{self.base}:tenants"

    def ready(self, tenant: str) -> str:
        """List of one tenant's ``<job_id>/<slice>`` waiting to be dispatched."""
        return f"{self.base}:ready:{tenant}"

    @property
    def inflight(self) -> str:
        """Hash: tenant -> number of its slices dispatched and not yet called back."""
        return f"{self.base}:inflight"

    @property
    def metrics_leader(self) -> str:
        """String (with a TTL): the worker that publishes this queue's gauges this interval."""
        return f"{self.base}:metrics-leader"

    @property
    def published(self) -> str:
        """Hash: the ``counts`` values last published as metrics, so each growth counts once."""
        return f"{self.base}:published"

    def processing(self, worker_id: str) -> str:
        """List of job ids a worker holds; the worker's lease in ``workers`` guards it."""
        return f"{self.base}:processing:{worker_id}"

    @property
    def processing_prefix(self) -> str:
        return f"{self.base}:processing:"

    def job(self, job_id: str) -> str:
        """Hash with the job record (fields: ``jobs.JobRecord.from_hash`` reads them all)."""
        return f"{self.base}:job:{job_id}"

    @property
    def job_prefix(self) -> str:
        return f"{self.base}:job:"

    def slices(self, job_id: str) -> str:
        """Hash of a fan-out job's slices: field ``<n>`` holds that slice's state as JSON."""
        return f"{self.base}:slices:{job_id}"

    def idempotency(self, tenant: str, key: str) -> str:
        """String: the job id a client's ``Idempotency-Key`` maps to, with the request digest.

        The tenant's length comes first, so no tenant and key pair can spell another's."""
        return f"{self.base}:idem:{len(tenant)}:{tenant}:{key}"

"""``python -m faults.run`` (``make faults``): every fault scenario at full size, one figure each.

Each scenario starts its own redis-server(s) on free loopback ports and real worker
processes (``faults.worker_main``), submits jobs through the real master handler, injects its
fault, waits for every job to end, and audits the queue (faults/audit.py). The table lists,
per scenario: jobs submitted and accepted, succeeded, dead, lost (accepted but neither
succeeded nor dead at the end), applied twice (a terminal transition or a slice outcome
applied more than once), re-runs (executions beyond the first: at-least-once delivery after a
crash, expected), 5xx answers of the master other than 503, and the recovery time. The JSON of
the run goes to faults/results/.

    python -m faults.run                 # every scenario
    python -m faults.run kill9 failover  # some of them
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# The callback handler reads its signing key once, at import: set it before anything imports it.
os.environ.setdefault("OFFLOAD_CALLBACK_SECRET", secrets.token_urlsafe(24))
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # the figures, not a log line per job
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:9/0")  # replaced per scenario; nothing listens there

from faults import diag  # noqa: E402
from faults.audit import audit  # noqa: E402
from faults.harness import (  # noqa: E402
    FAST,
    Client,
    DurableRedis,
    LocalCompute,
    Plan,
    WorkerProcess,
    api_queue,
    drain,
    fail_over,
    plain_client,
    serving,
    wait_until,
    worker_env,
)
from faults.proxy import Proxy  # noqa: E402
from offload.jobs import TERMINAL_STATUSES  # noqa: E402
from offload.local.redis_server import RedisServer, start_redis  # noqa: E402
from offload.queue import Queue  # noqa: E402

Mix = Callable[[int], tuple[str, dict[str, Any]]]

PRODUCTION = {"OFFLOAD_LEASE_S": "10", "OFFLOAD_HEARTBEAT_S": "2", "OFFLOAD_REAPER_INTERVAL_S": "5"}


@dataclass
class Figures:
    scenario: str
    fault: str
    submitted: int = 0
    accepted: int = 0
    succeeded: int = 0
    dead: int = 0
    lost: int = 0
    applied_twice: int = 0
    reruns: int = 0
    master_5xx: int = 0  # answers >= 500 other than 503
    master_503: int = 0
    recovery_s: list[float] = field(default_factory=list)
    recovery: str = ""  # what recovery_s measures
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


class Scenario:
    """Servers, workers and clients of one scenario; ``close`` stops all of them."""

    def __init__(self, name: str, fault: str) -> None:
        self.figures = Figures(name, fault)
        self.folder = Path(tempfile.mkdtemp(prefix=f"offload-faults-{name}-"))
        self.runs = self.folder / "runs"
        self.runs.mkdir()
        self.client = Client(tries=40)
        self.workers: list[WorkerProcess] = []
        self.closers: list[Callable[[], None]] = []
        self.started = time.monotonic()

    def worker(self, url: str, **env: str) -> WorkerProcess:
        settings = {**FAST, **worker_env(url, self.runs), "POWERTOOLS_LOG_LEVEL": "INFO", **env}
        worker = WorkerProcess(settings, self.folder, f"w{len(self.workers)}")
        self.workers.append(worker.start())
        return worker

    def compute_and_two_workers(self, url: str) -> tuple[LocalCompute, list[WorkerProcess]]:
        """The load most scenarios run under: a local compute service and two workers on ``url``."""
        compute = LocalCompute().start()
        self.closers.append(compute.stop)
        return compute, [self.compute_worker(url, compute), self.compute_worker(url, compute)]

    def compute_worker(self, url: str, compute: LocalCompute) -> WorkerProcess:
        """A worker on ``url`` dispatching slices to ``compute``, in small batches."""
        return self.worker(url, FAULTS_COMPUTE_URL=compute.url, OFFLOAD_BATCH_SIZE="8")

    def submit_many(
        self, count: int, rate: float, mix: Callable[[int], tuple[str, dict[str, Any]]]
    ) -> threading.Thread:
        """Submit ``count`` jobs at ``rate`` a second from a thread (half with an Idempotency-Key)."""

        def run() -> None:
            started = time.monotonic()
            for n in range(count):
                job_type, payload = mix(n)
                self.client.submit(job_type, payload, f"job-{n}" if n % 2 else "")
                delay = started + (n + 1) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

        self.figures.submitted += count
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def finish(self, queue: Queue, timeout_s: float = 90, compute: LocalCompute | None = None) -> Figures:
        f = self.figures
        try:
            drain(queue, timeout_s)
        except TimeoutError:
            f.problems.append(f"jobs still active after {timeout_s} s")
        if compute is not None:
            try:
                wait_until(compute.idle, 30)
            except TimeoutError:
                f.problems.append("callbacks still pending")
        report = audit(queue.client, queue.keys, self.client.accepted)
        runs = diag.read_runs(self.runs)
        f.accepted = report.counts.get("accepted", 0)
        f.succeeded = report.by_status.get("succeeded", 0)
        f.dead = report.by_status.get("dead", 0)
        f.lost = report.lost
        f.applied_twice = report.applied_twice + (compute.slices_applied_twice() if compute else 0)
        f.reruns = sum(n - 1 for n in runs.values() if n > 1)
        f.master_5xx = self.client.server_errors
        f.master_503 = self.client.statuses.get(503, 0)
        f.problems += report.problems[:20]
        if self.client.gave_up:
            f.problems.append(f"the client gave up on {self.client.gave_up} submissions after {self.client.tries} 503s")
        if compute is not None:
            f.notes["callback verdicts"] = compute.verdicts()
            f.notes["invocations"] = compute.invocations
            f.notes["throttled"] = compute.throttled
            f.notes["dropped"] = compute.dropped
        f.notes["stalled"] = report.counts.get("stalled", 0)
        f.notes["retried"] = report.counts.get("retried", 0)
        dead_reasons: dict[str, int] = {}
        for job_id in report.ids("dead"):  # type: ignore[arg-type]
            reason = report.records[job_id].get("error", "")
            dead_reasons[reason] = dead_reasons.get(reason, 0) + 1
        if dead_reasons:
            f.notes["dead reasons"] = dead_reasons
        f.seconds = round(time.monotonic() - self.started, 1)
        f.recovery_s = [round(x, 2) for x in f.recovery_s]
        return f

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as e:  # a scenario's cleanup must not hide its figures
                print(f"cleanup: {e}", file=sys.stderr)


def settle(queue: Queue, timeout_s: float) -> list[float]:
    """[seconds until no job is active], or [] if some still are after ``timeout_s``."""
    try:
        return [drain(queue, timeout_s)]
    except TimeoutError:
        return []


def work_mix(ms: int, fan_every: int = 0) -> Callable[[int], tuple[str, dict[str, Any]]]:
    def mix(n: int) -> tuple[str, dict[str, Any]]:
        if fan_every and n % fan_every == 0:
            return "fault.fan", {"n": n, "slices": 3}
        return "fault.work", {"n": n, "ms": ms}

    return mix


def terminal_within(queue: Queue, ids: list[str], timeout_s: float) -> float:
    def done() -> bool:
        pipe = queue.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(queue.keys.job(job_id), "status")
        return all(s in TERMINAL_STATUSES for s in pipe.execute())

    return wait_until(done, timeout_s, 0.05)


def held_jobs(queue: Queue, worker_id: str) -> list[str]:
    items = queue.client.lrange(queue.keys.processing(worker_id), 0, -1)
    return [i for i in items if "/" not in i and i != "~"]  # type: ignore[union-attr]


def redis_server(*extra: str) -> tuple[RedisServer, Queue]:
    server = start_redis(extra_args=extra)
    return server, api_queue(server.url)


# -- scenarios ---------------------------------------------------------------------------


def kill9(s: Scenario) -> Figures:
    """kill -9 of a worker every 2.5 s during 3000 jobs (one in 20 fans out), restarted at once."""
    server, queue = redis_server()
    s.closers.append(server.stop)
    compute, pool = s.compute_and_two_workers(server.url)
    with serving(queue):
        submitter = s.submit_many(3000, 150, work_mix(8, fan_every=20))
        watchers: list[threading.Thread] = []
        for kill in range(8):
            time.sleep(2.5)
            victim = pool[kill % 2]
            victim.kill9()
            killed = time.monotonic()
            held = held_jobs(queue, victim.worker_id)

            def watch(held: list[str] = held, killed: float = killed) -> None:
                terminal_within(queue, held, 30)
                s.figures.recovery_s.append(time.monotonic() - killed)

            watchers.append(threading.Thread(target=watch, daemon=True))
            watchers[-1].start()
            pool[kill % 2] = s.compute_worker(server.url, compute)
        submitter.join()
        for w in watchers:
            w.join(60)
        s.figures.recovery = "kill -9 -> every job the killed worker held has ended (lease 1 s, reaper 0.2 s)"
        return s.finish(queue, compute=compute)


def kill9_production(s: Scenario) -> Figures:
    """kill -9 with the production timings (lease 10 s, heartbeat 2 s, reaper 5 s): the target is 20 s."""
    server, queue = redis_server()
    s.closers.append(server.stop)
    env = {**PRODUCTION, "OFFLOAD_BATCH_SIZE": "32"}
    with serving(queue):
        submitter = s.submit_many(600, 300, work_mix(20))
        time.sleep(0.5)
        victim, _ = s.worker(server.url, **env), s.worker(server.url, **env)
        time.sleep(1.5)
        victim.kill9()
        held = held_jobs(queue, victim.worker_id)
        s.figures.notes["jobs held by the killed worker"] = len(held)
        s.figures.recovery_s.append(terminal_within(queue, held, 60))
        s.figures.recovery = "kill -9 -> every job the killed worker held has ended (lease 10 s, reaper 5 s)"
        submitter.join()
        return s.finish(queue)


def client_kill(s: Scenario) -> Figures:
    """CLIENT KILL of every client connection every 20 ms while 2000 jobs run (one in 10 fans out)."""
    server, queue = redis_server()
    s.closers.append(server.stop)
    compute, _ = s.compute_and_two_workers(server.url)
    killer, stop, kills = plain_client(server.url), threading.Event(), [0]

    def kill_connections() -> None:
        while not stop.wait(0.02):
            kills[0] += int(killer.client_kill_filter(_type="normal", skipme=True))

    thread = threading.Thread(target=kill_connections, daemon=True)
    with serving(queue):
        thread.start()
        s.submit_many(2000, 250, work_mix(3, fan_every=10)).join()
        stop.set()
        thread.join()
        s.figures.recovery_s += settle(queue, 30)
        s.figures.recovery = "last kill -> every job ended"
        s.figures.notes["connections killed"] = kills[0]
        return s.finish(queue, compute=compute)


def lost_replies(s: Scenario) -> Figures:
    """1 reply in 50 lost after its command ran (the proxy drops it with the connection), for the
    workers' connections, during 1500 jobs (one in 10 fans out)."""
    server, queue = redis_server()
    s.closers.append(server.stop)
    proxy = Proxy(("127.0.0.1", server.port)).start()
    s.closers.append(proxy.stop)
    compute, _ = s.compute_and_two_workers(proxy.url)
    with serving(queue):
        proxy.lose_replies(probability=0.02)
        s.submit_many(1500, 200, work_mix(3, fan_every=10)).join()
        time.sleep(1)
        proxy.lose_replies()
        s.figures.recovery_s += settle(queue, 30)
        s.figures.recovery = "end of the losses -> every job ended"
        s.figures.notes["replies lost"] = proxy.replies_lost
        return s.finish(queue, compute=compute)


def redis_restart(s: Scenario) -> Figures:
    """kill -9 of redis-server (AOF, fsync always) under load, down 3 s, started again with its data."""
    server = DurableRedis()
    s.closers.append(server.stop)
    queue = api_queue(server.url)
    compute, _ = s.compute_and_two_workers(server.url)
    with serving(queue):
        submitter = s.submit_many(1500, 150, work_mix(5, fan_every=10))
        time.sleep(3)
        server.kill()
        time.sleep(3)
        server.start()
        back = time.monotonic()
        done = queue.client.hget(queue.keys.counts, "succeeded")
        wait_until(lambda: queue.client.hget(queue.keys.counts, "succeeded") != done, 30)
        s.figures.recovery_s.append(time.monotonic() - back)
        s.figures.recovery = "Redis back -> the next job succeeded"
        submitter.join()
        return s.finish(queue, compute=compute)


def failover(s: Scenario) -> Figures:
    """A planned failover to the replica under load: the old primary demoted with REPLICAOF (open
    connections get READONLY, blocked BLMOVEs UNBLOCKED), the endpoint (a proxy) switched."""
    primary, replica = start_redis(), start_redis()
    s.closers += [primary.stop, replica.stop]
    plain_client(replica.url).replicaof("127.0.0.1", primary.port)
    wait_until(lambda: plain_client(replica.url).info("replication")["master_link_status"] == "up", 10)
    proxy = Proxy(("127.0.0.1", primary.port)).start()
    s.closers.append(proxy.stop)
    queue = api_queue(proxy.url)
    compute, _ = s.compute_and_two_workers(proxy.url)
    with serving(queue):
        submitter = s.submit_many(1500, 150, work_mix(5, fan_every=10))
        time.sleep(3)
        new = api_queue(replica.url)
        done = new.client.hget(new.keys.counts, "succeeded")
        fail_over(primary, replica, proxy)
        switched = time.monotonic()
        wait_until(lambda: new.client.hget(new.keys.counts, "succeeded") != done, 30)
        s.figures.recovery_s.append(time.monotonic() - switched)
        s.figures.recovery = "failover -> the next job succeeded on the new primary"
        submitter.join()
        return s.finish(new, compute=compute)


def callbacks(s: Scenario) -> Figures:
    """Every slice outcome delivered twice (as Lambda may), and one first attempt in five called
    back late, after its deadline, when the slice has been dispatched again: 300 jobs x 4 slices."""
    server, queue = redis_server()
    s.closers.append(server.stop)
    rng = random.Random(3)

    def plan(invocation: dict[str, Any]) -> Plan:
        if invocation["attempt"] == 1 and rng.random() < 0.2:
            return [2.0, 2.1]
        return [0.0, rng.uniform(0, 0.3)]

    compute = LocalCompute(plan).start()
    s.closers.append(compute.stop)
    s.worker(server.url, FAULTS_COMPUTE_URL=compute.url, OFFLOAD_SLICE_TIMEOUT_S="1")
    with serving(queue):
        s.submit_many(300, 100, lambda n: ("fault.fan", {"n": n, "slices": 4})).join()
        figures = s.finish(queue, compute=compute)
    late = [d.at for d in compute.deliveries if d.attempt == 1 and d.verdict in ("stale", "inactive")]
    figures.notes["late callbacks fenced"] = len(late)
    figures.recovery = "(none: no fault to recover from)"
    return figures


def no_callback(s: Scenario) -> Figures:
    """One first attempt in four never calls back and one invocation in five is throttled (429 ->
    TooManyRequestsException); 10 jobs have a slice that never calls back at all: 200 jobs x 3."""
    server, queue = redis_server()
    s.closers.append(server.stop)
    rng = random.Random(5)
    doomed: set[int] = set(range(0, 200, 20))
    deadline_missed: dict[tuple[str, int, int], float] = {}

    def plan(invocation: dict[str, Any]) -> Plan:
        if rng.random() < 0.2:
            return "throttle"  # LambdaInvoker tries 5 times: 1 in 3000 slices spends a try
        if invocation["input"]["n"] in doomed and invocation["slice"] == 0:
            return []
        if invocation["attempt"] == 1 and rng.random() < 0.25:
            deadline_missed[(invocation["job_id"], invocation["slice"], invocation["attempt"])] = time.monotonic()
            return []
        return [0.0]

    compute = LocalCompute(plan).start()
    s.closers.append(compute.stop)
    s.worker(server.url, FAULTS_COMPUTE_URL=compute.url, OFFLOAD_SLICE_TIMEOUT_S="1")
    with serving(queue):
        s.submit_many(200, 100, lambda n: ("fault.fan", {"n": n, "slices": 3})).join()
        figures = s.finish(queue, compute=compute)
    # recovery: from a dropped invocation to the next attempt of that slice being applied
    for d in compute.deliveries:
        dropped = deadline_missed.get((d.job_id, d.slice, d.attempt - 1))
        if dropped is not None and d.verdict in ("applied", "completed"):
            figures.recovery_s.append(d.at - dropped)
    figures.recovery_s = sorted(figures.recovery_s)[-1:] + (
        [statistics.median(figures.recovery_s)] if figures.recovery_s else []
    )
    figures.recovery = "invocation dropped -> its retry applied (max, median; slice timeout 1 s)"
    figures.notes["expected dead (slice never calls back)"] = len(doomed)
    return figures


def sigterm(s: Scenario) -> Figures:
    """SIGTERM to a worker every 2 s (grace 0.3 s; jobs of 10-100 ms, one in ten of 400-490 ms),
    restarted at once: 600 jobs."""
    server, queue = redis_server()
    s.closers.append(server.stop)
    env = {"OFFLOAD_BATCH_SIZE": "4", "OFFLOAD_SHUTDOWN_GRACE_S": "0.3"}
    pool = [s.worker(server.url, **env), s.worker(server.url, **env)]
    exits: list[int] = []
    with serving(queue):
        # mostly short jobs, one in ten longer than the grace period (those go back to the queue)
        submitter = s.submit_many(
            600, 60, lambda n: ("fault.work", {"n": n, "ms": 10 + (n * 37) % 90 + (390 if n % 10 == 0 else 0)})
        )
        for stop in range(5):
            time.sleep(2)
            victim = pool[stop % 2]
            victim.terminate()
            stopped = time.monotonic()
            exits.append(victim.wait(10))
            s.figures.recovery_s.append(time.monotonic() - stopped)
            pool[stop % 2] = s.worker(server.url, **env)
        submitter.join()
        figures = s.finish(queue)
    figures.recovery = "SIGTERM -> the worker exited, its jobs finished or requeued"
    figures.notes["exit codes"] = exits
    figures.notes["graceful exits"] = sum(1 for w in s.workers if "shutdown grace period over" in w.log_text())
    records = audit(queue.client, queue.keys).records
    figures.notes["jobs that spent a try"] = sum(1 for r in records.values() if r.get("error"))
    return figures


def idle(s: Scenario) -> Figures:
    """A worker (production timings) idle for 35 s, past every timeout (lease 10 s, reaper 5 s,
    socket 4 s, health check 30 s, and a server that drops connections idle 2 s), then one job."""
    server, queue = redis_server("--timeout", "2")
    s.closers.append(server.stop)
    s.worker(server.url, **PRODUCTION)
    time.sleep(35)
    with serving(queue):
        sent = time.monotonic()
        s.submit_many(1, 1, work_mix(0)).join()
        wait_until(lambda: queue.client.hget(queue.keys.counts, "succeeded") == "1", 30)
        s.figures.recovery_s.append(time.monotonic() - sent)
        s.figures.recovery = "after 35 s idle: submit -> succeeded"
        return s.finish(queue)


SCENARIOS: dict[str, Callable[[Scenario], Figures]] = {
    "kill9": kill9,
    "kill9_production": kill9_production,
    "client_kill": client_kill,
    "lost_replies": lost_replies,
    "redis_restart": redis_restart,
    "failover": failover,
    "callbacks": callbacks,
    "no_callback": no_callback,
    "sigterm": sigterm,
    "idle": idle,
}


def table(results: list[Figures]) -> str:
    head = (
        f"{'scenario':<17} {'submitted':>9} {'accepted':>8} {'succeeded':>9} {'dead':>5} {'lost':>5} "
        f"{'applied 2x':>10} {'re-runs':>7} {'5xx':>4} {'503':>4}  recovery s"
    )
    lines = [head, "-" * len(head)]
    for f in results:
        rec = (
            ", ".join(f"{x:.1f}" for x in f.recovery_s)
            if len(f.recovery_s) <= 3
            else (
                f"max {max(f.recovery_s):.1f}, median {statistics.median(f.recovery_s):.1f}"
                f" ({len(f.recovery_s)} faults)"
            )
        )
        lines.append(
            f"{f.scenario:<17} {f.submitted:>9} {f.accepted:>8} {f.succeeded:>9} {f.dead:>5} {f.lost:>5} "
            f"{f.applied_twice:>10} {f.reruns:>7} {f.master_5xx:>4} {f.master_503:>4}  {rec or '-'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: all of {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    RESULTS.mkdir(exist_ok=True)
    out = sys.stdout
    results: list[Figures] = []
    # The handlers' own log lines and metrics go to a file; the figures come here.
    with open(RESULTS / "harness.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        from faults.harness import lambda_module

        lambda_module("master"), lambda_module("callback")  # their loggers write to this file from now on
        for name in names:
            scenario = Scenario(name, (SCENARIOS[name].__doc__ or "").split("\n")[0])
            print(f"== {name}: {' '.join((SCENARIOS[name].__doc__ or '').split())}", file=out, flush=True)
            try:
                figures = SCENARIOS[name](scenario)
            except Exception as e:
                figures = scenario.figures
                figures.problems.append(f"scenario failed: {type(e).__name__}: {e}")
            finally:
                scenario.close()
            results.append(figures)
            print(table([figures]).split("\n", 2)[2], file=out)
            for key, value in figures.notes.items():
                print(f"   {key}: {value}", file=out)
            print(f"   recovery: {figures.recovery}  ({figures.seconds} s; logs in {scenario.folder})", file=out)
            for problem in figures.problems:
                print(f"   PROBLEM: {problem}", file=out)
            out.flush()
    print()
    print(table(results))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    payload = json.dumps([asdict(f) for f in results], indent=2)
    (RESULTS / f"faults-{stamp}.json").write_text(payload)
    (RESULTS / "latest.json").write_text(payload)
    print(f"\nfigures written to faults/results/faults-{stamp}.json")
    bad = [f.scenario for f in results if f.lost or f.applied_twice or f.master_5xx or f.problems]
    if bad:
        print(f"FAILED: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the benchmarks share: sizes, the children's environment, timing, counting round trips.

Every measurement runs in a fresh child process (``python -m bench.child <name>``), so a
benchmark never inherits another's heap, imports or environment: the master and callback
read their settings from the environment at import, exactly as in Lambda.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
EVENTS = REPO / "events"
RESULTS = REPO / "bench" / "results"

# The key the callback tokens are made with; any value works, the children all share it.
SECRET = "offload-bench-secret"
# A value as long as a job id, for the raw LPUSH the hot paths are compared with.
RAW_VALUE = "0123456789abcdef0123456789abcdef"
RAW_KEY = "bench:raw-lpush"
# the caller's settings of these kinds never reach a child
_NOT_INHERITED = ("AWS_", "OFFLOAD_", "POWERTOOLS_", "REDIS_", "_X_AMZN")

T = TypeVar("T")


class BenchError(Exception):
    """A benchmark could not run (a child failed, a check on its output did not hold)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; ``QUICK`` is the smoke test's."""

    rounds: int  # interleaved rounds for the master and callback ratios
    master_jobs: int
    callback_outcomes: int
    slices_per_job: int
    worker_jobs: int
    rss_jobs: int
    rss_mark: int  # RSS growth is measured from this many jobs to the end
    fanout_sequential: int
    fanout_slices: int
    lambda_latency_ms: float  # service time the mocked Lambda endpoint adds to each invoke
    cold_repeats: int
    memory_jobs: int


FULL = Sizes(
    rounds=50,
    master_jobs=10_000,
    callback_outcomes=8_000,
    slices_per_job=4,
    worker_jobs=10_000,
    rss_jobs=100_000,
    rss_mark=10_000,
    fanout_sequential=200,
    fanout_slices=1_600,
    lambda_latency_ms=20.0,
    cold_repeats=11,
    memory_jobs=10_000,
)

QUICK = Sizes(
    rounds=3,
    master_jobs=150,
    callback_outcomes=120,
    slices_per_job=4,
    worker_jobs=200,
    rss_jobs=2_000,
    rss_mark=200,
    fanout_sequential=16,
    fanout_slices=64,
    lambda_latency_ms=5.0,
    cold_repeats=2,
    memory_jobs=200,
)


def child_env(redis_url: str, **extra: str) -> dict[str, str]:
    """What a deployed function finds in its environment, pointed at the bench's Redis.

    Nothing of the caller's AWS or offload configuration leaks in: fake credentials, one
    region, and only the settings given here.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    env.update(
        REDIS_URL=redis_url,
        OFFLOAD_CALLBACK_SECRET=SECRET,
        OFFLOAD_CALLBACK_BASE_URL="http://127.0.0.1:9/unused",
        POWERTOOLS_TRACE_DISABLED="true",
        POWERTOOLS_DEV="false",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONHASHSEED="0",
    )
    env.update(extra)
    return env


def run_child(name: str, params: dict[str, Any], env: dict[str, str], timeout_s: float = 600.0) -> dict[str, Any]:
    """Run ``bench.<name>.child(params)`` in a fresh interpreter; return what it returned.

    The child's stdout (the functions' JSON logs) goes to /dev/null, as a log pipe would
    take it; its stderr is kept for the error message if it fails.
    """
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp:
        out = Path(tmp) / "result.json"
        args = [sys.executable, "-m", "bench.child", name, json.dumps(params), str(out)]
        try:
            proc = subprocess.run(
                args,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"bench.{name} took longer than {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not out.exists():
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-15:]
            raise BenchError(f"bench.{name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
        result: dict[str, Any] = json.loads(out.read_text())
        return result


# -- timing ------------------------------------------------------------------------------


def per_call_s(fn: Callable[[], object], n: int) -> float:
    """Mean seconds per call of ``fn`` over ``n`` calls in a row."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def per_item_s(fn: Callable[[T], object], items: Sequence[T]) -> float:
    """Mean seconds per call of ``fn(item)`` over ``items``."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)


@dataclass(frozen=True)
class Paired:
    """A hot path and the raw round trip, measured in alternating rounds."""

    path_s: list[float]
    raw_s: list[float]

    @property
    def ratios(self) -> list[float]:
        return [p / r for p, r in zip(self.path_s, self.raw_s, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path_us": round(statistics.median(self.path_s) * 1e6, 2),
            "raw_lpush_us": round(statistics.median(self.raw_s) * 1e6, 2),
            # each round's ratio is taken between neighbours in time, so drift cancels out
            "ratio": round(statistics.median(self.ratios), 3),
            "ratio_min": round(min(self.ratios), 3),
            "ratio_max": round(max(self.ratios), 3),
            "rounds": len(self.ratios),
        }


def paired_rounds(rounds: int, path: Callable[[int], float], raw: Callable[[], float]) -> Paired:
    """``rounds`` times: ``path(round)`` then ``raw()``, each returning seconds per operation."""
    path_s: list[float] = []
    raw_s: list[float] = []
    for r in range(rounds):
        path_s.append(path(r))
        raw_s.append(raw())
    return Paired(path_s, raw_s)


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class StubRedis:
    """Stands in for a handler's Redis client: every script call answers ``reply`` at once.

    With it a handler's time is its own work alone, in a warm loop: the figure to hold the
    full path against, which also waits for Redis and runs on a CPU that went idle meanwhile.
    """

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def evalsha(self, *_: Any) -> Any:
        return self.reply


@dataclass(frozen=True)
class OwnWork:
    warm_s: float  # per call, calls back to back
    after_wait_s: float  # per call, each after a blocking wait on a loopback socket

    def as_dict(self) -> dict[str, float]:
        return {"own_work_us": round(self.warm_s * 1e6, 2), "own_work_after_wait_us": round(self.after_wait_s * 1e6, 2)}


def own_work(queue: Any, reply: Any, call: Callable[[], object], n: int, rounds: int = 5) -> OwnWork:
    """A handler's own work, with ``queue``'s client a StubRedis: in a warm loop, and with each
    call after a blocking ping-pong with a thread on a socket pair (the ping-pong's own time
    taken off), as the real path runs after each round trip."""
    left, right = socket.socketpair()

    def echo() -> None:
        while data := right.recv(16):
            right.sendall(data)

    def ping() -> None:
        left.sendall(b"p")
        left.recv(16)

    def ping_then_call() -> None:
        ping()
        call()

    threading.Thread(target=echo, daemon=True).start()
    real, queue.client = queue.client, StubRedis(reply)
    try:
        warm, after, pings = [], [], []
        for _ in range(rounds):
            warm.append(per_call_s(call, n))
            after.append(per_call_s(ping_then_call, n))
            pings.append(per_call_s(ping, n))
    finally:
        queue.client = real
        left.close()
    return OwnWork(statistics.median(warm), statistics.median(after) - statistics.median(pings))


# -- round trips -------------------------------------------------------------------------


@contextmanager
def counting_round_trips() -> Iterator[list[int]]:
    """Count the writes redis-py makes to its sockets: one per round trip.

    A pipeline is one write; a single command is one write; a health-check PING or a
    NOSCRIPT reload would be one more each. ``counter[0]`` holds the count.
    """
    from redis.connection import AbstractConnection

    original: Callable[..., None] = AbstractConnection.send_packed_command
    counter = [0]

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        counter[0] += 1
        original(self, command, check_health)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


# -- processes ---------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_event(name: str) -> dict[str, Any]:
    """One of the project's API Gateway sample events (``events/``)."""
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event

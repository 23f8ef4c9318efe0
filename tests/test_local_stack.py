"""`offload local up` as a user runs it: a separate process with its own embedded Redis."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from offload.local.redis_server import free_port
from tests.conftest import SAMPLES


@dataclass
class Stack:
    url: str
    redis_url: str
    process: subprocess.Popen[str]
    inputs: Path
    outputs: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "REDIS_URL": self.redis_url}
        return subprocess.run(
            [sys.executable, "-m", "offload.cli", *args], env=env, capture_output=True, text=True, timeout=30
        )


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_for(stack: Stack, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, view = http("GET", f"{stack.url}/jobs/{job_id}")
        assert status == 200
        if view["status"] in ("succeeded", "dead"):
            return dict(view)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {view['status']}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    inputs = tmp_path_factory.mktemp("inputs")
    for name in ("rocket.jpg", "chelsea.png", "camera.png"):
        shutil.copy(SAMPLES / name, inputs / name)
    state = tmp_path_factory.mktemp("state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "OFFLOAD_", "AWS_"))}
    env["OFFLOAD_INPUT_ROOT"] = str(inputs)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "offload.cli",
            "local",
            "up",
            "--port",
            str(free_port()),
            "--state-dir",
            str(state),
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    ready = None
    for line in process.stdout:
        if '"ready"' in line:
            ready = json.loads(line)
            break
    assert ready, "local up did not print its ready line"
    yield Stack(ready["url"], ready["redis_url"], process, inputs, Path(ready["output_dir"]))
    if process.poll() is None:
        process.kill()
    process.wait()
    process.stdout.close()


def test_a_thumbnail_job_travels_the_whole_stack(stack: Stack) -> None:
    images = [f"file:{name}" for name in ("rocket.jpg", "chelsea.png", "camera.png")]
    status, accepted = http(
        "POST",
        f"{stack.url}/jobs",
        {"type": "thumbnail", "payload": {"images": images, "sizes": [32, 200], "format": "png"}},
    )
    assert status == 202

    view = wait_for(stack, accepted["job_id"])

    assert view["status"] == "succeeded" and view["slices"] == {"total": 3, "succeeded": 3, "failed": 0}
    assert [item["image"] for item in view["result"]] == images
    for item in view["result"]:
        for thumb, size in zip(item["thumbnails"], (32, 200), strict=True):
            with Image.open(Path(thumb["uri"].removeprefix("file://"))) as image:
                assert image.format == "PNG" and max(image.size) == size


def test_an_echo_job_runs_inline(stack: Stack) -> None:
    status, accepted = http("POST", f"{stack.url}/jobs", {"type": "echo", "payload": {"hello": "world"}})
    assert status == 202

    view = wait_for(stack, accepted["job_id"])

    assert view["status"] == "succeeded" and view["result"] == {"hello": "world"} and view["slices"]["total"] == 0


def test_an_unsigned_callback_is_403(stack: Stack) -> None:
    status, _ = http("POST", f"{stack.url}/jobs", {"type": "echo", "payload": {}})
    body = {"slice": 0, "attempt": 1, "token": "x", "status": "succeeded", "result": 1}

    status, answer = http("POST", f"{stack.url}/callbacks/{'0' * 32}", body)

    assert status == 403 and "Forbidden" in answer["message"]


def test_a_badly_signed_callback_is_403(stack: Stack) -> None:
    headers = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAOFFLOADLOCAL0001/20261203/us-east-1/execute-api/"
        "aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
    }

    status, _ = http("POST", f"{stack.url}/callbacks/{'0' * 32}", {"slice": 0}, headers)

    assert status == 403


def test_a_failing_slice_is_dead_lettered_with_its_reason_and_replay_brings_it_back(stack: Stack) -> None:
    (stack.inputs / "fake.png").write_text("this is not a PNG")
    payload = {"images": ["file:rocket.jpg", "file:fake.png"], "sizes": [48]}
    _, accepted = http("POST", f"{stack.url}/jobs", {"type": "thumbnail", "payload": payload})
    job_id = accepted["job_id"]

    dead = wait_for(stack, job_id)

    assert dead["status"] == "dead"
    assert dead["error"].startswith("slice 1: file:fake.png: not an image Pillow can read")
    listing = stack.cli("dlq", "list", "--json")
    assert listing.returncode == 0
    assert [row["job_id"] for row in json.loads(listing.stdout)] == [job_id]

    shutil.copy(SAMPLES / "coffee.png", stack.inputs / "fake.png")  # the operator fixes the input
    replay = stack.cli("dlq", "replay", job_id, "--json")
    assert replay.returncode == 0, replay.stderr

    again = wait_for(stack, job_id)
    assert again["status"] == "succeeded" and again["job_id"] == job_id
    assert any(h.get("event") == "replayed" for h in again["history"])
    stats = json.loads(stack.cli("stats", "--json").stdout)
    assert stats["balanced"] and stats["dead"] == 0


def test_sigterm_stops_everything_it_started_redis_included(stack: Stack) -> None:
    port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])

    stack.process.send_signal(signal.SIGTERM)

    assert stack.process.wait(timeout=30) == 0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass

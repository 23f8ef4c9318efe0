"""Fairness end to end: a one-slice job of tenant B finishes while tenant A's huge job is mostly pending.

``make fairness`` runs it with 1,000 slices and prints the figures; the suite runs a smaller one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials

from offload import config, signing
from offload.local.stack import LocalStack
from tests.conftest import SAMPLES

TENANTS = {"AKIATENANTA000000001": "secret-a", "AKIATENANTB000000001": "secret-b"}
SLICES = int(os.environ.get("FAIRNESS_SLICES", "200"))


def signed(method: str, url: str, key: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    headers = signing.sign(url, data, Credentials(key, TENANTS[key]), "us-east-1", method)
    request = urllib.request.Request(url, data=data if body is not None else None, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def stack(tmp_path: Path, environment: dict[str, str]) -> Iterator[LocalStack]:
    saved = dict(os.environ)
    shutil.copy(SAMPLES / "rocket.jpg", tmp_path / "rocket.jpg")
    os.environ.update({"OFFLOAD_TENANT_MAX_INFLIGHT": "2", "OFFLOAD_INPUT_ROOT": str(tmp_path)})
    local = LocalStack(state_dir=tmp_path / "state", tenant_keys=TENANTS, compute_concurrency=2)
    local.start()
    local.run_worker_in_background()
    yield local
    local.stop()
    os.environ.clear()
    os.environ.update(saved)
    config.settings.cache_clear()


def test_a_small_job_finishes_while_a_huge_one_from_another_tenant_is_mostly_pending(stack: LocalStack) -> None:
    a, b = TENANTS
    huge = {"type": "thumbnail", "payload": {"images": ["file:rocket.jpg"] * SLICES, "sizes": [16]}}
    small = {"type": "thumbnail", "payload": {"images": ["file:rocket.jpg"], "sizes": [16]}}
    started = time.monotonic()
    huge_id = signed("POST", f"{stack.url}/jobs", a, huge)["job_id"]
    small_id = signed("POST", f"{stack.url}/jobs", b, small)["job_id"]

    while (view_b := signed("GET", f"{stack.url}/jobs/{small_id}", b))["status"] not in ("succeeded", "dead"):
        time.sleep(0.05)
    small_done_s = time.monotonic() - started
    a_at_that_time = signed("GET", f"{stack.url}/jobs/{huge_id}", a)["slices"]["succeeded"]
    while (view_a := signed("GET", f"{stack.url}/jobs/{huge_id}", a))["status"] not in ("succeeded", "dead"):
        time.sleep(0.2)
    huge_done_s = time.monotonic() - started

    print(f"\nfairness: tenant A {SLICES} slices done in {huge_done_s:.2f} s; tenant B 1 slice done in "
          f"{small_done_s:.2f} s, when A had {a_at_that_time}/{SLICES} slices done")  # fmt: skip
    assert view_b["status"] == "succeeded" and view_a["status"] == "succeeded"
    assert a_at_that_time < SLICES / 2

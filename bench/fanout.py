"""Fan-out: slices dispatched per second to a mocked Lambda endpoint, against sequential invokes.

The child builds the worker's own dispatch stack, as ``offload worker`` does: a boto3
Lambda client with one connection per dispatch thread and botocore's retries off, a
``LambdaInvoker`` and ``Dispatcher.from_settings`` (``dispatch_concurrency`` threads). Slices go
through ``Dispatcher.dispatch`` in batches of ``batch_size``, as the worker hands them
over (each batch waits for its slowest invoke). The baseline is the same client calling
``invoke(InvocationType="Event")`` in a loop with ready-made payloads.

Each figure is measured at each service time the mock adds (``bench.mock_lambda``); the
mock also reports the most invokes it saw in flight at once, which must stay within the
concurrency bound.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import REPO, SECRET, BenchError, chunks

FUNCTION = "offload-compute"
SLICE_INPUT = json.dumps({"image": "s3://bench-input/photos/0001.jpg", "sizes": [64, 256], "format": "webp"})
TRACE = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=0"
WARMUP = 32


@contextmanager
def mock_lambda() -> Iterator[str]:
    """Start ``bench.mock_lambda`` in its own process; yields its endpoint URL."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.mock_lambda"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None and proc.stdin is not None
        try:
            line = proc.stdout.readline().strip()
            if not line.isdigit():
                errors.seek(0)
                raise BenchError("the mocked Lambda endpoint did not start:\n" + errors.read().decode()[-2000:])
            yield f"http://127.0.0.1:{int(line)}"
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _call(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def _function_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return None\n")
    return buf.getvalue()


def child(params: dict[str, Any]) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    from offload.config import Settings
    from offload.dispatch import Dispatcher, LambdaInvoker
    from offload.jobs import TakenSlice

    endpoint = str(params["endpoint"])
    n_sequential, n_slices = int(params["sequential"]), int(params["slices"])
    settings = Settings.from_env()
    concurrency, batch = settings.dispatch_concurrency, settings.batch_size

    _call(f"{endpoint}/moto-api/config", {"lambda": {"use_docker": False}})
    session = boto3.Session(region_name="us-east-1")
    iam = session.client("iam", endpoint_url=endpoint)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="offload-compute", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    client = session.client(
        "lambda",
        endpoint_url=endpoint,
        config=Config(retries={"max_attempts": 1}, max_pool_connections=concurrency),
    )
    client.create_function(
        FunctionName=FUNCTION,
        Runtime="python3.11",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": _function_zip()},
    )
    dispatcher = Dispatcher.from_settings(LambdaInvoker(client, FUNCTION), settings, secret=SECRET)
    slices = [
        TakenSlice(
            job_id=uuid.uuid4().hex,
            slice=i % 4,
            attempt=1,
            input=SLICE_INPUT,
            type="thumbnail",
            tenant=f"tenant-{i % 8}",
            trace=TRACE,
        )
        for i in range(n_slices)
    ]
    payloads = [dispatcher.event(s) for s in slices[:n_sequential]]

    def invoke(payload: bytes) -> None:
        response = client.invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=payload)
        if response["StatusCode"] != 202:
            raise BenchError(f"invoke answered {response['StatusCode']}")

    def dispatch(items: list[TakenSlice]) -> None:
        for part in chunks(items, batch):
            failed = [r.error for r in dispatcher.dispatch(part) if r.error is not None]
            if failed:
                raise BenchError(f"{len(failed)} slices failed to dispatch: {failed[0]}")

    runs = []
    try:
        for latency_ms in params["latencies_ms"]:
            _call(f"{endpoint}/_bench/reset?latency_ms={latency_ms}")
            for payload in payloads[:WARMUP]:
                invoke(payload)
            dispatch(slices[: min(WARMUP, n_slices)])  # every pooled connection open

            start = time.perf_counter()
            for payload in payloads:
                invoke(payload)
            sequential_per_s = len(payloads) / (time.perf_counter() - start)

            before = _call(f"{endpoint}/_bench/reset?latency_ms={latency_ms}")
            start, cpu = time.perf_counter(), time.process_time()
            dispatch(slices)
            dispatched_per_s = len(slices) / (time.perf_counter() - start)
            client_cpu_s = time.process_time() - cpu
            stats = _call(f"{endpoint}/_bench/reset?latency_ms={latency_ms}")
            if stats["invokes"] != len(slices):
                raise BenchError(f"the endpoint saw {stats['invokes']} invokes for {len(slices)} slices")
            runs.append(
                {
                    "latency_ms": latency_ms,
                    "sequential_per_s": round(sequential_per_s, 1),
                    "dispatched_per_s": round(dispatched_per_s, 1),
                    "ratio": round(dispatched_per_s / sequential_per_s, 3),
                    "peak_in_flight": stats["peak_in_flight"],
                    # where the machine's cores went, per dispatched slice
                    "client_cpu_ms_per_slice": round(client_cpu_s * 1000 / len(slices), 3),
                    "mock_cpu_ms_per_slice": round((stats["cpu_s"] - before["cpu_s"]) * 1000 / len(slices), 3),
                }
            )
    finally:
        dispatcher.close()
    return {
        "concurrency": concurrency,
        "batch_size": batch,
        "sequential_calls": len(payloads),
        "slices": len(slices),
        "runs": runs,
    }

"""A stand-in for Lambda's asynchronous invoke of the compute function.

The real compute handler runs in separate processes. Like Lambda, a failed invocation is
retried (``max_retries`` times, after a delay), then an ``OnFailure`` destination record
goes to the callback function, here called directly, as the destination would.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

FUNCTION_ARN = "arn:aws:lambda:us-east-1:000000000000:function:offload-compute"


def run_compute(event: dict[str, Any]) -> Any:
    """Runs in a child process: the compute function's real handler."""
    from offload.lambdas import compute
    from offload.local.context import LocalContext

    return compute.handler(event, LocalContext(function_name="offload-compute"))


def failure_record(event: dict[str, Any], error: BaseException, invoke_count: int) -> dict[str, Any]:
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(),
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"{FUNCTION_ARN}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {
            "errorMessage": str(error) or type(error).__name__,
            "errorType": type(error).__name__,
            "stackTrace": traceback.format_exception_only(error),
        },
    }


class LocalLambda:
    def __init__(
        self,
        on_failure: Callable[[dict[str, Any]], Any],
        *,
        concurrency: int = 2,
        max_retries: int = 2,
        retry_delay_s: float = 1.0,
        target: Callable[[dict[str, Any]], Any] = run_compute,
    ) -> None:
        self.on_failure = on_failure
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s
        self.target = target
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self.invocations = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent has threads (heartbeat, HTTP server) that fork would copy mid-lock
        return ProcessPoolExecutor(max_workers=self.concurrency, mp_context=multiprocessing.get_context("spawn"))

    def invoke_async(self, payload: bytes, trace: str = "") -> None:
        self._submit(json.loads(payload), 1)

    def _submit(self, event: dict[str, Any], invoke_count: int) -> None:
        with self._lock:
            self._pending += 1
            self.invocations += 1
            try:
                future = self._pool.submit(self.target, event)
            except BrokenProcessPool:
                self._pool = self._new_pool()
                future = self._pool.submit(self.target, event)
        future.add_done_callback(lambda f: self._done(f, event, invoke_count))

    def _done(self, future: Future[Any], event: dict[str, Any], invoke_count: int) -> None:
        try:
            error = future.exception()
            if error is None:
                return
            if isinstance(error, BrokenProcessPool):
                with self._lock:
                    self._pool = self._new_pool()
            if invoke_count <= self.max_retries:
                log.warning("compute invocation failed (%s); Lambda would retry", error)
                timer = threading.Timer(self.retry_delay_s, self._submit, (event, invoke_count + 1))
                timer.daemon = True
                timer.start()
                return
            log.warning("compute invocation failed %d times; delivering the OnFailure record", invoke_count)
            try:
                self.on_failure(failure_record(event, error, invoke_count))
            except Exception:
                log.exception("OnFailure delivery failed")
        finally:
            with self._lock:
                self._pending -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

"""Dispatch: hand slices to the compute function, asynchronously and with bounded concurrency."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from offload import tokens
from offload.config import Settings
from offload.errors import DispatchFailed
from offload.jobs import TakenSlice
from offload.slice_models import SliceInvocation
from offload.worker_tracing import HeaderOnly, SpanFactory

log = logging.getLogger(__name__)

# invoke() errors worth another try: Lambda throttling, its own faults, and the network.
_RETRYABLE_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "ServiceException",
        "EC2ThrottledException",
        "ResourceNotReadyException",
        "ResourceConflictException",
        "SnapStartNotReadyException",
        "ENILimitReachedException",
        "RequestTimeout",
    }
)


class Invoker(Protocol):
    """Starts one asynchronous invocation; raises DispatchFailed when it could not.

    ``trace`` is the X-Ray header the invocation continues (empty when untraced)."""

    def invoke_async(self, payload: bytes, trace: str = "") -> None: ...


class LambdaInvoker:
    """``lambda.invoke(InvocationType="Event")``, retried with backoff on throttling and faults."""

    def __init__(self, client: Any, function_name: str, *, tries: int = 5, base_delay_s: float = 0.1) -> None:
        self.client = client
        self.function_name = function_name
        self.tries = tries
        self.base_delay_s = base_delay_s
        self._trace = threading.local()
        # Lambda continues the trace of an invoke request that carries the X-Ray header;
        # botocore has no parameter for it, so it is set on the request before signing.
        client.meta.events.register("before-sign.lambda.Invoke", self._add_trace_header)

    def _add_trace_header(self, request: Any, **_: Any) -> None:
        trace = getattr(self._trace, "header", "")
        if trace:
            request.headers["X-Amzn-Trace-Id"] = trace

    def invoke_async(self, payload: bytes, trace: str = "") -> None:
        self._trace.header = trace
        try:
            self._invoke(payload)
        finally:
            self._trace.header = ""

    def _invoke(self, payload: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(1, self.tries + 1):
            try:
                response = self.client.invoke(FunctionName=self.function_name, InvocationType="Event", Payload=payload)
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if code not in _RETRYABLE_CODES:
                    raise DispatchFailed(f"invoke refused: {code}: {e}", retryable=False) from e
                reason = f"invoke failed {attempt} times, last with {code}"
            except BotoCoreError as e:
                reason = f"invoke failed {attempt} times, last with {type(e).__name__}: {e}"
            else:
                if response.get("StatusCode") == 202:
                    return
                reason = f"invoke answered {response.get('StatusCode')} instead of 202"
            if attempt < self.tries:
                time.sleep(self.base_delay_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))
        raise DispatchFailed(reason, retryable=True)


@dataclass(frozen=True, slots=True)
class DispatchResult:
    slice: TakenSlice
    error: DispatchFailed | None


class Dispatcher:
    """Builds each slice's invocation (callback URL, token) and invokes concurrently."""

    def __init__(
        self,
        invoker: Invoker,
        *,
        queue_name: str,
        callback_base_url: str,
        secret: str,
        token_ttl_s: float,
        max_payload_bytes: int,
        concurrency: int,
        spans: SpanFactory | None = None,
    ) -> None:
        self.invoker = invoker
        self.spans = spans or HeaderOnly()
        self.queue_name = queue_name
        self.callback_base_url = callback_base_url
        self.secret = secret
        self.token_ttl_s = token_ttl_s
        self.max_payload_bytes = max_payload_bytes
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dispatch")

    @classmethod
    def from_settings(
        cls, invoker: Invoker, settings: Settings, *, secret: str, spans: SpanFactory | None = None
    ) -> Dispatcher:
        return cls(
            invoker,
            queue_name=settings.queue,
            callback_base_url=settings.callback_base_url,
            secret=secret,
            # a token outlives the slice's deadline, so a slow but honest callback still counts
            token_ttl_s=settings.slice_timeout_s + settings.callback_token_grace_s,
            max_payload_bytes=settings.max_invoke_payload_bytes,
            concurrency=settings.dispatch_concurrency,
            spans=spans,
        )

    def event(self, item: TakenSlice, trace: str = "") -> bytes:
        invocation = SliceInvocation(
            job_id=item.job_id,
            queue=self.queue_name,
            type=item.type,
            slice=item.slice,
            attempt=item.attempt,
            callback_url=f"{self.callback_base_url}/callbacks/{item.job_id}",
            callback_token=tokens.issue(self.secret, item.job_id, item.slice, item.attempt, self.token_ttl_s),
            input=json.loads(item.input),
            trace=trace,
        )
        return invocation.model_dump_json().encode()

    def dispatch(self, items: Sequence[TakenSlice]) -> list[DispatchResult]:
        return list(self.pool.map(self._one, items))

    def _one(self, item: TakenSlice) -> DispatchResult:
        # each slice continues the job's trace, as a child of the worker's dispatch span
        attributes: dict[str, str | int] = {"job_id": item.job_id, "job_type": item.type, "slice": item.slice,
                                            "attempt": item.attempt}  # fmt: skip
        with self.spans.span(f"dispatch {item.type}", item.trace, attributes) as trace:
            return self._invoke(item, trace)

    def _invoke(self, item: TakenSlice, trace: str) -> DispatchResult:
        payload = self.event(item, trace)
        if len(payload) > self.max_payload_bytes:
            # Lambda would refuse it; say so in the job rather than as an invoke error
            return DispatchResult(
                item,
                DispatchFailed(
                    f"slice input is {len(payload)} bytes, over the {self.max_payload_bytes}-byte asynchronous "
                    "invocation limit; pass large inputs by reference (an s3:// URI)",
                    retryable=False,
                ),
            )
        try:
            self.invoker.invoke_async(payload, trace)
        except DispatchFailed as e:
            return DispatchResult(item, e)
        return DispatchResult(item, None)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

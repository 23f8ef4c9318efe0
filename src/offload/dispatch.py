"""Dispatch: hand slices to the compute function, asynchronously and with bounded concurrency."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from offload import tokens
from offload.errors import DispatchFailed
from offload.jobs import TakenSlice
from offload.models import SliceInvocation

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
    """Starts one asynchronous invocation; raises DispatchFailed when it could not."""

    def invoke_async(self, payload: bytes) -> None: ...


class LambdaInvoker:
    """``lambda.invoke(InvocationType="Event")``, retried with backoff on throttling and faults."""

    def __init__(self, client: Any, function_name: str, *, tries: int = 5, base_delay_s: float = 0.1) -> None:
        self.client = client
        self.function_name = function_name
        self.tries = tries
        self.base_delay_s = base_delay_s

    def invoke_async(self, payload: bytes) -> None:
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
    ) -> None:
        self.invoker = invoker
        self.queue_name = queue_name
        self.callback_base_url = callback_base_url
        self.secret = secret
        self.token_ttl_s = token_ttl_s
        self.max_payload_bytes = max_payload_bytes
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dispatch")

    def event(self, item: TakenSlice) -> bytes:
        invocation = SliceInvocation(
            job_id=item.job_id,
            queue=self.queue_name,
            type=item.type,
            slice=item.slice,
            attempt=item.attempt,
            callback_url=f"{self.callback_base_url}/callbacks/{item.job_id}",
            callback_token=tokens.issue(self.secret, item.job_id, item.slice, item.attempt, self.token_ttl_s),
            input=json.loads(item.input),
            trace=item.trace,
        )
        return invocation.model_dump_json().encode()

    def dispatch(self, items: Sequence[TakenSlice]) -> list[DispatchResult]:
        return list(self.pool.map(self._one, items))

    def _one(self, item: TakenSlice) -> DispatchResult:
        payload = self.event(item)
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
            self.invoker.invoke_async(payload)
        except DispatchFailed as e:
            return DispatchResult(item, e)
        return DispatchResult(item, None)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

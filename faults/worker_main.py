"""``python -m faults.worker_main``: the real worker, as ``offload worker`` runs it, with the
diagnostic job types registered next to the real ones.

Settings come from the environment as in Fargate. Two more variables: ``FAULTS_WORKER_ID_FILE``
(where to write the worker id once it is chosen) and ``FAULTS_COMPUTE_URL`` (the local Lambda
stand-in to invoke for fan-out jobs, through the real ``LambdaInvoker`` and its retries).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faults import diag
from offload import config
from offload.connection import connect
from offload.dispatch import Dispatcher, LambdaInvoker
from offload.queue import Queue
from offload.worker import Worker


class HttpLambdaClient:
    """The one boto3 Lambda client call the worker makes, answered by the compute stand-in;
    its 429 comes back as Lambda's TooManyRequestsException."""

    def __init__(self, url: str) -> None:
        self.url = url
        # LambdaInvoker hooks botocore's request events (to carry the trace header); no requests here
        self.meta = SimpleNamespace(events=SimpleNamespace(register=lambda *args, **kwargs: None))

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        from botocore.exceptions import ClientError, EndpointConnectionError

        request = urllib.request.Request(self.url, data=Payload, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return {"StatusCode": response.status}
        except urllib.error.HTTPError as e:
            code = "TooManyRequestsException" if e.code == 429 else "ServiceException"
            raise ClientError({"Error": {"Code": code, "Message": str(e)}}, "Invoke") from e
        except OSError as e:
            raise EndpointConnectionError(endpoint_url=self.url) from e


def main() -> int:
    settings = config.settings()
    dispatcher = None
    compute_url = os.environ.get("FAULTS_COMPUTE_URL")
    if compute_url:
        dispatcher = Dispatcher(
            LambdaInvoker(HttpLambdaClient(compute_url), "offload-compute", base_delay_s=0.02),
            queue_name=settings.queue,
            callback_base_url=settings.callback_base_url,
            secret=settings.callback_secret,
            token_ttl_s=settings.slice_timeout_s + settings.callback_token_grace_s,
            max_payload_bytes=settings.max_invoke_payload_bytes,
            concurrency=settings.dispatch_concurrency,
        )
    worker = Worker(Queue(connect(settings, "worker"), settings), diag.build_registry(), settings, dispatcher)
    id_file = os.environ.get("FAULTS_WORKER_ID_FILE")
    if id_file:
        Path(id_file).write_text(json.dumps({"worker_id": worker.worker_id, "pid": os.getpid()}))
    worker.install_signal_handlers()
    worker.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

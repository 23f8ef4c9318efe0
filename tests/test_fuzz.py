"""Schema-driven fuzzing: schemathesis makes requests from the OpenAPI document the local gateway
serves (GET /openapi.json), valid ones and invalid ones, and every answer must be documented.

The gateway runs in front of the real master and callback handlers and the session's Redis.
Callbacks are SigV4-signed with the gateway's key, so they reach the handler; half of the
valid ones carry a real token for a real dispatched job, so they reach the queue too. Every
answer must have a documented status, be JSON, match its documented schema (errors: ``error``
and ``message``), and never be a 5xx other than a documented 503.

A bigger run, with figures (see docs/security.md)::

    .venv/bin/python -m tests.test_fuzz --examples 500 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from offload import tokens
from offload.local.gateway import Gateway
from offload.queue import Queue
from tests.conftest import dispatched_job

CALLBACK_KEY = "AKIAOFFLOADFUZZ00001"  # the compute function's identity
TENANT_KEYS = ("AKIAOFFLOADFUZZ00002", "AKIAOFFLOADFUZZ00003")  # two tenants of the job routes
REGION = "us-east-1"
DOCUMENTED_5XX = {503}
# per operation (3; schemathesis leaves out the schema's own URL) and mode (valid, invalid): 6 x this many requests
EXAMPLES = int(os.environ.get("OFFLOAD_FUZZ_EXAMPLES", "100"))
DISPATCHED_SLICES = 4
DISPATCHED_JOBS = 20


@dataclass
class Report:
    sent: int = 0
    not_sendable: int = 0  # generated cases the HTTP client refuses to send (e.g. a newline in a header)
    statuses: Counter[int] = field(default_factory=Counter)
    # (operation, valid/invalid, status, error name)
    by_operation: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{self.sent} requests sent, {len(self.unexpected)} unexpected"

    def table(self) -> str:
        return "\n".join(
            f"  {operation:26} {mode:8} {status} {error:24} {count}"
            for (operation, mode, status, error), count in sorted(self.by_operation.items())
        )


class _Signer(requests.auth.AuthBase):
    """SigV4 over exactly the URL, headers and bytes requests is about to send."""

    def __init__(self, key: str, secret: str) -> None:
        self.credentials = Credentials(key, secret)

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        body = prepared.body if isinstance(prepared.body, bytes) else (prepared.body or "").encode()
        headers = {k: v for k, v in prepared.headers.items() if k.lower() not in ("connection", "accept-encoding")}
        request = AWSRequest(method=prepared.method, url=prepared.url, data=body, headers=headers)
        SigV4Auth(self.credentials, "execute-api", REGION).add_auth(request)
        prepared.headers.update(dict(request.headers.items()))
        return prepared


def answers_are_json_errors(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """No 5xx but a documented 503; every error is a JSON object naming the problem."""
    status = response.status_code
    assert status < 500 or status in DOCUMENTED_5XX, f"server error {status}: {response.text[:300]}"
    if status >= 400:
        body = response.json()
        assert isinstance(body, dict), f"{status} body is not a JSON object: {response.text[:300]}"
        assert isinstance(body.get("error"), str) and body["error"], f"{status} without an error name: {body}"
        assert isinstance(body.get("message"), str) and body["message"], f"{status} without a message: {body}"
    return None


CHECKS = [
    answers_are_json_errors,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class Fuzzer:
    def __init__(self, base_url: str, callback_secret: str, queue: Queue, signing: dict[str, str]) -> None:
        self.base_url = base_url
        self.callback_secret = callback_secret
        self.session = requests.Session()
        self.sign_callback = _Signer(CALLBACK_KEY, signing[CALLBACK_KEY])
        self.sign_tenant = [_Signer(key, signing[key]) for key in TENANT_KEYS]
        self.report = Report()
        self.accepted: list[str] = []  # job ids POST /jobs answered 202 with, either tenant's
        # made before any job is submitted, so that each take below takes exactly that job
        self.dispatched_jobs = [_dispatched_job(queue, f"fuzz-{i}") for i in range(DISPATCHED_JOBS)]
        self.dispatched = self.dispatched_jobs.pop()
        self._turn = itertools.count()

    def run(self, examples: int, seed_value: int | None) -> Report:
        schema = schemathesis.openapi.from_url(f"{self.base_url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                self._explore(operation.as_strategy(generation_mode=mode), examples, seed_value)
        return self.report

    def _explore(self, strategy: Any, examples: int, seed_value: int | None) -> None:
        @settings(
            max_examples=examples,
            derandomize=seed_value is None,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def probe(case: schemathesis.Case) -> None:
            self.one(case)

        (seed(seed_value)(probe) if seed_value is not None else probe)()

    def one(self, case: schemathesis.Case) -> None:
        turn = next(self._turn)
        path = case.operation.path
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        auth: requests.auth.AuthBase | None = None
        # A case with an Authorization header is signed for real (so it gets past the gateway);
        # one without is the "missing authentication" case, sent unsigned.
        if "Authorization" in (case.headers or {}):
            auth = self.sign_callback if path.startswith("/callbacks") else self.sign_tenant[turn % 2]
        if path == "/callbacks/{job_id}" and positive and turn % 4 and isinstance(case.body, dict):
            # a genuine token for a genuine job: the outcome reaches the queue's scripts
            case.path_parameters = {"job_id": self.dispatched}
            slice_index, attempt = _whole(case.body.get("slice")), _whole(case.body.get("attempt"))
            if slice_index is not None and attempt is not None:
                if turn % 4 != 3:  # mostly a slice the job has, at its attempt or the next
                    slice_index, attempt = slice_index % DISPATCHED_SLICES, 1 + attempt % 2
                    case.body.update(slice=slice_index, attempt=attempt)
                case.body["token"] = tokens.issue(self.callback_secret, self.dispatched, slice_index, attempt, 60)
        elif path == "/jobs/{job_id}" and positive and self.accepted and turn % 3:
            # an existing job, the caller's own or the other tenant's (then 404)
            case.path_parameters = {"job_id": self.accepted[turn % len(self.accepted)]}
        try:
            response = case.call(base_url=self.base_url, session=self.session, auth=auth, timeout=10)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeEncodeError, ValueError):
            self.report.not_sendable += 1
            return
        except requests.exceptions.RequestException as e:
            self.report.sent += 1
            self.report.unexpected.append(f"{case.operation.label}: no answer ({e})\n{case.as_curl_command()}")
            return
        self.report.sent += 1
        self.report.statuses[response.status_code] += 1
        mode = "valid" if positive else "invalid"
        error = _error_name(response)
        self.report.by_operation[(case.operation.label, mode, response.status_code, error)] += 1
        if path == "/jobs" and response.status_code == 202:
            self.accepted.append(response.json()["job_id"])
        if path == "/callbacks/{job_id}" and error in ("dead", "completed") and self.dispatched_jobs:
            self.dispatched = self.dispatched_jobs.pop()  # a fresh job to send outcomes to
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, schemathesis.errors.SchemathesisError, BaseExceptionGroup) as e:
            self.report.unexpected.append(f"{case.operation.label} -> {response.status_code}: {e}")


def _whole(value: object) -> int | None:
    """A JSON integer as generated: an int, or a float with nothing after the point (``3.0``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, float) and value.is_integer() else None


def _error_name(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "(not JSON)"
    return str(body.get("error") or body.get("verdict") or "") if isinstance(body, dict) else ""


def _dispatched_job(queue: Queue, tenant: str) -> str:
    return dispatched_job(queue, DISPATCHED_SLICES, tenant=tenant, max_tries=3, worker="fuzz-worker")


@contextlib.contextmanager
def serving() -> Iterator[tuple[Gateway, dict[str, str]]]:
    """The gateway in front of the real handlers (imported here: they read the environment)."""
    from offload.lambdas import callback, master, openapi

    keys = {key: secrets.token_urlsafe(24) for key in (CALLBACK_KEY, *TENANT_KEYS)}
    handlers = {"master": master.handler, "callback": callback.handler, "openapi": openapi.handler}
    # every route authenticated, as in AWS (AWS_IAM on the job routes too)
    gateway = Gateway(handlers, keys, anonymous_jobs=False)
    gateway.start()
    try:
        yield gateway, keys
    finally:
        gateway.stop()


@pytest.fixture
def fuzzer(queue: Queue, environment: dict[str, str]) -> Iterator[Fuzzer]:
    with serving() as (gateway, keys):
        yield Fuzzer(gateway.url, environment["OFFLOAD_CALLBACK_SECRET"], queue, keys)


@pytest.mark.timeout(90)
def test_generated_requests_get_only_documented_answers(fuzzer: Fuzzer) -> None:
    report = fuzzer.run(EXAMPLES, seed_value=None)

    print(f"\nfuzz: {report.summary} (not sendable: {report.not_sendable})\n{report.table()}")
    assert report.sent >= 4 * EXAMPLES
    assert not report.unexpected, "\n\n".join(report.unexpected[:5])
    # the run reached past the edge: jobs accepted, outcomes applied, and refusals of each kind
    assert {200, 202, 400, 403, 404, 422} <= set(report.statuses)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=500, help="per operation and mode (default 500)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized)")
    parser.add_argument("--show", type=int, default=5, help="unexpected answers to print in full")
    args = parser.parse_args(argv)

    import dataclasses

    from offload import config
    from offload.connection import connect
    from offload.local.redis_server import start_redis

    redis = start_redis()
    try:
        callback_secret = secrets.token_urlsafe(32)
        os.environ.update(
            {
                "REDIS_URL": redis.url,
                "OFFLOAD_CALLBACK_SECRET": callback_secret,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": "ERROR",
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
            }
        )
        config.settings.cache_clear()
        conf = config.settings()
        queue = Queue(connect(dataclasses.replace(conf), "worker"), conf)
        # the handlers' log lines and metrics (stdout) would drown the figures
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), serving() as (gateway, keys):
            report = Fuzzer(gateway.url, callback_secret, queue, keys).run(args.examples, args.seed)
    finally:
        redis.stop()
    out(report.table())
    out(f"statuses: {dict(sorted(report.statuses.items()))}; not sendable: {report.not_sendable}")
    for problem in report.unexpected[: args.show]:
        out(f"\n{problem}")
    out(report.summary)
    return 1 if report.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())

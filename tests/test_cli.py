"""`offload` as an operator types it: every command, against the session's Redis, with jobs
made through the Queue API. Exit codes: 0 done, 1 failed or not found, 2 usage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from offload import cli, operations
from offload.jobs import Status
from offload.local import invoke
from offload.local.gateway import Gateway
from offload.queue import NewJob, Queue
from tests.conftest import EVENTS, EVENTS_JOB_ID, REPO, SAMPLES

TENANT = "arn:aws:iam::123456789012:user/tenant-a"


class Run:
    """``offload ARGS`` in this process: exit code, stdout, stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> tuple[int, Any]:
        code, out, _ = self(*argv, "--json")
        return code, json.loads(out)


@pytest.fixture
def offload(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


def submit(queue: Queue, type_: str = "echo", tenant: str = "t", max_tries: int = 3, job_id: str = "") -> str:
    job = NewJob(type=type_, payload='{"n": 1}', tenant=tenant, max_tries=max_tries)
    return queue.enqueue(job, job_id=job_id).job_id


def kill(queue: Queue, type_: str = "echo", reason: str = "bad input") -> str:
    """A job that failed for good on its first try: in the dead-letter list."""
    job_id = submit(queue, type_)
    [job], _ = queue.take("w1", 1)
    queue.take("w1", 0, acks=[queue.fail_call("w1", job, reason, retryable=False, backoff_ms=0)])
    return job_id


def fan_out(queue: Queue, slices: int) -> str:
    job_id = submit(queue, "thumbnail")
    queue.take("w1", 1)
    queue.fan_out("w1", job_id, [json.dumps({"n": i}) for i in range(slices)])
    queue.take_slices("w1", slices)
    return job_id


@contextmanager
def in_background(steps: Callable[[], None]) -> Iterator[None]:
    thread = threading.Thread(target=steps, daemon=True)
    thread.start()
    yield
    thread.join(timeout=10)


class WatchReads:
    """Counts the job reads ``offload watch`` makes, so a test moves the job on only once the
    watch has seen where it is (a fixed sleep loses that race on a loaded machine)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._count = 0
        self._changed = threading.Condition()
        real = operations.require_job

        def counted(queue: Queue, job_id: str) -> Any:
            job = real(queue, job_id)
            with self._changed:
                self._count += 1
                self._changed.notify_all()
            return job

        monkeypatch.setattr(operations, "require_job", counted)

    def wait_for(self, reads: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self._count >= reads, timeout=10)

    @property
    def count(self) -> int:
        return self._count


# -- usage and errors --------------------------------------------------------------------


def test_a_usage_error_exits_2_with_the_usage_on_stderr(offload: Run) -> None:
    code, out, err = offload("dlq", "replay")

    assert code == 2 and out == "" and "usage: offload dlq replay" in err


def test_a_usage_error_with_json_also_prints_a_json_error(offload: Run) -> None:
    code, body = offload.json("watch", "abc", "--interval", "0")

    assert code == 2 and "must be more than 0" in body["error"]


def test_an_unreachable_redis_exits_1_quickly(offload: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from offload import config
    from offload.local.redis_server import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    config.settings.cache_clear()
    started = time.monotonic()
    try:
        code, body = offload.json("stats")
    finally:
        monkeypatch.undo()
        config.settings.cache_clear()

    assert code == 1 and "Redis is unavailable" in body["error"] and time.monotonic() - started < 5


# -- status and watch --------------------------------------------------------------------


def test_status_shows_a_job(offload: Run, queue: Queue) -> None:
    job_id = submit(queue, tenant="acme")

    code, view = offload.json("status", job_id)

    assert code == 0 and view["job_id"] == job_id and view["status"] == "queued" and view["tenant"] == "acme"


def test_status_of_a_missing_job_exits_1(offload: Run) -> None:
    code, body = offload.json("status", "nope")

    assert code == 1 and body == {"error": "no job 'nope'"}


def test_watch_prints_one_json_line_per_change_and_exits_0_when_the_job_succeeds(offload: Run, queue: Queue) -> None:
    job_id = fan_out(queue, 3)

    def finish_slices() -> None:
        for n in range(3):
            time.sleep(0.1)
            queue.apply_outcome(job_id, n, 1, succeeded=True, result_json=str(n))

    with in_background(finish_slices):
        code, out, _ = offload("watch", job_id, "--json", "--interval", "0.02")

    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [line["slices"]["succeeded"] for line in lines] == [0, 1, 2, 3]
    assert [line["status"] for line in lines] == ["waiting", "waiting", "waiting", "succeeded"]


def test_watch_exits_1_with_the_reason_when_the_job_is_dead(offload: Run, queue: Queue) -> None:
    job_id = kill(queue, reason="not an image")

    code, out, _ = offload("watch", job_id)

    assert code == 1 and f"job {job_id} dead after" in out and out.rstrip().endswith(": not an image")


def test_watch_draws_a_progress_bar_on_a_terminal(offload: Run, queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = fan_out(queue, 4)
    queue.apply_outcome(job_id, 0, 1, succeeded=True, result_json="0")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    reads = WatchReads(monkeypatch)

    def finish_slices() -> None:
        reads.wait_for(1)
        for n in (1, 2, 3):
            queue.apply_outcome(job_id, n, 1, succeeded=True, result_json=str(n))

    with in_background(finish_slices):
        code, out, _ = offload("watch", job_id, "--interval", "0.02")

    bar, final = out.rsplit("\n", 2)[:2]
    assert code == 0
    assert "\r[#######.......................]  " in bar and "1/4 slices" in bar
    assert bar.split("\r")[-1].startswith("[" + "#" * 30 + "]") and "4/4 slices" in bar
    assert final.startswith(f"job {job_id} succeeded after")


def test_watch_prints_plain_lines_when_not_on_a_terminal(
    offload: Run, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit(queue)
    reads = WatchReads(monkeypatch)

    def run_inline() -> None:
        reads.wait_for(1)
        queue.take("w1", 1)
        reads.wait_for(reads.count + 2)  # one read that began after the take has ended
        queue.take("w1", 0, acks=[queue.finish_call("w1", job_id, "{}")])

    with in_background(run_inline):
        code, out, _ = offload("watch", job_id, "--interval", "0.02")

    lines = out.splitlines()
    assert code == 0 and "\r" not in out
    assert [line.split("  ", 1)[1] for line in lines[:3]] == [f"job {job_id} {s}" for s in ("queued", "running")] + [
        f"job {job_id} succeeded"
    ]


def test_watch_gives_up_after_its_timeout(offload: Run, queue: Queue) -> None:
    job_id = submit(queue)

    code, out, _ = offload("watch", job_id, "--json", "--interval", "0.02", "--timeout", "0.1")

    *changes, error = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [c["status"] for c in changes] == ["queued"]
    assert error == {"error": f"job {job_id} still queued after 0.1 s"}


def test_watch_of_a_missing_job_exits_1(offload: Run) -> None:
    code, out, err = offload("watch", "nope")

    assert code == 1 and out == "" and "no job 'nope'" in err


# -- dead-letter list --------------------------------------------------------------------


def test_dlq_list_shows_dead_jobs_newest_first_filtered_by_type(offload: Run, queue: Queue) -> None:
    first = kill(queue, "echo", "first")
    thumb = kill(queue, "thumbnail", "broken")
    last = kill(queue, "echo", "last")

    _, everything = offload.json("dlq", "list")
    _, echoes = offload.json("dlq", "list", "--type", "echo")
    _, newest = offload.json("dlq", "list", "--limit", "1")

    assert [row["job_id"] for row in everything] == [last, thumb, first]
    assert [(row["job_id"], row["error"]) for row in echoes] == [(last, "last"), (first, "first")]
    assert [row["job_id"] for row in newest] == [last]


def test_dlq_list_says_so_when_empty(offload: Run) -> None:
    assert offload("dlq", "list") == (0, "the dead-letter list is empty\n", "")


def test_dlq_show_gives_the_reason_and_the_history_with_iso_times(offload: Run, queue: Queue) -> None:
    job_id = kill(queue, "thumbnail", "not an image")

    code, detail = offload.json("dlq", "show", job_id)
    text_code, text, _ = offload("dlq", "show", job_id)

    assert code == 0 and text_code == 0
    assert detail["reason"] == "not an image" and detail["attempts"] == 1 and detail["type"] == "thumbnail"
    assert detail["tenant"] == "t"
    [entry] = detail["history"]
    assert entry["error"] == "not an image" and entry["at"].endswith("+00:00") and entry["at"][:4].isdigit()
    assert "reason     not an image" in text and entry["at"] in text


def test_dlq_show_of_a_job_that_is_not_dead_exits_1(offload: Run, queue: Queue) -> None:
    job_id = submit(queue)

    code, body = offload.json("dlq", "show", job_id)

    assert code == 1 and body["error"] == f"job {job_id} is not in the dead-letter list (it is queued)"


def test_dlq_replay_of_one_job_queues_it_again(offload: Run, queue: Queue) -> None:
    job_id = kill(queue)

    code, body = offload.json("dlq", "replay", job_id)

    assert code == 0 and body == {"job_id": job_id, "status": "queued"}
    assert queue.get(job_id).status == Status.QUEUED  # type: ignore[union-attr]


def test_dlq_replay_of_a_job_that_is_not_dead_exits_1(offload: Run, queue: Queue) -> None:
    code, _, err = offload("dlq", "replay", submit(queue))

    assert code == 1 and "is not in the dead-letter list" in err


def test_dlq_replay_all_replays_every_dead_job_and_counts_them(offload: Run, queue: Queue) -> None:
    ids = [kill(queue, t) for t in ("echo", "thumbnail", "echo")]

    code, out, _ = offload("dlq", "replay", "--all")

    assert code == 0 and out == "replayed 3 dead jobs\n"
    assert {queue.get(i).status for i in ids} == {Status.QUEUED}  # type: ignore[union-attr]
    assert queue.stats().dead == 0 and queue.stats().balanced


def test_dlq_replay_by_type_leaves_the_other_types_dead(offload: Run, queue: Queue) -> None:
    echo, thumb = kill(queue, "echo"), kill(queue, "thumbnail")

    code, body = offload.json("dlq", "replay", "--type", "thumbnail")

    assert code == 0 and body == {"replayed": 1, "skipped": 0, "job_ids": [thumb]}
    assert queue.dead_job_ids() == [echo]


def test_dlq_replay_takes_an_id_or_all_not_both(offload: Run) -> None:
    assert offload("dlq", "replay", "abc", "--all")[0] == 2


# -- stats -------------------------------------------------------------------------------


def test_stats_prints_a_row_per_queue(offload: Run, make_queue: Callable[..., Queue]) -> None:
    default, bulk = make_queue(), make_queue(queue="bulk")
    submit(default)
    kill(bulk)
    submit(bulk)

    code, out, _ = offload("stats", "--queue", "default", "--queue", "bulk")

    header, first, second, *_ = out.splitlines()
    assert code == 0
    assert header.split() == [
        "queue",
        "depth",
        "limit",
        "shed",
        "in",
        "flight",
        "retrying",
        "dead",
        "workers",
        "oldest",
    ]
    assert first.split()[:8] == ["default", "1", "-", "0", "0", "0", "0", "0"]
    assert second.split()[:8] == ["bulk", "1", "-", "0", "0", "0", "1", "1"]  # w1 took a job there: alive
    invariant = "accepted = queued + running + waiting + retrying + succeeded + dead holds"
    assert f"default: {invariant}" in out and f"bulk: {invariant}" in out


def test_stats_json_is_the_queue_or_a_list_of_queues(offload: Run, make_queue: Callable[..., Queue]) -> None:
    submit(make_queue(queue="bulk"))

    _, one = offload.json("stats")
    _, several = offload.json("stats", "--queue", "bulk", "--queue", "default")

    assert one["queue"] == "default" and one["depth"] == 0 and one["balanced"]
    assert one["backlog_limit"] is None and one["shed"] == 0 and one["slices_in_flight"] == {}
    assert [(q["queue"], q["depth"]) for q in several] == [("bulk", 1), ("default", 0)]
    assert several[0]["oldest_queued_age_s"] >= 0 and several[1]["oldest_queued_age_s"] is None


def test_status_and_dlq_read_the_queue_named_by_queue(offload: Run, make_queue: Callable[..., Queue]) -> None:
    job_id = kill(make_queue(queue="bulk"))

    assert offload("status", job_id)[0] == 1
    assert offload("status", job_id, "--queue", "bulk")[0] == 0
    assert offload.json("dlq", "replay", "--all", "--queue", "bulk")[1]["replayed"] == 1


# -- submit, worker, local ---------------------------------------------------------------


@pytest.fixture
def api(master: ModuleType, callback: ModuleType) -> Iterator[str]:
    gateway = Gateway({"master": master.handler, "callback": callback.handler}, {})
    gateway.start()
    yield gateway.url
    gateway.stop()


def offload_process(*argv: str, stdin: str = "") -> tuple[int, Any]:
    """``offload ARGS --json`` in its own process (here the API's handlers print their metrics)."""
    done = subprocess.run(
        [sys.executable, "-m", "offload.cli", *argv, "--json"], input=stdin, capture_output=True, text=True, timeout=30
    )
    return done.returncode, json.loads(done.stdout)


def test_submit_posts_a_job_file(api: str, tmp_path: Path, queue: Queue) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"type": "echo", "payload": {"hello": "world"}}))

    code, accepted = offload_process("submit", str(job_file), "--api", api)

    assert code == 0 and accepted["status"] == "queued"
    assert queue.get(accepted["job_id"]).payload == {"hello": "world"}  # type: ignore[union-attr]


def test_submit_reads_stdin_and_exits_1_when_the_job_is_refused(api: str) -> None:
    code, body = offload_process("submit", "-", "--api", api, stdin='{"type": "no-such-type", "payload": {}}')

    assert code == 1 and body["status"] == 422 and body["error"] == "unknown_job_type"


def test_submit_of_a_missing_file_exits_1(offload: Run, tmp_path: Path) -> None:
    code, body = offload.json("submit", str(tmp_path / "absent.json"))

    assert code == 1 and body["error"].startswith(f"cannot read {tmp_path / 'absent.json'}")


def test_worker_runs_jobs_until_sigterm(queue: Queue) -> None:
    job_id = submit(queue)
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload.cli", "worker"],
        env={**os.environ, "OFFLOAD_BLOCK_S": "0.1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while queue.get(job_id).status != Status.SUCCEEDED and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        worker.kill()
        worker.wait()
    assert queue.get(job_id).result == {"n": 1}  # type: ignore[union-attr]


def test_local_up_on_a_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        code, body = offload_process("local", "up", "--port", port, "--state-dir", str(tmp_path))

    assert code == 1 and body["error"].startswith("cannot start the local stack") and "in use" in body["error"]


def test_local_run_of_a_missing_images_folder_exits_1(offload: Run, tmp_path: Path) -> None:
    code, body = offload.json("local", "run", "--images", str(tmp_path / "absent"))

    assert code == 1 and body["error"].startswith("cannot read the images folder")


def test_local_run_makes_thumbnails_through_the_whole_stack(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "camera.png").write_bytes((SAMPLES / "camera.png").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "OFFLOAD_", "AWS_"))}
    command = ["local", "run", "--images", str(images), "--sizes", "16", "--state-dir", str(tmp_path / "s"), "--json"]

    done = subprocess.run(
        [sys.executable, "-m", "offload.cli", *command], env=env, capture_output=True, text=True, timeout=60
    )

    summary = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert summary["status"] == "succeeded" and summary["problems"] == []


# -- invoke ------------------------------------------------------------------------------

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  QueueName: {Type: String, Default: default}
  Stage: {Type: String, AllowedValues: [staging, prod]}
  ProbeTimeout: {Type: Number, Default: 2}
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Globals:
  Function:
    Runtime: python3.12
    CodeUri: fn/
    Timeout: 5
    MemorySize: 256
    Environment:
      Variables:
        OFFLOAD_QUEUE: !Ref QueueName
        TEST_GLOBAL: from-globals
        TEST_OVERRIDDEN: from-globals
        TEST_STAGE: !Ref Stage
Resources:
  Cache:
    Type: AWS::ElastiCache::ServerlessCache
    Properties:
      Engine: redis
      ServerlessCacheName: !Sub "offload-${Stage}"
  MasterFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: offload.lambdas.master.handler
      Role: !GetAtt MasterRole.Arn
      Environment:
        Variables:
          POWERTOOLS_SERVICE_NAME: offload-master
          REDIS_URL: !Sub
            - "rediss://${Host}:6379/0"
            - Host: !GetAtt Cache.Endpoint.Address
          REDIS_AUTH_SECRET_ARN: !Ref RedisAuthSecret
  ProbeFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: probe.handler
      Timeout: !Ref ProbeTimeout
      Environment:
        Variables:
          TEST_OVERRIDDEN: from-function
          TEST_SUB: !Sub "${AWS::Region}/${QueueName}/${!Literal}"
          TEST_JOIN: !Join ["-", [a, !Ref QueueName]]
          TEST_BOOL: true
          TEST_NUMBER: 42
          TEST_IF: !If [IsProd, a, b]
          TEST_GETATT: !GetAtt Cache.Arn
          TEST_LONG_FORM: {"Fn::GetAtt": [Cache, Arn]}
          TEST_FROM_FILE: template
  BoomFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: probe.boom
  SlowFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: probe.slow
      Timeout: 1
  MissingFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: no_such_module.handler
  Bucket:
    Type: AWS::S3::Bucket
"""

PROBE = """\
import os
import time


def handler(event, context):
    return {
        "function": context.function_name,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": {name: os.environ.get(name) for name in event["names"]},
    }


def boom(event, context):
    print("about to fail")
    raise ValueError("boom")


def slow(event, context):
    time.sleep(30)
"""


@pytest.fixture
def template(tmp_path: Path) -> Path:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "probe.py").write_text(PROBE)
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    return path


def write_json(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_invoke_runs_the_handler_with_the_templates_environment_and_a_context(
    offload: Run, template: Path, tmp_path: Path
) -> None:
    names = ["TEST_GLOBAL", "TEST_OVERRIDDEN", "TEST_SUB", "TEST_JOIN", "TEST_BOOL", "TEST_NUMBER", "TEST_IF"]
    names += ["TEST_GETATT", "TEST_LONG_FORM", "TEST_STAGE", "TEST_FROM_FILE", "TEST_EXTRA", "AWS_LAMBDA_FUNCTION_NAME"]
    event = write_json(tmp_path / "event.json", {"names": names})
    env_vars = write_json(
        tmp_path / "env.json",
        {"Parameters": {"TEST_FROM_FILE": "parameters", "TEST_EXTRA": 7}, "ProbeFunction": {"TEST_FROM_FILE": "own"}},
    )

    code, answer = offload.json("invoke", "probe", "-t", str(template), "-e", event, "--env-vars", env_vars)

    assert code == 0
    assert answer["function"] == "ProbeFunction" and answer["memory"] == 256 and 0 < answer["remaining_ms"] <= 2000
    assert answer["env"] == {
        "TEST_GLOBAL": "from-globals",
        "TEST_OVERRIDDEN": "from-function",
        "TEST_SUB": "us-east-1/default/${Literal}",
        "TEST_JOIN": "a-default",
        "TEST_BOOL": "true",
        "TEST_NUMBER": "42",
        "TEST_IF": None,
        "TEST_GETATT": None,
        "TEST_LONG_FORM": None,
        "TEST_STAGE": None,
        "TEST_FROM_FILE": "own",
        "TEST_EXTRA": "7",
        "AWS_LAMBDA_FUNCTION_NAME": "ProbeFunction",
    }


def test_invoke_environment_puts_the_shell_over_the_template_and_env_vars_over_both(template: Path) -> None:
    spec = invoke.function_spec(invoke.load_template(template), "ProbeFunction", template.parent)
    shell = {"TEST_GLOBAL": "from-shell", "TEST_OVERRIDDEN": "from-shell", "REDIS_URL": "redis://127.0.0.1:7/0"}

    env = invoke.environment(spec, {"TEST_OVERRIDDEN": "from-file", "REDIS_URL": "redis://host.docker.internal"}, shell)

    assert env["TEST_GLOBAL"] == "from-shell" and env["TEST_OVERRIDDEN"] == "from-file"
    assert env["REDIS_URL"] == "redis://127.0.0.1:7/0"  # this machine's Redis, not the container's
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str((template.parent / "fn").resolve())
    assert env["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "2" and env["AWS_SAM_LOCAL"] == "true"


def test_invoke_runs_the_master_function_against_the_sessions_redis(offload: Run, template: Path, queue: Queue) -> None:
    submit(queue, "thumbnail", tenant=TENANT, job_id=EVENTS_JOB_ID)

    code, answer = offload.json("invoke", "master", "-t", str(template), "-e", str(EVENTS / "get_job.json"))

    assert code == 0 and answer["statusCode"] == 200
    assert json.loads(answer["body"])["status"] == "queued"


def test_invoke_of_a_raising_handler_exits_1_with_lambdas_error_document(offload: Run, template: Path) -> None:
    code, out, err = offload("invoke", "BoomFunction", "-t", str(template), "--json")

    error = json.loads(out)
    assert code == 1 and error["errorType"] == "ValueError" and error["errorMessage"] == "boom"
    assert any("raise ValueError" in line for line in error["stackTrace"])
    assert "about to fail" in err  # the function's output goes to stderr


def test_invoke_stops_a_handler_past_its_timeout(offload: Run, template: Path) -> None:
    code, error = offload.json("invoke", "slow", "-t", str(template))

    assert code == 1 and error == {
        "errorMessage": "Task timed out after 1.00 seconds",
        "errorType": "Sandbox.Timedout",
        "stackTrace": [],
    }


def test_invoke_of_a_handler_that_cannot_be_imported_exits_1(offload: Run, template: Path) -> None:
    code, error = offload.json("invoke", "missing", "-t", str(template))

    assert code == 1 and error["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module" in error["errorMessage"]


def test_invoke_of_an_unknown_function_names_the_ones_there_are(offload: Run, template: Path) -> None:
    code, body = offload.json("invoke", "Bucket", "-t", str(template))

    assert code == 1 and "MasterFunction, ProbeFunction, BoomFunction" in body["error"]


def test_invoke_without_a_template_exits_1(offload: Run, tmp_path: Path) -> None:
    code, body = offload.json("invoke", "master", "-t", str(tmp_path / "template.yaml"))

    assert code == 1 and body["error"].startswith("no template at")


@pytest.mark.skipif(not (REPO / "template.yaml").exists(), reason="template.yaml is not written yet")
def test_invoke_the_master_function_of_the_real_template(offload: Run, queue: Queue) -> None:
    submit(queue, "thumbnail", tenant=TENANT, job_id=EVENTS_JOB_ID)
    template = str(REPO / "template.yaml")

    env_vars = REPO / "env.json"  # written for sam's containers; the shell's REDIS_URL is kept
    more = ["--env-vars", str(env_vars)] if env_vars.exists() else []

    code, answer = offload.json("invoke", "MasterFunction", "-t", template, "-e", str(EVENTS / "get_job.json"), *more)

    assert code == 0 and answer["statusCode"] == 200
    assert json.loads(answer["body"])["job_id"] == EVENTS_JOB_ID


def test_every_function_of_the_template_reads(template: Path) -> None:
    path = REPO / "template.yaml" if (REPO / "template.yaml").exists() else template
    document = invoke.load_template(path)

    specs = [invoke.function_spec(document, name, path.parent) for name in invoke.function_ids(document)]

    assert specs and all(spec.handler and spec.timeout_s > 0 for spec in specs)
    assert all(not value.startswith(("rediss://", "arn:")) for spec in specs for value in spec.variables.values())


def test_short_forms_read_as_intrinsics(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    tags = "Ref Sub GetAtt If Join Select FindInMap Equals Not And Or Condition ImportValue Split Base64 Cidr GetAZs"
    body = "\n".join(f"      {tag}: !{tag} [a, b]" for tag in tags.split())
    path.write_text(textwrap.dedent("Resources:\n  R:\n    Properties:\n") + body + "\n      Att: !GetAtt A.B.C\n")

    props = invoke.load_template(path)["Resources"]["R"]["Properties"]

    assert props["Ref"] == invoke.Intrinsic("Ref", ["a", "b"])
    assert props["GetAZs"] == invoke.Intrinsic("Fn::GetAZs", ["a", "b"])
    assert props["Att"] == invoke.Intrinsic("Fn::GetAtt", ["A", "B.C"])
    assert len(props) == len(tags.split()) + 1


def test_submit_signs_requests_to_the_deployed_api_but_not_to_the_local_stack() -> None:
    from offload import cli

    signed = cli._sigv4("POST", "https://abc123.execute-api.eu-west-1.amazonaws.com/staging/jobs", b"{}")

    assert signed["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/eu-west-1/execute-api/aws4_request" in signed["Authorization"]
    assert cli._sigv4("POST", "http://127.0.0.1:8787/jobs", b"{}") == {}


@pytest.mark.parametrize("command", ["stats", "worker"])
def test_operator_commands_refuse_to_guess_which_redis_to_use(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}

    done = subprocess.run([sys.executable, "-m", "offload.cli", command], env=env, capture_output=True, text=True)

    assert done.returncode == 1 and "set REDIS_URL" in done.stderr and "Traceback" not in done.stderr


def test_a_redis_url_that_is_not_one_is_named_not_a_traceback() -> None:
    env = {**os.environ, "REDIS_URL": "notaurl"}

    done = subprocess.run([sys.executable, "-m", "offload.cli", "stats"], env=env, capture_output=True, text=True)

    assert done.returncode == 1 and "REDIS_URL 'notaurl' is not a redis://" in done.stderr
    assert "Traceback" not in done.stderr

"""``offload``: run the local stack or the worker, submit jobs, and operate queues."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import redis

from offload import config, operations
from offload.errors import OffloadError
from offload.jobs import Status
from offload.queue import Queue

if TYPE_CHECKING:
    from offload.local.stack import LocalStack

DEFAULT_API = "http://127.0.0.1:8787"
SAMPLE_IMAGES = Path("samples/images")


class UsageError(Exception):
    """A command line argparse refused; the exit code is 2."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``offload`` command and return its exit code: 0 done, 1 it failed or there
    was no such thing, 2 the command line was wrong. With ``--json`` stdout holds one JSON
    document (``watch``: one per line), an error included."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        e.parser.print_usage(sys.stderr)
        print(f"{e.parser.prog}: error: {e}", file=sys.stderr)
        if "--json" in argv:
            print(json.dumps({"error": str(e)}))
        return 2
    try:
        return int(args.run(args))
    except (OffloadError, redis.RedisError) as e:
        _fail(args, str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="offload", description=__doc__)
    commands = _Commands(parser.add_subparsers(required=True, metavar="COMMAND"))
    _local_commands(commands)
    _job_commands(commands)
    _dlq_commands(commands)
    stats = commands.add("stats", cmd_stats, "per queue: depth, in flight, retrying, dead, workers alive, oldest age")
    stats.add_argument(
        "--queue", dest="queues", action="append", type=_queue_name, help="a queue (repeatable; default $OFFLOAD_QUEUE)"
    )
    invoke = commands.add("invoke", cmd_invoke, "run one function's handler as sam local invoke would, without Docker")
    invoke.add_argument("function", help="logical id (MasterFunction) or short name (master)")
    invoke.add_argument("--event", "-e", help="event JSON file, or - for stdin (default: {})")
    invoke.add_argument("--env-vars", "-n", type=Path, help='JSON overrides: {"Parameters": {...}, "<Id>": {...}}')
    invoke.add_argument("--template", "-t", type=Path, help="SAM template (default: ./template.yaml)")
    return parser


class _Commands:
    """Adds commands (each with ``--json``) and groups of them to the parser."""

    def __init__(self, subparsers: Any) -> None:
        self.subparsers = subparsers

    def add(self, name: str, run: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = self.subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    def add_on_queue(self, name: str, run: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        sub = self.add(name, run, help_text)
        sub.add_argument("--queue", type=_queue_name, help="queue name (default: $OFFLOAD_QUEUE or default)")
        return sub

    def group(self, name: str, help_text: str) -> _Commands:
        parser = self.subparsers.add_parser(name, help=help_text, description=help_text)
        return _Commands(parser.add_subparsers(required=True, metavar="COMMAND"))


def _local_commands(commands: _Commands) -> None:
    local = commands.group("local", "the local stack (no Docker, no AWS)")
    up = local.add("up", cmd_local_up, "serve the whole stack on 127.0.0.1 until stopped")
    up.add_argument("--port", type=int, default=8787)
    up.add_argument("--state-dir", type=Path, default=Path(".offload"))
    run = local.add("run", cmd_local_run, "run one thumbnail job through the local stack and check it")
    run.add_argument("--images", type=Path, default=SAMPLE_IMAGES, help="folder of images (default: the samples)")
    run.add_argument("--sizes", default="128,512", help="comma-separated longest edges in px")
    run.add_argument("--format", default="webp", choices=("jpeg", "png", "webp"))
    run.add_argument("--state-dir", type=Path, default=Path(".offload"))
    run.add_argument("--timeout", type=_positive(float), default=120.0)
    commands.add("worker", cmd_worker, "run the worker against REDIS_URL (the Fargate task's process)")


def _job_commands(commands: _Commands) -> None:
    submit = commands.add("submit", cmd_submit, 'submit a job file ({"type": ..., "payload": ...}) or - for stdin')
    submit.add_argument("file")
    submit.add_argument("--api", default=os.environ.get("OFFLOAD_API_URL", DEFAULT_API))
    submit.add_argument("--wait", action="store_true", help="poll until the job ends")
    submit.add_argument("--idempotency-key", default="")
    status = commands.add_on_queue("status", cmd_status, "show a job (read from Redis)")
    status.add_argument("job_id")
    watch = commands.add_on_queue("watch", cmd_watch, "follow a job's slices until it ends (exit 0 succeeded, 1 dead)")
    watch.add_argument("job_id")
    watch.add_argument("--interval", type=_positive(float), default=0.5, help="seconds between polls (0.5)")
    watch.add_argument("--timeout", type=_positive(float), help="give up (exit 1) after this many seconds")


def _dlq_commands(commands: _Commands) -> None:
    dlq = commands.group("dlq", "the dead-letter list")
    listing = dlq.add_on_queue("list", cmd_dlq_list, "list dead jobs with their reasons, newest first")
    listing.add_argument("--limit", type=_positive(int), default=50)
    listing.add_argument("--type", help="only jobs of this type")
    show = dlq.add_on_queue("show", cmd_dlq_show, "show a dead job: reason, attempts, history")
    show.add_argument("job_id")
    replay = dlq.add_on_queue("replay", cmd_dlq_replay, "push dead jobs back on their queue, same id")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", help="the dead job to replay")
    which.add_argument("--all", action="store_true", help="every job in the dead-letter list")
    which.add_argument("--type", help="every dead job of this type")


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _queue_name(text: str) -> str:
    if not text or any(c in text for c in "{}") or text != text.strip():
        raise argparse.ArgumentTypeError(f"not a queue name: {text!r}")
    return text


# -- output ------------------------------------------------------------------------------


def _print(args: argparse.Namespace, data: Any, text: str, file: TextIO | None = None) -> None:
    print(json.dumps(data, default=str) if args.json else text, file=file or sys.stdout)


def _fail(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"error": message}))
    else:
        print(f"offload: {message}", file=sys.stderr)


def _read_json(source: str) -> Any:
    """A JSON document from a file, or from stdin for ``-``."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        raise OffloadError(f"cannot read {source}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise OffloadError(f"{source} is not JSON: {e}") from None


def _settings(queue: str | None = None) -> config.Settings:
    url = os.environ.get("REDIS_URL")
    if not url:
        # never fall back to whatever Redis happens to listen on this machine's default port
        raise OffloadError("set REDIS_URL to the queue's Redis (offload local up prints the local one)")
    if urllib.parse.urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise OffloadError(f"REDIS_URL {url!r} is not a redis://, rediss:// or unix:// URL")
    settings = config.settings()
    return dataclasses.replace(settings, queue=queue) if queue else settings


def _client(settings: config.Settings) -> redis.Redis:
    from offload.connection import connect

    return connect(settings, "api")  # fail fast: an operator waits at the terminal


def _queue(args: argparse.Namespace) -> Queue:
    settings = _settings(getattr(args, "queue", None))
    return Queue(_client(settings), settings)


# -- local stack -------------------------------------------------------------------------


@contextmanager
def _logs_to_stderr() -> Iterator[TextIO]:
    """Point fd 1 at stderr while the local stack runs, so what it logs (in this process and
    in the compute processes it spawns) goes there; yield the real stdout, for the answer."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    answers = os.fdopen(os.dup(saved), "w")
    try:
        yield answers
    finally:
        answers.close()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _start(stack: LocalStack) -> None:
    """Start the stack; if that fails, stop the Redis it may have started (nothing else runs
    yet, and LocalStack.stop would wait for a gateway that never served)."""
    try:
        stack.start()
    except BaseException as e:
        if stack.redis is not None:
            stack.redis.stop()
        if isinstance(e, OSError):
            raise OffloadError(f"cannot start the local stack: {e}") from e
        raise


def cmd_local_up(args: argparse.Namespace) -> int:
    from offload.local.stack import LocalStack

    with _logs_to_stderr() as answers:
        stack = LocalStack(port=args.port, state_dir=args.state_dir)
        _start(stack)
        assert stack.worker is not None
        try:
            stack.worker.install_signal_handlers()
            redis_url = _without_password(os.environ["REDIS_URL"])
            message = f"offload local stack ready at {stack.url} (Redis {redis_url}, outputs in {stack.output_dir})"
            ready = {"status": "ready", "url": stack.url, "redis_url": redis_url, "output_dir": str(stack.output_dir)}
            _print(args, ready, message, file=answers)
            answers.flush()
            stack.worker.run()
        finally:
            stack.worker = None  # already stopped by its own loop
            stack.stop()
    return 0


def cmd_local_run(args: argparse.Namespace) -> int:
    from offload.local.stack import LocalStack

    try:
        images = sorted(p for p in args.images.resolve().iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    except OSError as e:
        raise OffloadError(f"cannot read the images folder {args.images}: {e.strerror or e}") from None
    if not images:
        raise OffloadError(f"no .png or .jpg images in {args.images}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    job = {
        "type": "thumbnail",
        "payload": {"images": [p.as_uri() for p in images], "sizes": sizes, "format": args.format},
    }

    with _logs_to_stderr() as answers:
        stack = LocalStack(port=0, state_dir=args.state_dir, input_root=args.images.resolve())
        _start(stack)
        try:
            stack.run_worker_in_background()
            if not args.json:
                print(f"local stack ready at {stack.url}; submitting {len(images)} x sizes {sizes}", file=answers)
                answers.flush()
            started = time.monotonic()
            status, accepted, _ = _http("POST", f"{stack.url}/jobs", job)
            if status != 202:
                raise OffloadError(f"job refused with {status}: {accepted}")
            view = _poll(f"{stack.url}{accepted['location']}", args.timeout)
            elapsed = time.monotonic() - started
        finally:
            stack.stop()

    problems = _check_thumbnails(view, sizes) if view["status"] == "succeeded" else [view.get("error") or "failed"]
    summary = {
        "job_id": view["job_id"],
        "status": view["status"],
        "elapsed_s": round(elapsed, 2),
        "output_dir": str(stack.output_dir / view["job_id"]),
        "problems": problems,
        "job": view,
    }
    lines = [
        f"job {view['job_id']}: {view['status']} in {elapsed:.1f} s "
        f"({view['slices']['succeeded']}/{view['slices']['total']} slices)"
    ]
    for item in view.get("result") or []:
        for thumb in item["thumbnails"]:
            lines.append(
                f"  {Path(item['image']).name:<24} {thumb['size']:>5} px -> {thumb['width']}x{thumb['height']}"
                f" {thumb['bytes']:>7} B  {thumb['uri']}"
            )
    lines.append(f"thumbnails are in {summary['output_dir']}")
    lines += [f"problem: {p}" for p in problems]
    _print(args, summary, "\n".join(lines))
    return 0 if view["status"] == "succeeded" and not problems else 1


def _check_thumbnails(view: dict[str, Any], sizes: list[int]) -> list[str]:
    """Open every thumbnail the job reports and check it is there, the size promised."""
    from PIL import Image

    problems = []
    for item in view.get("result") or []:
        source = item["source"]
        for thumb in item["thumbnails"]:
            path = Path(urllib.request.url2pathname(thumb["uri"].removeprefix("file://")))
            if not path.exists():
                problems.append(f"{path} is missing")
                continue
            with Image.open(path) as image:
                longest = max(image.size)
                if image.size != (thumb["width"], thumb["height"]):
                    problems.append(f"{path}: {image.size}, not the reported size")
                if longest != min(thumb["size"], max(source["width"], source["height"])):
                    problems.append(f"{path}: longest edge {longest}, asked for {thumb['size']}")
    return problems


def _http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json", **(headers or {}), **_sigv4(method, url, data or b"")}
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _json_answer(url, response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, _json_answer(url, e.read()), e.headers
    except OSError as e:
        raise OffloadError(f"cannot reach {url}: {e}") from e


_EXECUTE_API_REGION = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com")


def _without_password(url: str) -> str:
    """A Redis URL fit to print: the AUTH password masked."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}").geturl()


def _sigv4(method: str, url: str, data: bytes) -> dict[str, str]:
    """SigV4 headers for the deployed API (IAM-authorized); nothing for the local stack."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1") or os.environ.get("OFFLOAD_API_UNSIGNED"):
        return {}
    import boto3

    from offload import signing

    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise OffloadError(f"{url} needs SigV4: no AWS credentials found (or set OFFLOAD_API_UNSIGNED=1)")
    match = _EXECUTE_API_REGION.search(host)
    region = match.group(1) if match else session.region_name or "us-east-1"
    return signing.sign(url, data, credentials, region, method)


def _json_answer(url: str, raw: bytes) -> Any:
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        raise OffloadError(f"{url} did not answer JSON: {raw[:200]!r}") from None


def _poll(url: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, view, _ = _http("GET", url)
        if status != 200:
            raise OffloadError(f"GET {url} answered {status}: {view}")
        if view["status"] in ("succeeded", "dead"):
            return dict(view)
        if time.monotonic() > deadline:
            raise OffloadError(f"job still {view['status']} after {timeout_s:.0f} s")
        time.sleep(0.2)


# -- worker ------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    import boto3
    from botocore.config import Config

    from offload import tokens
    from offload.connection import connect
    from offload.dispatch import Dispatcher, LambdaInvoker
    from offload.handlers import registry
    from offload.queue import Queue
    from offload.worker import Worker
    from offload.worker_tracing import span_factory

    settings = _settings()
    dispatcher = None
    if settings.compute_function:
        client = boto3.client(
            "lambda", config=Config(retries={"max_attempts": 1}, max_pool_connections=settings.dispatch_concurrency)
        )
        dispatcher = Dispatcher.from_settings(
            LambdaInvoker(client, settings.compute_function),
            settings,
            secret=tokens.signing_secret(settings.callback_secret, settings.callback_secret_arn),
            spans=span_factory(),
        )
    worker = Worker(Queue(connect(settings, "worker"), settings), registry, settings, dispatcher)
    worker.install_signal_handlers()
    worker.run()
    return 0


# -- clients and operators ---------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    job = _read_json(args.file)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    api = args.api.rstrip("/")
    status, body, answer_headers = _http("POST", f"{api}/jobs", job, headers)
    if status != 202:
        _print(args, {"status": status, **body}, f"refused ({status}): {body.get('message')}")
        for detail in body.get("details") or []:
            print(f"  {detail['path']}: {detail['message']}", file=sys.stderr)
        return 1
    replayed = (answer_headers.get("Idempotent-Replayed") or "") == "true"
    if not args.wait:
        what = "the original job, for this Idempotency-Key" if replayed else "accepted"
        _print(args, body, f"{what}: job {body['job_id']} ({api}{body['location']})")
        return 0
    view = _poll(f"{api}{body['location']}", 3600)
    _print(args, view, f"job {view['job_id']}: {view['status']}" + (f" ({view['error']})" if view["error"] else ""))
    return 0 if view["status"] == "succeeded" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from offload.models import JobView

    job = operations.require_job(_queue(args), args.job_id)
    view = JobView.of(job).model_dump(mode="json") | {"tenant": job.tenant}
    lines = [f"{k:<12} {v}" for k, v in view.items() if k not in ("result", "history")]
    lines += [f"history      {json.dumps(h)}" for h in view["history"]]
    if view["result"] is not None:
        result = json.dumps(view["result"])
        lines.append(f"result       {result if len(result) <= 2000 else result[:2000] + ' … (--json for all)'}")
    _print(args, view, "\n".join(lines))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    out = sys.stdout
    tty = not args.json and out.isatty()
    started = time.monotonic()
    last: operations.Progress | None = None
    try:
        for last in operations.watch(_queue(args), args.job_id, interval_s=args.interval, timeout_s=args.timeout):
            if args.json:
                print(json.dumps(last.as_dict()), flush=True)
            elif tty:
                out.write(f"\r{_progress_bar(last)}\x1b[K")
                out.flush()
            else:
                print(f"{time.strftime('%H:%M:%S')}  {_progress_text(last)}", flush=True)
    finally:
        if tty and last is not None:
            out.write("\n")
    assert last is not None and last.ended
    if not args.json:
        error = f": {last.error}" if last.error else ""
        print(f"job {last.job_id} {last.status} after {time.monotonic() - started:.1f} s{error}")
    return 0 if last.status == Status.SUCCEEDED else 1


def _progress_text(p: operations.Progress) -> str:
    parts = [f"job {p.job_id} {p.status}"]
    if p.attempts > 1:
        parts.append(f"attempt {p.attempts}")
    if p.total:
        parts.append(f"{p.succeeded}/{p.total} slices" + (f", {p.failed} failed" if p.failed else ""))
    return "  ".join(parts)


def _progress_bar(p: operations.Progress, width: int = 30) -> str:
    """``[#########.....................]  3/10 slices  waiting`` (the status alone before fan-out)."""
    if not p.total:
        return _progress_text(p)
    filled = width * p.succeeded // p.total
    return f"[{'#' * filled}{'.' * (width - filled)}]  {_progress_text(p)}"


def cmd_dlq_list(args: argparse.Namespace) -> int:
    jobs = operations.dead_jobs(_queue(args), limit=args.limit, job_type=args.type)
    rows = [operations.dead_row(job) for job in jobs]
    text = "\n".join(f"{r['job_id']}  {r['type']:<10} {r['error']}" for r in rows) or "the dead-letter list is empty"
    _print(args, rows, text)
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    detail = operations.dead_detail(_queue(args), args.job_id)
    lines = [
        f"job        {detail['job_id']}",
        f"type       {detail['type']}",
        f"tenant     {detail['tenant']}",
        f"reason     {detail['reason']}",
        f"attempts   {detail['attempts']} (max tries {detail['max_tries']})",
        f"created    {detail['created_at']}",
        f"finished   {detail['finished_at']}",
        "history",
    ]
    for entry in detail["history"]:
        fields = "  ".join(f"{k}={v}" for k, v in entry.items() if k not in ("at", "at_ms"))
        lines.append(f"  {entry['at'] or '-':<29}  {fields}")
    _print(args, detail, "\n".join(lines))
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    queue = _queue(args)
    if args.job_id is not None:
        if not queue.replay(args.job_id):
            raise OffloadError(f"job {args.job_id!r} is not in the dead-letter list")
        _print(args, {"job_id": args.job_id, "status": "queued"}, f"replayed {args.job_id}: queued again")
        return 0
    report = operations.replay_dead(queue, job_type=args.type)
    what = f"dead {args.type} jobs" if args.type else "dead jobs"
    skipped = f" ({len(report.skipped)} no longer dead)" if report.skipped else ""
    _print(args, report.as_dict(), f"replayed {len(report.replayed)} {what}{skipped}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    settings = _settings()
    names = args.queues or [settings.queue]
    rows = [operations.stats_row(q.stats()) for q in operations.queues(_client(settings), settings, names)]
    header = (
        f"{'queue':<16} {'depth':>7} {'limit':>7} {'shed':>6} {'in flight':>9} {'retrying':>8} {'dead':>6} "
        f"{'workers':>7} {'oldest':>9}"
    )
    lines = [header] + [_stats_line(row) for row in rows]
    for row in rows:
        counts = "  ".join(f"{k}={v}" for k, v in sorted(row["counts"].items()))
        lines.append(f"{row['queue']}: {counts or 'no jobs yet'}")
        holds = "holds" if row["balanced"] else "does NOT hold"
        lines.append(f"{row['queue']}: accepted = queued + running + waiting + retrying + succeeded + dead {holds}")
    # one queue: its object (as before); several: a list of them
    _print(args, rows[0] if len(rows) == 1 else rows, "\n".join(lines))
    return 0


def _stats_line(row: dict[str, Any]) -> str:
    age = row["oldest_queued_age_s"]
    oldest = f"{age:.1f} s" if age is not None else "-"
    limit = row["backlog_limit"] or "-"
    return (
        f"{row['queue']:<16} {row['depth']:>7} {limit:>7} {row['shed']:>6} {row['in_flight']:>9} {row['retrying']:>8} "
        f"{row['dead']:>6} {row['workers_alive']:>7} {oldest:>9}"
    )


# -- functions, without Docker -----------------------------------------------------------


def cmd_invoke(args: argparse.Namespace) -> int:
    from offload.local import invoke

    path = invoke.find_template(args.template)
    spec = invoke.function_spec(invoke.load_template(path), args.function, path.parent)
    event = _read_json(args.event) if args.event else {}
    env = invoke.environment(spec, invoke.env_overrides(args.env_vars, spec.logical_id), os.environ)
    outcome = invoke.invoke(spec, event, env)
    print(json.dumps(outcome.payload, default=str, indent=None if args.json else 2))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``offload``: run the local stack or the worker, submit jobs, and operate queues."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offload import config
from offload.errors import OffloadError

DEFAULT_API = "http://127.0.0.1:8787"
SAMPLE_IMAGES = Path("samples/images")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except OffloadError as e:
        _fail(args, str(e))
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offload", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run: Any, help_text: str, parent: Any = commands) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    local = commands.add_parser("local", help="the local stack (no Docker, no AWS)").add_subparsers(
        required=True, metavar="COMMAND"
    )
    up = command("up", cmd_local_up, "serve the whole stack on 127.0.0.1 until stopped", local)
    up.add_argument("--port", type=int, default=8787)
    up.add_argument("--state-dir", type=Path, default=Path(".offload"))
    run = command("run", cmd_local_run, "run one thumbnail job through the local stack and check it", local)
    run.add_argument("--images", type=Path, default=SAMPLE_IMAGES, help="folder of images (default: the samples)")
    run.add_argument("--sizes", default="128,512", help="comma-separated longest edges in px")
    run.add_argument("--format", default="webp", choices=("jpeg", "png", "webp"))
    run.add_argument("--state-dir", type=Path, default=Path(".offload"))
    run.add_argument("--timeout", type=float, default=120.0)

    command("worker", cmd_worker, "run the worker against REDIS_URL (the Fargate task's process)")

    submit = command("submit", cmd_submit, 'submit a job file ({"type": ..., "payload": ...}) or - for stdin')
    submit.add_argument("file")
    submit.add_argument("--api", default=os.environ.get("OFFLOAD_API_URL", DEFAULT_API))
    submit.add_argument("--wait", action="store_true", help="poll until the job ends")
    submit.add_argument("--idempotency-key", default="")

    status = command("status", cmd_status, "show a job (read from Redis)")
    status.add_argument("job_id")

    dlq = commands.add_parser("dlq", help="the dead-letter list").add_subparsers(required=True, metavar="COMMAND")
    dlq_list = command("list", cmd_dlq_list, "list dead jobs with their reasons, newest first", dlq)
    dlq_list.add_argument("--limit", type=int, default=50)
    replay = command("replay", cmd_dlq_replay, "push a dead job back on its queue (same id, history kept)", dlq)
    replay.add_argument("job_id")

    command("stats", cmd_stats, "counts per status, depth, workers alive, oldest queued job")
    return parser


# -- output ------------------------------------------------------------------------------


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, default=str) if args.json else text)


def _fail(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"error": message}))
    else:
        print(f"offload: {message}", file=sys.stderr)


def _queue() -> Any:
    from offload.connection import connect
    from offload.queue import Queue

    settings = config.settings()
    return Queue(connect(settings, "worker"), settings)


# -- local stack -------------------------------------------------------------------------


def cmd_local_up(args: argparse.Namespace) -> int:
    from offload.local.stack import LocalStack

    stack = LocalStack(port=args.port, state_dir=args.state_dir)
    stack.start()
    assert stack.worker is not None
    try:
        stack.worker.install_signal_handlers()
        redis_url = os.environ["REDIS_URL"]
        message = f"offload local stack ready at {stack.url} (Redis {redis_url}, outputs in {stack.output_dir})"
        _print(
            args,
            {"status": "ready", "url": stack.url, "redis_url": redis_url, "output_dir": str(stack.output_dir)},
            message,
        )
        sys.stdout.flush()
        stack.worker.run()
    finally:
        stack.worker = None  # already stopped by its own loop
        stack.stop()
    return 0


def cmd_local_run(args: argparse.Namespace) -> int:
    from offload.local.stack import LocalStack

    images = sorted(p for p in args.images.resolve().iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise OffloadError(f"no .png or .jpg images in {args.images}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    job = {
        "type": "thumbnail",
        "payload": {"images": [p.as_uri() for p in images], "sizes": sizes, "format": args.format},
    }

    stack = LocalStack(port=0, state_dir=args.state_dir, input_root=args.images.resolve())
    stack.start()
    try:
        stack.run_worker_in_background()
        if not args.json:
            print(f"local stack ready at {stack.url}; submitting {len(images)} images x sizes {sizes}")
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
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), e.headers
    except OSError as e:
        raise OffloadError(f"cannot reach {url}: {e}") from e


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

    settings = config.settings()
    dispatcher = None
    if settings.compute_function:
        client = boto3.client(
            "lambda", config=Config(retries={"max_attempts": 1}, max_pool_connections=settings.dispatch_concurrency)
        )
        dispatcher = Dispatcher(
            LambdaInvoker(client, settings.compute_function),
            queue_name=settings.queue,
            callback_base_url=settings.callback_base_url,
            secret=tokens.signing_secret(settings.callback_secret, settings.callback_secret_arn),
            token_ttl_s=settings.slice_timeout_s + settings.callback_token_grace_s,
            max_payload_bytes=settings.max_invoke_payload_bytes,
            concurrency=settings.dispatch_concurrency,
        )
    worker = Worker(Queue(connect(settings, "worker"), settings), registry, settings, dispatcher)
    worker.install_signal_handlers()
    worker.run()
    return 0


# -- clients and operators ---------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        job = json.loads(text)
    except ValueError as e:
        raise OffloadError(f"{args.file} is not JSON: {e}") from None
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    api = args.api.rstrip("/")
    status, body, _ = _http("POST", f"{api}/jobs", job, headers)
    if status != 202:
        _print(args, {"status": status, **body}, f"refused ({status}): {body.get('message')}")
        for detail in body.get("details") or []:
            print(f"  {detail['path']}: {detail['message']}", file=sys.stderr)
        return 1
    if not args.wait:
        _print(args, body, f"accepted: job {body['job_id']} ({api}{body['location']})")
        return 0
    view = _poll(f"{api}{body['location']}", 3600)
    _print(args, view, f"job {view['job_id']}: {view['status']}" + (f" ({view['error']})" if view["error"] else ""))
    return 0 if view["status"] == "succeeded" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from offload.models import JobView

    job = _queue().get(args.job_id)
    if job is None:
        raise OffloadError(f"no job {args.job_id!r}")
    view = JobView.of(job).model_dump(mode="json") | {"tenant": job.tenant}
    lines = [f"{k:<12} {v}" for k, v in view.items() if k not in ("result", "history")]
    lines += [f"history      {json.dumps(h)}" for h in view["history"]]
    _print(args, view, "\n".join(lines))
    return 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    queue = _queue()
    rows = []
    for job_id in queue.dead_job_ids(args.limit):
        job = queue.get(job_id)
        if job is not None:
            rows.append(
                {
                    "job_id": job_id,
                    "type": job.type,
                    "tenant": job.tenant,
                    "error": job.error,
                    "attempts": job.attempts,
                    "finished_ms": job.finished_ms,
                }
            )
    text = "\n".join(f"{r['job_id']}  {r['type']:<10} {r['error']}" for r in rows) or "the dead-letter list is empty"
    _print(args, rows, text)
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    if not _queue().replay(args.job_id):
        raise OffloadError(f"job {args.job_id!r} is not in the dead-letter list")
    _print(args, {"job_id": args.job_id, "status": "queued"}, f"replayed {args.job_id}: queued again")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    stats = _queue().stats()
    data = {
        "queue": stats.queue,
        "depth": stats.depth,
        "in_flight": stats.in_flight,
        "retrying": stats.delayed,
        "dead": stats.dead,
        "slices_ready": stats.slices_ready,
        "workers_alive": stats.workers_alive,
        "oldest_queued_age_s": stats.oldest_queued_age_s,
        "counts": stats.counts,
        "balanced": stats.balanced,
    }
    oldest = f"{stats.oldest_queued_age_s:.1f}" if stats.oldest_queued_age_s is not None else "-"
    header = f"{'queue':<12} {'depth':>7} {'in flight':>9} {'retrying':>8} {'dead':>6} {'workers':>7} {'oldest s':>8}"
    row = (
        f"{stats.queue:<12} {stats.depth:>7} {stats.in_flight:>9} {stats.delayed:>8} {stats.dead:>6} "
        f"{stats.workers_alive:>7} {oldest:>8}"
    )
    counts = "  ".join(f"{k}={v}" for k, v in sorted(stats.counts.items()))
    _print(args, data, f"{header}\n{row}\ncounts: {counts}\naccepted = sum of statuses: {stats.balanced}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

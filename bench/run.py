"""``python -m bench [--quick] [--only NAMES] [--out DIR]``: the whole suite, one Redis, one table.

Starts one redis-server on a free loopback port (and, for the fan-out, one mocked Lambda
endpoint), runs the benchmarks one after another with the server flushed in between,
prints the table (Markdown) and writes every figure and raw measurement as JSON to
``bench/results/`` (``latest.json`` and a time-stamped copy).

Benchmarks print figures; they never fail on a number. They fail only when something did
not work (a handler answered an error, a job went missing), which is what the smoke test
(``tests/test_bench_smoke.py``, ``--quick``) guards.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from bench import coldstart, peers, report
from bench.common import FULL, QUICK, REPO, RESULTS, Sizes, child_env, run_child
from bench.fanout import mock_lambda
from bench.memory import TRACE

BENCHMARKS = ("master", "worker", "callback", "fanout", "coldstart", "memory", "rss")
VERSIONS = ("redis", "hiredis", "arq", "rq", "moto", "boto3", "pydantic", "aws-lambda-powertools")


@dataclass
class Context:
    redis_url: str
    sizes: Sizes

    def flush(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        client.flushall()
        client.close()

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(self.redis_url, **extra)


def bench_master(ctx: Context) -> dict[str, Any]:
    # Lambda sets the trace header for every invocation; the master stores it with the job
    env = ctx.env(_X_AMZN_TRACE_ID=TRACE)
    return run_child("master", {"rounds": ctx.sizes.rounds, "jobs": ctx.sizes.master_jobs}, env)


def bench_callback(ctx: Context) -> dict[str, Any]:
    params = {
        "rounds": ctx.sizes.rounds,
        "outcomes": ctx.sizes.callback_outcomes,
        "slices_per_job": ctx.sizes.slices_per_job,
    }
    # setup dispatches every slice at once; the per-tenant in-flight cap would hold most back
    return run_child("callback", params, ctx.env(OFFLOAD_TENANT_MAX_INFLIGHT="0"))


def bench_worker(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.worker_jobs
    fills: dict[str, Callable[[str, int], None]] = {
        "offload": peers.fill_offload,
        "arq": peers.fill_arq,
        "rq": peers.fill_rq,
    }
    results: dict[str, Any] = {}
    for system, fill in fills.items():
        ctx.flush()
        fill(ctx.redis_url, n)
        results[system] = run_child("worker", {"system": system, "jobs": n}, ctx.env())
    return results


def bench_rss(ctx: Context) -> dict[str, Any]:
    ctx.flush()
    peers.fill_offload(ctx.redis_url, ctx.sizes.rss_jobs)
    params = {"system": "offload", "jobs": ctx.sizes.rss_jobs, "rss_mark": ctx.sizes.rss_mark}
    return run_child("worker", params, ctx.env())


def bench_fanout(ctx: Context) -> dict[str, Any]:
    with mock_lambda() as endpoint:
        params = {
            "endpoint": endpoint,
            "sequential": ctx.sizes.fanout_sequential,
            "slices": ctx.sizes.fanout_slices,
            "latencies_ms": sorted({0.0, ctx.sizes.lambda_latency_ms}),
        }
        return run_child("fanout", params, ctx.env())


def bench_coldstart(ctx: Context) -> dict[str, Any]:
    return coldstart.measure(ctx.env(), ctx.sizes.cold_repeats)


def bench_memory(ctx: Context) -> dict[str, Any]:
    return run_child("memory", {"jobs": ctx.sizes.memory_jobs}, ctx.env())


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "master": bench_master,
    "worker": bench_worker,
    "callback": bench_callback,
    "fanout": bench_fanout,
    "coldstart": bench_coldstart,
    "memory": bench_memory,
    "rss": bench_rss,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every benchmark (~20 s)")
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON figures (default bench/results)")
    p.add_argument("--worker-jobs", type=int, help="jobs each worker drains (same for offload, arq and RQ)")
    p.add_argument("--rss-jobs", type=int, help="jobs for the worker RSS figure")
    p.add_argument("--lambda-latency-ms", type=float, help="service time the mocked Lambda adds to each invoke")
    p.add_argument("--cold-repeats", type=int, help="fresh interpreters per cold-start figure")
    return p.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    overrides = {
        "worker_jobs": args.worker_jobs,
        "rss_jobs": args.rss_jobs,
        "lambda_latency_ms": args.lambda_latency_ms,
        "cold_repeats": args.cold_repeats,
    }
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    if sizes.rss_mark >= sizes.rss_jobs:
        sizes = dataclasses.replace(sizes, rss_mark=max(1, sizes.rss_jobs // 10))
    return sizes


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def _meta(redis_url: str, sizes: Sizes, quick: bool) -> dict[str, Any]:
    versions: dict[str, str] = {}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    client = redis.Redis.from_url(redis_url)
    server = client.info("server")
    client.close()
    from redis.utils import HIREDIS_AVAILABLE

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "revision": _git_revision(),
        "quick": quick,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "redis_server": server.get("redis_version"),  # type: ignore[union-attr]
        "hiredis_parser": HIREDIS_AVAILABLE,
        "versions": versions,
        "sizes": dataclasses.asdict(sizes),
    }


def main(argv: list[str] | None = None) -> int:
    from offload.local.redis_server import start_redis

    args = parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = set(selected) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}")
        return 2
    sizes = sizes_from(args)
    server = start_redis()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    try:
        ctx = Context(server.url, sizes)
        meta = _meta(server.url, sizes, args.quick)
        for name in BENCHMARKS:
            if name not in selected:
                continue
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            start = time.monotonic()
            ctx.flush()
            results[name] = RUNNERS[name](ctx)
            timings[name] = round(time.monotonic() - start, 1)
        ctx.flush()
    finally:
        server.stop()

    rows = report.figures(results)
    table = report.markdown(rows)
    print(table)
    document = {
        "meta": {**meta, "seconds": timings},
        "figures": [row.as_dict() for row in rows],
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    text = json.dumps(document, indent=2)
    (args.out / f"bench-{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    print(f"\nfigures written to {args.out / 'latest.json'} ({sum(timings.values()):.0f} s)", file=sys.stderr)
    return 0

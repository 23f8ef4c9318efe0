"""The figures the issue asks for, each against its peer or baseline and its limit, as a table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One row: ``value`` (ours) against ``baseline``; the target holds on ``ratio`` if the
    row has one, else on ``value``. ``limit`` None = informational, no target."""

    group: str
    figure: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    op: str = ""  # "<=", ">=", "<", "=="
    limit: float | None = None
    note: str = ""

    @property
    def judged(self) -> float:
        return self.ratio if self.ratio is not None else self.value

    @property
    def met(self) -> bool | None:
        if self.limit is None:
            return None
        checks: dict[str, Callable[[float, float], bool]] = {
            "<=": lambda a, b: a <= b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
            "==": lambda a, b: a == b,
        }
        return checks[self.op](self.judged, self.limit)

    @property
    def of_limit(self) -> float | None:
        """The judged number over the limit: <= 1 passes a "<=" target, >= 1 a ">=" one."""
        if self.limit is None or self.limit == 0:
            return None
        return self.judged / self.limit

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met, "of_limit": self.of_limit}


def _num(x: float, unit: str = "") -> str:
    if unit == "%":
        return f"{x * 100:.1f} %"
    if unit == "bool":
        return "yes" if x else "no"
    if abs(x) >= 1000:
        text = f"{x:,.0f}"
    elif abs(x) >= 100:
        text = f"{x:.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.2f}"
    return f"{text} {unit}".strip()


def own_work_row(group: str, r: dict[str, Any]) -> Figure:
    """The handler's own work (Redis answered by a stub, a warm loop) against what the full
    path spends beyond the LPUSH: the gap is the waiting for the script and a CPU gone cold."""
    beyond = r["path_us"] - r["raw_lpush_us"]
    return Figure(
        group,
        "handler's own work, Redis answered by a stub (informational)",
        r["own_work_us"],
        "µs",
        f"path beyond the LPUSH {beyond:.0f} µs",
        r["own_work_us"] / beyond if beyond > 0 else None,
    )


def after_wait_row(group: str, r: dict[str, Any]) -> Figure:
    """The same own work, each call right after a blocking wait on a socket: how much slower
    the same Python runs once the CPU has waited, as it does after every round trip."""
    return Figure(
        group,
        "the same own work, each call after a blocking socket wait (informational)",
        r["own_work_after_wait_us"],
        "µs",
        f"warm {r['own_work_us']:.1f} µs",
        r["own_work_after_wait_us"] / r["own_work_us"],
    )


def script_only_row(group: str, script: str, r: dict[str, Any]) -> Figure:
    """The path's one script call made alone, against the LPUSH: the floor under the ratio."""
    floor = r["script_only"]
    return Figure(
        group,
        f"{script} script call alone, through Queue (informational: the floor)",
        floor["path_us"],
        "µs",
        f"raw LPUSH {floor['raw_lpush_us']:.1f} µs",
        floor["ratio"],
    )


def hot_path_rows(
    group: str, r: dict[str, Any], figure: str, round_trips: tuple[str, str], script: str
) -> list[Figure]:
    """A master or callback benchmark: its time over the LPUSH (the target), its round trips,
    and the informational rows that say where its time goes."""
    rows = [
        Figure(group, figure, r["path_us"], "µs", f"raw LPUSH {r['raw_lpush_us']:.1f} µs", r["ratio"], "<=", 2.0),
        Figure(group, round_trips[0], r[round_trips[1]], "", "", None, "==", 1),
    ]
    if "own_work_us" in r:
        rows += [own_work_row(group, r), after_wait_row(group, r), script_only_row(group, script, r)]
    return rows


def figures(results: dict[str, Any]) -> list[Figure]:
    rows: list[Figure] = []
    if "master" in results:
        rows += hot_path_rows(
            "1. Master",
            results["master"],
            "time per accepted job (handler, event in, 202 out)",
            ("Redis round trips per accepted job", "round_trips_per_job"),
            "the enqueue",
        )
    if "worker" in results:
        w = results["worker"]
        ours = w["offload"]["jobs_per_s"]
        for peer, limit in (("arq", 3.0), ("rq", 20.0)):
            if peer in w:
                theirs = w[peer]["jobs_per_s"]
                label = "arq" if peer == "arq" else "RQ SimpleWorker"
                rows.append(
                    Figure(
                        "2. Worker",
                        f"inline echo jobs/s, one process, vs {label}",
                        ours,
                        "jobs/s",
                        f"{label} {_num(theirs, 'jobs/s')}",
                        ours / theirs,
                        ">=",
                        limit,
                    )
                )
    if "callback" in results:
        rows += hot_path_rows(
            "3. Callback",
            results["callback"],
            "time to apply one slice outcome (handler)",
            ("Redis round trips per outcome", "round_trips_per_outcome"),
            "the apply-outcome",
        )
    if "fanout" in results:
        f = results["fanout"]
        runs = sorted(f["runs"], key=lambda r: r["latency_ms"])
        for run in runs:
            judged = run is runs[-1]
            rows.append(
                Figure(
                    "4. Fan-out",
                    f"slices dispatched/s, Lambda service time {run['latency_ms']:g} ms",
                    run["dispatched_per_s"],
                    "slices/s",
                    f"sequential invoke {_num(run['sequential_per_s'], '/s')}",
                    run["ratio"],
                    ">=" if judged else "",
                    8.0 if judged else None,
                    note="" if judged else "CPU-bound mock on a shared machine; informational",
                )
            )
        rows.append(
            Figure(
                "4. Fan-out",
                "most invokes in flight at once",
                max(r["peak_in_flight"] for r in runs),
                "",
                f"bound: dispatch_concurrency {f['concurrency']}",
                None,
                "<=",
                f["concurrency"],
            )
        )
    if "coldstart" in results:
        for c in results["coldstart"].values():
            rows.append(
                Figure(
                    "5. Cold start",
                    f"import {c['module']}",
                    c["handler_ms"],
                    "ms",
                    f"its third-party modules {c['third_party_ms']:.0f} ms",
                    c["ratio"],
                    "<=",
                    1.15,
                )
            )
        for name in ("master", "callback"):
            if name not in results["coldstart"]:
                continue
            c = results["coldstart"][name]
            rows.append(
                Figure("5. Cold start", f"{name} imports boto3", float(c["imports_boto3"]), "bool", op="==", limit=0)
            )
            chain = c.get("imported_by", {}).get("botocore.session", [])
            # the importers between the handler module and botocore, outermost first
            via = [m for m in reversed(chain) if m not in ("__main__", c["module"])][:2]
            rows.append(
                Figure(
                    "5. Cold start",
                    f"{name} imports botocore.session (the bulk of boto3)",
                    float(bool(chain)),
                    "bool",
                    "via " + " -> ".join(via) if via else "",
                )
            )
    if "memory" in results:
        variants = results["memory"]["variants"]
        for i, v in enumerate(variants):
            rows.append(
                Figure(
                    "6. Memory",
                    f"Redis bytes per queued job beyond its payload ({v['name']})",
                    v["overhead_bytes"],
                    "B",
                    f"payload {v['payload_bytes']} B, job hash {v['job_hash_encoding']}",
                    None,
                    "<=" if i == 0 else "",
                    400.0 if i == 0 else None,
                )
            )
    if "rss" in results:
        r = results["rss"]
        rss = r["rss"]
        rows.append(
            Figure(
                "6. Memory",
                f"worker RSS growth, job {rss['mark_at_job']:,} to {r['jobs']:,}",
                rss["growth"],
                "%",
                f"{rss['mark'] / 2**20:.1f} MiB -> {rss['end'] / 2**20:.1f} MiB",
                None,
                "<",
                0.10,
            )
        )
    return rows


def markdown(rows: list[Figure]) -> str:
    lines = [
        "| Area | Figure | offload | Peer / baseline | Ratio | Target | ÷ limit | Met |",
        "|---|---|---:|---|---:|---|---:|---|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        if row.limit is None:
            target, of_limit, met = "—", "", "(info)"
        else:
            on = "ratio" if row.ratio is not None else "value"
            shown = _num(row.limit, row.unit) if on == "value" and row.unit in ("%", "bool", "B") else f"{row.limit:g}"
            if row.unit == "bool":
                shown = "no"
            target = f"{row.op} {shown}"
            of_limit = f"{row.of_limit:.2f}" if row.of_limit is not None else ""
            met = "yes" if row.met else "**NO**"
        figure = row.figure + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {row.group} | {figure} | {_num(row.value, row.unit)} | {row.baseline} | {ratio} | {target} "
            f"| {of_limit} | {met} |"
        )
    return "\n".join(lines)

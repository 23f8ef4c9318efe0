"""Diagnostic job types for the fault scenarios, registered next to the real ones.

``fault.work`` runs inline: it writes one line per execution to a log (so re-runs after a
crash can be counted from outside the process), sleeps, and may fail on purpose.
``fault.fan`` fans out into slices whose compute step squares a number.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from offload.errors import SliceFailed
from offload.handlers import echo, thumbnail
from offload.registry import Registry, SliceContext

RUN_LOG_ENV = "FAULTS_RUN_LOG"

_runs: dict[int, int] = {}
_runs_lock = threading.Lock()


class WorkPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int
    ms: int = 0  # how long the job works
    ms_first: int = 0  # how long its first execution anywhere works (counted in the run log)
    fail_runs: int = 0  # fail this many executions (in this process) before succeeding
    fail: bool = False  # always fail (retryable), so the job ends dead after max_tries


class FanPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int
    slices: int = 3
    pad: int = 0  # bytes of padding in each slice input (over the invoke limit: fails before dispatch)


def reset_runs() -> None:
    """Forget this process's execution counts (``fail_runs`` counts from here on)."""
    with _runs_lock:
        _runs.clear()


def record_run(n: int) -> None:
    """One line per execution, appended atomically, in a file per process."""
    folder = os.environ.get(RUN_LOG_ENV)
    if folder:
        fd = os.open(Path(folder) / f"runs-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{n}\n".encode())
        finally:
            os.close(fd)


def runs_so_far(n: int) -> int:
    folder = os.environ.get(RUN_LOG_ENV)
    return read_runs(Path(folder)).get(n, 0) if folder else 0


def read_runs(folder: Path) -> dict[int, int]:
    """Executions per job number, over every process that wrote to ``folder``."""
    runs: dict[int, int] = {}
    for path in folder.glob("runs-*.log"):
        for line in path.read_text().splitlines():
            if line.strip().isdigit():
                runs[int(line)] = runs.get(int(line), 0) + 1
    return runs


def work(payload: WorkPayload) -> dict[str, Any]:
    record_run(payload.n)
    with _runs_lock:
        _runs[payload.n] = _runs.get(payload.n, 0) + 1
        run = _runs[payload.n]
    if payload.ms_first and runs_so_far(payload.n) == 1:
        time.sleep(payload.ms_first / 1000)
    if payload.ms:
        time.sleep(payload.ms / 1000)
    if payload.fail:
        raise SliceFailed(f"job {payload.n} fails on purpose", retryable=True)
    if run <= payload.fail_runs:
        raise RuntimeError(f"job {payload.n} fails on purpose (run {run} of {payload.fail_runs})")
    return {"n": payload.n}


def split(payload: FanPayload) -> list[dict[str, Any]]:
    return [{"n": payload.n, "i": i, "pad": "x" * payload.pad} for i in range(payload.slices)]


def square(context: SliceContext, slice_input: dict[str, Any]) -> dict[str, Any]:
    i = int(slice_input["i"])
    return {"n": slice_input["n"], "i": i, "sq": i * i}


def register(registry: Registry) -> None:
    registry.inline("fault.work", WorkPayload, max_tries=3)(work)
    registry.fan_out("fault.fan", FanPayload, compute="faults.diag:square", max_tries=3)(split)


def build_registry() -> Registry:
    """A fresh registry: the real job types and the diagnostic ones."""
    registry = Registry()
    echo.register(registry)
    thumbnail.register(registry)
    register(registry)
    return registry

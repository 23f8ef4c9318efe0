"""The benchmark suite's smoke run: every benchmark once, with tiny sizes, so none of them rots.

It runs ``python -m bench --quick`` as ``make bench`` does (its own redis-server, its own
mocked Lambda endpoint) and checks that every figure came out. It never checks a figure
against its target: machines are noisy, and the numbers are for ``make bench`` to print.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
GROUPS = {"1. Master", "2. Worker", "3. Callback", "4. Fan-out", "5. Cold start", "6. Memory"}
BENCHMARKS = {"master", "worker", "callback", "fanout", "coldstart", "memory", "rss"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    document: dict[str, Any] = json.loads((out / "latest.json").read_text())
    return document, proc.stdout


@pytest.mark.slow
def test_every_benchmark_ran(quick_run: tuple[dict[str, Any], str]) -> None:
    document, _ = quick_run
    assert set(document["results"]) == BENCHMARKS
    assert document["meta"]["quick"] is True
    assert {f["group"] for f in document["figures"]} == GROUPS
    assert set(document["results"]["worker"]) == {"offload", "arq", "rq"}
    assert set(document["results"]["coldstart"]) == {"master", "callback", "compute"}
    for hot_path in ("master", "callback"):  # its own work (Redis stubbed) is less than the whole path
        result = document["results"][hot_path]
        assert 0 < result["own_work_us"] < result["path_us"], result


@pytest.mark.slow
def test_every_figure_is_a_number_with_a_verdict(quick_run: tuple[dict[str, Any], str]) -> None:
    document, _ = quick_run
    for figure in document["figures"]:
        assert math.isfinite(figure["value"]), figure
        if figure["ratio"] is not None:
            assert math.isfinite(figure["ratio"]) and figure["ratio"] > 0, figure
        # a figure with a limit is judged (met or not); one without is informational
        assert (figure["limit"] is None) == (figure["met"] is None), figure


@pytest.mark.slow
def test_the_table_shows_every_figure(quick_run: tuple[dict[str, Any], str]) -> None:
    document, table = quick_run
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Area")]
    assert len(rows) == len(document["figures"])
    for figure in document["figures"]:
        assert any(figure["figure"] in row for row in rows), figure["figure"]

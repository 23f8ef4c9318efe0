"""Cold start: import time of each Lambda's handler module over that of the third-party modules it needs.

Each figure is the median of fresh interpreters (``python -c``), timed inside the
process around the import alone (interpreter start-up is the same for both sides and is
left out). The denominator's module list is not written by hand: a first interpreter
imports the handler and records every third-party module (not the standard library, not
offload) that the import loaded, in load order; the denominator then imports exactly
those modules in a fresh interpreter. What is left over is offload's own code: its
modules, the pydantic models it builds, the clients it makes at module scope, and any
standard-library module only offload pulls in.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

from bench.common import REPO, BenchError

HANDLERS = {
    "master": "offload.lambdas.master",
    "callback": "offload.lambdas.callback",
    "compute": "offload.lambdas.compute",
}

# Nothing but builtins before the clock starts; json only once it has stopped. With a
# second argument, an (untimed) run also records which modules were on the stack when
# boto3 or botocore.session (the heavy half of boto3) was first imported: the chain
# that pulls them in.
HANDLER_PROBE = """\
import sys, time
module, who = sys.argv[1], {}
if len(sys.argv) > 2:
    class Who:
        def find_spec(self, name, path=None, target=None):
            if name in ("boto3", "botocore.session") and name not in who:
                chain, frame = [], sys._getframe(1)
                while frame is not None:
                    caller = frame.f_globals.get("__name__", "")
                    if not caller.startswith(("importlib", "_frozen_importlib")) and caller not in chain:
                        chain.append(caller)
                    frame = frame.f_back
                who[name] = chain
            return None
    sys.meta_path.insert(0, Who())
before = set(sys.modules)
start = time.perf_counter()
__import__(module)
elapsed = time.perf_counter() - start
stdlib = sys.stdlib_module_names
loaded = [m for m in list(sys.modules) if m not in before]
third = [m for m in loaded if m.partition(".")[0] not in stdlib and m.partition(".")[0] != "offload"
         and not m.startswith(("_sysconfigdata", "__"))]
import json
print(json.dumps({"seconds": elapsed, "third_party": third, "modules": len(loaded), "who": who}))
"""

DEPS_PROBE = """\
import sys, time
names = sys.argv[1].split(",")
failed = []
start = time.perf_counter()
for name in names:
    try:
        __import__(name)
    except Exception:
        failed.append(name)
elapsed = time.perf_counter() - start
import json
print(json.dumps({"seconds": elapsed, "failed": failed}))
"""


def _probe(code: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError("import probe failed:\n" + proc.stderr.decode(errors="replace")[-2000:])
    answer: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return answer


def measure(env: dict[str, str], repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, module in HANDLERS.items():
        first = _probe(HANDLER_PROBE, env, module, "who")  # also warms the bytecode and page caches
        third_party: list[str] = first["third_party"]
        deps_arg = ",".join(third_party)
        _probe(DEPS_PROBE, env, deps_arg)
        handler_s: list[float] = []
        deps_s: list[float] = []
        failed: list[str] = []
        for _ in range(repeats):
            handler_s.append(_probe(HANDLER_PROBE, env, module)["seconds"])
            deps = _probe(DEPS_PROBE, env, deps_arg)
            deps_s.append(deps["seconds"])
            failed = deps["failed"]
        handler_ms = statistics.median(handler_s) * 1000
        deps_ms = statistics.median(deps_s) * 1000
        tops = sorted({m.partition(".")[0] for m in third_party})
        results[name] = {
            "module": module,
            "handler_ms": round(handler_ms, 2),
            "third_party_ms": round(deps_ms, 2),
            "ratio": round(handler_ms / deps_ms, 3),
            "own_ms": round(handler_ms - deps_ms, 2),
            "repeats": repeats,
            "third_party_packages": tops,
            "third_party_modules": len(third_party),
            "not_importable_alone": failed,
            "imports_boto3": "boto3" in tops,
            "imports_botocore": "botocore" in tops,
            # the modules on the stack (innermost first) when each was first imported
            "imported_by": first["who"],
        }
    return results

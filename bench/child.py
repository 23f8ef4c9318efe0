"""Entry of a benchmark's child process: ``python -m bench.child <name> <params json> <result path>``.

Runs ``bench.<name>.child(params)`` and writes what it returns as JSON to the result path.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    name, params, result_path = argv
    module = importlib.import_module(f"bench.{name}")
    result = module.child(json.loads(params))
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

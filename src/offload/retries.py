"""How long to wait before the next attempt: exponential backoff with full jitter."""

from __future__ import annotations

import random


def backoff_ms(failures: int, base_s: float, max_s: float) -> int:
    """Delay before attempt ``failures + 1``; between half and all of ``base * 2**(failures-1)``."""
    ceiling = min(max_s, base_s * 2 ** min(max(0, failures - 1), 64))  # no overflow for absurd counts
    return int(1000 * ceiling * random.uniform(0.5, 1.0))

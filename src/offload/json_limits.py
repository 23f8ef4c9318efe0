"""What CPython's json module refuses that pydantic-core's parser and serializer take: integers
longer than ``sys.get_int_max_str_digits()`` digits. The fast JSON paths (request bodies in
``http``, log lines in ``logs``) check for them to answer exactly as json does."""

from __future__ import annotations

import sys

_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
_TOO_LONG = 10**_DIGITS if _DIGITS else 0


def json_can_write(value: int) -> bool:
    """Whether json.dumps (and json.loads, the other way) handles this integer's digits."""
    return not _TOO_LONG or -_TOO_LONG < value < _TOO_LONG

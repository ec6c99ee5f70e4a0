"""Argument checks shared by the library's constructors (clients, strategies, data).

A number is a real number that is not a ``bool`` (``True`` is an ``int`` in Python,
and ``lr=True`` is a mistake, not 1.0) and is finite; an integer is an ``int`` (or a
numpy integer) that is not a ``bool``. Each check raises ``ValueError`` naming the key
and the value, and returns the value as ``float`` or ``int``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["require_integer", "require_number"]

_INF = ("inf", "+inf")


def require_number(value: Any, key: str, interval: str) -> float:
    """``value`` as a float if it is a finite number in ``interval``, written as the
    config schema writes ranges: ``"(0, inf)"``, ``"[0, inf)"``, ``"(0, 1]"``."""
    low_open, high_open = interval[0] == "(", interval[-1] == ")"
    low_s, high_s = (part.strip() for part in interval[1:-1].split(","))
    low = float(low_s)
    high = math.inf if high_s in _INF else float(high_s)
    ok = (
        not isinstance(value, (bool, np.bool_))
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if ok:
        return float(value)
    if math.isinf(high):
        raise ValueError(
            f"{key}={value!r} must be a finite number {'>' if low_open else '>='} "
            f"{low_s}"
        )
    raise ValueError(f"{key}={value!r} must be a number in {interval}")


def require_integer(value: Any, key: str, minimum: int) -> int:
    """``value`` as an int if it is an integer ``>= minimum``."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ValueError(f"{key}={value!r} must be an integer >= {minimum}")
    return int(value)

"""Intervals and the argument checks shared by the library's constructors (clients,
strategies, data) and the config checks of ``simulations/config``.

An interval is written as the config schema writes ranges: ``"(0, 1]"``,
``"[1, inf)"``. A number is a real number that is not a ``bool`` (``True`` is an
``int`` in Python, and ``lr=True`` is a mistake, not 1.0) and is finite; an integer is
an ``int`` (or a numpy integer) that is not a ``bool``. Each ``require_*`` check
raises ``ValueError`` naming the key and the value, and returns the value as ``float``
or ``int``.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

import numpy as np

__all__ = ["in_range", "interval", "require_integer", "require_number"]

_INTERVAL = re.compile(
    r"^([\[(])\s*(-inf|[-+0-9.e]+)\s*,\s*(inf|[-+0-9.e]+)\s*([\])])$"
)


@cache
def interval(text: str) -> tuple[float, float, bool, bool]:
    """``(low, high, low_closed, high_closed)`` of an interval such as ``"(0, 1]"``."""
    match = _INTERVAL.match(text)
    if match is None:
        raise ValueError(
            f"range={text!r} is not an interval like '(0, 1]' or '[1, inf)'"
        )
    opening, low, high, closing = match.groups()
    return float(low), float(high), opening == "[", closing == "]"


def in_range(value: float, text: str) -> bool:
    """Whether ``value`` is finite and in the interval ``text`` ("" = any finite
    value)."""
    if not math.isfinite(value):
        return False
    if not text:
        return True
    low, high, low_closed, high_closed = interval(text)
    return (value >= low if low_closed else value > low) and (
        value <= high if high_closed else value < high
    )


def require_number(value: Any, key: str, text: str) -> float:
    """``value`` as a float if it is a finite number in the interval ``text``."""
    if (
        not isinstance(value, (bool, np.bool_))
        and isinstance(value, (int, float, np.integer, np.floating))
        and in_range(float(value), text)
    ):
        return float(value)
    low, high, low_closed, _ = interval(text)
    if math.isinf(high):
        raise ValueError(
            f"{key}={value!r} must be a finite number {'>=' if low_closed else '>'} "
            f"{low:g}"
        )
    raise ValueError(f"{key}={value!r} must be a number in {text}")


def require_integer(value: Any, key: str, minimum: int) -> int:
    """``value`` as an int if it is an integer ``>= minimum``."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ValueError(f"{key}={value!r} must be an integer >= {minimum}")
    return int(value)

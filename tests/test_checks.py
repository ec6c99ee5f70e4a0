"""bouquet.checks: the shared argument checks refuse bools, non-finite values and values
outside the interval, with the message that names the key."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bouquet.checks import require_integer
from bouquet.checks import require_number


@pytest.mark.parametrize(
    ("value", "interval", "expected"),
    [
        (0.5, "(0, 1)", 0.5),
        (1, "(0, 1]", 1.0),
        (0, "[0, inf)", 0.0),
        (np.float32(2.5), "(0, inf)", 2.5),
        (np.int64(3), "[1, inf)", 3.0),
    ],
)
def test_number_inside_the_interval_comes_back_as_float(
    value: object, interval: str, expected: float
) -> None:
    out = require_number(value, "k", interval)
    assert out == expected and type(out) is float


@pytest.mark.parametrize(
    ("value", "interval", "message"),
    [
        (0, "(0, inf)", "k=0 must be a finite number > 0"),
        (-1e-9, "[0, inf)", "k=-1e-09 must be a finite number >= 0"),
        (math.inf, "(0, inf)", "k=inf must be a finite number > 0"),
        (math.nan, "[0, inf)", "k=nan must be a finite number >= 0"),
        (True, "(0, inf)", "k=True must be a finite number > 0"),
        ("1", "(0, inf)", "k='1' must be a finite number > 0"),
        (1, "(0, 1)", r"k=1 must be a number in \(0, 1\)"),
        (0, "(0, 1]", r"k=0 must be a number in \(0, 1\]"),
        (1.5, "[0, 1]", r"k=1.5 must be a number in \[0, 1\]"),
    ],
)
def test_number_outside_the_interval_is_refused_naming_the_key(
    value: object, interval: str, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        require_number(value, "k", interval)


def test_integer_at_the_minimum_passes_and_below_it_is_refused() -> None:
    assert require_integer(2, "n", 2) == 2
    assert type(require_integer(np.int32(5), "n", 0)) is int
    for bad in (1, True, 2.0, "2", None):
        with pytest.raises(ValueError, match="must be an integer >= 2"):
            require_integer(bad, "n", 2)

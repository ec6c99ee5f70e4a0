"""The skeleton (:func:`flatten` / :func:`unflatten`) maps nested Python data to JSON so
that the round trip gives back equal values of the same types (arrays: same dtype, shape
and values):

=====================================  ======================================
Python value                           JSON
=====================================  ======================================
``None``, ``bool``, ``int``, ``str``   itself
finite ``float``                       a number
``nan``, ``inf``, ``-inf``             ``{"float": "nan" | "inf" | "-inf"}``
``list``                               an array
``tuple``                              ``{"tuple": [...]}``
``dict`` with ``str`` keys             ``{"dict": {key: value, ...}}``
``dict`` with ``int`` / ``None`` keys  ``{"items": [[key, value], ...]}``
``numpy.ndarray``                      ``{"array": "a3"}`` (member ``a3`` of the npz)
numpy scalar (``np.float32(1)``, ...)  ``{"scalar": "a4"}`` (a 0-d member)
=====================================  ======================================

Anything else (a dataclass, a set, a function, an ``ndarray`` subclass such as a masked
array, an array of objects or of a structured dtype, ...) is refused with a
``ValueError`` naming where it is, rather than dropped or converted silently. Reading
refuses whatever this table does not produce: a JSON object that is not exactly one of
the tags, a duplicate key, ``NaN`` / ``Infinity`` literals, a reference to a missing
member (and :mod:`bouquet.simulations.run.checkpoint_format` refuses an npz member
that is compressed, not a ``.npy``, holds objects or declares another size than the
bytes it holds, so ``np.load`` never allocates more than the file's size). Every such
failure is a :class:`CorruptCheckpoint`.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

# nesting of lists / dicts / tuples (the states saved today use at most 6)
MAX_DEPTH = 64
#: The name of an array member: ``a0``, ``a1``, ...
MEMBER = re.compile(r"^a(0|[1-9][0-9]{0,8})$")
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class CorruptCheckpoint(ValueError):
    """A checkpoint directory that cannot be read back as data (the reason is the
    message)."""


# ------------------------------------------------------------------ flatten / unflatten
def flatten(value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``(skeleton, arrays)``: JSON-ready ``skeleton`` referencing the members of
    ``arrays``.

    Raises
    ------
    ValueError
        For a value of a type not in the module's table (naming where it is, e.g.
        ``payload['strategy'][0]['period']``), an object array, or a dict key that is
        not a ``str``, an ``int`` or ``None``.
    """
    arrays: dict[str, np.ndarray] = {}
    return _encode(value, "payload", arrays, 0), arrays


def _add(arrays: dict[str, np.ndarray], arr: np.ndarray, where: str) -> str:
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise ValueError(
            f"checkpoint value {where} is an array of dtype {arr.dtype}; allowed: "
            "plain dtypes (no objects)"
        )
    name = f"a{len(arrays)}"
    arrays[name] = arr
    return name


def _encode(value: Any, where: str, arrays: dict[str, np.ndarray], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(
            f"checkpoint value {where} is nested deeper than {MAX_DEPTH} levels"
        )
    if type(value) is np.ndarray:  # not a subclass (a masked array would lose its mask)
        return {"array": _add(arrays, value, where)}
    if isinstance(value, np.generic):  # before float: np.float64 is a float
        return {"scalar": _add(arrays, np.asarray(value), where)}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {
            "float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        }
    if isinstance(value, list):
        return [
            _encode(v, f"{where}[{i}]", arrays, depth + 1) for i, v in enumerate(value)
        ]
    if isinstance(value, tuple):
        return {
            "tuple": [
                _encode(v, f"{where}[{i}]", arrays, depth + 1)
                for i, v in enumerate(value)
            ]
        }
    if isinstance(value, dict):
        for key in value:
            if not (
                key is None
                or (isinstance(key, (int, str)) and not isinstance(key, bool))
            ):
                raise ValueError(
                    f"checkpoint value {where} has the key {key!r} "
                    f"({type(key).__name__}); "
                    "allowed: str, int or None keys"
                )
        if all(isinstance(key, str) for key in value):
            return {
                "dict": {
                    k: _encode(v, f"{where}[{k!r}]", arrays, depth + 1)
                    for k, v in value.items()
                }
            }
        return {
            "items": [
                [k, _encode(v, f"{where}[{k!r}]", arrays, depth + 1)]
                for k, v in value.items()
            ]
        }
    raise ValueError(
        f"checkpoint value {where} is a "
        f"{type(value).__module__}.{type(value).__qualname__}; allowed: "
        "None, bool, int, float, str, list, tuple, dict, numpy arrays and scalars"
    )


def unflatten(skeleton: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The value :func:`flatten` encoded as ``(skeleton, arrays)``.

    Raises
    ------
    CorruptCheckpoint
        For anything :func:`flatten` does not produce (see the module docstring).
    """
    return _decode(skeleton, "payload", arrays, 0)


def _member(ref: Any, where: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if not isinstance(ref, str) or ref not in arrays:
        raise CorruptCheckpoint(
            f"{where} refers to {ref!r}, which is not a member of the arrays file"
        )
    return arrays[ref]


def _decode(node: Any, where: str, arrays: dict[str, np.ndarray], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CorruptCheckpoint(f"{where} is nested deeper than {MAX_DEPTH} levels")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [
            _decode(v, f"{where}[{i}]", arrays, depth + 1) for i, v in enumerate(node)
        ]
    if not isinstance(node, dict) or len(node) != 1:
        raise CorruptCheckpoint(
            f"{where} is not a value of the checkpoint format (a JSON object with "
            "one tag)"
        )
    ((tag, body),) = node.items()
    if tag == "array":
        return _member(body, where, arrays)
    if tag == "scalar":
        arr = _member(body, where, arrays)
        if arr.ndim != 0:
            raise CorruptCheckpoint(
                f"{where}: scalar {body!r} has shape {arr.shape}, expected ()"
            )
        return arr[()]
    if tag == "float" and body in _NON_FINITE:
        return _NON_FINITE[body]
    if tag == "tuple" and isinstance(body, list):
        return tuple(
            _decode(v, f"{where}[{i}]", arrays, depth + 1) for i, v in enumerate(body)
        )
    if tag == "dict" and isinstance(body, dict):
        return {
            k: _decode(v, f"{where}[{k!r}]", arrays, depth + 1) for k, v in body.items()
        }
    if tag == "items" and isinstance(body, list):
        out: dict[Any, Any] = {}
        for pair in body:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and (pair[0] is None or type(pair[0]) in (int, str))
            ):
                raise CorruptCheckpoint(
                    f"{where}: {pair!r} is not a [key, value] pair with an int, str "
                    "or null key"
                )
            if pair[0] in out:
                raise CorruptCheckpoint(f"{where}: key {pair[0]!r} appears twice")
            out[pair[0]] = _decode(pair[1], f"{where}[{pair[0]!r}]", arrays, depth + 1)
        return out
    raise CorruptCheckpoint(
        f"{where}: {{{tag!r}: ...}} is not a value of the checkpoint format"
    )


# ------------------------------------------------------------------ files

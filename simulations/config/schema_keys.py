"""The building blocks of the config schema (:mod:`bouquet.simulations.config.schema`):
a key (:class:`Key`: type, range, allowed values, what ``null`` means), a group
(:class:`Group`) and the helpers the tables are written with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = (
    "int",
    "float",
    "bool",
    "str",
    "str or bool",
    "int list",
    "float list",
    "str list",
    "dict",
)


@dataclass(frozen=True)
class Key:
    """One config key.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS` (a ``... list`` is a non-empty list of that type; ``dict``
        has free keys).
    range : str
        Interval of a number or of every element of a list, e.g. ``"(0, 1]"`` ("" =
        any).
    choices : tuple
        Allowed values (of every element, for a list); empty = any.
    null : str
        What ``null`` means; empty = null is refused.
    optional : bool
        The key is absent unless set with ``+group.key=value``.
    doc : str
        One line for the README.
    """

    kind: str
    range: str = ""
    choices: tuple[Any, ...] = ()
    null: str = ""
    optional: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Group:
    """A config group: its values (each a key table) and the key that tells them apart.

    ``by`` = "" means every value of the group has the same keys (one table, named
    ``*``).
    """

    by: str
    values: dict[str, dict[str, Key]]
    optional: bool = False
    doc: str = ""


# --------------------------------------------------------------- helpers for the tables
def integer(rng: str = "", **kw: Any) -> Key:
    return Key("int", rng, **kw)


def real(rng: str = "", **kw: Any) -> Key:
    return Key("float", rng, **kw)


def flag(**kw: Any) -> Key:
    return Key("bool", **kw)


def choice(*choices: str, **kw: Any) -> Key:
    return Key("str", choices=tuple(choices), **kw)


def target(path: str) -> Key:
    return Key("str", choices=(path,), doc="what Hydra builds")


PARTIAL = Key(
    "bool", choices=(True,), doc="Hydra builds a factory that the run completes"
)
SEED = integer("[0, 4294967295]")
FRACTION = real("[0, 1]")

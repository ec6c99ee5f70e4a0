"""The pieces every config check uses: reading an interval, checking one value against
its
:class:`~bouquet.simulations.config.schema_keys.Key`, showing a value in a one-line
message."""

from __future__ import annotations

from typing import Any

from bouquet.checks import in_range
from bouquet.simulations.config.schema import GROUPS
from bouquet.simulations.config.schema_keys import Key

Options = dict[str, str]  # config group -> its value (``{"client": "topk", ...}``)

_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "str or bool": "a string or true",
    "dict": "a mapping",
}


def fmt(value: Any, *, quote: bool = True) -> str:
    """A value as it is written on the command line (``null``, ``true``, ``'tensor'``,
    ``[1, 2]``;
    strings unquoted with ``quote=False``, as in a YAML file)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and quote:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, quote=quote) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{k}: {fmt(v, quote=quote)}" for k, v in value.items())
            + "}"
        )
    return str(value)


def describe(key: Key) -> str:
    """What ``key`` allows, in words: ``a number in (0, 1]``, ``one of 'tensor', 'model'
    or null``."""
    element = key.kind.removesuffix(" list")
    what = _TYPE_NAMES[element]
    if len(key.choices) == 1:
        what = f"exactly {fmt(key.choices[0])}"
    elif key.choices:
        what = "one of " + ", ".join(fmt(c) for c in key.choices)
    elif key.range:
        what = f"{what} in {key.range}"
    if key.kind.endswith(" list"):
        what = f"a non-empty list, each element {what}"
    return f"{what} or null" if key.null else what


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "str or bool":
        return isinstance(value, (str, bool))
    return isinstance(value, dict)


def _check_one(path: str, key: Key, kind: str, value: Any, shown: Any) -> None:
    if not _type_ok(kind, value):
        raise ValueError(
            f"{path}={fmt(shown)} has the wrong type; allowed: {describe(key)}"
        )
    if key.choices and value not in key.choices:
        raise ValueError(
            f"{path}={fmt(shown)} is not allowed; allowed: {describe(key)}"
        )
    if kind in ("int", "float") and not in_range(float(value), key.range):
        where = key.range or "(-inf, inf)"
        if shown is value:
            raise ValueError(f"{path}={fmt(value)} is out of range {where}")
        raise ValueError(
            f"{path}={fmt(shown)} is out of range: every element must be in {where}"
        )


def check_value(path: str, key: Key, value: Any) -> None:
    """Raise ``ValueError`` naming ``path`` if ``value`` is not what ``key`` allows."""
    if value is None:
        if key.null:
            return
        raise ValueError(f"{path}=null is not allowed; allowed: {describe(key)}")
    if key.kind.endswith(" list"):
        if not isinstance(value, list) or not value:
            raise ValueError(
                f"{path}={fmt(value)} is not allowed; allowed: {describe(key)}"
            )
        for element in value:
            _check_one(path, key, key.kind.removesuffix(" list"), element, value)
        return
    _check_one(path, key, key.kind, value, value)


def check_keys(
    prefix: str, label: str, table: dict[str, Key], section: dict[str, Any]
) -> None:
    """Unknown and missing keys of one group value, then every value (``prefix.key`` in
    messages)."""
    for name in section:
        if name not in table:
            raise ValueError(
                f"{prefix}.{name} is not a key of {label}; allowed: {', '.join(table)}"
            )
    for name, key in table.items():
        if name not in section:
            if key.optional:
                continue
            raise ValueError(f"{prefix}.{name} is missing ({label} needs it)")
        check_value(f"{prefix}.{name}", key, section[name])


def group_value(name: str, section: dict[str, Any]) -> str:
    """Which value of config group ``name`` the composed ``section`` is (``"*"`` for
    one-table groups)."""
    group = GROUPS[name]
    if not group.by:
        return "*"
    found = section.get(group.by)
    for value, table in group.values.items():
        if found in table[group.by].choices:
            return value
    allowed = [c for table in group.values.values() for c in table[group.by].choices]
    raise ValueError(
        f"{name}.{group.by}={fmt(found)} is not allowed; allowed: "
        f"{', '.join(fmt(a) for a in allowed)} "
        f"(choose {name}={'|'.join(group.values)})"
    )

"""Checkpoint files that are data, never code: arrays in ``.npz``, everything else in
JSON.

A checkpoint is a directory of three files, written by :func:`write_checkpoint` and read
by :func:`read_checkpoint`:

``arrays.npz``
    Every numpy array and numpy scalar of the payload, as members ``a0.npy``,
    ``a1.npy``, ... of an uncompressed zip (numpy's ``.npz`` layout, written with
    ``allow_pickle=False``, read with ``np.load(..., allow_pickle=False)``: an object
    array is refused, never unpickled).
``state.json``
    ``{"format": "bouquet-checkpoint/2", "payload": <skeleton>}``: the payload with each
    array replaced by a reference to its member (:func:`flatten`).
``SHA256SUMS``
    The SHA-256 of the two files, in ``sha256sum`` format (``sha256sum -c SHA256SUMS``
    checks it). It detects truncation and corruption; it does not authenticate (anyone
    who can write the files can recompute it), which is why nothing in a checkpoint can
    execute code.

The skeleton (:func:`flatten` / :func:`unflatten`) maps nested Python data to JSON so
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
member, an npz member that is compressed, not a ``.npy``, holds objects or declares
another size than the bytes it holds (so ``np.load`` never allocates more than the
file's size). Every such failure is a :class:`CorruptCheckpoint`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "bouquet-checkpoint/2"
ARRAYS_FILE = "arrays.npz"
STATE_FILE = "state.json"
SUMS_FILE = "SHA256SUMS"
MAX_DEPTH = (
    64  # nesting of lists / dicts / tuples (the states saved today use at most 6)
)
_MEMBER = re.compile(r"^a(0|[1-9][0-9]{0,8})$")
_SUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$")
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
            f"{where} refers to {ref!r}, which is not a member of {ARRAYS_FILE}"
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
def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (a no-op where directories cannot
    be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(
        buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True
    ) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    return buf.getvalue()


def encode_checkpoint(payload: Any) -> dict[str, bytes]:
    """The files of a checkpoint of ``payload`` (name -> bytes); ``ValueError`` as
    :func:`flatten`."""
    skeleton, arrays = flatten(payload)
    state = json.dumps(
        {"format": FORMAT, "payload": skeleton}, allow_nan=False, separators=(",", ":")
    ).encode()
    files = {ARRAYS_FILE: _npz_bytes(arrays), STATE_FILE: state}
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items()
    )
    return {**files, SUMS_FILE: sums.encode()}


def write_checkpoint(directory: Path, files: dict[str, bytes]) -> None:
    """Write the files of :func:`encode_checkpoint` into the (new, empty) ``directory``,
    fsync'ed."""
    for name, data in files.items():
        _fsync_write(directory / name, data)
    fsync_dir(directory)


def _read_sums(directory: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (directory / SUMS_FILE).read_bytes().decode("ascii").splitlines():
        match = _SUM_LINE.match(line)
        if match is None or match.group(2) in sums:
            raise CorruptCheckpoint(
                f"{SUMS_FILE}: {line[:80]!r} is not a '<sha256>  <file>' line"
            )
        sums[match.group(2)] = match.group(1)
    if set(sums) != {ARRAYS_FILE, STATE_FILE}:
        raise CorruptCheckpoint(
            f"{SUMS_FILE} lists {sorted(sums)}, expected "
            f"{sorted([ARRAYS_FILE, STATE_FILE])}"
        )
    return sums


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """A stored ``aN.npy`` member whose header declares a plain dtype and exactly the
    bytes it holds: ``np.load`` allocates the declared shape before reading, so this
    bounds its memory by the file's size."""
    name = info.filename
    if not (
        name.endswith(".npy")
        and _MEMBER.match(name[:-4])
        and info.compress_type == zipfile.ZIP_STORED
    ):
        raise CorruptCheckpoint(
            f"{ARRAYS_FILE}: member {name[:80]!r} is not a stored aN.npy array"
        )
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise CorruptCheckpoint(
                f"{ARRAYS_FILE}: member {name!r} has .npy version {version}"
            )
        body = info.file_size - fh.tell()
    if dtype.hasobject or dtype.fields is not None:
        raise CorruptCheckpoint(
            f"{ARRAYS_FILE}: member {name!r} has dtype {dtype}; allowed: plain "
            "dtypes (no objects)"
        )
    if math.prod(shape) * dtype.itemsize != body:
        raise CorruptCheckpoint(
            f"{ARRAYS_FILE}: member {name!r} declares shape {shape} of {dtype} but "
            f"holds {body} bytes"
        )


def _load_arrays(data: bytes) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            _check_member(zf, info)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _refuse_constant(name: str) -> Any:
    raise CorruptCheckpoint(f"{STATE_FILE}: {name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CorruptCheckpoint(
                f"{STATE_FILE}: key {key[:80]!r} appears twice in one object"
            )
        out[key] = value
    return out


def read_checkpoint(directory: Path) -> Any:
    """The payload of the checkpoint in ``directory`` (see the module docstring).

    Raises
    ------
    CorruptCheckpoint
        If a file is missing, its SHA-256 differs from ``SHA256SUMS`` (truncated or
        altered), or it does not parse as this format. Nothing read can execute code.
    """
    try:
        sums = _read_sums(directory)
        data = {name: (directory / name).read_bytes() for name in sums}
        for name, digest in sums.items():
            if hashlib.sha256(data[name]).hexdigest() != digest:
                raise CorruptCheckpoint(
                    f"{name}: SHA-256 mismatch (truncated or altered)"
                )
        state = json.loads(
            data[STATE_FILE].decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
        )
        if (
            not isinstance(state, dict)
            or set(state) != {"format", "payload"}
            or state["format"] != FORMAT
        ):
            raise CorruptCheckpoint(f"{STATE_FILE} is not a {FORMAT} state")
        return unflatten(state["payload"], _load_arrays(data[ARRAYS_FILE]))
    except CorruptCheckpoint:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        RecursionError,
        zipfile.BadZipFile,
    ) as exc:
        raise CorruptCheckpoint(
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from exc

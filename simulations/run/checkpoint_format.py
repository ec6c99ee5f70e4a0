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
    array replaced by a reference to its member
    (:func:`~bouquet.simulations.run.checkpoint_skeleton.flatten`).
``SHA256SUMS``
    The SHA-256 of the two files, in ``sha256sum`` format (``sha256sum -c SHA256SUMS``
    checks it). It detects truncation and corruption; it does not authenticate (anyone
    who can write the files can recompute it), which is why nothing in a checkpoint can
    execute code.

The payload's JSON skeleton and what is refused are in
:mod:`bouquet.simulations.run.checkpoint_skeleton`; every failure to read is a
:class:`~bouquet.simulations.run.checkpoint_skeleton.CorruptCheckpoint`.
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

from bouquet.simulations.run.checkpoint_skeleton import MEMBER
from bouquet.simulations.run.checkpoint_skeleton import CorruptCheckpoint
from bouquet.simulations.run.checkpoint_skeleton import flatten
from bouquet.simulations.run.checkpoint_skeleton import unflatten

FORMAT = "bouquet-checkpoint/2"
ARRAYS_FILE = "arrays.npz"
STATE_FILE = "state.json"
SUMS_FILE = "SHA256SUMS"
_SUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$")


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
        and MEMBER.match(name[:-4])
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

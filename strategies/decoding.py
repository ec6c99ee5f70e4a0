"""Reading client replies against the global model, treating every byte as hostile.

Shared by :class:`~bouquet.strategies.Compressed` and
:class:`~bouquet.strategies.ReplyGuard`:

* :func:`reference_arrays` turns the global ``ArrayRecord`` the server sends into
  zero-copy read-only views (no deserialising copy of the model);
* :func:`check_record` compares a reply's arrays with the global model *without
  decoding*: names, shape and dtype of every ``Array``, its stype, and for dense arrays
  the ``.npy`` header and exact length. Nothing is allocated from what a reply declares;
* :func:`decode_record` then decodes (:func:`bouquet.codecs.decode`, bounded by the
  payload's bytes and the model size) into updates :math:`\\hat u_i` against the global
  arrays;
* :func:`reply_weight` reads the positive finite weight.

Dtype rule (Flower's FedAvg): a floating tensor keeps its dtype; an integer or bool
tensor is averaged in float64 (so from round 2 on its global array is float64). A
compressed (bouquet) array must have exactly the global array's dtype; a dense array
(full local weights) may have any real numeric dtype and is converted, and must still be
finite after the conversion.

One reader, one limit: a dense array's ``.npy`` header must also be one that Flower's
own reader (``Array.numpy()``, i.e. ``np.load``, which refuses headers over
:data:`NPY_READER_MAX_HEADER` characters) accepts, because the inner strategy reads the
replies a wrapper passes on with it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import RecordDict

from bouquet.codecs import Decoded
from bouquet.codecs import decode
from bouquet.codecs import is_bouquet_stype
from bouquet.codecs.npy import read_npy
from bouquet.codecs.wire import finite_or_raise
from bouquet.strategies.screening import reply_weight

# (dense view, its reference, the array name) -> the view in an accepted dtype
CastFn = Callable[[np.ndarray, np.ndarray, str], np.ndarray]

DENSE_STYPE = "numpy.ndarray"
NPY_READER_MAX_HEADER = (
    10000  # np.load's default max_header_size (numpy.lib.format._MAX_HEADER_SIZE)
)

__all__ = [
    "DENSE_STYPE",
    "NPY_READER_MAX_HEADER",
    "OVERFLOW_SHARE",
    "aggregate_dtype",
    "check_overflow",
    "check_record",
    "decode_record",
    "decode_reply",
    "decode_update",
    "dense_update",
    "dense_view",
    "finite_or_drop",
    "max_abs",
    "npy_header_length",
    "read_dense_alone",
    "reference_arrays",
    "reply_weight",
    "single_array_record",
    "decoded_norm",
]


def npy_header_length(data: bytes) -> int:
    """Length of the header dict of a ``.npy`` payload (``ValueError`` if it is not
    one)."""
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy payload")
    if data[6] == 1:
        return int.from_bytes(data[8:10], "little")
    if len(data) < 12:
        raise ValueError(".npy header truncated")
    return int.from_bytes(data[8:12], "little")


def reference_arrays(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """Read-only views of the global arrays (zero-copy for Flower's dense stype)."""
    out = {}
    for name, arr in arrays.items():
        if arr.stype == DENSE_STYPE:
            out[name] = read_npy(arr.data, shape=tuple(arr.shape), dtype=arr.dtype)
        else:
            raise ValueError(
                f"global array {name!r} has stype {arr.stype!r}; the server must "
                f"send {DENSE_STYPE!r} arrays"
            )
    return out


def aggregate_dtype(ref: np.ndarray) -> np.dtype:
    """The dtype Flower's FedAvg gives a tensor like ``ref``: float stays, the rest is
    float64."""
    return ref.dtype if ref.dtype.kind == "f" else np.dtype(np.float64)


def single_array_record(content: RecordDict) -> ArrayRecord:
    if len(content.array_records) != 1:
        raise ValueError(f"expected one ArrayRecord, got {len(content.array_records)}")
    return next(iter(content.array_records.values()))


def check_record(
    record: ArrayRecord, reference: dict[str, np.ndarray], *, dense_only: bool = False
) -> None:
    """Check names, shapes, dtypes and stypes of ``record`` against ``reference`` (no
    decoding).

    ``dense_only``: every array must be Flower's dense stype (``ReplyGuard`` without
    ``Compressed`` around it).
    """
    names = list(record.keys())
    if set(names) != set(reference):
        missing = sorted(set(reference) - set(names))[:3]
        extra = sorted(set(names) - set(reference))[:3]
        raise ValueError(
            f"array names differ from the global model (missing {missing}, extra "
            f"{extra})"
        )
    for name in names:
        arr, ref = record[name], reference[name]
        if not isinstance(arr, Array) or not isinstance(arr.data, bytes):
            raise ValueError(f"array {name!r} is not a Flower Array with bytes")
        shape = tuple(arr.shape)
        if shape != ref.shape:
            raise ValueError(
                f"array {name!r} has shape {shape}, the global model's is {ref.shape}"
            )
        if arr.stype == DENSE_STYPE:
            if npy_header_length(arr.data) > NPY_READER_MAX_HEADER:
                raise ValueError(
                    f"array {name[:60]!r} has a .npy header over "
                    f"{NPY_READER_MAX_HEADER} characters, "
                    "which Flower's reader (np.load) refuses"
                )
            view = read_npy(arr.data, shape=shape, dtype=_numeric(arr.dtype, name))
            if view.dtype.kind not in "biuf":
                raise ValueError(
                    f"array {name!r} has dtype {view.dtype}, not a real number type"
                )
        elif dense_only:
            raise ValueError(
                f"array {name!r} has stype {arr.stype!r}, not a dense numpy array "
                "(compressed replies need Compressed around ReplyGuard)"
            )
        elif not is_bouquet_stype(arr.stype):
            raise ValueError(
                f"array {name!r} has stype {arr.stype!r}, neither "
                f"bouquet.<codec>/<version> nor {DENSE_STYPE!r}"
            )
        elif arr.dtype != str(ref.dtype):
            raise ValueError(
                f"array {name!r} has dtype {arr.dtype}, the global model's is "
                f"{ref.dtype}"
            )


def _numeric(dtype: str, name: str) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(
            f"array {name!r} declares dtype {dtype!r}, not a numpy dtype"
        ) from exc


def dense_view(arr: Array) -> np.ndarray:
    """The validated read-only view of a dense Array (after :func:`check_record`)."""
    return read_npy(arr.data, shape=tuple(arr.shape), dtype=np.dtype(arr.dtype))


def decode_record(
    record: ArrayRecord,
    reference: dict[str, np.ndarray],
    *,
    work: Mapping[str, np.dtype] | None = None,
    cast: CastFn | None = None,
) -> dict[str, Decoded]:
    """Decode every array of ``record`` into an update against ``reference``
    (validated).

    A dense array (full local weights from an uncompressed client) becomes
    :math:`w_i - w` in ``work[name]`` (default: the aggregate dtype of its reference);
    with ``cast``, one whose dtype differs from its reference's is first passed
    through ``cast(view, reference, name)``.

    Raises ``ValueError`` naming the array and what is wrong.
    """
    check_record(record, reference)
    out: dict[str, Decoded] = {}
    for name, arr in record.items():
        ref = reference[name]
        try:
            if arr.stype == DENSE_STYPE:
                view = dense_view(arr)
                if cast is not None and view.dtype != ref.dtype:
                    view = cast(view, ref, name)
                out[name] = dense_update(
                    view, ref, None if work is None else work[name]
                )
            else:
                out[name] = decode(arr.stype, arr.dtype, tuple(arr.shape), arr.data)
        except ValueError as exc:
            raise ValueError(f"array {name!r}: {exc}") from exc
    return out


def dense_update(
    full: np.ndarray, ref: np.ndarray, work: np.dtype | None = None
) -> Decoded:
    """:math:`w_i - w` of full weights in ``work`` (default: the aggregate dtype of
    ``ref``);
    finite after the conversion."""
    work = aggregate_dtype(ref) if work is None else np.dtype(work)
    converted = finite_or_raise(full.astype(work, copy=False), "dense weights")
    update = finite_or_raise(np.subtract(converted, ref, dtype=work), "dense update")
    return Decoded(ref.shape, np.dtype(work), None, update.reshape(-1))


def decoded_norm(decoded: dict[str, Decoded]) -> float:
    """L2 norm of a decoded update over all its tensors."""
    return float(np.sqrt(sum(d.sq_norm() for d in decoded.values())))


# |eta u_i| above this share of the dtype's max could overflow w + sum c_i eta u_i
OVERFLOW_SHARE = 0.45


def decode_reply(
    content: RecordDict, reference: dict[str, np.ndarray]
) -> dict[str, Decoded]:
    """Decode every array of a reply into an update against ``reference``
    (validated)."""
    return decode_record(single_array_record(content), reference)


def decode_update(
    record: ArrayRecord, reference: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Dense decoded updates of ``record`` against ``reference`` (the ``decoder`` hook
    of
    bouquet's asynchronous strategy); raises ``ValueError`` on a bad payload."""
    return {
        name: dec.to_dense() for name, dec in decode_record(record, reference).items()
    }


def max_abs(dec: Decoded) -> float:
    """:math:`\\max |\\hat u|` of a decoded update (no allocation)."""
    if dec.values.size == 0:
        return 0.0
    top = max(abs(float(np.max(dec.values))), abs(float(np.min(dec.values))))
    return top * (1.0 if dec.scale is None else abs(float(dec.scale)))


def check_overflow(
    decoded: dict[str, Decoded], dtypes: dict[str, np.dtype], server_lr: float
) -> None:
    """``ValueError`` if an update's values could overflow the aggregate's dtype (module
    docstring)."""
    for name, dec in decoded.items():
        dtype = dtypes[name]
        if dtype.kind == "f" and server_lr * max_abs(dec) > OVERFLOW_SHARE * float(
            np.finfo(dtype).max
        ):
            raise ValueError(
                f"array {name!r}: update values up to {server_lr * max_abs(dec):.3g} "
                f"could overflow {dtype}"
            )


def read_dense_alone(arr: Any, name: str) -> np.ndarray:
    """A dense array read without a reference (header within Flower's reader's limit,
    real dtype)."""
    if arr.stype != DENSE_STYPE or not isinstance(arr.data, bytes):
        raise ValueError(f"array {name!r} is not a dense numpy array")
    if npy_header_length(arr.data) > NPY_READER_MAX_HEADER:
        raise ValueError(
            f"array {name!r} has a .npy header over {NPY_READER_MAX_HEADER} characters"
        )
    try:
        dtype = np.dtype(arr.dtype)
    except TypeError as exc:
        raise ValueError(
            f"array {name!r} declares dtype {arr.dtype!r}, not a numpy dtype"
        ) from exc
    view = read_npy(arr.data, shape=tuple(arr.shape), dtype=dtype)
    if view.dtype.kind not in "biuf":
        raise ValueError(
            f"array {name!r} has dtype {view.dtype}, not a real number type"
        )
    return view


def finite_or_drop(view: np.ndarray, name: str) -> None:
    """``ValueError`` if a floating ``view`` holds a NaN or an infinity."""
    if (
        view.dtype.kind == "f"
        and not np.isfinite(view.sum())
        and not np.all(np.isfinite(view))
    ):
        raise ValueError(f"array {name!r} has non-finite values")

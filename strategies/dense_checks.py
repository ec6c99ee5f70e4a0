"""Checks of dense train replies against the global model, shared by the wrappers.

:func:`check_dense_reply` says why a reply is unusable for dense aggregation (records,
``.npy`` headers, shapes, finite values, weight); :func:`checked_arrays` casts a reply's
arrays to the server's dtypes under :class:`~bouquet.strategies.guard.ReplyGuard`'s
*dtype rule* (:func:`cast_to_reference`: a cast to a floating dtype when every cast
value is finite, to an integer or bool dtype when every value survives unchanged);
:func:`with_arrays` rebuilds a reply around cast arrays; :func:`dense_update_norm` is
:math:`\\lVert w_i - w \\rVert_2` of a checked reply. Pure functions: ``ReplyGuard``,
``Compressed`` and the asynchronous loop call them, tests call them directly.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Message
from flwr.app import RecordDict

from bouquet.codecs.wire import sum_squares
from bouquet.strategies.decoding import check_record
from bouquet.strategies.decoding import dense_view
from bouquet.strategies.decoding import single_array_record
from bouquet.strategies.reports import exception_reason
from bouquet.strategies.screening import reply_weight


def cast_to_reference(view: np.ndarray, ref: np.ndarray, name: str) -> np.ndarray:
    """``view`` in ``ref``'s dtype under the guard's dtype rule (module docstring), else
    ``ValueError``."""
    if view.dtype == ref.dtype:
        return view
    with np.errstate(over="ignore", invalid="ignore"):
        cast = view.astype(ref.dtype)
    if ref.dtype.kind in "fc":
        if not np.all(np.isfinite(cast)):
            raise ValueError(
                f"array {name!r} ({view.dtype}) has values that are not finite as "
                f"{ref.dtype}"
            )
    elif not np.array_equal(cast, view):
        raise ValueError(
            f"array {name!r} ({view.dtype}) has values that {ref.dtype} cannot hold "
            "exactly"
        )
    return cast


def checked_arrays(
    msg: Message, reference: dict[str, np.ndarray]
) -> dict[str, np.ndarray] | None:
    """The reply's arrays cast to the reference's dtypes when one differs (None: all
    equal)."""
    record = single_array_record(msg.content)
    check_record(record, reference, dense_only=True)
    cast: dict[str, np.ndarray] = {}
    for name, arr in record.items():
        view, ref = dense_view(arr), reference[name]
        if view.dtype != ref.dtype:
            cast[name] = cast_to_reference(view, ref, name)
        elif (
            view.dtype.kind in "fc"
            and not np.isfinite(view.sum())
            and not np.all(np.isfinite(view))
        ):
            raise ValueError(f"array {name!r} has non-finite values")
    if not cast:
        return None
    return {name: cast.get(name, dense_view(arr)) for name, arr in record.items()}


def check_dense_reply(
    msg: Message,
    reference: dict[str, np.ndarray] | None,
    weight_key: str = "num-examples",
) -> str | None:
    """Return why ``msg`` is unusable for dense aggregation, or ``None`` if it is fine.

    ``reference`` maps array name -> the global array sent this round (``None``: only
    the records and the weight are checked). A dtype that differs from the reference's
    is fine when the guard's dtype rule can cast it.
    """
    try:
        if reference is not None:
            checked_arrays(msg, reference)
        else:
            single_array_record(msg.content)
    except Exception as exc:  # noqa: BLE001 - a malformed reply is a dropped reply
        return exception_reason(exc)
    return check_weight(msg, weight_key)


def dense_update_norm(msg: Message, reference: dict[str, np.ndarray]) -> float:
    """:math:`\\lVert w_i - w \\rVert_2` of a reply that passed
    :func:`check_dense_reply`."""
    record = single_array_record(msg.content)
    return float(
        np.sqrt(
            sum(
                sum_squares(dense_view(arr).astype(np.float64) - reference[name])
                for name, arr in record.items()
            )
        )
    )


def check_weight(msg: Message, weight_key: str = "num-examples") -> str | None:
    """Return why the reply's single MetricRecord / weight is unusable, or ``None``."""
    try:
        reply_weight(msg.content, weight_key)
    except ValueError as exc:
        return str(exc)
    return None


def with_arrays(msg: Message, arrays: dict[str, np.ndarray]) -> Message:
    """A new reply with the same metadata and records, its arrays replaced by
    ``arrays``."""
    record_key = next(iter(msg.content.array_records))
    content = RecordDict()
    for key, value in msg.content.items():
        content[key] = (
            ArrayRecord(
                {
                    n: Array(a if a.flags.c_contiguous else a.copy())
                    for n, a in arrays.items()
                }
            )
            if key == record_key
            else value
        )
    return Message(metadata=msg.metadata, content=content)  # type: ignore[call-overload]

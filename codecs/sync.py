"""Model copies kept identical on both ends of a compressed broadcast (numpy only).

The server of a compressed downlink (:class:`bouquet.strategies.CompressedDownlink`) and
the client mod that rebuilds the model (:func:`bouquet.clients.downlink_mod`) both hold
the model the clients hold, :math:`x_v` at version :math:`v`, and move it with the same
*steps*:

.. math::

    x_{v+1} = x_v + \\hat c_{v+1},

:math:`\\hat c_{v+1}` the decoded payload of one broadcast step. Both ends add with
:func:`apply_step` (plain numpy in the tensor's dtype, no BLAS, no numba, no fused
multiply-add), so the copies stay equal bit for bit; :func:`model_digest` proves it.

Everything read here came over the wire: :func:`decode_step` checks names, shapes,
dtypes and stypes against the copy the receiver holds *before* anything is decoded, and
the codec decoders check the bodies (:func:`bouquet.codecs.decode`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from bouquet.codecs.registry import decode
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Encoded
from bouquet.codecs.wire import is_bouquet_stype

DIGEST_BYTES = 8  # 64-bit digest: a short proof that two copies agree, not a MAC


def model_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A 16-hex-digit BLAKE2b digest of named arrays (names, dtypes, shapes and bytes,
    in order)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        h.update(name.encode("utf-8", "surrogatepass"))
        h.update(
            b"\0" + a.dtype.str.encode() + b"\0" + repr(tuple(a.shape)).encode() + b"\0"
        )
        h.update(a.reshape(-1).view(np.uint8).data)  # the bytes, no copy
    return h.hexdigest()


def apply_step(target: np.ndarray, dec: Decoded) -> None:
    """``target += dec`` in place, in ``target``'s dtype, the same way on every machine.

    ``target`` is a writable C-contiguous array of ``dec``'s shape and dtype (checked by
    the caller); sparse steps are added at their (unique, sorted, validated) indices.
    """
    flat = target.reshape(-1)
    values = dec.real_values().astype(target.dtype, copy=False).reshape(-1)
    if dec.indices is None:
        np.add(flat, values, out=flat)
    else:
        flat[dec.indices] += values


def decode_step(
    step: Mapping[str, Encoded], held: Mapping[str, np.ndarray]
) -> dict[str, Decoded]:
    """Decode one broadcast step against the held copy; ``ValueError`` naming what is
    wrong.

    Checked before decoding: the same tensor names as ``held``, every payload a bouquet
    stype with exactly the held tensor's dtype and shape. The decoders then check the
    bodies.
    """
    if set(step) != set(held):
        missing = sorted(set(held) - set(step))[:3]
        extra = [n[:64] for n in sorted(set(step) - set(held))[:3]]
        raise ValueError(
            f"step tensors differ from the held model (missing {missing}, extra "
            f"{extra})"
        )
    out: dict[str, Decoded] = {}
    for name, enc in step.items():
        ref = held[name]
        if not is_bouquet_stype(str(enc.stype)):
            raise ValueError(
                f"step tensor {name!r} has stype {str(enc.stype)[:64]!r}, not "
                "bouquet.<codec>/<version>"
            )
        if str(enc.dtype) != str(ref.dtype) or tuple(enc.shape) != ref.shape:
            raise ValueError(
                f"step tensor {name!r} is {str(enc.dtype)[:16]} "
                f"{tuple(enc.shape)[:8]}, the held model's "
                f"is {ref.dtype} {ref.shape}"
            )
        try:
            out[name] = decode(enc.stype, enc.dtype, enc.shape, enc.data)
        except ValueError as exc:
            raise ValueError(f"step tensor {name!r}: {exc}") from exc
    return out


def apply_decoded(
    work: Mapping[str, np.ndarray], decoded: Mapping[str, Decoded]
) -> None:
    """:func:`apply_step` for every tensor of ``work`` (the caller's own copy, discarded
    on
    failure); ``ValueError`` if a step holds non-finite values or makes a tensor
    non-finite."""
    for name, dec in decoded.items():
        if dec.values.dtype.kind == "f" and not np.all(np.isfinite(dec.values)):
            raise ValueError(f"step tensor {name!r} has non-finite values")
        with np.errstate(over="ignore", invalid="ignore"):
            apply_step(work[name], dec)
        if work[name].dtype.kind == "f" and not np.all(np.isfinite(work[name])):
            raise ValueError(f"step makes tensor {name!r} non-finite")

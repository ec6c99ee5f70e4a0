"""Error feedback (residual accumulation) for biased compressors.

What a compressor :math:`C` does not send is kept in a residual :math:`e` and added to
the next update (Seide et al. 2014; Stich et al. 2018, arXiv:1809.07599; Karimireddy et
al. 2019, arXiv:1901.09847). With residual decay :math:`\\beta` (1 = classic error
feedback, 0 = none):

.. math::

    a_t = \\Delta_t + \\beta\\, e_{t-1}, \\qquad \\tilde a_t = C(a_t), \\qquad e_t = a_t
        - \\tilde a_t,

so :math:`\\tilde a_t + e_t = \\Delta_t + \\beta e_{t-1}` exactly (for
:math:`\\beta = 1`: what is sent plus the new residual equals the update plus the old
residual). :math:`\\tilde a_t` is the tensor the *receiver* decodes (after float16 or
ternary quantisation), so quantisation error is fed back too. The residual never leaves
the node.
"""

from __future__ import annotations

import numpy as np

from bouquet.codecs.wire import Decoded


def check_decay(decay: float) -> float:
    """Validate a residual decay in [0, 1]."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"residual_decay={decay} must be in [0, 1]")
    return float(decay)


def accumulate(
    update: np.ndarray,
    residual: np.ndarray | None,
    decay: float,
    *,
    inplace: bool = False,
) -> np.ndarray:
    """:math:`a = \\Delta + \\beta e`.

    ``inplace=False`` returns a new array. ``inplace=True`` may reuse the residual's
    buffer (or the update's, when there is no residual) and touches each element once:
    :math:`e \\leftarrow \\beta e;\\ e \\mathrel{+}= \\Delta`.
    """
    if residual is None or decay <= 0:
        if not inplace:
            return np.array(update, dtype=update.dtype, copy=True)
        return update if update.flags.writeable else update.copy()
    if residual.shape != update.shape:
        raise ValueError(
            f"residual shape {residual.shape} != update shape {update.shape}"
        )
    if not inplace:
        out = np.array(update, dtype=update.dtype, copy=True)
        out += decay * residual.astype(update.dtype, copy=False)
        return out
    reuse = residual.flags.writeable and residual.dtype == update.dtype
    acc = residual if reuse else residual.astype(update.dtype)
    if decay != 1.0:
        acc *= decay
    acc += update
    return acc


def new_residual(accumulated: np.ndarray, sent: np.ndarray) -> np.ndarray:
    """:math:`e = a - \\tilde a` (a new array; see :func:`subtract_sent` for the
    in-place form)."""
    return accumulated - sent.astype(accumulated.dtype, copy=False)


def subtract_sent(accumulated: np.ndarray, sent: Decoded) -> np.ndarray:
    """:math:`e = a - \\tilde a` in place on ``accumulated``: O(k) for a sparse
    ``sent``."""
    sent.subtract_from(accumulated.reshape(-1))
    return accumulated
